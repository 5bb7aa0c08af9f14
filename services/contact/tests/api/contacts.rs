//! Every contact RPC: happy paths, validation, NOT_FOUND, etags, request ids, paging.

use crm_platform::auth::Role;
use crm_proto::contact::*;
use prost_types::FieldMask;
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::harness::{Backend, TestServer, admin, authed, token};
use crate::on_both_backends;

pub(crate) fn person(given: &str, family: &str, email: &str) -> Contact {
    Contact {
        given_name: given.into(),
        family_name: family.into(),
        emails: vec![EmailAddress {
            address: email.into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub(crate) async fn create(
    client: &mut contact_service_client::ContactServiceClient<tonic::transport::Channel>,
    token: &str,
    contact: Contact,
) -> Contact {
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

async fn crud_happy_path(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");

    let mut new = person("Ana", "López", "  Ana.Lopez@Example.COM ");
    new.phones.push(PhoneNumber {
        number: "+41 44 668 18 00".into(),
        ..Default::default()
    });
    new.lifecycle_stage = LifecycleStage::Lead as i32;
    new.tags = vec!["VIP".into(), "vip".into(), "press".into()];
    let created = create(&mut client, &token, new).await;
    assert!(created.name.starts_with("contacts/"));
    assert_eq!(created.emails[0].address, "ana.lopez@example.com");
    assert!(created.emails[0].primary);
    assert_eq!(created.phones[0].number, "+41446681800");
    assert_eq!(created.tags, ["vip", "press"]);
    assert_eq!(created.display_name, "Ana López");
    assert_eq!(created.stage_history.len(), 1);
    assert!(created.create_time.is_some() && !created.etag.is_empty());

    let got = client
        .get_contact(authed(
            GetContactRequest {
                name: created.name.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, created);

    let updated = client
        .update_contact(authed(
            UpdateContactRequest {
                contact: Some(Contact {
                    name: created.name.clone(),
                    job_title: "CTO".into(),
                    given_name: "ignored because not in the mask".into(),
                    lifecycle_stage: LifecycleStage::Customer as i32,
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["job_title".into(), "lifecycle_stage".into()],
                }),
                etag: created.etag.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.job_title, "CTO");
    assert_eq!(updated.given_name, "Ana");
    assert_ne!(updated.etag, created.etag);
    assert_eq!(updated.stage_history.len(), 2);

    let second = create(
        &mut client,
        &token,
        person("Ben", "Ortiz", "ben@example.com"),
    )
    .await;
    let batch = client
        .batch_get_contacts(authed(
            BatchGetContactsRequest {
                names: vec![second.name.clone(), created.name.clone()],
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.contacts.len(), 2);
    assert_eq!(batch.contacts[0].name, second.name);
    assert_eq!(batch.contacts[1].job_title, "CTO");

    let deleted = client
        .delete_contact(authed(
            DeleteContactRequest {
                name: created.name.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.delete_time.is_some() && deleted.expire_time.is_some());
    let listed = client
        .list_contacts(authed(ListContactsRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.contacts.len(),
        1,
        "soft-deleted contacts are not listed"
    );
    let with_deleted = client
        .list_contacts(authed(
            ListContactsRequest {
                show_deleted: true,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(with_deleted.total_size, 2);
    let update_deleted = client
        .update_contact(authed(
            UpdateContactRequest {
                contact: Some(Contact {
                    name: created.name.clone(),
                    job_title: "x".into(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["job_title".into()],
                }),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(update_deleted.code(), Code::FailedPrecondition);

    let restored = client
        .undelete_contact(authed(
            UndeleteContactRequest {
                name: created.name.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(restored.delete_time.is_none());
    let again = client
        .undelete_contact(authed(
            UndeleteContactRequest {
                name: created.name.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);
    server.finish().await;
}
on_both_backends!(crud_happy_path);

/// A create that fails (its contact id is taken) leaves nothing behind: no second row,
/// no search terms and no event of its own. (That a refusal in a later table undoes the
/// earlier ones, with or without a transaction, is `shared/platform/tests/bulk.rs`.)
async fn failed_create_writes_nothing(backend: Backend) {
    use sea_orm::{ConnectionTrait as _, Statement};
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    let id = uuid::Uuid::now_v7().to_string();
    let create_with_id = |contact: Contact| CreateContactRequest {
        contact: Some(contact),
        contact_id: id.clone(),
        ..Default::default()
    };
    client
        .create_contact(authed(
            create_with_id(person("Ana", "Lopez", "ana@first.example")),
            &token,
        ))
        .await
        .unwrap();
    let taken = client
        .create_contact(authed(
            create_with_id(person("Zebulon", "Quist", "zebulon@second.example")),
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");

    let db = server.database().await;
    let count = |table: &str, condition: String| {
        let sql = format!("SELECT COUNT(*) FROM {table} WHERE {condition}");
        let statement = Statement::from_string(db.get_database_backend(), sql);
        let db = &db;
        async move {
            let row = db.query_one_raw(statement).await.unwrap().unwrap();
            row.try_get_by_index::<i64>(0).unwrap()
        }
    };
    assert_eq!(count("contacts", format!("id = '{id}'")).await, 1);
    assert_eq!(
        count("outbox", format!("resource_name = 'contacts/{id}'")).await,
        1,
        "only the first create's event"
    );
    let refused_terms = "term LIKE 'zebulon%' OR term LIKE 'quist%'".to_owned();
    assert_eq!(
        count("contact_terms", refused_terms).await,
        0,
        "no search terms of the refused contact"
    );
    let stored = client
        .get_contact(authed(
            GetContactRequest {
                name: format!("contacts/{id}"),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.given_name, "Ana");
    server.finish().await;
}
on_both_backends!(failed_create_writes_nothing);

fn violated_fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "INVALID_ARGUMENT");
    status
        .get_details_bad_request()
        .expect("BadRequest")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

async fn validation_names_each_field(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    let bad = Contact {
        given_name: "x".repeat(500),
        emails: vec![
            EmailAddress {
                address: "not-an-email".into(),
                ..Default::default()
            },
            EmailAddress {
                address: "dup@example.com".into(),
                ..Default::default()
            },
            EmailAddress {
                address: "DUP@example.com".into(),
                ..Default::default()
            },
        ],
        phones: vec![PhoneNumber {
            number: "12345".into(),
            ..Default::default()
        }],
        account: "companies/1".into(),
        lifecycle_stage: 42,
        tags: vec!["".into()],
        ..Default::default()
    };
    let status = client
        .create_contact(authed(
            CreateContactRequest {
                contact: Some(bad),
                contact_id: "nope".into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    let fields = violated_fields(&status);
    for expected in [
        "contact.given_name",
        "contact.emails[0].address",
        "contact.emails[2].address",
        "contact.phones[0].number",
        "contact.account",
        "contact.lifecycle_stage",
        "contact.tags[0]",
        "contact_id",
    ] {
        assert!(
            fields.iter().any(|f| f == expected),
            "{expected} not in {fields:?}"
        );
    }
    let empty = client
        .create_contact(authed(
            CreateContactRequest {
                contact: Some(Contact::default()),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&empty), ["contact.given_name"]);
    let missing = client
        .create_contact(authed(CreateContactRequest::default(), &token))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&missing), ["contact"]);

    for (request, field) in [
        (
            GetContactRequest {
                name: "contacts/xyz".into(),
            },
            "name",
        ),
        (GetContactRequest { name: "".into() }, "name"),
        (
            GetContactRequest {
                name: "accounts/0192f0c1-7b1e-7cc3-9a44-4d2a3f1e9b10".into(),
            },
            "name",
        ),
    ] {
        let status = client
            .get_contact(authed(request, &token))
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), [field]);
    }
    let created = create(&mut client, &token, person("Ana", "L", "ana@example.com")).await;
    let no_mask = client
        .update_contact(authed(
            UpdateContactRequest {
                contact: Some(created.clone()),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&no_mask), ["update_mask"]);
    let output_only = client
        .update_contact(authed(
            UpdateContactRequest {
                contact: Some(created.clone()),
                update_mask: Some(FieldMask {
                    paths: vec!["create_time".into()],
                }),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&output_only), ["update_mask"]);
    for (filter, order_by) in [
        ("nope = 1", ""),
        ("given_name = ", ""),
        ("", "email desc"),
        ("given_name = 'x' OR", ""),
    ] {
        let status = client
            .list_contacts(authed(
                ListContactsRequest {
                    filter: filter.into(),
                    order_by: order_by.into(),
                    ..Default::default()
                },
                &token,
            ))
            .await
            .unwrap_err();
        let fields = violated_fields(&status);
        assert!(fields == ["filter"] || fields == ["order_by"], "{fields:?}");
    }
    let negative = client
        .list_contacts(authed(
            ListContactsRequest {
                page_size: -1,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&negative), ["page_size"]);
    // Nothing stored was lost or changed by the refused calls.
    let after = client
        .get_contact(authed(
            GetContactRequest {
                name: created.name.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after, created);
    server.finish().await;
}
on_both_backends!(validation_names_each_field);

async fn not_found_and_stale_etags(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    let missing = "contacts/0192f0c1-7b1e-7cc3-9a44-4d2a3f1e9b10".to_owned();
    let status = client
        .get_contact(authed(
            GetContactRequest {
                name: missing.clone(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "RESOURCE_NOT_FOUND"
    );
    let status = client
        .delete_contact(authed(
            DeleteContactRequest {
                name: missing.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .batch_get_contacts(authed(
            BatchGetContactsRequest {
                names: vec![missing.clone()],
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    let created = create(&mut client, &token, person("Ana", "L", "ana@example.com")).await;
    let update = |etag: String, title: &str| UpdateContactRequest {
        contact: Some(Contact {
            name: created.name.clone(),
            job_title: title.into(),
            ..Default::default()
        }),
        update_mask: Some(FieldMask {
            paths: vec!["job_title".into()],
        }),
        etag,
        ..Default::default()
    };
    client
        .update_contact(authed(update(created.etag.clone(), "First"), &token))
        .await
        .unwrap();
    let stale = client
        .update_contact(authed(update(created.etag.clone(), "Second"), &token))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    assert_eq!(
        stale.get_details_error_info().unwrap().reason,
        "ETAG_MISMATCH"
    );
    let stale_delete = client
        .delete_contact(authed(
            DeleteContactRequest {
                name: created.name.clone(),
                etag: created.etag.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(stale_delete.code(), Code::Aborted);
    let current = client
        .get_contact(authed(
            GetContactRequest {
                name: created.name.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(current.job_title, "First");
    server.finish().await;
}
on_both_backends!(not_found_and_stale_etags);

async fn request_ids_make_one_contact(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = admin("acme");
    let request = CreateContactRequest {
        contact: Some(person("Ana", "L", "ana@example.com")),
        request_id: "7d1c7c0e-2f5e-4a57-b3b1-6f3a0c3b9d11".into(),
        ..Default::default()
    };
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut client = server.client().await;
        let (request, token) = (request.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            client.create_contact(authed(request, &token)).await
        }));
    }
    let mut names = std::collections::HashSet::new();
    for task in tasks {
        names.insert(task.await.unwrap().expect("create").into_inner().name);
    }
    assert_eq!(names.len(), 1, "one contact for one request id");
    let mut client = server.client().await;
    let listed = client
        .list_contacts(authed(ListContactsRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total_size, 1);

    let mut reused = request.clone();
    reused.contact = Some(person("Someone", "Else", "else@example.com"));
    let status = client
        .create_contact(authed(reused, &token))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["request_id"]);
    server.finish().await;
}
on_both_backends!(request_ids_make_one_contact);

async fn pages_filters_and_orders(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    let families = ["Adams", "Baker", "Clark", "Davis", "Evans", "Fox", "Green"];
    for (i, family) in families.iter().enumerate() {
        let mut contact = person("P", family, &format!("p{i}@example.com"));
        contact.lifecycle_stage = if i % 2 == 0 {
            LifecycleStage::Customer
        } else {
            LifecycleStage::Lead
        } as i32;
        create(&mut client, &token, contact).await;
    }
    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_contacts(authed(
                ListContactsRequest {
                    page_size: 3,
                    page_token: page_token.clone(),
                    order_by: "family_name desc".into(),
                    ..Default::default()
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.total_size, 7);
        seen.extend(page.contacts.into_iter().map(|c| c.family_name));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    let mut expected: Vec<String> = families.iter().map(|f| (*f).to_owned()).collect();
    expected.reverse();
    assert_eq!(seen, expected);

    let customers = client
        .list_contacts(authed(
            ListContactsRequest {
                filter: r#"lifecycle_stage = CUSTOMER AND (family_name = "A*" OR email: "P6@example.com")"#.into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let found: Vec<&str> = customers
        .contacts
        .iter()
        .map(|c| c.family_name.as_str())
        .collect();
    assert_eq!(found, ["Adams", "Green"]);

    let first = client
        .list_contacts(authed(
            ListContactsRequest {
                page_size: 2,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let other_filter = client
        .list_contacts(authed(
            ListContactsRequest {
                page_size: 2,
                page_token: first.next_page_token.clone(),
                filter: "family_name = \"Fox\"".into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&other_filter), ["page_token"]);
    let mut forged = first.next_page_token.clone().into_bytes();
    forged[5] = if forged[5] == b'A' { b'B' } else { b'A' };
    let forged = client
        .list_contacts(authed(
            ListContactsRequest {
                page_size: 2,
                page_token: String::from_utf8(forged).unwrap(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&forged), ["page_token"]);
    server.finish().await;
}
on_both_backends!(pages_filters_and_orders);

async fn reps_change_only_their_own(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let ana = token("acme", "ana", &[Role::SalesRep]);
    let ben = token("acme", "ben", &[Role::SalesRep]);
    let mut owned = person("Owned", "ByAna", "owned@example.com");
    owned.owner = "ana".into();
    let owned = create(&mut client, &ana, owned).await;
    let mut stolen = person("X", "Y", "x@example.com");
    stolen.owner = "ana".into();
    let status = client
        .create_contact(authed(
            CreateContactRequest {
                contact: Some(stolen),
                ..Default::default()
            },
            &ben,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let edit = UpdateContactRequest {
        contact: Some(Contact {
            name: owned.name.clone(),
            job_title: "x".into(),
            ..Default::default()
        }),
        update_mask: Some(FieldMask {
            paths: vec!["job_title".into()],
        }),
        ..Default::default()
    };
    let status = client
        .update_contact(authed(edit.clone(), &ben))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = client
        .delete_contact(authed(
            DeleteContactRequest {
                name: owned.name.clone(),
                ..Default::default()
            },
            &ben,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    client
        .update_contact(authed(edit.clone(), &ana))
        .await
        .expect("owner may edit");
    let manager = token("acme", "mia", &[Role::SalesManager]);
    client
        .update_contact(authed(edit, &manager))
        .await
        .expect("manager may edit");
    server.finish().await;
}
on_both_backends!(reps_change_only_their_own);
