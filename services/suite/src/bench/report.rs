//! The benchmark's results: a table on stdout and the JSON file.

use std::collections::BTreeMap;

use serde::Serialize;

use super::load::Outcome;

#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub name: String,
    /// Units done: calls, or rows for `import_contacts`.
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// The kinds of error seen and how often, e.g. {"Unavailable": 3}.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub error_kinds: BTreeMap<String, u64>,
    /// "closed/16" (callers) or "open/1200" (calls per second).
    pub load: String,
}

impl Line {
    pub fn from_outcome(name: &str, load: String, outcome: &Outcome) -> Self {
        Self {
            name: name.to_owned(),
            requests: outcome.units,
            errors: outcome.errors,
            rps: round(outcome.rate()),
            p50_us: outcome.percentile_us(0.50),
            p99_us: outcome.percentile_us(0.99),
            p999_us: outcome.percentile_us(0.999),
            error_kinds: outcome.error_kinds.clone(),
            load,
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Memory {
    pub peak_rss_mb: BTreeMap<String, f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub scenarios: Vec<Line>,
    pub floors: Vec<Line>,
    pub ratios: BTreeMap<String, f64>,
    pub memory: Memory,
    /// Process start to SERVING, per started process, in milliseconds.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub startup_ms: BTreeMap<String, f64>,
    /// How the run was set up: target, concurrency, duration, seeded contacts…
    pub setup: BTreeMap<String, serde_json::Value>,
}

fn round(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

impl Report {
    fn find<'a>(lines: &'a [Line], name: &str) -> Option<&'a Line> {
        lines.iter().find(|l| l.name == name)
    }

    /// The throughput ratios of DESIGN.md §10, for the pairs measured in this run.
    pub fn compute_ratios(&mut self) {
        for (scenario, floor) in [
            ("get_contact_cached", "echo"),
            ("get_contact_uncached", "postgres_point_select"),
            ("create_contact", "postgres_insert"),
            ("import_contacts", "postgres_bulk_insert"),
        ] {
            if let (Some(s), Some(f)) = (
                Self::find(&self.scenarios, scenario),
                Self::find(&self.floors, floor),
            ) && f.rps > 0.0
            {
                self.ratios.insert(
                    format!("{scenario}/{floor}"),
                    (s.rps / f.rps * 1000.0).round() / 1000.0,
                );
            }
        }
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let header = format!(
            "{:<28} {:>12} {:>10} {:>8} {:>11} {:>11} {:>11}  {}\n",
            "name", "requests", "rps", "errors", "p50 ms", "p99 ms", "p999 ms", "load"
        );
        for (title, lines) in [("floors", &self.floors), ("scenarios", &self.scenarios)] {
            if lines.is_empty() {
                continue;
            }
            out.push_str(&format!("\n{title}\n"));
            out.push_str(&header);
            for l in lines.iter() {
                out.push_str(&format!(
                    "{:<28} {:>12} {:>10.1} {:>8} {:>11.3} {:>11.3} {:>11.3}  {}\n",
                    l.name,
                    l.requests,
                    l.rps,
                    l.errors,
                    l.p50_us / 1000.0,
                    l.p99_us / 1000.0,
                    l.p999_us / 1000.0,
                    l.load
                ));
                for (kind, n) in &l.error_kinds {
                    out.push_str(&format!("{:<28}   {n} × {kind}\n", ""));
                }
            }
        }
        if !self.ratios.is_empty() {
            out.push_str("\nratios (throughput)\n");
            for (name, ratio) in &self.ratios {
                out.push_str(&format!("{name:<50} {ratio:.3}\n"));
            }
        }
        for (name, mb) in &self.memory.peak_rss_mb {
            out.push_str(&format!("\npeak RSS {name}: {mb:.1} MB"));
        }
        for (name, ms) in &self.startup_ms {
            out.push_str(&format!("\nstart to SERVING {name}: {ms:.0} ms"));
        }
        out.push('\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(name: &str, rps: f64) -> Line {
        Line {
            name: name.into(),
            requests: 1,
            errors: 0,
            rps,
            p50_us: 1.0,
            p99_us: 2.0,
            p999_us: 3.0,
            error_kinds: BTreeMap::new(),
            load: "closed/1".into(),
        }
    }

    #[test]
    fn ratios_pair_each_scenario_with_its_floor() {
        let mut report = Report {
            scenarios: vec![
                line("get_contact_cached", 500.0),
                line("create_contact", 100.0),
                line("import_contacts", 1500.0),
            ],
            floors: vec![
                line("echo", 1000.0),
                line("postgres_insert", 400.0),
                line("postgres_bulk_insert", 2000.0),
            ],
            ..Default::default()
        };
        report.compute_ratios();
        assert_eq!(report.ratios.get("get_contact_cached/echo"), Some(&0.5));
        assert_eq!(
            report.ratios.get("create_contact/postgres_insert"),
            Some(&0.25)
        );
        assert_eq!(
            report.ratios.get("import_contacts/postgres_bulk_insert"),
            Some(&0.75)
        );
        assert!(
            !report
                .ratios
                .contains_key("get_contact_uncached/postgres_point_select")
        );
        let json = serde_json::to_value(&report).unwrap();
        for key in ["scenarios", "floors", "ratios", "memory"] {
            assert!(json.get(key).is_some(), "{key}");
        }
        assert!(report.table().contains("get_contact_cached/echo"));
    }
}
