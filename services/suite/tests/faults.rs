//! The fault suite (DESIGN §9 "Faults"; issue #5 §2): the contact service as a real
//! `crm serve` process against a PostgreSQL server and a redis-server of each test's
//! own, which the tests stop, kill and start again. Nothing acknowledged may be lost,
//! nothing applied twice, and a dependency that is down must make calls fail fast with
//! UNAVAILABLE (never INTERNAL, never a hang) until it returns.
//!
//! The tests run one at a time (they start servers and measure bounded recoveries on
//! what may be a small, loaded CI machine). See docs/reliability.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "faults/calls.rs"]
mod calls;
#[path = "faults/consumer.rs"]
mod consumer;
#[path = "faults/private_postgres.rs"]
mod private_postgres;
#[path = "faults/private_redis.rs"]
mod private_redis;
#[path = "faults/service.rs"]
mod service;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crm_proto::contact::{Contact, UpdateContactRequest};
use prost_types::FieldMask;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use calls::{CONTACT_CREATED, admin, authed, create, create_request, get, read_feed, timed};
use private_postgres::PrivatePostgres;
use private_redis::PrivateRedis;
use service::{Service, ServiceEnv};

/// One fault test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn request_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Polls `condition` every 20 ms; panics with `what` after `within`.
async fn wait_until(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------
// 1. Postgres restarted under load.
// ---------------------------------------------------------------------------------

const UP: u8 = 0;
const DOWN: u8 = 1;
const BACK: u8 = 2;
/// From just before `pg_ctl start` to its return: Postgres may already accept
/// connections, so a call waiting for a pooled connection may succeed. Such calls belong
/// to neither the outage nor the recovery.
const RESTARTING: u8 = 3;

/// One call made by the load, with the phase of the database when it began and ended.
struct Call {
    method: &'static str,
    started: Instant,
    took: Duration,
    phase_at_start: u8,
    phase_at_end: u8,
    code: Code,
    message: String,
}

/// How long a failing call may take while the database is down: the issue's "fails
/// fast", and the client's deadline.
const FAIL_FAST: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load() {
    let _serial = SERIAL.lock().await;
    let postgres = PrivatePostgres::start();
    let redis = PrivateRedis::start();
    let dir = tempfile::tempdir().unwrap();
    let env = ServiceEnv::new(dir.path(), &postgres.url())
        .set("CRM__CACHE__BACKEND", "redis")
        .set("CRM__CACHE__REDIS_URL", &redis.url())
        // Waiting for a pooled connection while the database is down ends in UNAVAILABLE
        // after this long (sqlx retries a refused connection until then).
        .set("CRM__DATABASE__ACQUIRE_TIMEOUT_MS", "1000");
    let mut service = Service::start(&env);
    service
        .wait_health(ServingStatus::Serving, Duration::from_secs(60))
        .await;
    let pid = service.pid();
    let token = admin("acme");
    let mut client = service.client().await;
    let seed = create(
        &mut client,
        &token,
        create_request("Seed", &request_id()),
        Duration::from_secs(10),
    )
    .await
    .result
    .expect("create the seed contact");

    // Four callers: Create, then Get of the seed and of what they created, in a loop.
    let phase = Arc::new(AtomicU8::new(UP));
    let stop = Arc::new(AtomicBool::new(false));
    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let mut callers = Vec::new();
    for caller in 0..4 {
        let (phase, stop, calls, token, seed) = (
            phase.clone(),
            stop.clone(),
            calls.clone(),
            token.clone(),
            seed.name.clone(),
        );
        let mut client = service.client().await;
        callers.push(tokio::spawn(async move {
            let record =
                |method, started: Instant, phase_at_start, outcome: &calls::Outcome<Contact>| {
                    let message = match &outcome.result {
                        Ok(_) => String::new(),
                        Err(status) => status.message().to_owned(),
                    };
                    calls.lock().unwrap().push(Call {
                        method,
                        started,
                        took: outcome.took,
                        phase_at_start,
                        phase_at_end: phase.load(Ordering::SeqCst),
                        code: outcome.code(),
                        message,
                    });
                };
            let mut round = 0;
            while !stop.load(Ordering::SeqCst) {
                round += 1;
                let (started, at) = (Instant::now(), phase.load(Ordering::SeqCst));
                let created = create(
                    &mut client,
                    &token,
                    create_request(&format!("Load {caller}-{round}"), &request_id()),
                    FAIL_FAST,
                )
                .await;
                record("CreateContact", started, at, &created);
                let mut names = vec![seed.clone()];
                if let Ok(contact) = &created.result {
                    names.push(contact.name.clone());
                }
                for name in names {
                    let (started, at) = (Instant::now(), phase.load(Ordering::SeqCst));
                    let read = get(&mut client, &token, &name, FAIL_FAST).await;
                    record("GetContact", started, at, &read);
                }
            }
        }));
    }
    let count = |calls: &Arc<Mutex<Vec<Call>>>, filter: &dyn Fn(&Call) -> bool| {
        calls.lock().unwrap().iter().filter(|c| filter(c)).count()
    };
    wait_until("20 calls under load", Duration::from_secs(60), || {
        count(&calls, &|c| c.code == Code::Ok) >= 20
    })
    .await;

    // Postgres goes down at once, as in a crash.
    tokio::task::block_in_place(|| postgres.stop_immediately());
    phase.store(DOWN, Ordering::SeqCst);
    let down_for = service
        .wait_health(ServingStatus::NotServing, Duration::from_secs(30))
        .await;
    println!(
        "contact NOT_SERVING {} ms after Postgres stopped",
        down_for.as_millis()
    );
    assert_eq!(
        service.health(service::LIVENESS).await,
        Some(ServingStatus::Serving),
        "alive all the same"
    );
    // The load goes on against the dead database for a while.
    wait_until(
        "12 calls failed while the database is down",
        Duration::from_secs(90),
        || {
            count(&calls, &|c| {
                c.phase_at_start == DOWN && c.phase_at_end == DOWN && c.code != Code::Ok
            }) >= 12
        },
    )
    .await;
    assert_eq!(
        service.health(service::CONTACT_SERVICE).await,
        Some(ServingStatus::NotServing),
        "NOT_SERVING for as long as the database is down"
    );

    // Postgres answers again (same port, same data); the service was never restarted.
    phase.store(RESTARTING, Ordering::SeqCst);
    tokio::task::block_in_place(|| postgres.start_again());
    let back = Instant::now();
    phase.store(BACK, Ordering::SeqCst);
    let first_success = |calls: &Arc<Mutex<Vec<Call>>>| {
        calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.method == "CreateContact" && c.started >= back && c.code == Code::Ok)
            .map(|c| c.started + c.took)
            .min()
    };
    wait_until(
        "a CreateContact of the load succeeds after Postgres returned",
        Duration::from_secs(60),
        || first_success(&calls).is_some(),
    )
    .await;
    let recovered = first_success(&calls).unwrap() - back;
    println!(
        "writes succeed again {} ms after Postgres answered",
        recovered.as_millis()
    );
    assert!(
        recovered < Duration::from_secs(5),
        "calls succeed again within 5 s of Postgres answering, took {recovered:?}"
    );
    service
        .wait_health(ServingStatus::Serving, Duration::from_secs(30))
        .await;
    stop.store(true, Ordering::SeqCst);
    for caller in callers {
        caller.await.unwrap();
    }

    let calls = std::mem::take(&mut *calls.lock().unwrap());
    let wrong: Vec<String> = calls
        .iter()
        .filter(|c| !matches!(c.code, Code::Ok | Code::Unavailable) || c.took >= FAIL_FAST)
        .map(|c| {
            format!(
                "{} {:?} after {:?}: {}",
                c.method, c.code, c.took, c.message
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "every call answers OK or UNAVAILABLE within {FAIL_FAST:?}; these did not:\n{}\n{}",
        wrong.join("\n"),
        service.log_tail()
    );
    let while_down: Vec<&Call> = calls
        .iter()
        .filter(|c| c.phase_at_start == DOWN && c.phase_at_end == DOWN)
        .collect();
    let unavailable = while_down
        .iter()
        .filter(|c| c.code == Code::Unavailable)
        .count();
    assert!(
        unavailable >= 10,
        "calls fail with UNAVAILABLE while the database is down ({unavailable})"
    );
    assert!(
        while_down
            .iter()
            .all(|c| c.method != "CreateContact" || c.code == Code::Unavailable),
        "no write succeeds without the database"
    );
    let slowest = while_down.iter().map(|c| c.took).max().unwrap_or_default();
    println!(
        "{} calls while down, {unavailable} UNAVAILABLE, slowest {} ms",
        while_down.len(),
        slowest.as_millis()
    );

    // The same process, serving normally.
    assert!(service.alive(), "the service process kept running");
    assert_eq!(service.pid(), pid);
    for round in 0..10 {
        create(
            &mut client,
            &token,
            create_request(&format!("After {round}"), &request_id()),
            Duration::from_secs(10),
        )
        .await
        .result
        .expect("writes after recovery");
    }
}

// ---------------------------------------------------------------------------------
// 2. A service SIGKILLed under write load.
// ---------------------------------------------------------------------------------

/// One CreateContact a writer sent: its request, and the contact if acknowledged.
struct Attempt {
    request_id: String,
    given_name: String,
    acknowledged: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_write_load_loses_nothing_acknowledged() {
    let _serial = SERIAL.lock().await;
    let postgres = PrivatePostgres::start();
    let dir = tempfile::tempdir().unwrap();
    let env = ServiceEnv::new(dir.path(), &postgres.url());
    let mut service = Service::start(&env);
    service
        .wait_health(ServingStatus::Serving, Duration::from_secs(60))
        .await;
    let token = admin("acme");

    // Six writers, each on its own connection, creating contacts with request ids.
    let killed = Arc::new(AtomicBool::new(false));
    let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let mut writers = Vec::new();
    for writer in 0..6 {
        let (killed, attempts, token) = (killed.clone(), attempts.clone(), token.clone());
        let mut client = service.client().await;
        writers.push(tokio::spawn(async move {
            for round in 0.. {
                let (request_id, given_name) = (request_id(), format!("Writer {writer}-{round}"));
                let outcome = create(
                    &mut client,
                    &token,
                    create_request(&given_name, &request_id),
                    Duration::from_secs(10),
                )
                .await;
                let failed = outcome.result.is_err();
                if failed && !killed.load(Ordering::SeqCst) {
                    panic!("a write failed before the kill: {:?}", outcome.result);
                }
                attempts.lock().unwrap().push(Attempt {
                    request_id,
                    given_name,
                    acknowledged: outcome.result.ok().map(|c| c.name),
                });
                if failed {
                    return;
                }
            }
        }));
    }
    let acknowledged = |attempts: &Arc<Mutex<Vec<Attempt>>>| {
        attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.acknowledged.is_some())
            .count()
    };
    wait_until("150 acknowledged writes", Duration::from_secs(120), || {
        acknowledged(&attempts) >= 150
    })
    .await;
    killed.store(true, Ordering::SeqCst);
    service.kill();
    for writer in writers {
        tokio::time::timeout(Duration::from_secs(60), writer)
            .await
            .expect("writers notice the kill")
            .unwrap();
    }

    // Started again on the same database.
    let service = service.restart();
    service
        .wait_health(ServingStatus::Serving, Duration::from_secs(60))
        .await;
    let mut client = service.client().await;
    let attempts = std::mem::take(&mut *attempts.lock().unwrap());
    let acked: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.acknowledged.is_some())
        .collect();
    println!(
        "{} writes acknowledged, {} in flight at the kill",
        acked.len(),
        attempts.len() - acked.len()
    );
    for attempt in &acked {
        let name = attempt.acknowledged.as_deref().unwrap();
        let read = get(&mut client, &token, name, Duration::from_secs(10))
            .await
            .result
            .unwrap_or_else(|status| panic!("acknowledged {name} is lost: {status:?}"));
        assert_eq!(read.given_name, attempt.given_name);
    }
    // A client retries what was not acknowledged, with the same request id: each makes
    // its contact once, whether or not the killed process had committed it.
    let mut by_request: HashMap<String, String> = HashMap::new();
    for attempt in &attempts {
        let name = match &attempt.acknowledged {
            Some(name) => name.clone(),
            None => {
                create(
                    &mut client,
                    &token,
                    create_request(&attempt.given_name, &attempt.request_id),
                    Duration::from_secs(10),
                )
                .await
                .result
                .expect("a retry after the restart")
                .name
            }
        };
        by_request.insert(attempt.request_id.clone(), name);
    }
    let names: HashSet<&String> = by_request.values().collect();
    assert_eq!(names.len(), attempts.len(), "one contact per request id");

    // The feed from the beginning: exactly one ContactCreated per contact.
    let (events, _) = read_feed(
        &mut client,
        &token,
        0,
        &[CONTACT_CREATED],
        |events| {
            let seen: HashSet<&str> = events.iter().map(|e| e.resource_name.as_str()).collect();
            names.iter().all(|name| seen.contains(name.as_str()))
        },
        Duration::from_secs(60),
    )
    .await;
    let mut per_contact: HashMap<&str, usize> = HashMap::new();
    for event in &events {
        *per_contact.entry(event.resource_name.as_str()).or_default() += 1;
        assert_eq!(
            by_request.get(&event.request_id),
            Some(&event.resource_name),
            "the event's request id names its contact"
        );
    }
    let twice: Vec<_> = per_contact.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "ContactCreated more than once: {twice:?}");
    assert_eq!(
        per_contact.len(),
        names.len(),
        "a ContactCreated for every contact and for nothing else"
    );
    let positions: Vec<i64> = events.iter().map(|e| e.position).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions increase"
    );
}

// ---------------------------------------------------------------------------------
// 3. A feed consumer killed and restarted mid-stream.
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_killed_mid_stream_applies_each_event_once() {
    let _serial = SERIAL.lock().await;
    let postgres = PrivatePostgres::start();
    let dir = tempfile::tempdir().unwrap();
    let env = ServiceEnv::new(dir.path(), &postgres.url());
    let service = Service::start(&env);
    service
        .wait_health(ServingStatus::Serving, Duration::from_secs(60))
        .await;
    let token = admin("acme");
    let channel = service.channel().await;

    // A writer makes creations, updates and deletions while the consumer reads.
    let writer = {
        let (mut client, token) = (service.client().await, token.clone());
        tokio::spawn(async move {
            let deadline = Duration::from_secs(10);
            for i in 0..60 {
                let contact = create(
                    &mut client,
                    &token,
                    create_request(&format!("Feed {i}"), &request_id()),
                    deadline,
                )
                .await
                .result
                .expect("create");
                if i % 2 == 0 {
                    for title in ["first", "second"] {
                        let update = UpdateContactRequest {
                            contact: Some(Contact {
                                name: contact.name.clone(),
                                job_title: format!("{title} {i}"),
                                ..Default::default()
                            }),
                            update_mask: Some(FieldMask {
                                paths: vec!["job_title".into()],
                            }),
                            ..Default::default()
                        };
                        timed(
                            deadline,
                            client.update_contact(authed(update, &token, deadline)),
                        )
                        .await
                        .result
                        .expect("update");
                    }
                }
                if i % 5 == 0 {
                    let delete = crm_proto::contact::DeleteContactRequest {
                        name: contact.name.clone(),
                        ..Default::default()
                    };
                    timed(
                        deadline,
                        client.delete_contact(authed(delete, &token, deadline)),
                    )
                    .await
                    .result
                    .expect("delete");
                }
            }
        })
    };

    // Consumer B is killed (its task aborted, wherever it is) again and again while the
    // writer runs, and restarted from its durable checkpoint each time.
    let killed = consumer::Consumer::open(dir.path(), "killed").await;
    let mut kills = 0;
    while !writer.is_finished() || kills < 5 {
        let before = killed.applied().await;
        let run = killed.spawn(channel.clone(), token.clone());
        let start = Instant::now();
        while killed.applied().await < before + 7 && start.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        // A count is read between two transactions; a varying moment later, the kill
        // lands anywhere, inside a transaction too.
        tokio::time::sleep(Duration::from_micros(300 + (kills * 1_700) % 5_000)).await;
        run.kill().await;
        kills += 1;
        assert!(kills < 200, "the writer does not finish");
    }
    writer.await.unwrap();

    // The truth: the whole feed, read at once after the writer finished.
    let mut client = service.client().await;
    let (truth, head) = read_feed(
        &mut client,
        &token,
        0,
        &[],
        |_| true,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(truth.len(), 60 + 60 + 12, "the writer's events");
    let head = head.max(truth.last().map_or(0, |e| e.position));

    // Consumer A reads without interruption; B finishes from its checkpoint.
    let whole = consumer::Consumer::open(dir.path(), "whole").await;
    whole
        .spawn(channel.clone(), token.clone())
        .finish_at(&whole, head)
        .await;
    killed
        .spawn(channel.clone(), token.clone())
        .finish_at(&killed, head)
        .await;

    let expected = consumer::project(&truth);
    assert_eq!(
        whole.projection().await,
        expected,
        "the uninterrupted projection"
    );
    assert_eq!(
        killed.projection().await,
        expected,
        "killed {kills} times, the projection equals the uninterrupted one"
    );
    for consumer in [&whole, &killed] {
        assert_eq!(
            consumer.applied().await,
            truth.len() as u64,
            "each event applied once"
        );
        assert_eq!(consumer.duplicates(), 0, "no event applied twice");
    }
    println!(
        "killed {kills} times; {} deliveries for {} events (redelivered after kills: {})",
        killed.deliveries(),
        truth.len(),
        killed.deliveries() - truth.len() as u64
    );
}

// ---------------------------------------------------------------------------------
// 4. Overload.
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_shed_quickly_and_memory_stays_bounded() {
    let _serial = SERIAL.lock().await;
    let postgres = PrivatePostgres::start();
    let dir = tempfile::tempdir().unwrap();
    let env = ServiceEnv::new(dir.path(), &postgres.url())
        .set("CRM__SERVER__CONCURRENCY_LIMIT_PER_CONNECTION", "8")
        .set("CRM__DATABASE__MAX_CONNECTIONS", "2")
        .set("CRM__DATABASE__ACQUIRE_TIMEOUT_MS", "500");
    let mut service = Service::start(&env);
    service
        .wait_health(ServingStatus::Serving, Duration::from_secs(60))
        .await;
    let token = admin("acme");

    // Bursts of 4 connections × 150 concurrent calls, far above 8 per connection and a
    // pool of 2 database connections.
    const BOUND: Duration = Duration::from_secs(10);
    let peak_rss = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak_rss, sampling, pid) = (peak_rss.clone(), sampling.clone(), service.pid());
        tokio::spawn(async move {
            while sampling.load(Ordering::SeqCst) {
                if let Some(kib) = service::rss_kib(pid) {
                    peak_rss.fetch_max(kib, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // code → (calls, the slowest of them)
    let mut codes: BTreeMap<String, (usize, Duration)> = BTreeMap::new();
    let mut wrong = Vec::new();
    let mut created = Vec::new();
    for burst in 0..3 {
        let mut calls = Vec::new();
        for connection in 0..4 {
            let client = service.client().await;
            for call in 0..150 {
                let (mut client, token) = (client.clone(), token.clone());
                calls.push(tokio::spawn(async move {
                    let given = format!("Burst {burst}-{connection}-{call}");
                    let outcome = if call % 2 == 0 {
                        create(
                            &mut client,
                            &token,
                            create_request(&given, &request_id()),
                            BOUND,
                        )
                        .await
                    } else {
                        let request = crm_proto::contact::ListContactsRequest {
                            page_size: 50,
                            ..Default::default()
                        };
                        let listed = timed(
                            BOUND + Duration::from_secs(2),
                            client.list_contacts(authed(request, &token, BOUND)),
                        )
                        .await;
                        calls::Outcome {
                            took: listed.took,
                            result: listed.result.map(|_| Contact::default()),
                        }
                    };
                    (outcome.code(), outcome.took, outcome.result)
                }));
            }
        }
        for call in calls {
            let (code, took, result) = call.await.unwrap();
            let entry = codes.entry(format!("{code:?}")).or_default();
            entry.0 += 1;
            entry.1 = entry.1.max(took);
            if !matches!(code, Code::Ok | Code::ResourceExhausted | Code::Unavailable)
                || took >= BOUND
            {
                wrong.push(format!("{code:?} after {took:?}: {result:?}"));
            }
            if let Ok(contact) = result
                && !contact.name.is_empty()
            {
                created.push(contact);
            }
        }
        assert!(
            service.alive(),
            "the process survives burst {burst}\n{}",
            service.log_tail()
        );
    }
    sampling.store(false, Ordering::SeqCst);
    sampler.await.unwrap();
    let peak_mib = peak_rss.load(Ordering::SeqCst) / 1024;
    println!("outcomes (calls, slowest) {codes:?}; peak RSS {peak_mib} MiB");
    assert!(
        wrong.is_empty(),
        "every call answers OK, RESOURCE_EXHAUSTED or UNAVAILABLE within {BOUND:?}; these did not:\n{}",
        wrong.join("\n")
    );
    assert!(
        codes.get("Ok").is_some_and(|(n, _)| *n > 0),
        "admitted calls succeed"
    );
    assert!(
        codes.get("ResourceExhausted").is_some_and(|(n, _)| *n > 0),
        "excess calls are shed with RESOURCE_EXHAUSTED"
    );
    assert!(
        peak_mib < 200,
        "RSS stays bounded, peaked at {peak_mib} MiB"
    );

    // Still serving, and what it acknowledged is there.
    service
        .wait_health(ServingStatus::Serving, Duration::from_secs(30))
        .await;
    let mut client = service.client().await;
    for contact in created.iter().take(50) {
        let read = get(&mut client, &token, &contact.name, Duration::from_secs(10))
            .await
            .result
            .expect("an acknowledged contact");
        assert_eq!(read.given_name, contact.given_name);
    }
    create(
        &mut client,
        &token,
        create_request("After the storm", &request_id()),
        Duration::from_secs(10),
    )
    .await
    .result
    .expect("a call after the overload");
    assert!(service.alive());
}

/// Many connections, each far below its own limit, together past the process's
/// `server.concurrency_limit`: with no admission wait the excess is refused at once
/// with `RESOURCE_EXHAUSTED` (reason `OVERLOADED`, a retry delay), and health checks,
/// exempt, keep answering. (The bounded wait itself is covered by the unit tests of
/// `crm_platform::admission`, on a paused clock.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_are_bounded_by_the_process_limit() {
    let _serial = SERIAL.lock().await;
    let postgres = PrivatePostgres::start();
    let dir = tempfile::tempdir().unwrap();
    let env = ServiceEnv::new(dir.path(), &postgres.url())
        .set("CRM__SERVER__CONCURRENCY_LIMIT", "16")
        .set("CRM__SERVER__ADMISSION_WAIT_MS", "0")
        .set("CRM__DATABASE__MAX_CONNECTIONS", "2");
    let mut service = Service::start(&env);
    service
        .wait_health(ServingStatus::Serving, Duration::from_secs(60))
        .await;
    let token = admin("acme");
    const BOUND: Duration = Duration::from_secs(10);

    let mut calls = Vec::new();
    for _connection in 0..8 {
        let client = service.client().await;
        for _call in 0..40 {
            let (mut client, token) = (client.clone(), token.clone());
            calls.push(tokio::spawn(async move {
                let request = crm_proto::contact::ListContactsRequest {
                    page_size: 50,
                    ..Default::default()
                };
                timed(
                    BOUND + Duration::from_secs(2),
                    client.list_contacts(authed(request, &token, BOUND)),
                )
                .await
            }));
        }
    }
    let mut health = Vec::new();
    for _ in 0..5 {
        health.push(service.health("").await);
    }
    let (mut admitted, mut refused, mut wrong) = (0, 0, Vec::new());
    for call in calls {
        let listed = call.await.unwrap();
        match &listed.result {
            Ok(_) => admitted += 1,
            Err(status) if status.code() == Code::ResourceExhausted => {
                use tonic_types::StatusExt as _;
                let details = status.get_error_details();
                let reason = details.error_info().map(|info| info.reason.clone());
                if reason.as_deref() == Some("OVERLOADED") && details.retry_info().is_some() {
                    refused += 1;
                } else {
                    wrong.push(format!("{status:?}"));
                }
            }
            Err(status) => wrong.push(format!("{status:?}")),
        }
        if listed.took >= BOUND {
            wrong.push(format!("a call took {:?}", listed.took));
        }
    }
    println!("admitted {admitted}, refused {refused}; health during the burst {health:?}");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(admitted > 0, "admitted calls succeed");
    assert!(refused > 0, "calls past the process limit are refused");
    assert!(
        health.iter().all(|h| *h == Some(ServingStatus::Serving)),
        "health checks are never refused: {health:?}"
    );
    assert!(service.alive(), "{}", service.log_tail());
}

// ---------------------------------------------------------------------------------
// 5. SIGTERM under load: zero failed calls, exit 0.
// ---------------------------------------------------------------------------------

/// Each write a client sent: the given name, and the contact or the error.
type Writes = Arc<Mutex<Vec<(String, Result<String, tonic::Status>)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_fails_no_call() {
    let _serial = SERIAL.lock().await;
    let postgres = PrivatePostgres::start();
    let dir = tempfile::tempdir().unwrap();
    // Long enough for the clients to see NOT_SERVING and stop sending, as Kubernetes'
    // endpoints controller does, before the listener closes.
    let env = ServiceEnv::new(dir.path(), &postgres.url())
        .set("CRM__SERVER__SHUTDOWN_DRAIN_DELAY_MS", "3000");
    let mut service = Service::start(&env);
    service
        .wait_health(ServingStatus::Serving, Duration::from_secs(60))
        .await;
    let token = admin("acme");

    let stop = Arc::new(AtomicBool::new(false));
    let results: Writes = Arc::default();
    let mut writers = Vec::new();
    for writer in 0..6 {
        let (stop, results, token) = (stop.clone(), results.clone(), token.clone());
        let mut client = service.client().await;
        writers.push(tokio::spawn(async move {
            let mut round = 0;
            while !stop.load(Ordering::SeqCst) {
                round += 1;
                let given = format!("Term {writer}-{round}");
                let outcome = create(
                    &mut client,
                    &token,
                    create_request(&given, &request_id()),
                    Duration::from_secs(20),
                )
                .await;
                results
                    .lock()
                    .unwrap()
                    .push((given, outcome.result.map(|c| c.name)));
            }
        }));
    }
    wait_until("60 writes before SIGTERM", Duration::from_secs(60), || {
        results.lock().unwrap().len() >= 60
    })
    .await;
    service.terminate();
    // Clients stop sending once health says NOT_SERVING; calls in flight must finish.
    service
        .wait_health(ServingStatus::NotServing, Duration::from_secs(10))
        .await;
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.unwrap();
    }
    let status = tokio::task::block_in_place(|| service.wait_exit(Duration::from_secs(60)));
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");

    let results = std::mem::take(&mut *results.lock().unwrap());
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(given, r)| r.as_ref().err().map(|s| format!("{given}: {s:?}")))
        .collect();
    assert!(
        failed.is_empty(),
        "no call fails during a graceful shutdown:\n{}",
        failed.join("\n")
    );
    // And everything acknowledged is there after a restart.
    let service = service.restart();
    service
        .wait_health(ServingStatus::Serving, Duration::from_secs(60))
        .await;
    let mut client = service.client().await;
    for (given, result) in &results {
        let name = result.as_ref().unwrap();
        let read = get(&mut client, &token, name, Duration::from_secs(10))
            .await
            .result
            .expect("an acknowledged contact");
        assert_eq!(&read.given_name, given);
    }
    println!("{} writes, none failed", results.len());
}

// ---------------------------------------------------------------------------------
// 6. Redis killed under load: zero failed calls; the cache is used again after.
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_fails_no_call() {
    let _serial = SERIAL.lock().await;
    let postgres = PrivatePostgres::start();
    let mut redis = PrivateRedis::start();
    let dir = tempfile::tempdir().unwrap();
    let env = ServiceEnv::new(dir.path(), &postgres.url())
        .set("CRM__CACHE__BACKEND", "redis")
        .set("CRM__CACHE__REDIS_URL", &redis.url());
    let mut service = Service::start(&env);
    service
        .wait_health(ServingStatus::Serving, Duration::from_secs(60))
        .await;
    let token = admin("acme");

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut workers = Vec::new();
    for worker in 0..4 {
        let (stop, done, failures, token) =
            (stop.clone(), done.clone(), failures.clone(), token.clone());
        let mut client = service.client().await;
        workers.push(tokio::spawn(async move {
            let deadline = Duration::from_secs(10);
            let mut round = 0;
            while !stop.load(Ordering::SeqCst) {
                round += 1;
                let created = create(
                    &mut client,
                    &token,
                    create_request(&format!("Cache {worker}-{round}"), &request_id()),
                    deadline,
                )
                .await;
                let contact = match created.result {
                    Ok(contact) => contact,
                    Err(status) => {
                        failures.lock().unwrap().push(format!("create: {status:?}"));
                        continue;
                    }
                };
                let update = UpdateContactRequest {
                    contact: Some(Contact {
                        name: contact.name.clone(),
                        job_title: format!("title {round}"),
                        ..Default::default()
                    }),
                    update_mask: Some(FieldMask {
                        paths: vec!["job_title".into()],
                    }),
                    ..Default::default()
                };
                let updated = timed(
                    deadline,
                    client.update_contact(authed(update, &token, deadline)),
                )
                .await;
                let etag = match updated.result {
                    Ok(updated) => updated.etag,
                    Err(status) => {
                        failures.lock().unwrap().push(format!("update: {status:?}"));
                        continue;
                    }
                };
                // Read twice: a miss fills the cache, a hit comes from it.
                for _ in 0..2 {
                    match get(&mut client, &token, &contact.name, deadline)
                        .await
                        .result
                    {
                        Ok(read) if read.etag == etag => {}
                        Ok(read) => failures
                            .lock()
                            .unwrap()
                            .push(format!("read an older version: {} != {etag}", read.etag)),
                        Err(status) => failures.lock().unwrap().push(format!("get: {status:?}")),
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    wait_until(
        "the cache fills under load",
        Duration::from_secs(60),
        || done.load(Ordering::SeqCst) >= 20 && redis.keys() >= 1,
    )
    .await;

    redis.kill();
    let at_kill = done.load(Ordering::SeqCst);
    wait_until(
        "40 rounds of calls without Redis",
        Duration::from_secs(120),
        || done.load(Ordering::SeqCst) >= at_kill + 40,
    )
    .await;

    // The restarted redis-server starts empty (no persistence); the load may already
    // have written to it by the time it could be counted, so it is not counted here.
    redis.start_again();
    wait_until(
        "the cache is used again once Redis is back",
        Duration::from_secs(60),
        || redis.keys() >= 1,
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "no call fails because of Redis:\n{}",
        failures.join("\n")
    );
    assert!(service.alive());
    println!(
        "{} rounds (create, update, 2 reads), none failed",
        done.load(Ordering::SeqCst)
    );
}
