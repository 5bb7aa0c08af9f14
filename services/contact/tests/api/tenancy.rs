//! Tenant B never sees or changes tenant A's contacts.

use std::time::Duration;

use crm_proto::common::WatchEventsRequest;
use crm_proto::contact::*;
use prost_types::FieldMask;
use tonic::Code;

use crate::harness::{Backend, TestServer, admin, authed};
use crate::on_both_backends;

async fn tenants_are_isolated(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let (a, b) = (admin("tenant-a"), admin("tenant-b"));
    let mut names = Vec::new();
    for i in 0..3 {
        let contact = Contact {
            given_name: format!("A{i}"),
            emails: vec![EmailAddress {
                address: format!("a{i}@a.example"),
                ..Default::default()
            }],
            ..Default::default()
        };
        let created = client
            .create_contact(authed(
                CreateContactRequest {
                    contact: Some(contact),
                    ..Default::default()
                },
                &a,
            ))
            .await
            .unwrap()
            .into_inner();
        names.push(created.name);
    }
    let name = names[0].clone();
    let status = client
        .get_contact(authed(GetContactRequest { name: name.clone() }, &b))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .batch_get_contacts(authed(
            BatchGetContactsRequest {
                names: names.clone(),
            },
            &b,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let listed = client
        .list_contacts(authed(ListContactsRequest::default(), &b))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((listed.contacts.len(), listed.total_size), (0, 0));
    let update = UpdateContactRequest {
        contact: Some(Contact {
            name: name.clone(),
            job_title: "hijacked".into(),
            ..Default::default()
        }),
        update_mask: Some(FieldMask {
            paths: vec!["job_title".into()],
        }),
        ..Default::default()
    };
    assert_eq!(
        client
            .update_contact(authed(update, &b))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let delete = DeleteContactRequest {
        name: name.clone(),
        ..Default::default()
    };
    assert_eq!(
        client
            .delete_contact(authed(delete, &b))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // A page token of tenant A is refused for tenant B.
    let page = client
        .list_contacts(authed(
            ListContactsRequest {
                page_size: 1,
                ..Default::default()
            },
            &a,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!page.next_page_token.is_empty());
    let status = client
        .list_contacts(authed(
            ListContactsRequest {
                page_size: 1,
                page_token: page.next_page_token,
                ..Default::default()
            },
            &b,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // Tenant B's feed carries none of tenant A's events.
    let mut stream = client
        .watch_events(authed(
            WatchEventsRequest {
                after_position: 0,
                heartbeat_seconds: 1,
                ..Default::default()
            },
            &b,
        ))
        .await
        .unwrap()
        .into_inner();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(Ok(Some(event))) = tokio::time::timeout_at(deadline, stream.message()).await {
        assert_eq!(
            event.r#type,
            crm_platform::events::HEARTBEAT_TYPE,
            "tenant B saw {event:?}"
        );
    }
    // And A's contact is untouched.
    let still = client
        .get_contact(authed(GetContactRequest { name }, &a))
        .await
        .unwrap()
        .into_inner();
    assert!(still.job_title.is_empty() && still.delete_time.is_none());
    server.finish().await;
}
on_both_backends!(tenants_are_isolated);
