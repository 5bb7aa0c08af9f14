//! GDPR export and erasure: after ErasePersonalData no table, outbox payload, cache
//! entry or export holds the person's name, email or phone, and the person cannot be
//! brought back.

use crm_platform::auth::Role;
use crm_proto::contact::*;
use prost_types::FieldMask;
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::contacts::{create, person};
use crate::duplicates::feed;
use crate::harness::{Backend, TestServer, admin, authed, token};
use crate::on_both_backends;
use crate::scan::find_values;

type Client = contact_service_client::ContactServiceClient<tonic::transport::Channel>;

/// Records about a contact elsewhere in the service: an interaction, a consent
/// statement and a static list membership.
pub(crate) async fn attach_records(
    client: &mut Client,
    token: &str,
    contact: &Contact,
    note: &str,
) {
    let email = contact.emails[0].address.clone();
    client
        .create_interaction(authed(
            CreateInteractionRequest {
                interaction: Some(Interaction {
                    r#type: InteractionType::Call as i32,
                    contact: contact.name.clone(),
                    interaction_time: Some(prost_types::Timestamp {
                        seconds: 1_790_000_000,
                        nanos: 0,
                    }),
                    subject: format!("call with {}", contact.family_name),
                    body: note.into(),
                    participants: vec![InteractionParticipant {
                        email_address: email.clone(),
                        display_name: contact.given_name.clone(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap();
    client
        .record_consent(authed(
            RecordConsentRequest {
                consent_record: Some(ConsentRecord {
                    contact: contact.name.clone(),
                    channel: crm_proto::common::Channel::Email as i32,
                    purpose: ConsentPurpose::Marketing as i32,
                    status: ConsentStatus::OptedIn as i32,
                    address: email,
                    source: "web-form:newsletter".into(),
                    evidence: format!("double opt-in of {}", contact.family_name),
                    ..Default::default()
                }),
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap();
    let segment = client
        .create_segment(authed(
            CreateSegmentRequest {
                segment: Some(Segment {
                    display_name: format!("list of {}", contact.name),
                    r#type: SegmentType::Static as i32,
                    ..Default::default()
                }),
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner();
    client
        .add_segment_members(authed(
            AddSegmentMembersRequest {
                segment: segment.name,
                contacts: vec![contact.name.clone()],
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap();
}

/// A person with a history: created, updated twice, and a duplicate merged in.
async fn person_with_history(client: &mut Client, token: &str) -> (Contact, Contact, Vec<String>) {
    let mut anna = person("Annika", "Zimmerli", "annika.zimmerli@example.org");
    anna.phones.push(PhoneNumber {
        number: "+41 79 987 65 43".into(),
        ..Default::default()
    });
    anna.job_title = "Chief Pastry Officer".into();
    let anna = create(client, token, anna).await;
    for title in ["Head Baker", "Chief Baker"] {
        client
            .update_contact(authed(
                UpdateContactRequest {
                    contact: Some(Contact {
                        name: anna.name.clone(),
                        job_title: title.into(),
                        ..Default::default()
                    }),
                    update_mask: Some(FieldMask {
                        paths: vec!["job_title".into()],
                    }),
                    ..Default::default()
                },
                token,
            ))
            .await
            .unwrap();
    }
    attach_records(
        client,
        token,
        &anna,
        "Annika prefers calls after 5pm, +41 79 987 65 43",
    )
    .await;
    let twin = create(
        client,
        token,
        person("Annika", "Zimmerly", "zimmerli.private@example.net"),
    )
    .await;
    attach_records(client, token, &twin, "second note").await;
    client
        .merge_contacts(authed(
            MergeContactsRequest {
                winner: anna.name.clone(),
                losers: vec![twin.name.clone()],
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap();
    let values = [
        "Annika",
        "Zimmerli",
        "Zimmerly",
        "annika.zimmerli@example.org",
        "zimmerli.private@example.net",
        "+41799876543",
        "41799876543",
        "Chief Baker",
        "Head Baker",
        "Chief Pastry Officer",
    ]
    .map(str::to_owned)
    .to_vec();
    (anna, twin, values)
}

async fn erasure_leaves_nothing_behind(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    // Someone else, whose data must survive.
    let bystander = create(
        &mut client,
        &token,
        person("Bruno", "Keller", "bruno@example.org"),
    )
    .await;
    let (anna, twin, values) = person_with_history(&mut client, &token).await;
    assert!(
        !find_values(&server.database_url, &values).await.is_empty(),
        "the scan finds the values before the erasure"
    );

    // Only an admin may erase; the reason is required.
    let manager = token_of(Role::SalesManager);
    let denied = client
        .erase_personal_data(authed(
            ErasePersonalDataRequest {
                contact: anna.name.clone(),
                reason: "GDPR request #1".into(),
                ..Default::default()
            },
            &manager,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let no_reason = client
        .erase_personal_data(authed(
            ErasePersonalDataRequest {
                contact: anna.name.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(no_reason.code(), Code::InvalidArgument);
    assert_eq!(
        no_reason
            .get_details_bad_request()
            .unwrap()
            .field_violations[0]
            .field,
        "reason"
    );

    let request = ErasePersonalDataRequest {
        contact: anna.name.clone(),
        reason: "GDPR request #4711".into(),
        request_id: "0192f0c1-7b1e-7cc3-9a44-4d2a3f1e9b11".into(),
    };
    let erased = client
        .erase_personal_data(authed(request.clone(), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(erased.contact, anna.name);
    assert_eq!(erased.merged_contacts, std::slice::from_ref(&twin.name));
    assert!(erased.erased_fields.contains(&"emails".to_owned()));
    assert_eq!(erased.addresses_suppressed, 2);
    assert!(erased.events_redacted >= 6, "{erased:?}");
    assert_eq!(erased.interactions_erased, 2, "{erased:?}");
    assert_eq!(erased.consent_records_erased, 2, "{erased:?}");
    // A retry answers the same.
    let again = client
        .erase_personal_data(authed(request, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, erased);

    // Nothing in any table, the outbox included.
    let left = find_values(&server.database_url, &values).await;
    assert!(left.is_empty(), "personal values left behind: {left:?}");
    // Not through the cache, the feed or the exports either.
    let got = client
        .get_contact(authed(
            GetContactRequest {
                name: anna.name.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(got.given_name.is_empty() && got.emails.is_empty() && got.phones.is_empty());
    let events = feed(&mut client, &token).await;
    let erasures = events
        .iter()
        .filter(|e| e.r#type == "crm.contact.v1.PersonalDataErased")
        .count();
    assert_eq!(erasures, 1);
    let encoded: Vec<u8> = events
        .iter()
        .flat_map(prost::Message::encode_to_vec)
        .collect();
    for value in &values {
        assert!(
            !encoded.windows(value.len()).any(|w| w == value.as_bytes()),
            "{value} in the event feed"
        );
    }
    let export = client
        .export_personal_data(authed(
            ExportPersonalDataRequest {
                contact: anna.name.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let text = format!("{export:?}");
    for value in &values {
        assert!(!text.contains(value.as_str()), "{value} in the export");
    }
    // The bystander is untouched.
    let bruno = client
        .get_contact(authed(
            GetContactRequest {
                name: bystander.name.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bruno.family_name, "Keller");
    // Consent for the erased addresses is a suppressed opt-out.
    let consent = client
        .get_consent(authed(
            GetConsentRequest {
                person: Some(get_consent_request::Person::EmailAddress(
                    "annika.zimmerli@example.org".into(),
                )),
                channels: vec![crm_proto::common::Channel::Email as i32],
                purposes: vec![ConsentPurpose::Marketing as i32],
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(consent.consents[0].status, ConsentStatus::OptedOut as i32);
    assert!(consent.consents[0].suppressed);
    // The person cannot be brought back: not by CreateContact, not by an import.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(ImportContactsRequest {
        options: Some(ImportOptions {
            mode: ImportMode::UpsertByEmail as i32,
            ..Default::default()
        }),
        rows: vec![ImportRow {
            row_id: "1".into(),
            contact: Some(person("Annika", "Zimmerli", "annika.zimmerli@example.org")),
        }],
    })
    .await
    .unwrap();
    drop(tx);
    let mut results = client
        .import_contacts(authed(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut outcomes = Vec::new();
    while let Some(message) = results.message().await.unwrap() {
        outcomes.extend(message.results.into_iter().map(|r| (r.outcome, r.reason)));
    }
    assert_eq!(
        outcomes,
        [(
            ImportRowOutcome::Rejected as i32,
            "ERASED_PERSON".to_owned()
        )]
    );
    let refused = client
        .create_contact(authed(
            CreateContactRequest {
                contact: Some(person("Annika", "Z.", "ANNIKA.ZIMMERLI@example.org")),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(
        refused.get_details_error_info().unwrap().reason,
        "ERASED_PERSON"
    );
    server.finish().await;
}
on_both_backends!(erasure_leaves_nothing_behind);

fn token_of(role: Role) -> String {
    token("acme", "someone", &[role])
}

async fn export_holds_everything(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    let (anna, twin, _) = person_with_history(&mut client, &token).await;
    // Asking for the merged twin exports the person it was merged into.
    for name in [&anna.name, &twin.name] {
        let export = client
            .export_personal_data(authed(
                ExportPersonalDataRequest {
                    contact: name.clone(),
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        let contact = export.contact.unwrap();
        assert_eq!(contact.name, anna.name);
        assert_eq!(contact.job_title, "Chief Baker");
        assert_eq!(
            contact.emails.len(),
            2,
            "the twin's address came with the merge"
        );
        assert_eq!(export.merged_contacts.len(), 1);
        assert_eq!(export.merged_contacts[0].name, twin.name);
        assert!(export.export_time.is_some());
        assert_eq!(
            export.interactions.len(),
            2,
            "both people's calls, moved by the merge"
        );
        assert_eq!(export.consent_records.len(), 2);
        assert_eq!(export.segments.len(), 2);
        let types: Vec<&str> = export
            .audit_events
            .iter()
            .map(|e| e.r#type.as_str())
            .collect();
        assert!(
            types.contains(&"crm.contact.v1.InteractionCreated"),
            "{types:?}"
        );
        assert!(
            types.contains(&"crm.contact.v1.ContactCreated"),
            "{types:?}"
        );
        assert!(
            types.contains(&"crm.contact.v1.ContactsMerged"),
            "{types:?}"
        );
    }
    let missing = client
        .export_personal_data(authed(
            ExportPersonalDataRequest {
                contact: "contacts/0192f0c1-7b1e-7cc3-9a44-4d2a3f1e9b99".into(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let other_tenant = client
        .export_personal_data(authed(
            ExportPersonalDataRequest {
                contact: anna.name.clone(),
            },
            &admin("globex"),
        ))
        .await
        .unwrap_err();
    assert_eq!(other_tenant.code(), Code::NotFound);
    server.finish().await;
}
on_both_backends!(export_holds_everything);
