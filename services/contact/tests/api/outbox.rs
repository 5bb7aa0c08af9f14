//! The outbox feed: concurrent writers never make a consumer skip or repeat an event,
//! and a consumer with a durable checkpoint resumes where it stopped.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crm_platform::ApiError;
use crm_platform::events::{self, EventHandler, HEARTBEAT_TYPE};
use crm_proto::common::{Event, WatchEventsRequest};
use crm_proto::contact::*;
use sea_orm::DatabaseTransaction;
use tonic::Code;

use crate::harness::{Backend, TestServer, admin, authed};
use crate::on_both_backends;

const WRITERS: usize = 8;
const PER_WRITER: usize = 25;

async fn write_concurrently(server: &TestServer, token: &str, tag: &str) -> HashSet<String> {
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let (mut client, token, tag) = (server.client().await, token.to_owned(), tag.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut names = Vec::new();
            for i in 0..PER_WRITER {
                let contact = Contact {
                    given_name: format!("{tag}-{writer}-{i}"),
                    ..Default::default()
                };
                let created = client
                    .create_contact(authed(
                        CreateContactRequest {
                            contact: Some(contact),
                            ..Default::default()
                        },
                        &token,
                    ))
                    .await
                    .expect("create")
                    .into_inner();
                names.push(created.name);
            }
            names
        }));
    }
    let mut all = HashSet::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

async fn concurrent_writers_never_make_a_consumer_skip(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = admin("acme");
    // The consumer watches from position 0 while the writers run.
    let mut client = server.client().await;
    let mut stream = client
        .watch_events(authed(
            WatchEventsRequest {
                after_position: 0,
                heartbeat_seconds: 1,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let written = write_concurrently(&server, &token, "w").await;
    let mut seen = HashSet::new();
    let mut last = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < written.len() {
        let event = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("all events arrive within 30 s")
            .unwrap()
            .expect("stream open");
        if event.r#type == HEARTBEAT_TYPE {
            continue;
        }
        assert!(
            event.position > last,
            "positions increase: {} after {last}",
            event.position
        );
        last = event.position;
        assert_eq!(event.r#type, "crm.contact.v1.ContactCreated");
        assert!(
            seen.insert(event.resource_name.clone()),
            "{} delivered twice",
            event.resource_name
        );
    }
    assert_eq!(seen, written);
    // A second consumer from 0 reads the same sequence from the backlog.
    let mut replay = client
        .watch_events(authed(
            WatchEventsRequest {
                after_position: 0,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut positions = Vec::new();
    let mut position_of_event = HashMap::new();
    while positions.len() < written.len() {
        let event = tokio::time::timeout(Duration::from_secs(10), replay.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if event.r#type != HEARTBEAT_TYPE {
            positions.push(event.position);
            position_of_event.insert(event.id, event.position);
        }
    }
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(*positions.last().unwrap(), last);

    // The audit trail names each event's feed position.
    let mut audited = HashMap::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_audit_events(authed(
                ListAuditEventsRequest {
                    page_size: 100,
                    page_token,
                    ..Default::default()
                },
                &token,
            ))
            .await
            .expect("audit events")
            .into_inner();
        audited.extend(page.audit_events.into_iter().map(|e| (e.id, e.position)));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(audited, position_of_event);

    let negative = client
        .watch_events(authed(
            WatchEventsRequest {
                after_position: -1,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(negative.code(), Code::InvalidArgument);
    server.finish().await;
}
on_both_backends!(concurrent_writers_never_make_a_consumer_skip);

/// Records what it applied; the effect of an event must happen once.
struct Recorder(Arc<Mutex<Vec<String>>>);

#[async_trait::async_trait]
impl EventHandler for Recorder {
    async fn apply(&self, _txn: &DatabaseTransaction, event: &Event) -> Result<(), ApiError> {
        self.0.lock().unwrap().push(event.id.clone());
        Ok(())
    }
}

async fn consumers_resume_from_their_checkpoint(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = admin("acme");
    let consumer_dir = tempfile::tempdir().unwrap();
    let consumer_db = sea_orm::Database::connect(format!(
        "sqlite://{}/consumer.db?mode=rwc",
        consumer_dir.path().display()
    ))
    .await
    .unwrap();
    crm_platform::db::migrate::<crm_contact::migrations::Migrator>(&consumer_db, "consumer")
        .await
        .unwrap();
    let applied = Arc::new(Mutex::new(Vec::new()));
    let handler = Recorder(applied.clone());

    let run_until = |count: usize| {
        let (db, handler, token, applied, channel) = (
            consumer_db.clone(),
            &handler,
            token.clone(),
            applied.clone(),
            server.channel(),
        );
        async move {
            let channel = channel.await;
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let watcher = tokio::spawn(async move {
                while applied.lock().unwrap().len() < count {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = stop_tx.send(true);
            });
            let open = |after: i64| {
                let (channel, token) = (channel.clone(), token.clone());
                async move {
                    let mut client = contact_service_client::ContactServiceClient::new(channel);
                    client
                        .watch_events(authed(
                            WatchEventsRequest {
                                after_position: after,
                                heartbeat_seconds: 1,
                                ..Default::default()
                            },
                            &token,
                        ))
                        .await
                        .map(tonic::Response::into_inner)
                }
            };
            tokio::time::timeout(
                Duration::from_secs(30),
                events::consume(&db, "test-consumer", handler, open, stop_rx),
            )
            .await
            .expect("consumer finishes")
            .expect("consume");
            watcher.await.unwrap();
        }
    };
    let first = write_concurrently(&server, &token, "a").await;
    run_until(first.len()).await;
    let checkpoint = events::Checkpoints::load(&consumer_db, "test-consumer")
        .await
        .unwrap();
    assert!(checkpoint > 0);
    let second = write_concurrently(&server, &token, "b").await;
    run_until(first.len() + second.len()).await;
    let applied = applied.lock().unwrap().clone();
    let unique: HashSet<&String> = applied.iter().collect();
    assert_eq!(unique.len(), applied.len(), "no event applied twice");
    assert_eq!(applied.len(), first.len() + second.len());
    server.finish().await;
}
on_both_backends!(consumers_resume_from_their_checkpoint);
