//! The cache in front of GetContact: never older than a returned write, and never a
//! dependency (Redis down: reads and writes still succeed; back: used again).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crm_platform::config::CacheBackend;
use crm_proto::contact::*;
use prost_types::FieldMask;
use sea_orm::ConnectionTrait as _;

use crate::harness::{Backend, Options, TestServer, admin, authed, redis_url};
use crate::on_both_backends;

fn new_person(given_name: &str) -> CreateContactRequest {
    CreateContactRequest {
        contact: Some(Contact {
            given_name: given_name.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn retitle(name: &str, title: String) -> UpdateContactRequest {
    UpdateContactRequest {
        contact: Some(Contact {
            name: name.into(),
            job_title: title,
            ..Default::default()
        }),
        update_mask: Some(FieldMask {
            paths: vec!["job_title".into()],
        }),
        ..Default::default()
    }
}

async fn reads_never_go_back_after_a_write(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        Options {
            cache: CacheBackend::Redis,
            redis_url: redis_url(),
            ..Options::default()
        },
    )
    .await;
    let tenant = format!("t-{}", uuid::Uuid::now_v7().simple());
    let token = admin(&tenant);
    let mut client = server.client().await;
    let created = client
        .create_contact(authed(new_person("Ana"), &token))
        .await
        .unwrap()
        .into_inner();
    // Readers race the writer the whole time, filling the cache from the database.
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (mut client, token, name, stop) = (
            server.client().await,
            token.clone(),
            created.name.clone(),
            stop.clone(),
        );
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                client
                    .get_contact(authed(GetContactRequest { name: name.clone() }, &token))
                    .await
                    .expect("read");
            }
        }));
    }
    for round in 0..40 {
        let updated = client
            .update_contact(authed(
                retitle(&created.name, format!("title {round}")),
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        let read = client
            .get_contact(authed(
                GetContactRequest {
                    name: created.name.clone(),
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            read.etag, updated.etag,
            "round {round}: read an older version"
        );
        assert_eq!(read.job_title, format!("title {round}"));
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await.unwrap();
    }
    server.finish().await;
}
on_both_backends!(reads_never_go_back_after_a_write);

struct PrivateRedis {
    port: u16,
    child: Child,
}

impl PrivateRedis {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed for the cache tests");
        let redis = Self { port, child };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return redis;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("private redis-server did not start on port {port}");
    }

    fn keys(&self) -> usize {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--scan", "--pattern", "crm:*"])
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).lines().count()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn redis_down_is_only_slower(backend: Backend) {
    let port = free_port();
    let mut redis = PrivateRedis::start(port);
    let server = TestServer::start_with(
        backend,
        Options {
            cache: CacheBackend::Redis,
            redis_url: format!("redis://127.0.0.1:{port}"),
            ..Options::default()
        },
    )
    .await;
    let token = admin("acme");
    let mut client = server.client().await;
    let first = client
        .create_contact(authed(new_person("Ana"), &token))
        .await
        .unwrap()
        .into_inner();
    client
        .get_contact(authed(
            GetContactRequest {
                name: first.name.clone(),
            },
            &token,
        ))
        .await
        .unwrap();
    assert!(redis.keys() >= 1, "the cache is used while Redis runs");

    redis.kill();
    for round in 0..10 {
        let created = client
            .create_contact(authed(new_person(&format!("B{round}")), &token))
            .await
            .expect("write without Redis")
            .into_inner();
        let updated = client
            .update_contact(authed(retitle(&created.name, "t".into()), &token))
            .await
            .expect("update without Redis")
            .into_inner();
        let read = client
            .get_contact(authed(
                GetContactRequest {
                    name: created.name.clone(),
                },
                &token,
            ))
            .await
            .expect("read without Redis")
            .into_inner();
        assert_eq!(read.etag, updated.etag);
    }

    let redis = PrivateRedis::start(port);
    assert_eq!(redis.keys(), 0);
    let mut used_again = false;
    for _ in 0..50 {
        client
            .get_contact(authed(
                GetContactRequest {
                    name: first.name.clone(),
                },
                &token,
            ))
            .await
            .expect("read");
        if redis.keys() >= 1 {
            used_again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(used_again, "the cache is used again once Redis is back");
    server.finish().await;
}
on_both_backends!(redis_down_is_only_slower);

/// The cache's miss path keeps its Postgres connections from one read to the next
/// (`store::point_reads`). When the database drops them, a read fails at most with
/// UNAVAILABLE (never INTERNAL, never a wrong row), and the reads after it run on new
/// connections, without a restart of the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn misses_recover_when_the_database_drops_their_connections() {
    let server = TestServer::start_with(
        Backend::Postgres,
        Options {
            cache: CacheBackend::None,
            ..Options::default()
        },
    )
    .await;
    let tenant = format!("t-{}", uuid::Uuid::now_v7().simple());
    let token = admin(&tenant);
    let mut client = server.client().await;
    let mut people = Vec::new();
    for n in 0..8 {
        let created = client
            .create_contact(authed(new_person(&format!("Person {n}")), &token))
            .await
            .unwrap()
            .into_inner();
        people.push((created.name, created.given_name));
    }
    let people = Arc::new(people);
    let read_all = |attempts: usize| {
        let (base, token, people) = (client.clone(), token.clone(), people.clone());
        async move {
            let mut failures = Vec::new();
            let mut readers = Vec::new();
            for reader in 0..4 {
                let (mut client, token, people) = (base.clone(), token.clone(), people.clone());
                readers.push(tokio::spawn(async move {
                    let mut failures = Vec::new();
                    for n in 0..attempts {
                        let (name, given_name) = &people[(reader + n) % people.len()];
                        match client
                            .get_contact(authed(GetContactRequest { name: name.clone() }, &token))
                            .await
                        {
                            Ok(found) => assert_eq!(&found.into_inner().given_name, given_name),
                            Err(status) => failures.push(status.code()),
                        }
                    }
                    failures
                }));
            }
            for reader in readers {
                failures.extend(reader.await.unwrap());
            }
            failures
        }
    };
    assert_eq!(read_all(50).await, Vec::new(), "reads before");

    let database = server.database().await;
    let terminated = database
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        ))
        .await
        .unwrap();
    assert!(
        !terminated.is_empty(),
        "the service had connections to drop"
    );

    // The first reads may meet the dropped connections; each such read is UNAVAILABLE.
    let failures = read_all(50).await;
    assert!(
        failures
            .iter()
            .all(|code| *code == tonic::Code::Unavailable),
        "reads on dropped connections: {failures:?}"
    );
    assert!(
        failures.len() < 50,
        "most reads succeed on new connections: {failures:?}"
    );
    assert_eq!(read_all(50).await, Vec::new(), "reads after");
    server.finish().await;
}
