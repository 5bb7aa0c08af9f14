//! `crm bench`: load against the suite, held against floors measured in the same run
//! (DESIGN.md §10). With no `--target`, it starts the contact service itself on the
//! configured Postgres and Redis, seeds the tenant, and reports the process's memory.

pub mod client;
mod floors;
mod load;
mod report;
mod scenarios;
mod server;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rand::RngCore as _;
use sea_orm::ConnectionTrait;

use crm_platform::auth::{KeyMaterial, Role, TokenIssuer};
use crm_platform::config::Config;
use crm_proto::contact::contact_service_client::ContactServiceClient;

use crate::seed::{SeedPlan, seed};
use client::{authorised, connect_many};
use load::Workload;
use report::{Line, Report};
use scenarios::{Fixture, SCENARIOS};
use server::ServiceProcess;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// A running contact service (`host:port`). Without it, `crm bench` starts one on
    /// the configured Postgres and Redis.
    #[arg(long)]
    target: Option<String>,
    /// With `--target`: a contact service with `cache.backend = "none"` on the same
    /// database, for `get_contact_uncached`.
    #[arg(long)]
    uncached_target: Option<String>,
    /// A bearer token for `--target` (admin of `--tenant`); by default one is issued
    /// with the configured HS256 secret.
    #[arg(long, env = "CRM_TOKEN")]
    token: Option<String>,
    /// Scenarios to run (repeatable); all by default.
    #[arg(long = "scenario", value_parser = clap::builder::PossibleValuesParser::new(SCENARIOS))]
    scenarios: Vec<String>,
    /// Seconds each scenario and floor is measured (after the warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of unrecorded load before each measurement (at the same rate in an open
    /// loop).
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Concurrent callers (closed loop).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Calls per second (open loop) instead of closed-loop callers.
    #[arg(long)]
    rate: Option<f64>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Seed the tenant up to this many contacts first.
    #[arg(long, default_value_t = 10_000)]
    contacts: u64,
    /// The tenant the benchmark reads and writes.
    #[arg(long, default_value = "bench")]
    tenant: String,
    /// Rows per ImportContacts call in `import_contacts`.
    #[arg(long, default_value_t = 10_000)]
    import_rows: u64,
    /// Parallel ImportContacts streams in `import_contacts` (each of `--import-rows`).
    #[arg(long, default_value_t = 2)]
    import_streams: usize,
    /// Skip the floors (no ratios).
    #[arg(long)]
    no_floors: bool,
}

#[derive(clap::Args, Debug)]
pub struct SeedArgs {
    /// People to have in the tenant (it is topped up to this many).
    #[arg(long, default_value_t = 10_000)]
    contacts: u64,
    /// People per company.
    #[arg(long, default_value_t = 20)]
    people_per_account: u64,
    /// Interactions per contact (calls, emails, meetings, notes).
    #[arg(long, default_value_t = 0)]
    interactions_per_contact: u64,
    /// A running contact service; without it, one is started on the configured
    /// Postgres and Redis for the time of the seeding.
    #[arg(long)]
    target: Option<String>,
    #[arg(long, env = "CRM_TOKEN")]
    token: Option<String>,
    #[arg(long, default_value = "bench")]
    tenant: String,
    /// Parallel import streams.
    #[arg(long, default_value_t = 2)]
    streams: usize,
}

fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the services run, and the token to call them with.
struct Target {
    addr: String,
    uncached_addr: Option<String>,
    token: String,
    processes: Vec<(String, ServiceProcess)>,
    _logs: Option<tempfile::TempDir>,
}

async fn target(
    config: &Config,
    config_file: Option<&std::path::Path>,
    addr: Option<String>,
    uncached_addr: Option<String>,
    token: Option<String>,
    tenant: &str,
    with_uncached: bool,
) -> anyhow::Result<Target> {
    let admin = [Role::Admin];
    let ttl = Duration::from_secs(24 * 3600);
    if let Some(addr) = addr {
        let token = match token {
            Some(token) => token,
            None => KeyMaterial::load(config)?
                .issuer(config)
                .context("no HS256 secret configured: pass --token")?
                .issue("crm-bench", tenant, &admin, ttl)?,
        };
        return Ok(Target {
            addr,
            uncached_addr,
            token,
            processes: Vec::new(),
            _logs: None,
        });
    }
    let secret = random_secret();
    let logs = tempfile::tempdir().context("a folder for the service logs")?;
    let cached = ServiceProcess::start(
        config_file,
        &secret,
        "redis",
        &logs.path().join("contact.log"),
    )
    .await?;
    let mut processes = vec![("contact".to_owned(), cached)];
    if with_uncached {
        let uncached = ServiceProcess::start(
            config_file,
            &secret,
            "none",
            &logs.path().join("contact-uncached.log"),
        )
        .await?;
        processes.push(("contact_uncached".to_owned(), uncached));
    }
    let issuer = TokenIssuer::new(
        secret.as_bytes(),
        &config.auth.issuer,
        &config.auth.audience,
    );
    Ok(Target {
        addr: processes[0].1.addr.clone(),
        uncached_addr: processes.get(1).map(|(_, p)| p.addr.clone()),
        token: issuer.issue("crm-bench", tenant, &admin, ttl)?,
        processes,
        _logs: Some(logs),
    })
}

/// The benchmark runs on Postgres; its database is created when missing.
async fn require_postgres(config: &Config) -> anyhow::Result<()> {
    let url = config.database_url("contact");
    anyhow::ensure!(
        url.starts_with("postgres:") || url.starts_with("postgresql:"),
        "crm bench and crm seed measure the suite on Postgres: set database.url \
         (e.g. CRM__DATABASE__URL=postgres://postgres@127.0.0.1:5432/crm_bench)"
    );
    crm_platform::db::ensure_postgres_database(config, &url)
        .await
        .with_context(|| {
            format!(
                "creating the database of {}",
                crm_platform::config::redact_url_password(&url)
            )
        })?;
    Ok(())
}

pub async fn run_seed(
    config: Config,
    config_file: Option<&std::path::Path>,
    args: SeedArgs,
) -> anyhow::Result<()> {
    if args.target.is_none() {
        require_postgres(&config).await?;
    }
    let target = target(
        &config,
        config_file,
        args.target,
        None,
        args.token,
        &args.tenant,
        false,
    )
    .await?;
    let channel = client::connect(&target.addr).await?;
    let plan = SeedPlan {
        contacts: args.contacts,
        people_per_account: args.people_per_account,
        interactions_per_contact: args.interactions_per_contact,
        streams: args.streams,
    };
    let seeding = seed(channel, &target.token, &plan);
    let report = if target.processes.is_empty() {
        seeding.await?
    } else {
        analyzing_while(&config, seeding).await??
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    for (_, process) in target.processes {
        process.stop().await;
    }
    Ok(())
}

/// The names of up to `limit` contacts of the tenant.
async fn sample_names(
    client: &mut ContactServiceClient<client::Authorised>,
    limit: usize,
) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    let mut token = String::new();
    while names.len() < limit {
        let page = crate::seed::contacts_page(client, token).await?;
        names.extend(page.contacts.into_iter().map(|c| c.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    names.truncate(limit);
    Ok(names)
}

pub async fn run_bench(
    config: Config,
    config_file: Option<&std::path::Path>,
    args: BenchArgs,
) -> anyhow::Result<()> {
    require_postgres(&config).await?;
    let selected: Vec<String> = if args.scenarios.is_empty() {
        SCENARIOS.iter().map(|s| (*s).to_owned()).collect()
    } else {
        args.scenarios.clone()
    };
    let wants_uncached = selected.iter().any(|s| s == "get_contact_uncached");
    let target = target(
        &config,
        config_file,
        args.target.clone(),
        args.uncached_target.clone(),
        args.token.clone(),
        &args.tenant,
        wants_uncached,
    )
    .await?;
    let duration = Duration::from_secs(args.duration.max(1));
    let warmup = Duration::from_secs(args.warmup);
    let concurrency = args.concurrency.max(1);
    let connections = concurrency.div_ceil(8).max(2);

    let mut report = Report::default();
    for (name, process) in &target.processes {
        report.startup_ms.insert(
            name.clone(),
            (process.startup.as_secs_f64() * 1000.0).round(),
        );
    }
    report
        .setup
        .insert("target".into(), target.addr.clone().into());
    report
        .setup
        .insert("tenant".into(), args.tenant.clone().into());
    report
        .setup
        .insert("concurrency".into(), concurrency.into());
    report
        .setup
        .insert("duration_s".into(), duration.as_secs().into());
    report
        .setup
        .insert("connections".into(), connections.into());
    if let Some(rate) = args.rate {
        report.setup.insert("rate".into(), rate.into());
    }

    // Seed, then sample the contacts the reads and updates go to.
    eprintln!(
        "seeding the tenant {:?} up to {} contacts",
        args.tenant, args.contacts
    );
    let plan = SeedPlan {
        contacts: args.contacts,
        people_per_account: 20,
        interactions_per_contact: 0,
        streams: 2,
    };
    let seeding = seed(client::connect(&target.addr).await?, &target.token, &plan);
    let seeded = if target.processes.is_empty() {
        seeding.await?
    } else {
        analyzing_while(&config, seeding).await??
    };
    if seeded.contacts_created > 0 {
        eprintln!(
            "seeded {} contacts at {:.0} rows/s",
            seeded.contacts_created, seeded.import_rows_per_s
        );
    }
    report
        .setup
        .insert("seed".into(), serde_json::to_value(&seeded)?);
    let channels = connect_many(&target.addr, connections).await?;
    let clients: Vec<_> = channels
        .iter()
        .map(|c| authorised(c.clone(), &target.token).map(ContactServiceClient::new))
        .collect::<Result<_, _>>()?;
    let total = crate::seed::contacts_about(&mut clients[0].clone()).await?;
    report
        .setup
        .insert("contacts_in_tenant".into(), total.into());
    let names = Arc::new(sample_names(&mut clients[0].clone(), 5_000).await?);
    anyhow::ensure!(!names.is_empty(), "the tenant has no contacts to read");
    let uncached = match &target.uncached_addr {
        Some(addr) => Some(
            connect_many(addr, connections)
                .await?
                .into_iter()
                .map(|c| authorised(c, &target.token).map(ContactServiceClient::new))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        None => None,
    };
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let fixture = Fixture {
        cached: clients,
        uncached,
        names: names.clone(),
        seeded: args.contacts.min(total).max(1),
        // Above every seeded person; a new slot of 10,000 numbers every second.
        fresh_from: 10_000_000 + (now_s % 3_000) * 10_000,
        import_rows: args.import_rows,
    };

    let measure = |name: String, workload: Arc<dyn Workload>, rate: Option<f64>| async move {
        eprintln!("measuring {name}");
        match rate {
            Some(rate) => {
                let outcome =
                    load::open(workload, rate, warmup, duration, 10_000, concurrency).await;
                Line::from_outcome(&name, format!("open/{rate}"), &outcome)
            }
            None => {
                let outcome = load::closed(workload, concurrency, warmup, duration).await;
                Line::from_outcome(&name, format!("closed/{concurrency}"), &outcome)
            }
        }
    };

    // Floors.
    let db = crm_platform::db::connect(&config, "contact")
        .await
        .context("connecting to the contact database")?;
    // The seeding changed the tables a lot; plans should see today's statistics and
    // index-only scans a current visibility map, as autovacuum would give them in
    // production (it may be off on a development box).
    db.execute_unprepared("VACUUM (ANALYZE)")
        .await
        .context("vacuuming the contact database")?;
    if !args.no_floors {
        let db = &db;
        let per_caller = floors::connections(&config, concurrency).await?;
        report
            .floors
            .push(measure("echo".into(), floors::echo(&channels), args.rate).await);
        let ids: Vec<String> = names
            .iter()
            .map(|n| n.trim_start_matches("contacts/").to_owned())
            .collect();
        report.floors.push(
            measure(
                "postgres_point_select".into(),
                floors::postgres_point_select(
                    per_caller.clone(),
                    args.tenant.clone(),
                    Arc::new(ids),
                ),
                args.rate,
            )
            .await,
        );
        floors::prepare_insert_tables(db).await?;
        report.floors.push(
            measure(
                "postgres_insert".into(),
                floors::postgres_insert(per_caller.clone(), args.tenant.clone()),
                args.rate,
            )
            .await,
        );
        floors::drop_insert_tables(db).await;
        report.floors.push(
            measure(
                "redis_get".into(),
                floors::redis_get(&config.cache.redis_url).await?,
                args.rate,
            )
            .await,
        );
    }

    // Scenarios.
    for name in &selected {
        if name == "watch_lag" {
            let head = settled_head(&db).await?;
            eprintln!("measuring watch_lag");
            let lag = scenarios::watch_lag(&fixture, head, concurrency, duration).await?;
            let outcome_rate = lag.received as f64 / lag.elapsed.as_secs_f64().max(1e-9);
            let q = |q: f64| {
                if lag.lag.is_empty() {
                    0.0
                } else {
                    lag.lag.value_at_quantile(q) as f64
                }
            };
            report.scenarios.push(Line {
                name: name.clone(),
                requests: lag.received,
                errors: lag.errors,
                rps: (outcome_rate * 10.0).round() / 10.0,
                p50_us: q(0.5),
                p99_us: q(0.99),
                p999_us: q(0.999),
                error_kinds: Default::default(),
                load: format!("closed/{concurrency} writers, lag of {} writes", lag.writes),
            });
            continue;
        }
        if name == "import_contacts" {
            let Some(workload) = scenarios::workload(name, &fixture) else {
                continue;
            };
            let streams = args.import_streams.max(1);
            // The floor right before the import, each after a checkpoint: a checkpoint
            // in the middle of one (after the seeding's writes) doubles its WAL with
            // full-page images and made the floor swing from 1,500 to 4,200 rows/s.
            if !args.no_floors {
                checkpoint(&db).await;
                eprintln!(
                    "measuring postgres_bulk_insert: {streams} streams of {} rows",
                    args.import_rows
                );
                let floor = floors::postgres_bulk_insert(
                    floors::connections(&config, streams).await?,
                    args.tenant.clone(),
                    // Apart from the people the scenarios create; rolled back anyway.
                    fixture.fresh_from + 50_000_000,
                    args.import_rows.max(1),
                );
                let outcome = load::fixed(floor, streams, 1).await;
                report.floors.push(Line::from_outcome(
                    "postgres_bulk_insert",
                    format!("{streams} streams × {} rows", args.import_rows),
                    &outcome,
                ));
            }
            checkpoint(&db).await;
            eprintln!(
                "measuring import_contacts: {streams} streams of {} rows",
                args.import_rows
            );
            let outcome = load::fixed(workload, streams, 1).await;
            report.scenarios.push(Line::from_outcome(
                name,
                format!("{streams} streams × {} rows", args.import_rows),
                &outcome,
            ));
            continue;
        }
        if name == "export_contacts" {
            let Some(workload) = scenarios::workload(name, &fixture) else {
                continue;
            };
            eprintln!("measuring export_contacts: the whole tenant, one stream");
            let outcome = load::fixed(workload, 1, 1).await;
            report.scenarios.push(Line::from_outcome(
                name,
                "1 stream × the tenant".to_owned(),
                &outcome,
            ));
            continue;
        }
        let Some(workload) = scenarios::workload(name, &fixture) else {
            eprintln!(
                "skipping {name}: it needs --uncached-target (a service with cache.backend = \"none\")"
            );
            continue;
        };
        let line = measure(name.clone(), workload.clone(), args.rate).await;
        let capacity = line.rps;
        report.scenarios.push(line);
        // DESIGN.md §10: cached GetContact's p99 at 80% of its own capacity.
        if name == "get_contact_cached" && args.rate.is_none() && capacity > 0.0 {
            let rate = (capacity * 0.8).round();
            report
                .scenarios
                .push(measure(format!("{name}@80%"), workload, Some(rate)).await);
            // The bare stack's tail at the same rate: what of that p99 is the service's.
            if !args.no_floors {
                report.floors.push(
                    measure(
                        format!("echo@{name}@80%"),
                        floors::echo(&channels),
                        Some(rate),
                    )
                    .await,
                );
            }
        }
    }

    for (name, process) in &target.processes {
        if let Some(mb) = process.peak_rss_mb() {
            report
                .memory
                .peak_rss_mb
                .insert(name.clone(), (mb * 10.0).round() / 10.0);
        }
    }
    report.compute_ratios();
    print!("{}", report.table());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    for (_, process) in target.processes {
        process.stop().await;
    }
    Ok(())
}

/// Runs `work` while refreshing the planner's statistics of the contact database every
/// half minute. A seeding grows the tables from nothing; with autovacuum off (as on a
/// development box) the plans stay those of an empty tenant, and the duplicate lookups
/// of the import scan the terms index: a 1 M seeding fell from 1,500 to 300 rows/s.
async fn analyzing_while<F: std::future::Future>(
    config: &Config,
    work: F,
) -> anyhow::Result<F::Output> {
    let db = crm_platform::db::connect(config, "contact")
        .await
        .context("connecting to the contact database")?;
    let analyze = async {
        let mut every = tokio::time::interval(Duration::from_secs(30));
        every.tick().await;
        loop {
            every.tick().await;
            if let Err(error) = db.execute_unprepared("ANALYZE").await {
                eprintln!("refreshing statistics failed, the seeding goes on without: {error}");
                break;
            }
        }
    };
    tokio::pin!(work);
    tokio::select! {
        output = &mut work => return Ok(output),
        () = analyze => {}
    }
    Ok(work.await)
}

/// Flushes the database's dirty pages, so that what runs next starts from the same
/// state of its write-ahead log. Needs a superuser (or `pg_checkpoint`); without one
/// the run goes on with a warning.
async fn checkpoint(db: &sea_orm::DatabaseConnection) {
    if let Err(err) = db.execute_unprepared("CHECKPOINT").await {
        tracing::warn!(error = %err, "checkpoint before an import measurement");
    }
}

/// The feed's head once the relay has given every written event its position, so that
/// the lag consumer starts after the earlier scenarios' events instead of behind them.
async fn settled_head(db: &sea_orm::DatabaseConnection) -> anyhow::Result<i64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        // Pending first: a head read after no event was waiting covers every one.
        let waiting = crm_platform::events::pending_count(db)
            .await
            .context("counting the events without a position")?;
        let head = crm_platform::events::head_position(db)
            .await
            .context("reading the feed's head position")?;
        if waiting == 0 || std::time::Instant::now() > deadline {
            return Ok(head);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
