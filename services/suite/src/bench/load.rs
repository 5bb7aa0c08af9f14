//! The two ways of applying load, and what they record.
//!
//! Closed loop: `concurrency` callers, each calling again as soon as its call returns;
//! this finds capacity. Open loop: calls start on a fixed schedule whatever happened to
//! the previous ones, and latency counts from the scheduled start, so a stall shows up
//! in the percentiles instead of quietly lowering the rate (no coordinated omission).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// One call's result: the units of work done (1 for a request, the rows of an import),
/// or the name of the error it ended with.
pub type CallResult = Result<u64, String>;
pub type Call = Pin<Box<dyn Future<Output = CallResult> + Send>>;

/// Makes the `seq`-th call of caller `worker`.
pub trait Workload: Send + Sync + 'static {
    fn call(&self, worker: usize, seq: u64) -> Call;
}

impl<F> Workload for F
where
    F: Fn(usize, u64) -> Call + Send + Sync + 'static,
{
    fn call(&self, worker: usize, seq: u64) -> Call {
        self(worker, seq)
    }
}

/// Microseconds from 1 µs to 10 minutes, three significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| {
        // The bounds above are valid constants; this branch is unreachable.
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits are valid"))
    })
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// What one scenario or floor measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub calls: u64,
    pub units: u64,
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
}

impl Outcome {
    fn new() -> Self {
        Self {
            calls: 0,
            units: 0,
            errors: 0,
            error_kinds: BTreeMap::new(),
            elapsed: Duration::ZERO,
            latency: histogram(),
        }
    }

    fn record(&mut self, result: CallResult, elapsed: Duration) {
        self.calls += 1;
        match result {
            Ok(units) => self.units += units,
            Err(kind) => {
                self.errors += 1;
                *self.error_kinds.entry(kind).or_default() += 1;
            }
        }
        let _ = self.latency.record(micros(elapsed));
    }

    fn merge(&mut self, other: Outcome) {
        self.calls += other.calls;
        self.units += other.units;
        self.errors += other.errors;
        for (kind, n) in other.error_kinds {
            *self.error_kinds.entry(kind).or_default() += n;
        }
        let _ = self.latency.add(&other.latency);
    }

    /// Successful units per second.
    pub fn rate(&self) -> f64 {
        self.units as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn percentile_us(&self, q: f64) -> f64 {
        if self.latency.is_empty() {
            0.0
        } else {
            self.latency.value_at_quantile(q) as f64
        }
    }
}

/// The tokio timer's resolution.
const TIMER_TICK: Duration = Duration::from_millis(1);

/// The callers' outcomes merged; a caller that panicked counts as one error.
async fn join_callers(mut callers: tokio::task::JoinSet<Outcome>) -> Outcome {
    let mut total = Outcome::new();
    while let Some(joined) = callers.join_next().await {
        match joined {
            Ok(outcome) => total.merge(outcome),
            Err(_) => {
                total.errors += 1;
                *total
                    .error_kinds
                    .entry("caller panicked".into())
                    .or_default() += 1;
            }
        }
    }
    total
}

/// `concurrency` callers for `warmup` (not recorded) and then `duration`.
pub async fn closed(
    workload: Arc<dyn Workload>,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> Outcome {
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut callers = tokio::task::JoinSet::new();
    for worker in 0..concurrency.max(1) {
        let workload = workload.clone();
        callers.spawn(async move {
            let mut outcome = Outcome::new();
            let mut seq = 0u64;
            loop {
                let began = Instant::now();
                if began >= end {
                    break;
                }
                let result = workload.call(worker, seq).await;
                seq += 1;
                if began >= measure_from {
                    outcome.record(result, began.elapsed());
                }
            }
            outcome
        });
    }
    let mut total = join_callers(callers).await;
    // Calls that began before `end` may finish after it; their units count, so the
    // window is until the last of them returned.
    total.elapsed = measure_from.elapsed().max(duration);
    total
}

/// Exactly `calls_per_worker` calls by each of `concurrency` callers, all recorded: for
/// scenarios whose calls are long (an import), where a time window would cut calls off.
pub async fn fixed(
    workload: Arc<dyn Workload>,
    concurrency: usize,
    calls_per_worker: u64,
) -> Outcome {
    let start = Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    for worker in 0..concurrency.max(1) {
        let workload = workload.clone();
        callers.spawn(async move {
            let mut outcome = Outcome::new();
            for seq in 0..calls_per_worker {
                let began = Instant::now();
                let result = workload.call(worker, seq).await;
                outcome.record(result, began.elapsed());
            }
            outcome
        });
    }
    let mut total = join_callers(callers).await;
    total.elapsed = start.elapsed();
    total
}

/// Calls started at `rate` per second for `warmup` (not recorded: new connections and
/// cold caches) and then `duration`; at most `max_in_flight` at once (a call that cannot
/// start on time because of that counts as an error, "overrun").
/// Calls are dealt round-robin to `workers` caller slots, as the closed loop's callers
/// are, so that they spread over the same connections and per-caller data.
pub async fn open(
    workload: Arc<dyn Workload>,
    rate: f64,
    warmup: Duration,
    duration: Duration,
    max_in_flight: usize,
    workers: usize,
) -> Outcome {
    let workers = workers.max(1) as u64;
    let rate = rate.max(0.001);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let warmup_calls = (rate * warmup.as_secs_f64()).ceil() as u64;
    let total_calls = warmup_calls + (rate * duration.as_secs_f64()).ceil() as u64;
    let start = Instant::now();
    let measure_from = start + interval.mul_f64(warmup_calls as f64);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1)));
    let (results, mut received) = tokio::sync::mpsc::unbounded_channel::<(CallResult, Duration)>();
    // Results are recorded as they arrive, so that a long run holds histograms, not
    // every call's result until its end.
    let recorder = tokio::spawn(async move {
        let mut outcome = Outcome::new();
        while let Some((result, latency)) = received.recv().await {
            outcome.record(result, latency);
        }
        outcome
    });
    let mut overruns = Outcome::new();
    for seq in 0..total_calls {
        let scheduled = start + interval.mul_f64(seq as f64);
        // The timer ends a sleep on its first millisecond tick at or after the deadline:
        // sleeping to the deadline itself would add up to a millisecond of the
        // generator's own to every latency. Waking a tick early sends the call at most
        // that much before its slot, and then its latency counts from when it was sent.
        if let Some(wake) = scheduled.checked_sub(TIMER_TICK)
            && wake > Instant::now()
        {
            tokio::time::sleep_until(wake.into()).await;
        }
        let counted_from = Instant::now().min(scheduled);
        let recorded = seq >= warmup_calls;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            if recorded {
                overruns.record(Err("overrun".into()), counted_from.elapsed());
            }
            continue;
        };
        let workload = workload.clone();
        let results = results.clone();
        tokio::spawn(async move {
            let result = workload.call((seq % workers) as usize, seq).await;
            if recorded {
                let _ = results.send((result, counted_from.elapsed()));
            }
            drop(permit);
        });
    }
    drop(results);
    let mut outcome = recorder.await.unwrap_or_else(|_| Outcome::new());
    outcome.merge(overruns);
    outcome.elapsed = measure_from.elapsed().max(duration);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(ms: u64) -> Arc<dyn Workload> {
        Arc::new(move |_worker: usize, seq: u64| -> Call {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                if seq % 10 == 9 {
                    Err("UNAVAILABLE".into())
                } else {
                    Ok(1)
                }
            })
        })
    }

    #[tokio::test]
    async fn closed_loop_counts_calls_errors_and_latency() {
        let outcome = closed(sleeper(5), 4, Duration::ZERO, Duration::from_millis(300)).await;
        assert!(outcome.calls >= 20, "{} calls", outcome.calls);
        assert_eq!(outcome.calls, outcome.units + outcome.errors);
        assert!(outcome.errors > 0);
        assert_eq!(
            outcome.error_kinds.get("UNAVAILABLE"),
            Some(&outcome.errors)
        );
        assert!(outcome.percentile_us(0.5) >= 5_000.0);
    }

    #[tokio::test]
    async fn fixed_runs_every_call() {
        let outcome = fixed(sleeper(1), 3, 10).await;
        assert_eq!(outcome.calls, 30);
        assert_eq!(outcome.errors, 3);
        assert_eq!(outcome.units, 27);
    }

    #[tokio::test]
    async fn open_loop_keeps_its_schedule_and_counts_overruns() {
        // 10 warm-up calls (one of them failing), then 50 recorded.
        let outcome = open(
            sleeper(1),
            200.0,
            Duration::from_millis(50),
            Duration::from_millis(250),
            64,
            4,
        )
        .await;
        assert_eq!(outcome.calls, 50);
        assert_eq!(outcome.errors, 5);
        assert!(outcome.elapsed >= Duration::from_millis(250));
        let overrun = open(
            sleeper(200),
            200.0,
            Duration::ZERO,
            Duration::from_millis(100),
            2,
            4,
        )
        .await;
        assert_eq!(overrun.calls, 20);
        assert_eq!(overrun.error_kinds.get("overrun"), Some(&18));
    }

    /// A generator that cannot send on time counts the delay, from each call's slot: here
    /// the first call holds the test's one thread for 100 ms, so the calls due every 5 ms
    /// meanwhile (each answered at once) all leave at ~100 ms.
    #[tokio::test]
    async fn open_loop_counts_late_sends_from_their_slots() {
        let first_blocks: Arc<dyn Workload> = Arc::new(|_worker: usize, seq: u64| -> Call {
            Box::pin(async move {
                if seq == 0 {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Ok(1)
            })
        });
        let outcome = open(
            first_blocks,
            200.0,
            Duration::ZERO,
            Duration::from_millis(100),
            64,
            4,
        )
        .await;
        assert_eq!(outcome.calls, 20);
        // Counted from their slots, the late calls took 5 to 95 ms; counted from when
        // they left, they would all be near zero.
        let median = outcome.percentile_us(0.5);
        assert!(median >= 30_000.0, "median {median} µs");
    }
}
