//! Consent: RecordConsent, GetConsent, ListConsentHistory, the suppression list, the
//! contact settings, and the functions other modules call (repoint, erase, history).

use std::sync::Arc;
use std::time::Duration;

use crm_platform::auth::{KeyMaterial, Role};
use crm_platform::config::Config;
use crm_platform::server::{self, ServicePlan, ServiceSet};
use crm_proto::common::Channel;
use crm_proto::contact::contact_service_client::ContactServiceClient;
use crm_proto::contact::*;
use prost_types::{FieldMask, Timestamp};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::Channel as GrpcChannel;
use tonic_types::StatusExt as _;

use crm_contact::consent;

use crate::harness::{Backend, SECRET, TestServer, admin, authed, postgres_base, token};
use crate::on_both_backends;

type Client = ContactServiceClient<GrpcChannel>;

const EMAIL: i32 = Channel::Email as i32;
const SMS: i32 = Channel::Sms as i32;
const PHONE: i32 = Channel::Phone as i32;
const POSTAL: i32 = Channel::Postal as i32;
const MARKETING: i32 = ConsentPurpose::Marketing as i32;
const TRANSACTIONAL: i32 = ConsentPurpose::Transactional as i32;
const IN: i32 = ConsentStatus::OptedIn as i32;
const OUT: i32 = ConsentStatus::OptedOut as i32;
const UNKNOWN: i32 = ConsentStatus::Unknown as i32;

/// The service on a database this test can also open: the suppression list and the
/// functions for other modules are checked on the stored rows.
struct DbServer {
    addr: std::net::SocketAddr,
    db: DatabaseConnection,
    shutdown: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
    postgres_db: Option<String>,
}

impl DbServer {
    async fn start(backend: Backend) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::default();
        config.data_dir = dir.path().to_path_buf();
        config.server.addr = "127.0.0.1:0".into();
        config.auth.hs256_secret = SECRET.into();
        config.events.relay_interval_ms = 50;
        let postgres_db = match backend {
            Backend::Sqlite => {
                config.database.url =
                    format!("sqlite://{}/{{service}}.db?mode=rwc", dir.path().display());
                None
            }
            Backend::Postgres => {
                let name = format!("crm_test_{}", uuid::Uuid::now_v7().simple());
                let admin = Database::connect(format!("{}/postgres", postgres_base()))
                    .await
                    .expect("Postgres must be running for the Postgres tests");
                admin
                    .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                    .await
                    .expect("create test database");
                admin.close().await.ok();
                config.database.url = format!("{}/{name}", postgres_base());
                Some(name)
            }
        };
        let keys = KeyMaterial::load(&config).expect("keys");
        let authenticator = Arc::new(keys.authenticator(&config).expect("authenticator"));
        let mut services = ServiceSet::new();
        crm_contact::add_to(&mut services, &config, &keys)
            .await
            .expect("contact service");
        let db = crm_platform::db::connect(&config, "contact")
            .await
            .expect("test connection");
        let mut plan = ServicePlan::new();
        plan.add(
            crm_contact::roles::SERVICE_NAME,
            crm_contact::roles::role_table(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let server_config = config.server.clone();
        tokio::spawn(async move {
            let _ = server::serve(
                &server_config,
                listener,
                plan,
                authenticator,
                async { services },
                async {
                    let _ = rx.await;
                },
            )
            .await;
        });
        Self {
            addr,
            db,
            shutdown: Some(tx),
            _dir: dir,
            postgres_db,
        }
    }

    async fn client(&self) -> Client {
        use tonic_health::pb::{
            HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
        };
        let channel = GrpcChannel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect");
        let mut health = HealthClient::new(channel.clone());
        for _ in 0..500 {
            let status = health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|r| r.into_inner().status);
            if status.is_ok_and(|s| s == ServingStatus::Serving as i32) {
                return ContactServiceClient::new(channel);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the test server did not report SERVING");
    }
}

impl Drop for DbServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(name) = self.postgres_db.take() {
            let _ = std::thread::spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                runtime.block_on(async {
                    if let Ok(admin) =
                        Database::connect(format!("{}/postgres", postgres_base())).await
                    {
                        let _ = admin
                            .execute_unprepared(&format!(
                                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                            ))
                            .await;
                        let _ = admin.close().await;
                    }
                });
            })
            .join();
        }
    }
}

fn person(given: &str, emails: &[&str], phones: &[&str]) -> Contact {
    Contact {
        given_name: given.into(),
        family_name: "Muster".into(),
        emails: emails
            .iter()
            .map(|e| EmailAddress {
                address: (*e).into(),
                ..Default::default()
            })
            .collect(),
        phones: phones
            .iter()
            .map(|p| PhoneNumber {
                number: (*p).into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
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
        .expect("create contact")
        .into_inner()
}

fn statement(contact: &str, channel: i32, purpose: i32, status: i32) -> ConsentRecord {
    ConsentRecord {
        contact: contact.into(),
        channel,
        purpose,
        status,
        source: "web-form:newsletter".into(),
        legal_basis: LegalBasis::Consent as i32,
        ..Default::default()
    }
}

async fn record(client: &mut Client, token: &str, record: ConsentRecord) -> ConsentRecord {
    client
        .record_consent(authed(
            RecordConsentRequest {
                consent_record: Some(record),
                ..Default::default()
            },
            token,
        ))
        .await
        .expect("record consent")
        .into_inner()
}

fn at(seconds_ago: i64) -> Option<Timestamp> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    Some(Timestamp {
        seconds: now - seconds_ago,
        nanos: 0,
    })
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

async fn consent_of(
    client: &mut Client,
    token: &str,
    person: get_consent_request::Person,
    channels: &[i32],
    purposes: &[i32],
) -> GetConsentResponse {
    client
        .get_consent(authed(
            GetConsentRequest {
                person: Some(person),
                channels: channels.to_vec(),
                purposes: purposes.to_vec(),
            },
            token,
        ))
        .await
        .expect("get consent")
        .into_inner()
}

async fn history(client: &mut Client, token: &str, contact: &str) -> ListConsentHistoryResponse {
    client
        .list_consent_history(authed(
            ListConsentHistoryRequest {
                contact: contact.into(),
                ..Default::default()
            },
            token,
        ))
        .await
        .expect("history")
        .into_inner()
}

async fn record_consent_happy_path(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let admin = admin("acme");
    let rep = token("acme", "rep-1", &[Role::SalesRep]);
    let ana = create(
        &mut client,
        &admin,
        person("Ana", &["ana@example.com"], &["+41 44 668 18 00"]),
    )
    .await;

    let mut new = statement(&ana.name, EMAIL, MARKETING, IN);
    new.address = " Ana@Example.COM ".into();
    new.evidence = "double opt-in 4711".into();
    let recorded = record(&mut client, &rep, new.clone()).await;
    assert!(recorded.name.starts_with("consentRecords/"));
    assert_eq!(recorded.contact, ana.name);
    assert_eq!(recorded.address, "ana@example.com");
    assert_eq!(recorded.source, "web-form:newsletter");
    assert_eq!(recorded.evidence, "double opt-in 4711");
    let recorder = recorded.recorder.clone().expect("recorder");
    assert_eq!(recorder.subject, "rep-1");
    assert_eq!(recorder.roles, ["sales_rep"]);
    assert!(recorded.create_time.is_some());
    // The consent time defaults to the time of recording.
    assert_eq!(recorded.consent_time, recorded.create_time);

    // A phone number in another form is normalised and matched.
    let mut sms = statement(&ana.name, SMS, TRANSACTIONAL, OUT);
    sms.address = "+41 (44) 668-18-00".into();
    let an_hour_ago = at(3600);
    sms.consent_time = an_hour_ago;
    let sms = record(&mut client, &rep, sms).await;
    assert_eq!(sms.address, "+41446681800");
    assert_eq!(sms.consent_time, an_hour_ago);

    // validate_only stores nothing.
    let preview = client
        .record_consent(authed(
            RecordConsentRequest {
                consent_record: Some(statement(&ana.name, PHONE, MARKETING, IN)),
                validate_only: true,
                ..Default::default()
            },
            &rep,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(preview.status, IN);
    assert_eq!(history(&mut client, &rep, &ana.name).await.total_size, 2);

    // The same request id twice records once and answers with the first record.
    let request = RecordConsentRequest {
        consent_record: Some(statement(&ana.name, POSTAL, MARKETING, OUT)),
        request_id: "consent-retry-1".into(),
        ..Default::default()
    };
    let first = client
        .record_consent(authed(request.clone(), &rep))
        .await
        .unwrap()
        .into_inner();
    let second = client
        .record_consent(authed(request.clone(), &rep))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, second);
    assert_eq!(history(&mut client, &rep, &ana.name).await.total_size, 3);
    // … and the same id for another request is refused.
    let mut other = request;
    other.consent_record = Some(statement(&ana.name, POSTAL, MARKETING, IN));
    let reused = client
        .record_consent(authed(other, &rep))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&reused), ["request_id"]);

    // A viewer may not record consent.
    let viewer = token("acme", "v", &[Role::Viewer]);
    let denied = client
        .record_consent(authed(
            RecordConsentRequest {
                consent_record: Some(statement(&ana.name, EMAIL, MARKETING, IN)),
                ..Default::default()
            },
            &viewer,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    server.finish().await;
}
on_both_backends!(record_consent_happy_path);

async fn record_consent_validation(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let admin = admin("acme");
    let ana = create(
        &mut client,
        &admin,
        person("Ana", &["ana@example.com"], &["+41446681800"]),
    )
    .await;
    let refuse_with = client.clone();
    let refused = |r: ConsentRecord| {
        let mut client = refuse_with.clone();
        let admin = admin.clone();
        async move {
            client
                .record_consent(authed(
                    RecordConsentRequest {
                        consent_record: Some(r),
                        ..Default::default()
                    },
                    &admin,
                ))
                .await
                .unwrap_err()
        }
    };
    let good = statement(&ana.name, EMAIL, MARKETING, IN);

    // Every bad field at once.
    let all_bad = ConsentRecord {
        contact: "people/1".into(),
        channel: Channel::Chat as i32,
        purpose: 0,
        status: 0,
        legal_basis: 99,
        source: String::new(),
        evidence: "e".repeat(2001),
        consent_time: at(-3600),
        ..Default::default()
    };
    assert_eq!(
        violated_fields(&refused(all_bad).await),
        [
            "consent_record.contact",
            "consent_record.channel",
            "consent_record.purpose",
            "consent_record.status",
            "consent_record.legal_basis",
            "consent_record.source",
            "consent_record.evidence",
            "consent_record.consent_time",
        ]
    );
    // One rule at a time.
    let cases: Vec<(ConsentRecord, &str)> = vec![
        (
            ConsentRecord {
                contact: String::new(),
                ..good.clone()
            },
            "consent_record.contact",
        ),
        (
            ConsentRecord {
                channel: Channel::Web as i32,
                ..good.clone()
            },
            "consent_record.channel",
        ),
        (
            ConsentRecord {
                channel: 0,
                ..good.clone()
            },
            "consent_record.channel",
        ),
        (
            ConsentRecord {
                purpose: 7,
                ..good.clone()
            },
            "consent_record.purpose",
        ),
        (
            ConsentRecord {
                status: 0,
                ..good.clone()
            },
            "consent_record.status",
        ),
        (
            ConsentRecord {
                source: "  ".into(),
                ..good.clone()
            },
            "consent_record.source",
        ),
        (
            ConsentRecord {
                source: "s".repeat(201),
                ..good.clone()
            },
            "consent_record.source",
        ),
        (
            ConsentRecord {
                evidence: "e".repeat(2001),
                ..good.clone()
            },
            "consent_record.evidence",
        ),
        (
            ConsentRecord {
                legal_basis: 42,
                ..good.clone()
            },
            "consent_record.legal_basis",
        ),
        (
            ConsentRecord {
                consent_time: at(-600),
                ..good.clone()
            },
            "consent_record.consent_time",
        ),
        (
            ConsentRecord {
                consent_time: Some(Timestamp {
                    seconds: 1,
                    nanos: -5,
                }),
                ..good.clone()
            },
            "consent_record.consent_time",
        ),
        // Not one of the contact's addresses, not an address at all, or on the wrong
        // channel.
        (
            ConsentRecord {
                address: "other@example.com".into(),
                ..good.clone()
            },
            "consent_record.address",
        ),
        (
            ConsentRecord {
                address: "not an email".into(),
                ..good.clone()
            },
            "consent_record.address",
        ),
        (
            ConsentRecord {
                channel: SMS,
                address: "ana@example.com".into(),
                ..good.clone()
            },
            "consent_record.address",
        ),
        (
            ConsentRecord {
                channel: PHONE,
                address: "+41 44 000 00 00".into(),
                ..good.clone()
            },
            "consent_record.address",
        ),
        (
            ConsentRecord {
                channel: POSTAL,
                address: "Bahnhofstrasse 1".into(),
                ..good.clone()
            },
            "consent_record.address",
        ),
    ];
    for (bad, field) in cases {
        let status = refused(bad.clone()).await;
        assert_eq!(violated_fields(&status), [field], "{bad:?}");
    }
    let missing = client
        .record_consent(authed(RecordConsentRequest::default(), &admin))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&missing), ["consent_record"]);
    let bad_id = client
        .record_consent(authed(
            RecordConsentRequest {
                consent_record: Some(good.clone()),
                request_id: "has space".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&bad_id), ["request_id"]);

    // An unknown contact is NOT_FOUND.
    let unknown = refused(ConsentRecord {
        contact: format!("contacts/{}", uuid::Uuid::now_v7()),
        ..good.clone()
    })
    .await;
    assert_eq!(unknown.code(), Code::NotFound);

    // Four minutes ahead is clock skew, not the future.
    let ahead = at(-240);
    let skewed = record(
        &mut client,
        &admin,
        ConsentRecord {
            consent_time: ahead,
            ..good.clone()
        },
    )
    .await;
    assert_eq!(skewed.consent_time, ahead);
    server.finish().await;
}
on_both_backends!(record_consent_validation);

async fn history_newest_first(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let admin = admin("acme");
    let ana = create(
        &mut client,
        &admin,
        person("Ana", &["ana@example.com"], &[]),
    )
    .await;
    let first = record(
        &mut client,
        &admin,
        statement(&ana.name, EMAIL, MARKETING, IN),
    )
    .await;
    let second = record(
        &mut client,
        &admin,
        statement(&ana.name, EMAIL, MARKETING, OUT),
    )
    .await;
    let third = record(
        &mut client,
        &admin,
        statement(&ana.name, SMS, MARKETING, IN),
    )
    .await;

    // Both statements on EMAIL are kept, the newest first.
    let all = history(&mut client, &admin, &ana.name).await;
    assert_eq!(all.total_size, 3);
    let names: Vec<&str> = all
        .consent_records
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(names, [&third.name, &second.name, &first.name]);
    assert!(all.next_page_token.is_empty());

    // Pages of one, with the total on each.
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_consent_history(authed(
                ListConsentHistoryRequest {
                    contact: ana.name.clone(),
                    page_size: 1,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
                &admin,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.total_size, 3);
        seen.extend(page.consent_records.into_iter().map(|r| r.name));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen, names);

    // Filters.
    let email_only = client
        .list_consent_history(authed(
            ListConsentHistoryRequest {
                contact: ana.name.clone(),
                filter: r#"channel = "EMAIL" AND purpose = "MARKETING""#.into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(email_only.total_size, 2);
    let opted_out = client
        .list_consent_history(authed(
            ListConsentHistoryRequest {
                contact: ana.name.clone(),
                filter: r#"status = "CONSENT_STATUS_OPTED_OUT""#.into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(opted_out.consent_records.len(), 1);
    assert_eq!(opted_out.consent_records[0].name, second.name);

    // A page token does not fit another filter; bad filters and names are refused.
    let first_page = client
        .list_consent_history(authed(
            ListConsentHistoryRequest {
                contact: ana.name.clone(),
                page_size: 1,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    let misfit = client
        .list_consent_history(authed(
            ListConsentHistoryRequest {
                contact: ana.name.clone(),
                page_size: 1,
                page_token: first_page.next_page_token,
                filter: r#"channel = "SMS""#.into(),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&misfit), ["page_token"]);
    for (request, field) in [
        (
            ListConsentHistoryRequest {
                contact: ana.name.clone(),
                filter: r#"evidence = "x""#.into(),
                ..Default::default()
            },
            "filter",
        ),
        (
            ListConsentHistoryRequest {
                contact: "contacts/nope".into(),
                ..Default::default()
            },
            "contact",
        ),
        (
            ListConsentHistoryRequest {
                contact: ana.name.clone(),
                page_size: -1,
                ..Default::default()
            },
            "page_size",
        ),
    ] {
        let status = client
            .list_consent_history(authed(request, &admin))
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), [field]);
    }
    server.finish().await;
}
on_both_backends!(history_newest_first);

async fn least_permissive_and_newest_wins(backend: Backend) {
    use get_consent_request::Person;
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let admin = admin("acme");
    let a = create(
        &mut client,
        &admin,
        person("Ana", &["shared@example.com", "ana@example.com"], &[]),
    )
    .await;
    let b = create(
        &mut client,
        &admin,
        person("Bea", &["Shared@Example.com"], &[]),
    )
    .await;

    // Per contact the newest statement counts: Ana opted out, then in again.
    let mut old_out = statement(&a.name, EMAIL, MARKETING, OUT);
    old_out.consent_time = at(7200);
    record(&mut client, &admin, old_out).await;
    let mut a_in = statement(&a.name, EMAIL, MARKETING, IN);
    a_in.consent_time = at(3600);
    let a_in = record(&mut client, &admin, a_in).await;
    let by_a = consent_of(
        &mut client,
        &admin,
        Person::Contact(a.name.clone()),
        &[EMAIL],
        &[MARKETING],
    )
    .await;
    assert_eq!(by_a.contacts, std::slice::from_ref(&a.name));
    assert_eq!(by_a.consents.len(), 1);
    assert_eq!(by_a.consents[0].status, IN);
    assert_eq!(
        by_a.consents[0].deciding_record.as_ref().unwrap().name,
        a_in.name
    );

    // Bea, sharing the address, opted out: asked by the address, OPTED_OUT wins.
    let b_out = record(
        &mut client,
        &admin,
        statement(&b.name, EMAIL, MARKETING, OUT),
    )
    .await;
    let by_email = consent_of(
        &mut client,
        &admin,
        Person::EmailAddress(" SHARED@example.com".into()),
        &[EMAIL],
        &[MARKETING],
    )
    .await;
    let mut contacts = by_email.contacts.clone();
    contacts.sort();
    let mut expected = vec![a.name.clone(), b.name.clone()];
    expected.sort();
    assert_eq!(contacts, expected);
    assert_eq!(by_email.consents[0].status, OUT);
    assert!(!by_email.consents[0].suppressed);
    assert_eq!(
        by_email.consents[0].deciding_record.as_ref().unwrap().name,
        b_out.name
    );

    // A statement about another of Ana's addresses does not speak for the shared one.
    let mut other_address = statement(&a.name, EMAIL, TRANSACTIONAL, OUT);
    other_address.address = "ana@example.com".into();
    record(&mut client, &admin, other_address).await;
    let transactional = consent_of(
        &mut client,
        &admin,
        Person::EmailAddress("shared@example.com".into()),
        &[EMAIL],
        &[TRANSACTIONAL],
    )
    .await;
    assert_eq!(transactional.consents[0].status, UNKNOWN);
    let by_ana = consent_of(
        &mut client,
        &admin,
        Person::EmailAddress("ana@example.com".into()),
        &[EMAIL],
        &[TRANSACTIONAL],
    )
    .await;
    assert_eq!(by_ana.consents[0].status, OUT);

    // Empty lists mean every channel and purpose; duplicates are answered once.
    let everything = consent_of(
        &mut client,
        &admin,
        Person::Contact(b.name.clone()),
        &[],
        &[],
    )
    .await;
    assert_eq!(everything.consents.len(), 12);
    let twice = consent_of(
        &mut client,
        &admin,
        Person::Contact(b.name.clone()),
        &[EMAIL, EMAIL],
        &[MARKETING],
    )
    .await;
    assert_eq!(twice.consents.len(), 1);

    // Bad requests name the field.
    for (request, field) in [
        (GetConsentRequest::default(), "contact"),
        (
            GetConsentRequest {
                person: Some(Person::Contact("contacts/x".into())),
                ..Default::default()
            },
            "contact",
        ),
        (
            GetConsentRequest {
                person: Some(Person::EmailAddress("no-at-sign".into())),
                ..Default::default()
            },
            "email_address",
        ),
        (
            GetConsentRequest {
                person: Some(Person::PhoneNumber("call me".into())),
                ..Default::default()
            },
            "phone_number",
        ),
        (
            GetConsentRequest {
                person: Some(Person::Contact(a.name.clone())),
                channels: vec![Channel::Chat as i32],
                ..Default::default()
            },
            "channels[0]",
        ),
        (
            GetConsentRequest {
                person: Some(Person::Contact(a.name.clone())),
                purposes: vec![MARKETING, 0],
                ..Default::default()
            },
            "purposes[1]",
        ),
    ] {
        let status = client
            .get_consent(authed(request, &admin))
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), [field]);
    }
    let missing = client
        .get_consent(authed(
            GetConsentRequest {
                person: Some(Person::Contact(format!(
                    "contacts/{}",
                    uuid::Uuid::now_v7()
                ))),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    server.finish().await;
}
on_both_backends!(least_permissive_and_newest_wins);

async fn unknown_without_record_and_phone_forms(backend: Backend) {
    use get_consent_request::Person;
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let admin = admin("acme");
    let system = token("acme", "pipeline", &[Role::System]);
    let ana = create(
        &mut client,
        &admin,
        person("Ana", &["ana@example.com"], &["+41 44 668 18 00"]),
    )
    .await;

    // No record: UNKNOWN everywhere, with no deciding record.
    let nothing = consent_of(
        &mut client,
        &system,
        Person::Contact(ana.name.clone()),
        &[],
        &[],
    )
    .await;
    assert_eq!(nothing.consents.len(), 12);
    assert!(
        nothing
            .consents
            .iter()
            .all(|c| c.status == UNKNOWN && c.deciding_record.is_none() && !c.suppressed)
    );
    // An address no contact has: UNKNOWN, and no contacts.
    let stranger = consent_of(
        &mut client,
        &system,
        Person::EmailAddress("nobody@example.com".into()),
        &[EMAIL],
        &[MARKETING],
    )
    .await;
    assert!(stranger.contacts.is_empty());
    assert_eq!(stranger.consents[0].status, UNKNOWN);
    // Only a whole stored address is the person's: not its end, not a pattern.
    let stored = ana.emails[0].address.clone();
    let (local, domain) = stored.split_once('@').unwrap();
    for address in [
        format!("{}@{domain}", &local[1..]),
        format!("{}_{}@{domain}", &local[..1], &local[2..]),
        format!("{}%@{domain}", &local[..1]),
    ] {
        let nobody = consent_of(
            &mut client,
            &system,
            Person::EmailAddress(address.clone()),
            &[EMAIL],
            &[MARKETING],
        )
        .await;
        assert!(
            nobody.contacts.is_empty(),
            "{address}: {:?}",
            nobody.contacts
        );
    }

    // By phone, written in another form than it was stored.
    let sms_in = record(
        &mut client,
        &admin,
        statement(&ana.name, SMS, MARKETING, IN),
    )
    .await;
    for form in ["0041 44 668 18 00", "+41-44-668-1800", "+41 (0)44"] {
        let answer = client
            .get_consent(authed(
                GetConsentRequest {
                    person: Some(Person::PhoneNumber(form.into())),
                    channels: vec![SMS],
                    purposes: vec![MARKETING],
                },
                &system,
            ))
            .await;
        if form == "+41 (0)44" {
            // Too short to be a number.
            assert_eq!(violated_fields(&answer.unwrap_err()), ["phone_number"]);
            continue;
        }
        let answer = answer.unwrap().into_inner();
        assert_eq!(answer.contacts, std::slice::from_ref(&ana.name), "{form}");
        assert_eq!(answer.consents[0].status, IN, "{form}");
        assert_eq!(
            answer.consents[0].deciding_record.as_ref().unwrap().name,
            sms_in.name
        );
    }
    server.finish().await;
}
on_both_backends!(unknown_without_record_and_phone_forms);

async fn suppression_list(backend: Backend) {
    use get_consent_request::Person;
    let server = DbServer::start(backend).await;
    let mut client = server.client().await;
    let admin = admin("acme");
    let db = &server.db;
    let ana = create(
        &mut client,
        &admin,
        person("Ana", &["ana.erased@example.com"], &["+41446681800"]),
    )
    .await;
    record(
        &mut client,
        &admin,
        statement(&ana.name, EMAIL, MARKETING, IN),
    )
    .await;
    record(
        &mut client,
        &admin,
        statement(&ana.name, SMS, MARKETING, IN),
    )
    .await;

    // Nothing is suppressed before anything was added (and no salt is made by reading).
    let emails = vec![
        "ana.erased@example.com".to_owned(),
        "other@example.com".to_owned(),
    ];
    assert!(
        consent::suppression::suppressed(db, "acme", &emails)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        consent::suppression::suppress(
            db,
            "acme",
            &[
                "Ana.Erased@Example.com".into(),
                "ana.erased@example.com".into()
            ]
        )
        .await
        .unwrap(),
        1
    );
    assert_eq!(
        consent::suppression::suppress(db, "acme", &["ana.erased@example.com".into()])
            .await
            .unwrap(),
        0
    );
    let found = consent::suppression::suppressed(db, "acme", &emails)
        .await
        .unwrap();
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        ["ana.erased@example.com"]
    );
    // The list is per tenant.
    assert!(
        consent::suppression::suppressed(db, "globex", &emails)
            .await
            .unwrap()
            .is_empty()
    );

    // Asked by the address: every channel is OPTED_OUT, suppressed.
    let by_email = consent_of(
        &mut client,
        &admin,
        Person::EmailAddress("ana.erased@example.com".into()),
        &[],
        &[],
    )
    .await;
    assert_eq!(by_email.consents.len(), 12);
    assert!(
        by_email
            .consents
            .iter()
            .all(|c| c.status == OUT && c.suppressed)
    );
    // Asked by the contact: EMAIL is closed, SMS still answers from the records.
    let by_contact = consent_of(
        &mut client,
        &admin,
        Person::Contact(ana.name.clone()),
        &[EMAIL, SMS],
        &[MARKETING],
    )
    .await;
    assert_eq!(
        (
            by_contact.consents[0].status,
            by_contact.consents[0].suppressed
        ),
        (OUT, true)
    );
    assert_eq!(
        (
            by_contact.consents[1].status,
            by_contact.consents[1].suppressed
        ),
        (IN, false)
    );

    // The database holds no plain address: only 64-hex hashes and the salt.
    for (table, column) in [
        ("suppressed_emails", "email_hash"),
        ("suppression_salts", "salt"),
    ] {
        let rows = db
            .query_all_raw(Statement::from_string(
                db.get_database_backend(),
                format!("SELECT tenant_id, {column} FROM {table}"),
            ))
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "{table}");
        let tenant: String = rows[0].try_get_by_index(0).unwrap();
        let value: String = rows[0].try_get_by_index(1).unwrap();
        assert_eq!(tenant, "acme");
        assert_eq!(value.len(), 64, "{table}: 32 bytes in hex");
        assert!(value.chars().all(|c| c.is_ascii_hexdigit()), "{table}");
    }
    let hashes = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT email_hash FROM suppressed_emails".to_owned(),
        ))
        .await
        .unwrap();
    assert_eq!(hashes.len(), 1);
    let hash: String = hashes[0].try_get_by_index(0).unwrap();
    assert_eq!(hash.len(), 64);
    assert!(hash.chars().all(|c| c.is_ascii_hexdigit()));
    // Salted: not the bare hash of the address.
    assert_ne!(
        hash,
        consent::sha256::hex(&consent::sha256::digest(b"ana.erased@example.com"))
    );
}
on_both_backends!(suppression_list);

async fn contact_settings(backend: Backend) {
    let server = DbServer::start(backend).await;
    let mut client = server.client().await;
    let admin = admin("acme");
    let manager = token("acme", "m", &[Role::SalesManager]);

    // Never set: defaults, etag r0.
    let defaults = client
        .get_contact_settings(authed(
            GetContactSettingsRequest {
                name: "contactSettings".into(),
            },
            &manager,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(defaults.name, "contactSettings");
    assert_eq!(defaults.default_phone_region, "");
    assert_eq!(defaults.etag, "r0");
    assert!(defaults.update_time.is_none());
    assert_eq!(
        consent::default_phone_region(&server.db, "acme")
            .await
            .unwrap(),
        None
    );

    let update = |region: &str, etag: &str, paths: &[&str]| UpdateContactSettingsRequest {
        contact_settings: Some(ContactSettings {
            name: "contactSettings".into(),
            default_phone_region: region.into(),
            ..Default::default()
        }),
        update_mask: Some(FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }),
        etag: etag.into(),
        request_id: String::new(),
    };
    let updated = client
        .update_contact_settings(authed(
            update(" ch ", "r0", &["default_phone_region"]),
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.default_phone_region, "CH");
    assert_eq!(updated.etag, "r1");
    assert!(updated.update_time.is_some());
    let got = client
        .get_contact_settings(authed(GetContactSettingsRequest::default(), &manager))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, updated);
    assert_eq!(
        consent::default_phone_region(&server.db, "acme")
            .await
            .unwrap()
            .as_deref(),
        Some("CH")
    );

    // A stale etag is ABORTED.
    let stale = client
        .update_contact_settings(authed(update("DE", "r0", &["*"]), &admin))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    // Unchanged: no new revision.
    let same = client
        .update_contact_settings(authed(update("CH", "r1", &["*"]), &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(same.etag, "r1");
    // A request id retried answers once.
    let mut retried = update("", "", &["default_phone_region"]);
    retried.request_id = "settings-1".into();
    let first = client
        .update_contact_settings(authed(retried.clone(), &admin))
        .await
        .unwrap()
        .into_inner();
    let second = client
        .update_contact_settings(authed(retried, &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, second);
    assert_eq!(
        (first.etag.as_str(), first.default_phone_region.as_str()),
        ("r2", "")
    );
    assert_eq!(
        consent::default_phone_region(&server.db, "acme")
            .await
            .unwrap(),
        None
    );

    // Bad input names the field.
    for (request, fields) in [
        (
            update("XX", "", &["default_phone_region"]),
            vec!["contact_settings.default_phone_region"],
        ),
        (
            update("CHE", "", &["*"]),
            vec!["contact_settings.default_phone_region"],
        ),
        (update("CH", "", &[]), vec!["update_mask"]),
        (update("CH", "", &["name"]), vec!["update_mask"]),
        (
            UpdateContactSettingsRequest {
                contact_settings: Some(ContactSettings {
                    name: "settings".into(),
                    default_phone_region: "ZZ".into(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["default_phone_region".into()],
                }),
                ..Default::default()
            },
            vec![
                "contact_settings.name",
                "contact_settings.default_phone_region",
            ],
        ),
        (
            UpdateContactSettingsRequest::default(),
            vec!["contact_settings"],
        ),
    ] {
        let status = client
            .update_contact_settings(authed(request, &admin))
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), fields);
    }
    let bad_name = client
        .get_contact_settings(authed(
            GetContactSettingsRequest {
                name: "other".into(),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&bad_name), ["name"]);
    // Only admins change settings.
    let denied = client
        .update_contact_settings(authed(update("FR", "", &["*"]), &manager))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    // Settings are per tenant.
    let globex = client
        .get_contact_settings(authed(
            GetContactSettingsRequest::default(),
            &admin_of("globex"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(globex.etag, "r0");

    // The update is in the event feed, with its field change.
    let events = server
        .db
        .query_all_raw(Statement::from_string(
            server.db.get_database_backend(),
            "SELECT event_type FROM outbox WHERE event_type = 'crm.contact.v1.ContactSettingsUpdated'"
                .to_owned(),
        ))
        .await
        .unwrap();
    assert_eq!(events.len(), 2);
}
on_both_backends!(contact_settings);

fn admin_of(tenant: &str) -> String {
    admin(tenant)
}

async fn tenant_isolation(backend: Backend) {
    use get_consent_request::Person;
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let acme = admin_of("acme");
    let globex = admin_of("globex");
    let ana = create(&mut client, &acme, person("Ana", &["ana@example.com"], &[])).await;
    record(
        &mut client,
        &acme,
        statement(&ana.name, EMAIL, MARKETING, OUT),
    )
    .await;

    let elsewhere = client
        .record_consent(authed(
            RecordConsentRequest {
                consent_record: Some(statement(&ana.name, EMAIL, MARKETING, IN)),
                ..Default::default()
            },
            &globex,
        ))
        .await
        .unwrap_err();
    assert_eq!(elsewhere.code(), Code::NotFound);
    let listed = client
        .list_consent_history(authed(
            ListConsentHistoryRequest {
                contact: ana.name.clone(),
                ..Default::default()
            },
            &globex,
        ))
        .await
        .unwrap_err();
    assert_eq!(listed.code(), Code::NotFound);
    let asked = client
        .get_consent(authed(
            GetConsentRequest {
                person: Some(Person::Contact(ana.name.clone())),
                ..Default::default()
            },
            &globex,
        ))
        .await
        .unwrap_err();
    assert_eq!(asked.code(), Code::NotFound);
    // The same address in another tenant is another person.
    let bob = create(
        &mut client,
        &globex,
        person("Bob", &["ana@example.com"], &[]),
    )
    .await;
    let by_email = consent_of(
        &mut client,
        &globex,
        Person::EmailAddress("ana@example.com".into()),
        &[EMAIL],
        &[MARKETING],
    )
    .await;
    assert_eq!(by_email.contacts, [bob.name]);
    assert_eq!(by_email.consents[0].status, UNKNOWN);
    // A page token of one tenant does not work in another.
    record(
        &mut client,
        &acme,
        statement(&ana.name, SMS, MARKETING, OUT),
    )
    .await;
    let page = client
        .list_consent_history(authed(
            ListConsentHistoryRequest {
                contact: ana.name.clone(),
                page_size: 1,
                ..Default::default()
            },
            &acme,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!page.next_page_token.is_empty());
    let stolen = client
        .list_consent_history(authed(
            ListConsentHistoryRequest {
                contact: ana.name.clone(),
                page_size: 1,
                page_token: page.next_page_token,
                ..Default::default()
            },
            &globex,
        ))
        .await
        .unwrap_err();
    assert_ne!(stolen.code(), Code::Ok);
    server.finish().await;
}
on_both_backends!(tenant_isolation);

fn id_of(contact: &Contact) -> String {
    contact.name.trim_start_matches("contacts/").to_owned()
}

async fn repoint_erase_history(backend: Backend) {
    use get_consent_request::Person;
    let server = DbServer::start(backend).await;
    let mut client = server.client().await;
    let admin = admin("acme");
    let db = &server.db;
    let winner = create(
        &mut client,
        &admin,
        person("Ana", &["ana@example.com"], &[]),
    )
    .await;
    let loser = create(
        &mut client,
        &admin,
        person("Anna", &["anna@example.com"], &[]),
    )
    .await;
    let mut w = statement(&winner.name, EMAIL, MARKETING, IN);
    w.consent_time = at(60);
    record(&mut client, &admin, w).await;
    let mut l = statement(&loser.name, EMAIL, MARKETING, OUT);
    l.address = "anna@example.com".into();
    l.evidence = "letter of 2024-05-01".into();
    l.consent_time = at(30);
    let l = record(&mut client, &admin, l).await;

    let moved = consent::repoint_contacts(db, "acme", &[id_of(&loser)], &id_of(&winner))
        .await
        .unwrap();
    assert_eq!(moved, 1);
    // Another tenant's records are not touched.
    assert_eq!(
        consent::repoint_contacts(db, "globex", &[id_of(&winner)], &id_of(&loser))
            .await
            .unwrap(),
        0
    );
    let winners = consent::history_for_contact(db, "acme", &id_of(&winner))
        .await
        .unwrap();
    assert_eq!(winners.len(), 2);
    assert_eq!(winners[0].name, l.name, "newest first");
    assert!(winners.iter().all(|r| r.contact == winner.name));
    assert!(
        consent::history_for_contact(db, "acme", &id_of(&loser))
            .await
            .unwrap()
            .is_empty()
    );
    let listed = history(&mut client, &admin, &winner.name).await;
    assert_eq!(listed.total_size, 2);
    assert_eq!(listed.consent_records[0].contact, winner.name);
    let answer = consent_of(
        &mut client,
        &admin,
        Person::Contact(winner.name.clone()),
        &[EMAIL],
        &[MARKETING],
    )
    .await;
    // Asked by contact every address counts: the opt-out about anna@ wins.
    assert_eq!(answer.consents[0].status, OUT);
    // Asked by ana@, the statement about anna@ does not speak for it.
    let by_ana = consent_of(
        &mut client,
        &admin,
        Person::EmailAddress("ana@example.com".into()),
        &[EMAIL],
        &[MARKETING],
    )
    .await;
    assert_eq!(by_ana.consents[0].status, IN);

    // Merged: a loser that redirects is followed on record and history.
    db.execute_raw(Statement::from_sql_and_values(
        db.get_database_backend(),
        match db.get_database_backend() {
            sea_orm::DbBackend::Postgres => {
                "UPDATE contacts SET merged_into = $1 WHERE tenant_id = $2 AND id = $3"
            }
            _ => "UPDATE contacts SET merged_into = ? WHERE tenant_id = ? AND id = ?",
        },
        [id_of(&winner).into(), "acme".into(), id_of(&loser).into()],
    ))
    .await
    .unwrap();
    let redirected = record(
        &mut client,
        &admin,
        statement(&loser.name, SMS, MARKETING, OUT),
    )
    .await;
    assert_eq!(redirected.contact, winner.name);
    assert_eq!(
        history(&mut client, &admin, &loser.name).await.total_size,
        3
    );

    // Erasure clears address and evidence, keeps the rest.
    let erased = consent::erase_contact(db, "acme", &id_of(&winner))
        .await
        .unwrap();
    assert_eq!(erased, 3);
    let after = consent::history_for_contact(db, "acme", &id_of(&winner))
        .await
        .unwrap();
    assert_eq!(after.len(), 3);
    assert!(
        after
            .iter()
            .all(|r| r.address.is_empty() && r.evidence.is_empty())
    );
    let erased_one = after.iter().find(|r| r.name == l.name).unwrap();
    assert_eq!(
        (erased_one.channel, erased_one.purpose, erased_one.status),
        (EMAIL, MARKETING, OUT)
    );
    assert_eq!(erased_one.consent_time, l.consent_time);
    // No row of the table still holds the address or the evidence.
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT address, data FROM consent_records".to_owned(),
        ))
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    for row in rows {
        let address: String = row.try_get_by_index(0).unwrap();
        assert_eq!(address, "");
        let data: Vec<u8> = row.try_get_by_index(1).unwrap();
        let text = String::from_utf8_lossy(&data);
        assert!(text.contains("web-form"), "the encoded record is readable");
        assert!(!text.contains("anna@example.com") && !text.contains("letter of"));
    }
}
on_both_backends!(repoint_erase_history);

#[test]
fn region_codes() {
    use consent::settings::{REGION_CODES, normalise_region};
    assert_eq!(REGION_CODES.len(), 249);
    assert!(REGION_CODES.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(normalise_region(" ch ").as_deref(), Ok("CH"));
    assert!(normalise_region("UK").is_err());
}
