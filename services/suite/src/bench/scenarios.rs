//! The scenarios: what a caller of the suite does, one workload each. A later service
//! adds its scenarios here as one more entry of `SCENARIOS` and one function.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use prost_types::FieldMask;

use crm_proto::common::WatchEventsRequest;
use crm_proto::contact::{
    Contact, CreateContactRequest, ExportContactsRequest, FindDuplicatesRequest, GetContactRequest,
    ListContactsRequest, SearchContactsRequest, UpdateContactRequest,
    contact_service_client::ContactServiceClient, find_duplicates_request,
};

use super::client::Authorised;
use super::load::{Call, Workload};

/// Every scenario `crm bench` knows, in the order it runs them.
pub const SCENARIOS: &[&str] = &[
    "get_contact_cached",
    "get_contact_uncached",
    "create_contact",
    "update_contact",
    "list_contacts",
    "search_contacts",
    "find_duplicates",
    "import_contacts",
    "export_contacts",
    "watch_lag",
];

/// What the scenarios call and read.
#[derive(Clone)]
pub struct Fixture {
    /// Clients of the service with its cache on, one per connection.
    pub cached: Vec<ContactServiceClient<Authorised>>,
    /// Clients of the service with its cache off (`cache.backend = "none"`), when known.
    pub uncached: Option<Vec<ContactServiceClient<Authorised>>>,
    /// Names ("contacts/…") of seeded contacts.
    pub names: Arc<Vec<String>>,
    /// How many seeded people the tenant holds (persons `0..seeded` of `crm seed`).
    pub seeded: u64,
    /// The first person number this run may create, so that runs do not collide.
    pub fresh_from: u64,
    /// Rows per ImportContacts call of `import_contacts`.
    pub import_rows: u64,
}

impl Fixture {
    fn pick_name(&self, worker: usize, seq: u64) -> String {
        self.names[(seq as usize)
            .wrapping_mul(7919)
            .wrapping_add(worker * 104_729)
            % self.names.len()]
        .clone()
    }
}

fn code(status: tonic::Status) -> String {
    format!("{:?}", status.code())
}

/// A new person for a write: numbered from `fresh_from`, above every seeded person, so
/// that emails and phones are new to the tenant.
fn fresh_person(n: u64) -> Contact {
    crate::seed::person(n, None)
}

pub fn workload(name: &str, fixture: &Fixture) -> Option<Arc<dyn Workload>> {
    let f = fixture.clone();
    let counter = Arc::new(AtomicU64::new(fixture.fresh_from));
    Some(match name {
        "get_contact_cached" => get(f.cached.clone(), f),
        "get_contact_uncached" => get(f.uncached.clone()?, f),
        "create_contact" => Arc::new(move |worker: usize, _seq: u64| -> Call {
            let mut client = f.cached[worker % f.cached.len()].clone();
            let n = counter.fetch_add(1, Ordering::Relaxed);
            Box::pin(async move {
                client
                    .create_contact(CreateContactRequest {
                        contact: Some(fresh_person(n)),
                        ..Default::default()
                    })
                    .await
                    .map(|_| 1)
                    .map_err(code)
            })
        }),
        "update_contact" => Arc::new(move |worker: usize, seq: u64| -> Call {
            let mut client = f.cached[worker % f.cached.len()].clone();
            // Each caller updates its own contacts, so that callers do not race.
            let name = f.names[(worker + seq as usize * 64) % f.names.len()].clone();
            Box::pin(async move {
                client
                    .update_contact(UpdateContactRequest {
                        contact: Some(Contact {
                            name,
                            job_title: format!("Buyer grade {}", seq % 7),
                            ..Default::default()
                        }),
                        update_mask: Some(FieldMask {
                            paths: vec!["job_title".into()],
                        }),
                        ..Default::default()
                    })
                    .await
                    .map(|_| 1)
                    .map_err(code)
            })
        }),
        "list_contacts" => Arc::new(move |worker: usize, seq: u64| -> Call {
            let mut client = f.cached[worker % f.cached.len()].clone();
            let (filter, order_by) = match seq % 3 {
                0 => ("", "create_time desc"),
                1 => ("lifecycle_stage = \"CUSTOMER\"", "family_name"),
                _ => ("tags: \"vip\"", "update_time desc"),
            };
            Box::pin(async move {
                client
                    .list_contacts(ListContactsRequest {
                        page_size: 50,
                        filter: filter.into(),
                        order_by: order_by.into(),
                        ..Default::default()
                    })
                    .await
                    .map(|_| 1)
                    .map_err(code)
            })
        }),
        "search_contacts" => Arc::new(move |worker: usize, seq: u64| -> Call {
            let mut client = f.cached[worker % f.cached.len()].clone();
            let person = (seq.wrapping_mul(7919) + worker as u64 * 104_729) % f.seeded.max(1);
            let query = crate::seed::search_query(person);
            Box::pin(async move {
                client
                    .search_contacts(SearchContactsRequest {
                        query,
                        page_size: 20,
                        ..Default::default()
                    })
                    .await
                    .map(|_| 1)
                    .map_err(code)
            })
        }),
        "find_duplicates" => Arc::new(move |worker: usize, seq: u64| -> Call {
            let mut client = f.cached[worker % f.cached.len()].clone();
            let contact = f.pick_name(worker, seq);
            Box::pin(async move {
                client
                    .find_duplicates(FindDuplicatesRequest {
                        target: Some(find_duplicates_request::Target::Contact(contact)),
                        page_size: 20,
                        ..Default::default()
                    })
                    .await
                    .map(|_| 1)
                    .map_err(code)
            })
        }),
        "import_contacts" => {
            let rows = f.import_rows.max(1);
            Arc::new(move |worker: usize, _seq: u64| -> Call {
                let client = f.cached[worker % f.cached.len()].clone();
                let first = counter.fetch_add(rows, Ordering::Relaxed);
                Box::pin(async move {
                    let summary =
                        crate::seed::import_range(client, first..first + rows, Arc::default(), 1)
                            .await
                            .map_err(|e| format!("import: {e:#}"))?;
                    // Rows skipped as duplicates were checked and count as done; rows
                    // rejected did not import.
                    if summary.rejected > 0 {
                        return Err(format!("{} rows rejected", summary.rejected));
                    }
                    Ok(rows)
                })
            })
        }
        // The whole tenant, streamed in chunks of 1000: rows/s, and the service's peak
        // RSS shows that the rows never sit in its memory at once.
        "export_contacts" => Arc::new(move |worker: usize, _seq: u64| -> Call {
            let mut client = f.cached[worker % f.cached.len()].clone();
            Box::pin(async move {
                let mut chunks = client
                    .export_contacts(ExportContactsRequest {
                        chunk_size: 1000,
                        ..Default::default()
                    })
                    .await
                    .map_err(code)?
                    .into_inner();
                let mut rows = 0;
                while let Some(chunk) = chunks.message().await.map_err(code)? {
                    rows += chunk.contacts.len() as u64;
                }
                Ok(rows)
            })
        }),
        _ => return None,
    })
}

fn get(clients: Vec<ContactServiceClient<Authorised>>, f: Fixture) -> Arc<dyn Workload> {
    Arc::new(move |worker: usize, seq: u64| -> Call {
        let mut client = clients[worker % clients.len()].clone();
        let name = f.pick_name(worker, seq);
        Box::pin(async move {
            client
                .get_contact(GetContactRequest { name })
                .await
                .map(|_| 1)
                .map_err(code)
        })
    })
}

/// Write → received by a `WatchEvents` consumer: `writers` callers create contacts
/// for `duration` while one consumer tails the feed from its head; the lag of each
/// contact is from the moment its create was acknowledged to the moment its
/// `ContactCreated` arrived.
pub struct WatchLag {
    pub writes: u64,
    pub received: u64,
    pub errors: u64,
    pub lag: Histogram<u64>,
    pub elapsed: Duration,
}

pub async fn watch_lag(
    fixture: &Fixture,
    head_position: i64,
    writers: usize,
    duration: Duration,
) -> anyhow::Result<WatchLag> {
    let acknowledged: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut lag = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut consumer = fixture.cached[0].clone();
    let mut stream = consumer
        .watch_events(WatchEventsRequest {
            after_position: head_position,
            types: vec!["crm.contact.v1.ContactCreated".into()],
            heartbeat_seconds: 1,
        })
        .await?
        .into_inner();
    let counter = Arc::new(AtomicU64::new(fixture.fresh_from));
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..writers.max(1) {
        let mut client = fixture.cached[worker % fixture.cached.len()].clone();
        let counter = counter.clone();
        let acknowledged = acknowledged.clone();
        tasks.spawn(async move {
            let (mut writes, mut errors) = (0u64, 0u64);
            while Instant::now() < end {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                match client
                    .create_contact(CreateContactRequest {
                        contact: Some(fresh_person(n)),
                        ..Default::default()
                    })
                    .await
                {
                    Ok(created) => {
                        writes += 1;
                        acknowledged
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(created.into_inner().name, Instant::now());
                    }
                    Err(_) => errors += 1,
                }
            }
            (writes, errors)
        });
    }
    let (mut writes, mut errors) = (0u64, 0u64);
    let mut pending: HashMap<String, Instant> = HashMap::new();
    let mut received = 0u64;
    let mut writers_done = false;
    let drain_deadline = end + Duration::from_secs(10);
    loop {
        if writers_done {
            let all_seen = received >= writes;
            if all_seen || Instant::now() > drain_deadline {
                break;
            }
        }
        tokio::select! {
            joined = tasks.join_next(), if !writers_done => match joined {
                Some(Ok((w, e))) => { writes += w; errors += e; }
                Some(Err(_)) => errors += 1,
                None => writers_done = true,
            },
            message = stream.message() => {
                let Some(event) = message? else { break };
                if event.r#type != "crm.contact.v1.ContactCreated" {
                    continue;
                }
                let arrived = Instant::now();
                let acked = acknowledged
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&event.resource_name);
                match acked {
                    Some(at) => {
                        received += 1;
                        let _ = lag.record(
                            u64::try_from(arrived.saturating_duration_since(at).as_micros())
                                .unwrap_or(u64::MAX)
                                .max(1),
                        );
                    }
                    // The event came before the writer recorded its acknowledgement:
                    // its lag is under the time between the two, counted as 1 µs.
                    None => {
                        pending.insert(event.resource_name, arrived);
                    }
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        // Events that overtook their acknowledgement.
        if !pending.is_empty() {
            let acked = acknowledged.lock().unwrap_or_else(|p| p.into_inner());
            pending.retain(|name, _| {
                if acked.contains_key(name) {
                    received += 1;
                    let _ = lag.record(1);
                    false
                } else {
                    true
                }
            });
        }
    }
    Ok(WatchLag {
        writes,
        received,
        errors: errors + writes.saturating_sub(received),
        lag,
        elapsed: start.elapsed(),
    })
}
