//! Contact rules that depend on other resources: the tenant's default phone region and
//! the account link.

use crm_proto::contact::*;
use prost_types::FieldMask;
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::contacts::{create, person};
use crate::harness::{Backend, TestServer, admin, authed};
use crate::on_both_backends;

async fn national_numbers_follow_the_tenant_region(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    let mut local = person("Lena", "Local", "lena@local.ch");
    local.phones.push(PhoneNumber {
        number: "044 668 18 00".into(),
        ..Default::default()
    });
    // Without a region, a national number is refused, naming the field.
    let refused = client
        .create_contact(authed(
            CreateContactRequest {
                contact: Some(local.clone()),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(
        refused.get_details_bad_request().unwrap().field_violations[0].field,
        "contact.phones[0].number"
    );
    client
        .update_contact_settings(authed(
            UpdateContactSettingsRequest {
                contact_settings: Some(ContactSettings {
                    name: "contactSettings".into(),
                    default_phone_region: "CH".into(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["default_phone_region".into()],
                }),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap();
    let created = create(&mut client, &token, local).await;
    assert_eq!(created.phones[0].number, "+41446681800");
    // Search and consent lookups read national numbers the same way.
    let found = client
        .get_consent(authed(
            GetConsentRequest {
                person: Some(get_consent_request::Person::PhoneNumber(
                    "044 668 18 00".into(),
                )),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.contacts, std::slice::from_ref(&created.name));
    // Another tenant has no region.
    let mut elsewhere = person("Otto", "Other", "otto@other.ch");
    elsewhere.phones.push(PhoneNumber {
        number: "044 668 18 00".into(),
        ..Default::default()
    });
    let refused = client
        .create_contact(authed(
            CreateContactRequest {
                contact: Some(elsewhere),
                ..Default::default()
            },
            &admin("globex"),
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    server.finish().await;
}
on_both_backends!(national_numbers_follow_the_tenant_region);

async fn account_links_must_name_live_accounts(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    let account = client
        .create_account(authed(
            CreateAccountRequest {
                account: Some(Account {
                    display_name: "Acme AG".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut linked = person("Lia", "Linked", "lia@acme.ch");
    linked.account = account.name.clone();
    let linked = create(&mut client, &token, linked).await;
    assert_eq!(linked.account, account.name);

    let missing = "accounts/0192f0c1-7b1e-7cc3-9a44-4d2a3f1e9b10";
    let mut dangling = person("Dan", "Dangling", "dan@acme.ch");
    dangling.account = missing.into();
    let refused = client
        .create_contact(authed(
            CreateContactRequest {
                contact: Some(dangling),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(
        refused.get_details_bad_request().unwrap().field_violations[0].field,
        "contact.account"
    );
    // Another tenant's account is no account at all.
    let mut foreign = person("Fay", "Foreign", "fay@globex.ch");
    foreign.account = account.name.clone();
    let refused = client
        .create_contact(authed(
            CreateContactRequest {
                contact: Some(foreign),
                ..Default::default()
            },
            &admin("globex"),
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    // Updates are checked too.
    let refused = client
        .update_contact(authed(
            UpdateContactRequest {
                contact: Some(Contact {
                    name: linked.name.clone(),
                    account: missing.into(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["account".into()],
                }),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    server.finish().await;
}
on_both_backends!(account_links_must_name_live_accounts);
