//! The audit trail: a record's history (who, what, old and new values, newest first,
//! filtered, paged), the tenant's audit events, roles and tenant isolation.

use crm_platform::auth::Role;
use crm_proto::contact::contact_service_client::ContactServiceClient;
use crm_proto::contact::*;
use prost_types::FieldMask;
use prost_types::value::Kind;
use tonic::Code;
use tonic::transport::Channel;

use crate::harness::{Backend, TestServer, admin, authed, token};
use crate::on_both_backends;

type Client = ContactServiceClient<Channel>;

fn micros(event: &AuditEvent) -> i64 {
    let t = event.event_time.expect("event_time");
    t.seconds * 1_000_000 + i64::from(t.nanos / 1_000)
}

fn text(value: &Option<prost_types::Value>) -> String {
    match value.as_ref().and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(s)) => s.clone(),
        other => panic!("expected a string value, got {other:?}"),
    }
}

async fn update(
    client: &mut Client,
    token: &str,
    name: &str,
    contact: Contact,
    path: &str,
    request_id: &str,
) {
    client
        .update_contact(authed(
            UpdateContactRequest {
                contact: Some(Contact {
                    name: name.into(),
                    ..contact
                }),
                update_mask: Some(FieldMask {
                    paths: vec![path.into()],
                }),
                request_id: request_id.into(),
                ..Default::default()
            },
            token,
        ))
        .await
        .expect("update");
}

async fn history(
    client: &mut Client,
    token: &str,
    request: GetRecordHistoryRequest,
) -> Result<GetRecordHistoryResponse, tonic::Status> {
    client
        .get_record_history(authed(request, token))
        .await
        .map(|r| r.into_inner())
}

/// A contact created by a rep, then changed twice by a manager.
async fn seeded(client: &mut Client) -> Contact {
    let rep = token("acme", "rex", &[Role::SalesRep]);
    let manager = token("acme", "meg", &[Role::SalesManager]);
    let created = client
        .create_contact(authed(
            CreateContactRequest {
                contact: Some(Contact {
                    given_name: "Ana".into(),
                    family_name: "Lopez".into(),
                    job_title: "Engineer".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &rep,
        ))
        .await
        .unwrap()
        .into_inner();
    update(
        client,
        &manager,
        &created.name,
        Contact {
            job_title: "CTO".into(),
            ..Default::default()
        },
        "job_title",
        "req-title",
    )
    .await;
    update(
        client,
        &manager,
        &created.name,
        Contact {
            given_name: "Anna".into(),
            ..Default::default()
        },
        "given_name",
        "",
    )
    .await;
    created
}

async fn record_history(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let created = seeded(&mut client).await;
    let auditor = token("acme", "ada", &[Role::Analyst]);

    let all = history(
        &mut client,
        &auditor,
        GetRecordHistoryRequest {
            name: created.name.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(all.total_size, 3);
    let types: Vec<&str> = all.audit_events.iter().map(|e| e.r#type.as_str()).collect();
    assert_eq!(
        types,
        [
            "crm.contact.v1.ContactUpdated",
            "crm.contact.v1.ContactUpdated",
            "crm.contact.v1.ContactCreated"
        ],
        "newest first"
    );
    let newest = &all.audit_events[0];
    assert_eq!(newest.resource_name, created.name);
    let actor = newest.actor.as_ref().unwrap();
    assert_eq!(actor.subject, "meg");
    assert_eq!(actor.roles, ["sales_manager"]);
    assert_eq!(newest.changes.len(), 1);
    assert_eq!(newest.changes[0].path, "given_name");
    assert_eq!(text(&newest.changes[0].old_value), "Ana");
    assert_eq!(text(&newest.changes[0].new_value), "Anna");
    assert!(!newest.redacted);
    let title = &all.audit_events[1];
    assert_eq!(text(&title.changes[0].old_value), "Engineer");
    assert_eq!(text(&title.changes[0].new_value), "CTO");
    assert_eq!(title.request_id, "req-title");
    let creation = &all.audit_events[2];
    assert_eq!(creation.actor.as_ref().unwrap().subject, "rex");
    assert!(creation.changes.is_empty());
    assert!(micros(creation) <= micros(title));

    // Filtered by the changed path.
    let titles = history(
        &mut client,
        &auditor,
        GetRecordHistoryRequest {
            name: created.name.clone(),
            filter: "changes.path = \"job_title\"".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(titles.total_size, 1);
    assert_eq!(titles.audit_events[0].id, title.id);
    let by_rex = history(
        &mut client,
        &auditor,
        GetRecordHistoryRequest {
            name: created.name.clone(),
            filter: "actor.subject = \"rex\" AND type = \"crm.contact.v1.ContactCreated\"".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(by_rex.total_size, 1);

    // Two pages, oldest first on request.
    let first = history(
        &mut client,
        &auditor,
        GetRecordHistoryRequest {
            name: created.name.clone(),
            page_size: 2,
            order_by: "event_time".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(first.audit_events.len(), 2);
    assert_eq!(first.total_size, 3);
    assert_eq!(first.audit_events[0].id, creation.id);
    assert!(!first.next_page_token.is_empty());
    let second = history(
        &mut client,
        &auditor,
        GetRecordHistoryRequest {
            name: created.name.clone(),
            page_size: 2,
            order_by: "event_time".into(),
            page_token: first.next_page_token.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(second.audit_events.len(), 1);
    assert_eq!(second.audit_events[0].id, newest.id);
    assert_eq!(second.total_size, 3);
    assert!(second.next_page_token.is_empty());
    // The token is bound to the record and the order.
    let misused = history(
        &mut client,
        &auditor,
        GetRecordHistoryRequest {
            name: created.name.clone(),
            page_size: 2,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(misused.code(), Code::InvalidArgument);

    // Bad names, filters and orders are INVALID_ARGUMENT; singletons are accepted.
    for (request, field) in [
        (
            GetRecordHistoryRequest {
                name: "tickets/0192f0c1-7b1e-7cc3-9a44-4d2a3f1e9b10".into(),
                ..Default::default()
            },
            "name",
        ),
        (
            GetRecordHistoryRequest {
                name: "contacts/nope".into(),
                ..Default::default()
            },
            "name",
        ),
        (
            GetRecordHistoryRequest {
                name: created.name.clone(),
                filter: "resource_name = \"x\"".into(),
                ..Default::default()
            },
            "filter",
        ),
        (
            GetRecordHistoryRequest {
                name: created.name.clone(),
                order_by: "type".into(),
                ..Default::default()
            },
            "order_by",
        ),
    ] {
        let status = history(&mut client, &auditor, request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().contains(field),
            "{field}: {}",
            status.message()
        );
    }
    let settings = history(
        &mut client,
        &auditor,
        GetRecordHistoryRequest {
            name: "contactSettings".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(settings.total_size, 0);

    // Reps do not read the audit trail.
    let rep = token("acme", "rex", &[Role::SalesRep]);
    let denied = history(
        &mut client,
        &rep,
        GetRecordHistoryRequest {
            name: created.name.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
}
on_both_backends!(record_history);

async fn audit_events_filtered_and_isolated(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let created = seeded(&mut client).await;
    let auditor = admin("acme");
    let list = |filter: &str| ListAuditEventsRequest {
        filter: filter.into(),
        ..Default::default()
    };

    let everything = client
        .list_audit_events(authed(list(""), &auditor))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(everything.total_size, 3);
    assert!(
        everything
            .audit_events
            .windows(2)
            .all(|w| micros(&w[0]) >= micros(&w[1])),
        "newest first"
    );
    let by_meg = client
        .list_audit_events(authed(
            list("actor.subject = \"meg\" AND type = \"crm.contact.v1.ContactUpdated\""),
            &auditor,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_meg.total_size, 2);
    assert!(
        by_meg
            .audit_events
            .iter()
            .all(|e| e.resource_name == created.name)
    );
    for (filter, expected) in [
        ("actor.subject = \"rex\"", 1),
        ("type = \"crm.contact.v1.ContactCreated\"", 1),
        ("actor.roles: \"sales_manager\"", 2),
        ("request_id = \"req-title\"", 1),
        ("changes.path: \"given_name\"", 1),
        ("event_time > \"2000-01-01T00:00:00Z\"", 3),
        ("event_time < \"2000-01-01T00:00:00Z\"", 0),
    ] {
        let found = client
            .list_audit_events(authed(list(filter), &auditor))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(found.total_size, expected, "{filter}");
    }
    let by_resource = client
        .list_audit_events(authed(
            list(&format!("resource_name = \"{}\"", created.name)),
            &auditor,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_resource.total_size, 3);
    let bad = client
        .list_audit_events(authed(list("payload = \"x\""), &auditor))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    // Another tenant sees none of it, not even by the record's name.
    let other = admin("globex");
    let none = client
        .list_audit_events(authed(list(""), &other))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(none.total_size, 0);
    assert!(none.audit_events.is_empty());
    let none = history(
        &mut client,
        &other,
        GetRecordHistoryRequest {
            name: created.name.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(none.total_size, 0);
    // Nor can it page with acme's token.
    let first = client
        .list_audit_events(authed(
            ListAuditEventsRequest {
                page_size: 1,
                ..Default::default()
            },
            &auditor,
        ))
        .await
        .unwrap()
        .into_inner();
    let stolen = client
        .list_audit_events(authed(
            ListAuditEventsRequest {
                page_size: 1,
                page_token: first.next_page_token,
                ..Default::default()
            },
            &other,
        ))
        .await
        .unwrap_err();
    assert_eq!(stolen.code(), Code::InvalidArgument);
}
on_both_backends!(audit_events_filtered_and_isolated);

/// A fresh, migrated contact database of `backend`, for the helpers other modules call
/// inside their own transactions (no RPC reaches them directly).
pub struct Db {
    pub conn: sea_orm::DatabaseConnection,
    _dir: tempfile::TempDir,
    postgres: Option<String>,
}

impl Db {
    pub async fn open(backend: Backend) -> Self {
        use sea_orm::ConnectionTrait as _;
        use sea_orm_migration::MigratorTrait as _;
        let dir = tempfile::tempdir().unwrap();
        let (url, postgres) = match backend {
            Backend::Sqlite => (
                format!("sqlite://{}/contact.db?mode=rwc", dir.path().display()),
                None,
            ),
            Backend::Postgres => {
                let name = format!("crm_test_{}", uuid::Uuid::now_v7().simple());
                let admin = sea_orm::Database::connect(format!(
                    "{}/postgres",
                    crate::harness::postgres_base()
                ))
                .await
                .unwrap();
                admin
                    .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                    .await
                    .unwrap();
                admin.close().await.ok();
                (
                    format!("{}/{name}", crate::harness::postgres_base()),
                    Some(name),
                )
            }
        };
        let conn = sea_orm::Database::connect(url).await.unwrap();
        crm_contact::migrations::Migrator::up(&conn, None)
            .await
            .unwrap();
        Self {
            conn,
            _dir: dir,
            postgres,
        }
    }

    pub async fn close(self) {
        use sea_orm::ConnectionTrait as _;
        self.conn.close().await.ok();
        if let Some(name) = self.postgres {
            let admin =
                sea_orm::Database::connect(format!("{}/postgres", crate::harness::postgres_base()))
                    .await
                    .unwrap();
            admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await
                .ok();
            admin.close().await.ok();
        }
    }
}

fn caller(tenant: &str) -> crm_platform::auth::Caller {
    crm_platform::auth::Caller {
        subject: "meg".into(),
        tenant: tenant.into(),
        roles: vec![Role::SalesManager],
        token: "t".into(),
    }
}

fn string(text: &str) -> prost_types::Value {
    prost_types::Value {
        kind: Some(Kind::StringValue(text.into())),
    }
}

async fn redaction_leaves_no_personal_value(backend: Backend) {
    use crm_platform::events::{self, NewEvent, outbox};
    use crm_proto::common::{Event, FieldChange};
    use prost::Message as _;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

    let db = Db::open(backend).await;
    let person = "contacts/0192f0c1-7b1e-7cc3-9a44-4d2a3f1e9b10";
    let other_person = "contacts/0192f0c1-7b1e-7cc3-9a44-4d2a3f1e9b11";
    let personal = ["Ximena", "Quispe", "ana.lopez@example.com", "+41446681800"];
    let snapshot = |given: &str| prost_types::Any {
        type_url: "type.googleapis.com/crm.contact.v1.Contact".into(),
        value: Contact {
            name: person.into(),
            given_name: given.into(),
            family_name: "Quispe".into(),
            emails: vec![EmailAddress {
                address: "ana.lopez@example.com".into(),
                ..Default::default()
            }],
            phones: vec![PhoneNumber {
                number: "+41446681800".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec(),
    };
    for (tenant, resource) in [("acme", person), ("acme", other_person), ("globex", person)] {
        events::append(
            &db.conn,
            &caller(tenant),
            NewEvent {
                event_type: "crm.contact.v1.ContactCreated",
                resource_name: resource.into(),
                changes: Vec::new(),
                payload: Some(snapshot("Ximena")),
                request_id: String::new(),
            },
        )
        .await
        .unwrap();
    }
    events::append(
        &db.conn,
        &caller("acme"),
        NewEvent {
            event_type: "crm.contact.v1.ContactUpdated",
            resource_name: person.into(),
            changes: vec![
                FieldChange {
                    path: "emails".into(),
                    old_value: Some(string("ana@old.example.com")),
                    new_value: Some(string("ana.lopez@example.com")),
                },
                FieldChange {
                    path: "phones".into(),
                    old_value: Some(string("+41446681800")),
                    new_value: Some(string("")),
                },
            ],
            payload: Some(snapshot("Ximena")),
            request_id: "req-ana.lopez@example.com".into(),
        },
    )
    .await
    .unwrap();

    let rewritten = crm_contact::audit::redact_events(
        &db.conn,
        "acme",
        &[person.to_owned()],
        &personal.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    assert_eq!(rewritten, 2, "both rows of the person in this tenant");

    let contains = |haystack: &[u8], needle: &str| {
        let haystack = String::from_utf8_lossy(haystack).to_lowercase();
        haystack.contains(&needle.to_lowercase())
    };
    // (Names are distinctive here: a scan for a short name such as "Ana" would also
    // hit role names like "sales_manager", which are not personal data.)
    let rows = outbox::Entity::find().all(&db.conn).await.unwrap();
    assert_eq!(rows.len(), 4);
    for row in &rows {
        let erased = row.tenant_id == "acme" && row.resource_name == person;
        assert_eq!(row.redacted, erased, "{}", row.id);
        if !erased {
            // Another person, and another tenant's record, keep their history.
            assert!(contains(&row.payload, "ana.lopez@example.com"));
            continue;
        }
        for value in personal {
            assert!(!contains(&row.payload, value), "{value} left in {}", row.id);
            assert!(!contains(row.request_id.as_bytes(), value));
            assert!(!contains(row.actor_subject.as_bytes(), value));
        }
        let event = Event::decode(row.payload.as_slice()).unwrap();
        assert!(event.payload.is_none());
        for change in &event.changes {
            assert!(["emails", "phones"].contains(&change.path.as_str()));
            assert!(matches!(
                change.new_value.as_ref().and_then(|v| v.kind.as_ref()),
                Some(Kind::NullValue(_))
            ));
        }
    }
    // The trail still says what changed, with the values gone.
    let updated = outbox::Entity::find()
        .filter(outbox::Column::EventType.eq("crm.contact.v1.ContactUpdated"))
        .one(&db.conn)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.changed_paths, "|emails|phones|");
    // Running it again is harmless.
    let again = crm_contact::audit::redact_events(
        &db.conn,
        "acme",
        &[person.to_owned()],
        &personal.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    assert_eq!(again, 2);
    db.close().await;
}
on_both_backends!(redaction_leaves_no_personal_value);
