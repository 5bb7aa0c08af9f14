//! ImportContacts and ExportContacts: per-row outcomes and exact counts, every mode,
//! dry runs, summary-only, a stream cut mid-way, chunked export with resume tokens,
//! read masks and tenant isolation.

use std::collections::HashSet;
use std::time::Duration;

use crm_platform::auth::Role;
use crm_proto::contact::contact_service_client::ContactServiceClient;
use crm_proto::contact::*;
use prost_types::FieldMask;
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

use crate::harness::{Backend, TestServer, admin, authed};
use crate::on_both_backends;

type Client = ContactServiceClient<Channel>;

fn email(address: &str) -> EmailAddress {
    EmailAddress {
        address: address.into(),
        ..Default::default()
    }
}

fn person(given: &str, address: &str) -> Contact {
    Contact {
        given_name: given.into(),
        emails: vec![email(address)],
        ..Default::default()
    }
}

pub(crate) fn row(row_id: &str, contact: Contact) -> ImportRow {
    ImportRow {
        row_id: row_id.into(),
        contact: Some(contact),
    }
}

pub(crate) fn options(mode: ImportMode) -> ImportOptions {
    ImportOptions {
        mode: mode as i32,
        ..Default::default()
    }
}

/// Sends the options and the messages' rows, and collects every row result and the
/// summary.
pub(crate) async fn import(
    client: &mut Client,
    token: &str,
    options: ImportOptions,
    messages: Vec<Vec<ImportRow>>,
) -> Result<(Vec<ImportRowResult>, ImportSummary), tonic::Status> {
    let mut requests = vec![ImportContactsRequest {
        options: Some(options),
        rows: Vec::new(),
    }];
    requests.extend(messages.into_iter().map(|rows| ImportContactsRequest {
        options: None,
        rows,
    }));
    let mut stream = client
        .import_contacts(authed(tokio_stream::iter(requests), token))
        .await?
        .into_inner();
    let mut results = Vec::new();
    let mut summary = None;
    while let Some(message) = stream.message().await? {
        assert!(summary.is_none(), "the summary comes last");
        results.extend(message.results);
        summary = message.summary;
    }
    Ok((results, summary.expect("a summary")))
}

fn outcome(result: &ImportRowResult) -> ImportRowOutcome {
    ImportRowOutcome::try_from(result.outcome).expect("known outcome")
}

fn result_of<'a>(results: &'a [ImportRowResult], row_id: &str) -> &'a ImportRowResult {
    let found: Vec<_> = results.iter().filter(|r| r.row_id == row_id).collect();
    assert_eq!(found.len(), 1, "one result for {row_id}: {results:?}");
    found[0]
}

fn rejected(results: &[ImportRowResult], row_id: &str) -> (String, String) {
    let result = result_of(results, row_id);
    assert_eq!(outcome(result), ImportRowOutcome::Rejected, "{result:?}");
    (result.reason.clone(), result.field.clone())
}

async fn create(client: &mut Client, token: &str, contact: Contact) -> Contact {
    client
        .create_contact(authed(
            CreateContactRequest {
                contact: Some(contact),
                ..Default::default()
            },
            token,
        ))
        .await
        .expect("create")
        .into_inner()
}

async fn get(client: &mut Client, token: &str, name: &str) -> Contact {
    client
        .get_contact(authed(GetContactRequest { name: name.into() }, token))
        .await
        .expect("get")
        .into_inner()
}

async fn count(client: &mut Client, token: &str) -> i64 {
    client
        .list_contacts(authed(ListContactsRequest::default(), token))
        .await
        .expect("list")
        .into_inner()
        .total_size
}

fn violated_fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .expect("BadRequest")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

async fn create_only_outcomes(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    let existing = create(&mut client, &token, person("Old", "old@x.io")).await;

    let mut with_phone = person("Ben", "ben@x.io");
    with_phone.phones.push(PhoneNumber {
        number: "+41 44 668 18 00".into(),
        ..Default::default()
    });
    let mut bad_phone = person("Cy", "cy@x.io");
    bad_phone.phones.push(PhoneNumber {
        number: "044 668".into(),
        ..Default::default()
    });
    let mut bad_stage = person("Di", "di@x.io");
    bad_stage.lifecycle_stage = 99;
    let mut own_source = person("Eve", "eve@x.io");
    own_source.source = "web".into();
    let first = vec![
        row("r1", person("Ana", "  Ana@X.io ")),
        row("r2", with_phone),
        row("r3", person("Bad", "not-an-email")),
        row("r4", bad_phone),
        row("r5", Contact::default()),
        row("r6", bad_stage),
    ];
    let second = vec![
        row("r1", person("Again", "again@x.io")),
        row("r8", person("Olde", "OLD@x.io")),
        row("r9", person("Ana Two", "ana@x.io")),
        row("", person("No Id", "noid@x.io")),
        ImportRow {
            row_id: "r11".into(),
            contact: None,
        },
        row("r12", own_source),
    ];
    let (results, summary) = import(
        &mut client,
        &token,
        ImportOptions {
            source: "import:test".into(),
            ..options(ImportMode::CreateOnly)
        },
        vec![first, second],
    )
    .await
    .unwrap();

    assert_eq!(results.len(), 12, "one result per row, in order");
    assert_eq!(results[0].row_id, "r1");
    assert_eq!(results[11].row_id, "r12");
    let ana = &results[0];
    assert_eq!(outcome(ana), ImportRowOutcome::Created);
    assert!(ana.contact.starts_with("contacts/"));
    let stored = get(&mut client, &token, &ana.contact).await;
    assert_eq!(stored.emails[0].address, "ana@x.io");
    assert_eq!(stored.source, "import:test", "source defaults from options");
    assert_eq!(stored.etag, "r1");
    assert_eq!(
        outcome(result_of(&results, "r2")),
        ImportRowOutcome::Created
    );
    assert_eq!(
        rejected(&results, "r3"),
        ("INVALID_EMAIL".into(), "contact.emails[0].address".into())
    );
    assert_eq!(
        rejected(&results, "r4"),
        ("INVALID_PHONE".into(), "contact.phones[0].number".into())
    );
    assert_eq!(
        rejected(&results, "r5"),
        ("MISSING_FIELD".into(), "contact.given_name".into())
    );
    assert_eq!(
        rejected(&results, "r6"),
        ("INVALID_FIELD".into(), "contact.lifecycle_stage".into())
    );
    let duplicate_id: Vec<_> = results.iter().filter(|r| r.row_id == "r1").collect();
    assert_eq!(duplicate_id.len(), 2);
    assert_eq!(duplicate_id[1].reason, "DUPLICATE_ROW_ID");
    assert_eq!(duplicate_id[1].field, "row_id");
    let old = result_of(&results, "r8");
    assert_eq!(outcome(old), ImportRowOutcome::SkippedDuplicate);
    assert_eq!(old.contact, existing.name);
    assert_eq!(old.duplicates, std::slice::from_ref(&existing.name));
    let twin = result_of(&results, "r9");
    assert_eq!(
        outcome(twin),
        ImportRowOutcome::SkippedDuplicate,
        "a row sharing an email with an earlier row does not make a second contact"
    );
    assert_eq!(twin.contact, ana.contact);
    assert_eq!(
        rejected(&results, ""),
        ("MISSING_FIELD".into(), "row_id".into())
    );
    assert_eq!(
        rejected(&results, "r11"),
        ("MISSING_FIELD".into(), "contact".into())
    );
    let eve = result_of(&results, "r12");
    assert_eq!(
        get(&mut client, &token, &eve.contact).await.source,
        "web",
        "a row's own source wins"
    );
    assert!(results.iter().all(|r| !r.message.contains("@")));

    assert_eq!(summary.rows_received, 12);
    assert_eq!(summary.created, 3);
    assert_eq!(summary.updated, 0);
    assert_eq!(summary.skipped_duplicate, 2);
    assert_eq!(summary.rejected, 7);
    assert!(!summary.dry_run);
    assert!(summary.start_time.is_some() && summary.end_time.is_some());
    assert_eq!(count(&mut client, &token).await, 4);
}
on_both_backends!(create_only_outcomes);

/// Rows of one batch that look like an earlier row (a similar name at the same company
/// domain) are duplicates of the contact that row created, as they would be of a stored
/// one; in a dry run too.
async fn similar_rows_within_one_batch(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    let named = |given: &str, family: &str, address: &str| Contact {
        family_name: family.into(),
        ..person(given, address)
    };
    let rows = || {
        vec![
            row("r1", named("Anna", "Müller", "anna.mueller@acme.ch")),
            row("r2", named("Anna", "Mueller", "a.mueller@acme.ch")),
            row("r3", named("Bob", "Other", "bob@acme.ch")),
            row("r4", named("Anna", "Müller", "anna@gmail.com")),
        ]
    };
    for dry_run in [true, false] {
        let (results, summary) = import(
            &mut client,
            &token,
            ImportOptions {
                dry_run,
                ..options(ImportMode::CreateOnly)
            },
            vec![rows()],
        )
        .await
        .unwrap();
        let outcomes: Vec<ImportRowOutcome> = results.iter().map(outcome).collect();
        assert_eq!(
            outcomes,
            [
                ImportRowOutcome::Created,
                ImportRowOutcome::SkippedDuplicate,
                ImportRowOutcome::Created,
                // The same name at a public mailbox provider says nothing.
                ImportRowOutcome::Created,
            ],
            "dry run {dry_run}: {results:?}"
        );
        assert_eq!(summary.skipped_duplicate, 1);
        if !dry_run {
            assert_eq!(
                results[1].duplicates,
                std::slice::from_ref(&results[0].contact)
            );
        }
    }
    server.finish().await;
}
on_both_backends!(similar_rows_within_one_batch);

async fn upsert_by_email(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    let mut a = person("Ana", "a@x.io");
    a.job_title = "Intern".into();
    let a = create(&mut client, &token, a).await;
    create(&mut client, &token, person("B", "b@x.io")).await;
    create(&mut client, &token, person("C", "c@x.io")).await;

    let title = Contact {
        job_title: "CTO".into(),
        emails: vec![email("A@x.io")],
        ..Default::default()
    };
    let both = Contact {
        given_name: "Both".into(),
        emails: vec![email("b@x.io"), email("c@x.io")],
        ..Default::default()
    };
    let first = vec![
        row("u1", title),
        row("u2", person("New", "new@x.io")),
        row("u3", person("Later", "new@x.io")),
        row("u4", both),
    ];
    // Over a thousand rows: the last message is a batch of its own, and finds what
    // the first batch committed.
    let fillers: Vec<ImportRow> = (0..1000)
        .map(|i| {
            row(
                &format!("f{i}"),
                person(&format!("F{i}"), &format!("f{i}@x.io")),
            )
        })
        .collect();
    let last = vec![row("late", person("Five", "f5@x.io"))];
    let (results, summary) = import(
        &mut client,
        &token,
        options(ImportMode::UpsertByEmail),
        vec![first, fillers, last],
    )
    .await
    .unwrap();

    let u1 = result_of(&results, "u1");
    assert_eq!(outcome(u1), ImportRowOutcome::Updated);
    assert_eq!(u1.contact, a.name);
    let updated = get(&mut client, &token, &a.name).await;
    assert_eq!(updated.job_title, "CTO");
    assert_eq!(
        updated.given_name, "Ana",
        "an empty mask overwrites only what the row sets"
    );
    assert_eq!(updated.etag, "r2");
    let u2 = result_of(&results, "u2");
    assert_eq!(outcome(u2), ImportRowOutcome::Created);
    let u3 = result_of(&results, "u3");
    assert_eq!(outcome(u3), ImportRowOutcome::Updated);
    assert_eq!(u3.contact, u2.contact);
    let new = get(&mut client, &token, &u2.contact).await;
    assert_eq!(new.given_name, "Later");
    assert_eq!(new.etag, "r2");
    assert_eq!(
        rejected(&results, "u4"),
        ("AMBIGUOUS_MATCH".into(), "contact.emails".into())
    );
    let late = result_of(&results, "late");
    assert_eq!(outcome(late), ImportRowOutcome::Updated);
    assert_eq!(late.contact, result_of(&results, "f5").contact);
    assert_eq!(
        get(&mut client, &token, &late.contact).await.given_name,
        "Five"
    );

    assert_eq!(summary.rows_received, 1005);
    assert_eq!(summary.created, 1001);
    assert_eq!(summary.updated, 3);
    assert_eq!(summary.rejected, 1);
    assert_eq!(summary.skipped_duplicate, 0);
    assert_eq!(count(&mut client, &token).await, 3 + 1001);

    // Re-sending the same rows is harmless: they update, and nothing new is created.
    let again: Vec<ImportRow> = (0..10)
        .map(|i| {
            row(
                &format!("f{i}"),
                person(&format!("F{i}"), &format!("f{i}@x.io")),
            )
        })
        .collect();
    let (_, summary) = import(
        &mut client,
        &token,
        options(ImportMode::UpsertByEmail),
        vec![again],
    )
    .await
    .unwrap();
    assert_eq!((summary.created, summary.updated), (0, 10));
    assert_eq!(count(&mut client, &token).await, 3 + 1001);
}
on_both_backends!(upsert_by_email);

async fn update_only(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    let a = create(&mut client, &token, person("Ana", "a@x.io")).await;

    let by_name = Contact {
        name: a.name.clone(),
        given_name: "Not in the mask".into(),
        job_title: "Boss".into(),
        ..Default::default()
    };
    let by_email = Contact {
        job_title: "Chief".into(),
        emails: vec![email("a@x.io")],
        ..Default::default()
    };
    let unknown_name = Contact {
        name: "contacts/0192f0c1-7b1e-7cc3-9a44-4d2a3f1e9b10".into(),
        job_title: "X".into(),
        ..Default::default()
    };
    let keyless = Contact {
        job_title: "X".into(),
        ..Default::default()
    };
    let rows = vec![
        row("n", by_name),
        row("e", by_email),
        row("nobody", person("Nobody", "nobody@x.io")),
        row("unknown", unknown_name),
        row("keyless", keyless),
    ];
    let (results, summary) = import(
        &mut client,
        &token,
        ImportOptions {
            update_mask: Some(FieldMask {
                paths: vec!["job_title".into()],
            }),
            ..options(ImportMode::UpdateOnly)
        },
        vec![rows],
    )
    .await
    .unwrap();
    assert_eq!(outcome(result_of(&results, "n")), ImportRowOutcome::Updated);
    assert_eq!(outcome(result_of(&results, "e")), ImportRowOutcome::Updated);
    assert_eq!(
        rejected(&results, "nobody"),
        ("NOT_FOUND".into(), "contact.emails".into())
    );
    assert_eq!(
        rejected(&results, "unknown"),
        ("NOT_FOUND".into(), "contact.name".into())
    );
    assert_eq!(
        rejected(&results, "keyless"),
        ("MISSING_FIELD".into(), "contact.name".into())
    );
    assert_eq!(
        (summary.updated, summary.rejected, summary.created),
        (2, 3, 0)
    );
    let stored = get(&mut client, &token, &a.name).await;
    assert_eq!(stored.job_title, "Chief");
    assert_eq!(stored.given_name, "Ana", "the mask limits the update");
    assert_eq!(stored.etag, "r3");
    assert_eq!(count(&mut client, &token).await, 1);
}
on_both_backends!(update_only);

async fn dry_run_stores_nothing(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    let existing = create(&mut client, &token, person("Old", "old@x.io")).await;
    let rows = vec![
        row("1", person("Ana", "ana@x.io")),
        row("2", person("Old", "old@x.io")),
        row("3", person("Ana", "ana@x.io")),
        row("4", person("Bad", "bad")),
    ];
    let (results, summary) = import(
        &mut client,
        &token,
        ImportOptions {
            dry_run: true,
            ..options(ImportMode::CreateOnly)
        },
        vec![rows],
    )
    .await
    .unwrap();
    assert_eq!(outcome(&results[0]), ImportRowOutcome::Created);
    assert_eq!(results[0].contact, "", "nothing was created to name");
    assert_eq!(outcome(&results[1]), ImportRowOutcome::SkippedDuplicate);
    assert_eq!(results[1].contact, existing.name);
    assert_eq!(outcome(&results[2]), ImportRowOutcome::SkippedDuplicate);
    assert_eq!(outcome(&results[3]), ImportRowOutcome::Rejected);
    assert!(summary.dry_run);
    assert_eq!(
        (summary.created, summary.skipped_duplicate, summary.rejected),
        (1, 2, 1)
    );
    assert_eq!(count(&mut client, &token).await, 1);

    // Upserts on a dry run see what earlier batches would have created.
    let mut messages = vec![
        (0..1000)
            .map(|i| row(&format!("f{i}"), person("F", &format!("f{i}@x{i}.io"))))
            .collect::<Vec<_>>(),
    ];
    messages.push(vec![row("again", person("Again", "f7@x7.io"))]);
    let (results, summary) = import(
        &mut client,
        &token,
        ImportOptions {
            dry_run: true,
            ..options(ImportMode::UpsertByEmail)
        },
        messages,
    )
    .await
    .unwrap();
    assert_eq!(
        outcome(result_of(&results, "again")),
        ImportRowOutcome::Updated
    );
    assert_eq!((summary.created, summary.updated), (1000, 1));
    assert_eq!(count(&mut client, &token).await, 1);
}
on_both_backends!(dry_run_stores_nothing);

async fn summary_only(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    let rows = vec![
        row("1", person("A", "a@x.io")),
        row("2", person("B", "nope")),
        row("3", person("C", "c@x.io")),
    ];
    let requests = vec![ImportContactsRequest {
        options: Some(ImportOptions {
            summary_only: true,
            ..options(ImportMode::CreateOnly)
        }),
        rows,
    }];
    let mut stream = client
        .import_contacts(authed(tokio_stream::iter(requests), &token))
        .await
        .unwrap()
        .into_inner();
    let mut messages = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        messages.push(message);
    }
    let results: Vec<_> = messages.iter().flat_map(|m| m.results.clone()).collect();
    assert_eq!(results.len(), 1, "only rejected rows: {results:?}");
    assert_eq!(results[0].row_id, "2");
    let summary = messages.last().unwrap().summary.unwrap();
    assert_eq!((summary.created, summary.rejected), (2, 1));
    assert_eq!(count(&mut client, &token).await, 2);
}
on_both_backends!(summary_only);

async fn bad_streams(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");

    // Options twice: the stream ends with INVALID_ARGUMENT naming "options".
    let requests = vec![
        ImportContactsRequest {
            options: Some(options(ImportMode::CreateOnly)),
            rows: vec![row("1", person("A", "a@x.io"))],
        },
        ImportContactsRequest {
            options: Some(options(ImportMode::CreateOnly)),
            rows: vec![row("2", person("B", "b@x.io"))],
        },
    ];
    let outcome = async {
        let mut stream = client
            .import_contacts(authed(tokio_stream::iter(requests), &token))
            .await?
            .into_inner();
        while stream.message().await?.is_some() {}
        Ok::<_, tonic::Status>(())
    }
    .await;
    assert_eq!(violated_fields(&outcome.unwrap_err()), ["options"]);
    assert_eq!(count(&mut client, &token).await, 0, "nothing committed");

    // No options first; an unknown mode; too many rows in one message.
    let no_options = import_status(&mut client, &token, None, 0).await;
    assert_eq!(violated_fields(&no_options), ["options"]);
    let no_mode = import_status(&mut client, &token, Some(ImportOptions::default()), 0).await;
    assert_eq!(violated_fields(&no_mode), ["options.mode"]);
    let too_many = import_status(
        &mut client,
        &token,
        Some(options(ImportMode::CreateOnly)),
        1001,
    )
    .await;
    assert_eq!(violated_fields(&too_many), ["rows"]);

    // Reps may not import.
    let rep = crate::harness::token("acme", "rep-1", &[Role::SalesRep]);
    let denied = import(&mut client, &rep, options(ImportMode::CreateOnly), vec![])
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
}
on_both_backends!(bad_streams);

/// The status of an import whose first message carries `options` and `rows` rows.
async fn import_status(
    client: &mut Client,
    token: &str,
    options: Option<ImportOptions>,
    rows: usize,
) -> tonic::Status {
    let rows = (0..rows)
        .map(|i| row(&i.to_string(), person("X", &format!("x{i}@x.io"))))
        .collect();
    let requests = vec![ImportContactsRequest { options, rows }];
    let outcome = async {
        let mut stream = client
            .import_contacts(authed(tokio_stream::iter(requests), token))
            .await?
            .into_inner();
        while stream.message().await?.is_some() {}
        Ok::<_, tonic::Status>(())
    }
    .await;
    outcome.unwrap_err()
}

async fn stream_cut_midway(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = admin("acme");
    let (tx, rx) = tokio::sync::mpsc::channel::<ImportContactsRequest>(4);
    let mut client = server.client().await;
    tx.send(ImportContactsRequest {
        options: Some(options(ImportMode::UpsertByEmail)),
        rows: (0..1000)
            // Each at their own domain: one name at one company would be duplicates.
            .map(|i| row(&format!("a{i}"), person("A", &format!("a{i}@x{i}.io"))))
            .collect(),
    })
    .await
    .unwrap();
    let mut responses = client
        .import_contacts(authed(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let first = responses.message().await.unwrap().unwrap();
    assert_eq!(
        first.results.len(),
        1000,
        "the first batch's results arrive"
    );
    // Half of the second batch is sent, then the call breaks.
    tx.send(ImportContactsRequest {
        options: None,
        rows: (0..500)
            .map(|i| row(&format!("b{i}"), person("B", &format!("b{i}@x{i}.io"))))
            .collect(),
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(responses);
    drop(client);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(tx);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut client = server.client().await;
    assert_eq!(
        count(&mut client, &token).await,
        1000,
        "exactly the first batch is stored"
    );
}
on_both_backends!(stream_cut_midway);

async fn export_all(
    client: &mut Client,
    token: &str,
    request: ExportContactsRequest,
) -> Result<Vec<ExportContactsResponse>, tonic::Status> {
    let mut stream = client
        .export_contacts(authed(request, token))
        .await?
        .into_inner();
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.next().await {
        chunks.push(chunk?);
    }
    Ok(chunks)
}

async fn export_in_chunks(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    let rows: Vec<Vec<ImportRow>> = (0..3)
        .map(|m| {
            (0..1000)
                .filter(|i| m * 1000 + i < 2500)
                .map(|i| {
                    let n = m * 1000 + i;
                    row(
                        &n.to_string(),
                        person(&format!("P{n}"), &format!("p{n}@x.io")),
                    )
                })
                .collect()
        })
        .collect();
    let (_, summary) = import(&mut client, &token, options(ImportMode::CreateOnly), rows)
        .await
        .unwrap();
    assert_eq!(summary.created, 2500);
    let other = admin("other");
    for i in 0..3 {
        create(&mut client, &other, person("Other", &format!("o{i}@x.io"))).await;
    }

    let chunks = export_all(
        &mut client,
        &token,
        ExportContactsRequest {
            chunk_size: 1000,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let sizes: Vec<usize> = chunks.iter().map(|c| c.contacts.len()).collect();
    assert_eq!(sizes, [1000, 1000, 500]);
    assert_eq!(chunks[0].total_size, 2500);
    assert!(chunks[1..].iter().all(|c| c.total_size == 0));
    let names: HashSet<&str> = chunks
        .iter()
        .flat_map(|c| c.contacts.iter().map(|p| p.name.as_str()))
        .collect();
    assert_eq!(names.len(), 2500, "every contact exactly once");
    assert!(
        chunks
            .iter()
            .flat_map(|c| &c.contacts)
            .all(|p| !p.emails[0].address.starts_with('o')),
        "never another tenant's contacts"
    );

    // Resuming after the first chunk yields the rest.
    let resumed = export_all(
        &mut client,
        &token,
        ExportContactsRequest {
            chunk_size: 1000,
            resume_token: chunks[0].resume_token.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let rest: Vec<&str> = resumed
        .iter()
        .flat_map(|c| c.contacts.iter().map(|p| p.name.as_str()))
        .collect();
    let expected: Vec<&str> = chunks[1..]
        .iter()
        .flat_map(|c| c.contacts.iter().map(|p| p.name.as_str()))
        .collect();
    assert_eq!(rest, expected);
    // After the last chunk, nothing is left.
    let after_last = export_all(
        &mut client,
        &token,
        ExportContactsRequest {
            resume_token: chunks[2].resume_token.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(after_last.iter().all(|c| c.contacts.is_empty()));
    // A resume token is bound to its tenant and its request.
    let stolen = export_all(
        &mut client,
        &other,
        ExportContactsRequest {
            resume_token: chunks[0].resume_token.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(violated_fields(&stolen), ["resume_token"]);
    let refiltered = export_all(
        &mut client,
        &token,
        ExportContactsRequest {
            filter: "given_name = \"P1\"".into(),
            resume_token: chunks[0].resume_token.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(violated_fields(&refiltered), ["resume_token"]);

    // Read mask: the name always, the masked fields, nothing else.
    let masked = export_all(
        &mut client,
        &token,
        ExportContactsRequest {
            filter: "given_name = \"P7\"".into(),
            read_mask: Some(FieldMask {
                paths: vec!["given_name".into()],
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(masked.len(), 1);
    assert_eq!(masked[0].total_size, 1);
    let only = &masked[0].contacts[0];
    assert_eq!(only.given_name, "P7");
    assert!(only.name.starts_with("contacts/"));
    assert!(only.emails.is_empty() && only.etag.is_empty() && only.create_time.is_none());
    let bad_mask = export_all(
        &mut client,
        &token,
        ExportContactsRequest {
            read_mask: Some(FieldMask {
                paths: vec!["password".into()],
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(violated_fields(&bad_mask), ["read_mask"]);
    let bad_chunk = export_all(
        &mut client,
        &token,
        ExportContactsRequest {
            chunk_size: -1,
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(violated_fields(&bad_chunk), ["chunk_size"]);

    // The other tenant sees its own three, in one default-sized chunk, newest first.
    let theirs = export_all(
        &mut client,
        &other,
        ExportContactsRequest {
            order_by: "create_time desc".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].total_size, 3);
    let emails: Vec<&str> = theirs[0]
        .contacts
        .iter()
        .map(|c| c.emails[0].address.as_str())
        .collect();
    assert_eq!(emails, ["o2@x.io", "o1@x.io", "o0@x.io"]);
}
on_both_backends!(export_in_chunks);
