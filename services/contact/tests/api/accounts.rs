//! Every account RPC: happy paths, validation, the parent hierarchy, etags, request
//! ids, tenancy, the rep rule, contact counts, paging, soft delete and the purge.

use std::sync::Arc;
use std::time::Duration;

use crm_platform::auth::{Caller, Role};
use crm_proto::common::{Address, Money};
use crm_proto::contact::contact_service_client::ContactServiceClient;
use crm_proto::contact::*;
use prost_types::FieldMask;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

use crate::harness::{Backend, TestServer, admin, authed, token};
use crate::on_both_backends;

type Client = ContactServiceClient<Channel>;

fn company(name: &str) -> Account {
    Account {
        display_name: name.into(),
        ..Default::default()
    }
}

async fn create(client: &mut Client, token: &str, account: Account) -> Account {
    client
        .create_account(authed(
            CreateAccountRequest {
                account: Some(account),
                ..Default::default()
            },
            token,
        ))
        .await
        .expect("create account")
        .into_inner()
}

async fn get(client: &mut Client, token: &str, name: &str) -> Result<Account, tonic::Status> {
    client
        .get_account(authed(GetAccountRequest { name: name.into() }, token))
        .await
        .map(|r| r.into_inner())
}

async fn update(
    client: &mut Client,
    token: &str,
    account: Account,
    paths: &[&str],
) -> Result<Account, tonic::Status> {
    client
        .update_account(authed(
            UpdateAccountRequest {
                account: Some(account),
                update_mask: Some(FieldMask {
                    paths: paths.iter().map(|p| (*p).to_owned()).collect(),
                }),
                ..Default::default()
            },
            token,
        ))
        .await
        .map(|r| r.into_inner())
}

async fn set_parent(
    client: &mut Client,
    token: &str,
    child: &str,
    parent: &str,
) -> Result<Account, tonic::Status> {
    update(
        client,
        token,
        Account {
            name: child.into(),
            parent_account: parent.into(),
            ..Default::default()
        },
        &["parent_account"],
    )
    .await
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

async fn crud_happy_path(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");

    let created = create(
        &mut client,
        &token,
        Account {
            display_name: "  Acme AG ".into(),
            domain: "https://WWW.Acme.ch/about".into(),
            industry: "Manufacturing".into(),
            employee_count: 250,
            annual_revenue: Some(Money {
                currency_code: "CHF".into(),
                units: 12_000_000,
                nanos: 500_000_000,
            }),
            tier: AccountTier::Strategic as i32,
            address: Some(Address {
                locality: "Zürich".into(),
                country_code: "ch".into(),
                ..Default::default()
            }),
            tags: vec!["VIP".into(), "vip".into(), "b2b".into()],
            ..Default::default()
        },
    )
    .await;
    assert!(created.name.starts_with("accounts/"));
    assert_eq!(created.display_name, "Acme AG");
    assert_eq!(created.domain, "acme.ch");
    assert_eq!(created.tags, ["vip", "b2b"]);
    assert_eq!(created.address.as_ref().unwrap().country_code, "CH");
    assert_eq!(created.etag, "r1");
    assert_eq!(created.contact_count, 0);
    assert!(created.create_time.is_some() && created.delete_time.is_none());

    let got = get(&mut client, &token, &created.name).await.unwrap();
    assert_eq!(got, created);

    let updated = client
        .update_account(authed(
            UpdateAccountRequest {
                account: Some(Account {
                    name: created.name.clone(),
                    industry: "Robotics".into(),
                    display_name: "ignored: not in the mask".into(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["industry".into()],
                }),
                etag: created.etag.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.industry, "Robotics");
    assert_eq!(updated.display_name, "Acme AG");
    assert_eq!(updated.etag, "r2");

    // validate_only stores nothing.
    let preview = client
        .create_account(authed(
            CreateAccountRequest {
                account: Some(company("Ghost GmbH")),
                validate_only: true,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        get(&mut client, &token, &preview.name)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    let second = create(&mut client, &token, company("Beta SA")).await;
    let batch = client
        .batch_get_accounts(authed(
            BatchGetAccountsRequest {
                names: vec![second.name.clone(), created.name.clone()],
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.accounts.len(), 2);
    assert_eq!(batch.accounts[0].name, second.name);
    assert_eq!(batch.accounts[1].industry, "Robotics");
    let missing = client
        .batch_get_accounts(authed(
            BatchGetAccountsRequest {
                names: vec![
                    second.name.clone(),
                    "accounts/0192f0c1-7b1e-7cc3-9a44-4d2a3f1e9b10".into(),
                ],
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // Delete: gone from the list, back with show_deleted, no updates until undeleted.
    let deleted = client
        .delete_account(authed(
            DeleteAccountRequest {
                name: created.name.clone(),
                etag: updated.etag.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.delete_time.is_some() && deleted.expire_time.is_some());
    let listed = client
        .list_accounts(authed(ListAccountsRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.accounts.len(), 1);
    assert_eq!(listed.total_size, 1);
    let with_deleted = client
        .list_accounts(authed(
            ListAccountsRequest {
                show_deleted: true,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(with_deleted.accounts.len(), 2);
    let update_deleted = update(
        &mut client,
        &token,
        Account {
            name: created.name.clone(),
            industry: "x".into(),
            ..Default::default()
        },
        &["industry"],
    )
    .await
    .unwrap_err();
    assert_eq!(update_deleted.code(), Code::FailedPrecondition);
    let undeleted = client
        .undelete_account(authed(
            UndeleteAccountRequest {
                name: created.name.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(undeleted.delete_time.is_none() && undeleted.expire_time.is_none());
    assert_eq!(undeleted.industry, "Robotics");
    let again = client
        .undelete_account(authed(
            UndeleteAccountRequest {
                name: created.name.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);

    // AIP-134: allow_missing creates the account under the given name.
    let wanted = "accounts/0192f0c1-7b1e-7cc3-9a44-4d2a3f1e9b10";
    let upserted = client
        .update_account(authed(
            UpdateAccountRequest {
                account: Some(Account {
                    name: wanted.into(),
                    display_name: "Gamma Ltd".into(),
                    domain: "gamma.co.uk".into(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["*".into()],
                }),
                allow_missing: true,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(upserted.name, wanted);
    assert_eq!(
        get(&mut client, &token, wanted).await.unwrap().domain,
        "gamma.co.uk"
    );
}
on_both_backends!(crud_happy_path);

async fn validation_names_each_field(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");

    let mut bad = Account {
        display_name: "  ".into(),
        domain: "not a domain".into(),
        employee_count: -5,
        annual_revenue: Some(Money {
            currency_code: "eur".into(),
            units: 10,
            nanos: -1,
        }),
        tier: 42,
        parent_account: "companies/1".into(),
        tags: vec!["".into()],
        address: Some(Address {
            country_code: "CHE".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    bad.attributes.insert(
        "Bad Key".into(),
        crm_proto::common::AttributeValue::default(),
    );
    let status = client
        .create_account(authed(
            CreateAccountRequest {
                account: Some(bad),
                account_id: "nope".into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    let fields = violated_fields(&status);
    for expected in [
        "account.display_name",
        "account.domain",
        "account.employee_count",
        "account.annual_revenue.currency_code",
        "account.annual_revenue.nanos",
        "account.tier",
        "account.parent_account",
        "account.tags[0]",
        "account.address.country_code",
        "account.attributes.Bad Key",
        "account_id",
    ] {
        assert!(
            fields.iter().any(|f| f == expected),
            "{expected} not in {fields:?}"
        );
    }

    // Domains: normalised when plausible, refused otherwise.
    for (raw, expected) in [
        ("https://WWW.Acme.ch/about", "acme.ch"),
        (
            "HTTP://shop.Example.co.uk:8080/path?q=1",
            "shop.example.co.uk",
        ),
        ("example.org.", "example.org"),
        ("www.beta.io", "beta.io"),
    ] {
        let mut account = company("Domain Test");
        account.domain = raw.into();
        assert_eq!(create(&mut client, &token, account).await.domain, expected);
    }
    for raw in [
        "localhost",
        "acme..ch",
        "10.0.0.1",
        "-acme.ch",
        "acme ch.com",
    ] {
        let mut account = company("Domain Test");
        account.domain = raw.into();
        let status = client
            .create_account(authed(
                CreateAccountRequest {
                    account: Some(account),
                    ..Default::default()
                },
                &token,
            ))
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["account.domain"], "{raw}");
    }

    // Money: out-of-range nanos, mismatched sign, negative revenue.
    for (units, nanos, field) in [
        (1, 1_000_000_000, "account.annual_revenue.nanos"),
        (5, -3, "account.annual_revenue.nanos"),
        (-5, 0, "account.annual_revenue.units"),
    ] {
        let mut account = company("Money Test");
        account.annual_revenue = Some(Money {
            currency_code: "EUR".into(),
            units,
            nanos,
        });
        let status = client
            .create_account(authed(
                CreateAccountRequest {
                    account: Some(account),
                    ..Default::default()
                },
                &token,
            ))
            .await
            .unwrap_err();
        assert!(
            violated_fields(&status).contains(&field.to_owned()),
            "{field}"
        );
    }

    // Update: an emptied display name is refused; unknown mask paths too.
    let acme = create(&mut client, &token, company("Acme")).await;
    let emptied = update(
        &mut client,
        &token,
        Account {
            name: acme.name.clone(),
            ..Default::default()
        },
        &["display_name"],
    )
    .await
    .unwrap_err();
    assert_eq!(violated_fields(&emptied), ["account.display_name"]);
    let output_only = update(&mut client, &token, acme.clone(), &["contact_count"])
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&output_only), ["update_mask"]);
    let bad_name = get(
        &mut client,
        &token,
        "contacts/0192f0c1-7b1e-7cc3-9a44-4d2a3f1e9b10",
    )
    .await
    .unwrap_err();
    assert_eq!(violated_fields(&bad_name), ["name"]);
    for (filter, order_by) in [
        ("nope = 1", ""),
        ("tier = GOLD", ""),
        ("employee_count > many", ""),
        ("", "industry"),
    ] {
        let status = client
            .list_accounts(authed(
                ListAccountsRequest {
                    filter: filter.into(),
                    order_by: order_by.into(),
                    ..Default::default()
                },
                &token,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{filter} {order_by}");
    }
}
on_both_backends!(validation_names_each_field);

async fn parents_exist_and_never_cycle(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");

    let a = create(&mut client, &token, company("A Holding")).await;
    let mut b = company("B Group");
    b.parent_account = a.name.clone();
    let b = create(&mut client, &token, b).await;
    let mut c = company("C Branch");
    c.parent_account = b.name.clone();
    let c = create(&mut client, &token, c).await;
    assert_eq!(c.parent_account, b.name);

    // Missing parent.
    let mut orphan = company("Orphan");
    orphan.parent_account = "accounts/0192f0c1-7b1e-7cc3-9a44-4d2a3f1e9b10".into();
    let status = client
        .create_account(authed(
            CreateAccountRequest {
                account: Some(orphan),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["account.parent_account"]);

    // Self-parent, on update and on create with a chosen id.
    let status = set_parent(&mut client, &token, &a.name, &a.name)
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["account.parent_account"]);
    let id = "0192f0c1-7b1e-7cc3-9a44-4d2a3f1e9b11";
    let mut own = company("Self");
    own.parent_account = format!("accounts/{id}");
    let status = client
        .create_account(authed(
            CreateAccountRequest {
                account: Some(own),
                account_id: id.into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["account.parent_account"]);

    // A 3-level cycle: A ← B ← C, then A under C.
    let status = set_parent(&mut client, &token, &a.name, &c.name)
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["account.parent_account"]);
    // A 2-level one: A under B.
    let status = set_parent(&mut client, &token, &a.name, &b.name)
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["account.parent_account"]);
    assert!(
        get(&mut client, &token, &a.name)
            .await
            .unwrap()
            .parent_account
            .is_empty()
    );

    // A deleted account is no parent for new links.
    let d = create(&mut client, &token, company("D Defunct")).await;
    client
        .delete_account(authed(
            DeleteAccountRequest {
                name: d.name.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap();
    let status = set_parent(&mut client, &token, &c.name, &d.name)
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["account.parent_account"]);

    // Re-parenting without a cycle works, and filters find the children.
    set_parent(&mut client, &token, &c.name, &a.name)
        .await
        .unwrap();
    let children = client
        .list_accounts(authed(
            ListAccountsRequest {
                filter: format!("parent_account = \"{}\"", a.name),
                order_by: "display_name".into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = children
        .accounts
        .iter()
        .map(|x| x.display_name.as_str())
        .collect();
    assert_eq!(names, ["B Group", "C Branch"]);
}
on_both_backends!(parents_exist_and_never_cycle);

async fn stale_etags_abort(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    let acme = create(&mut client, &token, company("Acme")).await;
    let mut changed = acme.clone();
    changed.industry = "Retail".into();
    update(&mut client, &token, changed.clone(), &["industry"])
        .await
        .unwrap();
    // `acme.etag` (r1) is now stale: on the account and in the request.
    changed.industry = "Banking".into();
    let stale = update(&mut client, &token, changed.clone(), &["industry"])
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    assert_eq!(
        stale.get_details_error_info().unwrap().reason,
        "ETAG_MISMATCH"
    );
    let stale_delete = client
        .delete_account(authed(
            DeleteAccountRequest {
                name: acme.name.clone(),
                etag: acme.etag.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(stale_delete.code(), Code::Aborted);
    assert_eq!(
        get(&mut client, &token, &acme.name).await.unwrap().industry,
        "Retail"
    );
}
on_both_backends!(stale_etags_abort);

async fn request_ids_make_one_account(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    let request = CreateAccountRequest {
        account: Some(company("Acme")),
        request_id: "7f1c6d0e-3a57-4f7e-9d9b-1c2b3a4d5e6f".into(),
        ..Default::default()
    };
    let first = client
        .create_account(authed(request.clone(), &token))
        .await
        .unwrap()
        .into_inner();
    let second = client
        .create_account(authed(request.clone(), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, second);
    let listed = client
        .list_accounts(authed(ListAccountsRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total_size, 1);
    // The same id for another request is refused.
    let mut other = request.clone();
    other.account = Some(company("Other"));
    let reused = client
        .create_account(authed(other, &token))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&reused), ["request_id"]);

    // An update retried with its request id applies once.
    let update_request = UpdateAccountRequest {
        account: Some(Account {
            name: first.name.clone(),
            employee_count: 10,
            ..Default::default()
        }),
        update_mask: Some(FieldMask {
            paths: vec!["employee_count".into()],
        }),
        etag: first.etag.clone(),
        request_id: "a1".into(),
        ..Default::default()
    };
    let once = client
        .update_account(authed(update_request.clone(), &token))
        .await
        .unwrap()
        .into_inner();
    // A retry with the now stale etag still answers with the first result.
    let twice = client
        .update_account(authed(update_request, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(once, twice);
    assert_eq!(twice.etag, "r2");
}
on_both_backends!(request_ids_make_one_account);

async fn tenants_are_isolated(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let a_token = admin("tenant-a");
    let b_token = admin("tenant-b");
    let acme = create(&mut client, &a_token, company("Acme")).await;

    let status = get(&mut client, &b_token, &acme.name).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let listed = client
        .list_accounts(authed(ListAccountsRequest::default(), &b_token))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.accounts.is_empty());
    assert_eq!(listed.total_size, 0);
    let mut change = acme.clone();
    change.industry = "Hijacked".into();
    let status = update(&mut client, &b_token, change, &["industry"])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .delete_account(authed(
            DeleteAccountRequest {
                name: acme.name.clone(),
                ..Default::default()
            },
            &b_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    // Tenant B cannot hang its accounts under A's.
    let mut child = company("Child");
    child.parent_account = acme.name.clone();
    let status = client
        .create_account(authed(
            CreateAccountRequest {
                account: Some(child),
                ..Default::default()
            },
            &b_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["account.parent_account"]);
    assert_eq!(
        get(&mut client, &a_token, &acme.name)
            .await
            .unwrap()
            .industry,
        ""
    );
}
on_both_backends!(tenants_are_isolated);

async fn reps_change_only_their_own(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let ana = token("acme", "ana", &[Role::SalesRep]);
    let ben = token("acme", "ben", &[Role::SalesRep]);
    let boss = token("acme", "boss", &[Role::SalesManager]);

    let mut mine = company("Ana's account");
    mine.owner = "ana".into();
    let mine = create(&mut client, &ana, mine).await;
    // A rep cannot create an account for someone else.
    let mut for_ben = company("For Ben");
    for_ben.owner = "ben".into();
    let status = client
        .create_account(authed(
            CreateAccountRequest {
                account: Some(for_ben),
                ..Default::default()
            },
            &ana,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    let mut change = mine.clone();
    change.industry = "Ben was here".into();
    let status = update(&mut client, &ben, change.clone(), &["industry"])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = client
        .delete_account(authed(
            DeleteAccountRequest {
                name: mine.name.clone(),
                ..Default::default()
            },
            &ben,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // Unassigned accounts are anyone's to change, but a rep assigns only to themself.
    let open = create(&mut client, &ben, company("Open")).await;
    let mut to_ana = open.clone();
    to_ana.owner = "ana".into();
    let status = update(&mut client, &ben, to_ana.clone(), &["owner"])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let mut to_ben = open.clone();
    to_ben.owner = "ben".into();
    update(&mut client, &ben, to_ben, &["owner"]).await.unwrap();

    // The owner and a manager may.
    update(&mut client, &ana, change.clone(), &["industry"])
        .await
        .unwrap();
    change.etag.clear();
    change.owner = "ben".into();
    let reassigned = update(&mut client, &boss, change, &["owner"])
        .await
        .unwrap();
    assert_eq!(reassigned.owner, "ben");
}
on_both_backends!(reps_change_only_their_own);

async fn contact_count_counts_live_linked_contacts(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    let acme = create(&mut client, &token, company("Acme")).await;
    let other = create(&mut client, &token, company("Other")).await;
    let mut linked = Vec::new();
    for (given, account) in [
        ("Ana", &acme.name),
        ("Ben", &acme.name),
        ("Cy", &acme.name),
        ("Dee", &other.name),
    ] {
        let contact = client
            .create_contact(authed(
                CreateContactRequest {
                    contact: Some(Contact {
                        given_name: given.into(),
                        account: account.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        linked.push(contact);
    }
    // A soft-deleted contact does not count.
    client
        .delete_contact(authed(
            DeleteContactRequest {
                name: linked[2].name.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap();

    assert_eq!(
        get(&mut client, &token, &acme.name)
            .await
            .unwrap()
            .contact_count,
        2
    );
    let batch = client
        .batch_get_accounts(authed(
            BatchGetAccountsRequest {
                names: vec![acme.name.clone(), other.name.clone()],
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let counts: Vec<i64> = batch.accounts.iter().map(|a| a.contact_count).collect();
    assert_eq!(counts, [2, 1]);
    let listed = client
        .list_accounts(authed(
            ListAccountsRequest {
                order_by: "display_name".into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let counts: Vec<(String, i64)> = listed
        .accounts
        .iter()
        .map(|a| (a.display_name.clone(), a.contact_count))
        .collect();
    assert_eq!(counts, [("Acme".to_owned(), 2), ("Other".to_owned(), 1)]);
}
on_both_backends!(contact_count_counts_live_linked_contacts);

async fn lists_filter_order_and_page(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    for (name, employees, tier, country, tag, currency) in [
        ("Alpha", 50, AccountTier::Strategic, "CH", "b2b", "CHF"),
        ("Bravo", 500, AccountTier::Strategic, "CH", "b2b", "CHF"),
        ("Charlie", 5000, AccountTier::Strategic, "DE", "b2b", "EUR"),
        ("Delta", 1000, AccountTier::Key, "CH", "b2c", "CHF"),
        ("Echo", 200, AccountTier::Strategic, "CH", "b2b", "CHF"),
        ("Foxtrot", 300, AccountTier::Strategic, "CH", "b2b", "CHF"),
    ] {
        let mut account = company(name);
        account.employee_count = employees;
        account.tier = tier as i32;
        account.address = Some(Address {
            country_code: country.into(),
            ..Default::default()
        });
        account.tags = vec![tag.into()];
        account.domain = format!("{}.example", name.to_lowercase());
        account.annual_revenue = Some(Money {
            currency_code: currency.into(),
            units: i64::from(employees) * 1000,
            nanos: 0,
        });
        create(&mut client, &token, account).await;
    }
    let filter = r#"tier = STRATEGIC AND employee_count >= 100 AND address.country_code = "CH" AND tags: "b2b" AND annual_revenue.currency_code = "CHF""#;
    let request = |page_token: String| ListAccountsRequest {
        filter: filter.into(),
        order_by: "employee_count desc".into(),
        page_size: 2,
        page_token,
        ..Default::default()
    };
    let first = client
        .list_accounts(authed(request(String::new()), &token))
        .await
        .unwrap()
        .into_inner();
    let names = |page: &ListAccountsResponse| -> Vec<String> {
        page.accounts
            .iter()
            .map(|a| a.display_name.clone())
            .collect()
    };
    assert_eq!(names(&first), ["Bravo", "Foxtrot"]);
    assert_eq!(first.total_size, 3);
    assert!(!first.next_page_token.is_empty());
    let second = client
        .list_accounts(authed(request(first.next_page_token.clone()), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&second), ["Echo"]);
    assert_eq!(second.total_size, 3);
    assert!(second.next_page_token.is_empty());

    // A token is bound to its filter.
    let mut changed = request(first.next_page_token.clone());
    changed.filter = "tier = KEY".into();
    let status = client
        .list_accounts(authed(changed, &token))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["page_token"]);

    for (filter, order_by, expected) in [
        (r#"domain = "CHARLIE.example""#, "", vec!["Charlie"]),
        (
            "annual_revenue.units > 600000",
            "display_name desc",
            vec!["Delta", "Charlie"],
        ),
        (
            r#"display_name = "A*" OR tier = ACCOUNT_TIER_KEY"#,
            "domain",
            vec!["Alpha", "Delta"],
        ),
        (
            r#"create_time > "2000-01-01T00:00:00Z" AND NOT tags: "b2b""#,
            "",
            vec!["Delta"],
        ),
    ] {
        let page = client
            .list_accounts(authed(
                ListAccountsRequest {
                    filter: filter.into(),
                    order_by: order_by.into(),
                    ..Default::default()
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(names(&page), expected, "{filter}");
    }
}
on_both_backends!(lists_filter_order_and_page);

/// The service without a network, for calling `purge_expired` with the context the
/// handlers use.
struct Direct {
    api: crm_contact::ContactApi,
    ctx: crm_contact::context::Context,
    _dir: tempfile::TempDir,
    postgres_db: Option<String>,
}

impl Direct {
    async fn start(backend: Backend) -> Self {
        use crm_platform::cache::{CacheHandle, MemoryCache};
        use crm_platform::config::Config;
        use sea_orm::ConnectionTrait as _;
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.data_dir = dir.path().to_path_buf();
        let postgres_db = match backend {
            Backend::Sqlite => {
                config.database.url =
                    format!("sqlite://{}/{{service}}.db?mode=rwc", dir.path().display());
                None
            }
            Backend::Postgres => {
                let name = format!("crm_test_{}", uuid::Uuid::now_v7().simple());
                let base = crate::harness::postgres_base();
                let admin = sea_orm::Database::connect(format!("{base}/postgres"))
                    .await
                    .unwrap();
                admin
                    .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                    .await
                    .unwrap();
                admin.close().await.ok();
                config.database.url = format!("{base}/{name}");
                Some(name)
            }
        };
        let db = crm_platform::db::open::<crm_contact::migrations::Migrator>(&config, "contact")
            .await
            .unwrap();
        let feed =
            crm_platform::events::EventFeed::new(db.clone(), "contact", config.events.clone());
        let ttl = Duration::from_secs(60);
        let ctx = crm_contact::context::Context {
            contacts: crm_contact::store::ContactStore::new(db.clone(), feed.clone()),
            db,
            feed,
            cache: CacheHandle::new(Arc::new(MemoryCache::new(ttl, 10_000)), ttl),
            tokens: crm_platform::pagination::PageTokens::new(b"direct"),
        };
        Self {
            api: crm_contact::ContactApi::new(ctx.clone()),
            ctx,
            _dir: dir,
            postgres_db,
        }
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        use sea_orm::ConnectionTrait as _;
        if let Some(name) = self.postgres_db.take() {
            let _ = std::thread::spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                runtime.block_on(async {
                    let base = crate::harness::postgres_base();
                    if let Ok(admin) = sea_orm::Database::connect(format!("{base}/postgres")).await
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

fn as_admin<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.extensions_mut().insert(Caller {
        subject: "admin".into(),
        tenant: "acme".into(),
        roles: vec![Role::Admin],
        token: Arc::from(""),
    });
    request
}

async fn purge_clears_links(backend: Backend) {
    use crm_proto::contact::contact_service_server::ContactService as _;
    use sea_orm::{ColumnTrait as _, EntityTrait as _, QueryFilter as _};
    let direct = Direct::start(backend).await;
    let api = &direct.api;
    let parent = api
        .create_account(as_admin(CreateAccountRequest {
            account: Some(company("Parent")),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let mut child = company("Child");
    child.parent_account = parent.name.clone();
    let child = api
        .create_account(as_admin(CreateAccountRequest {
            account: Some(child),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let keeper = api
        .create_account(as_admin(CreateAccountRequest {
            account: Some(company("Keeper")),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let contact = api
        .create_contact(as_admin(CreateContactRequest {
            contact: Some(Contact {
                given_name: "Ana".into(),
                account: parent.name.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    // Read it once so the cache holds the linked version.
    let cached = api
        .get_contact(as_admin(GetContactRequest {
            name: contact.name.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cached.account, parent.name);

    let deleted = api
        .delete_account(as_admin(DeleteAccountRequest {
            name: parent.name.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    // Soft delete keeps the links.
    let still = api
        .get_account(as_admin(GetAccountRequest {
            name: child.name.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still.parent_account, parent.name);

    // Nothing is due before the expire time.
    let expire = deleted.expire_time.unwrap();
    let expire_us = expire.seconds * 1_000_000 + i64::from(expire.nanos / 1_000);
    assert_eq!(
        crm_contact::accounts::purge_expired(&direct.ctx, expire_us - 1)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        crm_contact::accounts::purge_expired(&direct.ctx, expire_us + 1)
            .await
            .unwrap(),
        1
    );

    let gone = api
        .get_account(as_admin(GetAccountRequest {
            name: parent.name.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let orphan = api
        .get_account(as_admin(GetAccountRequest {
            name: child.name.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(orphan.parent_account.is_empty());
    assert_eq!(orphan.etag, "r2");
    let unlinked = api
        .get_contact(as_admin(GetContactRequest {
            name: contact.name.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(unlinked.account.is_empty(), "the cache served the old link");
    assert_ne!(unlinked.etag, contact.etag);
    assert!(
        crm_contact::accounts::exists(&direct.ctx.db, "acme", &keeper.name)
            .await
            .unwrap()
    );
    assert!(
        !crm_contact::accounts::exists(&direct.ctx.db, "acme", &parent.name)
            .await
            .unwrap()
    );
    assert!(
        !crm_contact::accounts::exists(&direct.ctx.db, "other", &keeper.name)
            .await
            .unwrap()
    );

    // Each unlinked record has its update event, naming the changed field.
    use crm_platform::events::outbox;
    use prost::Message as _;
    let rows = outbox::Entity::find()
        .filter(outbox::Column::EventType.is_in([
            "crm.contact.v1.ContactUpdated",
            "crm.contact.v1.AccountUpdated",
        ]))
        .all(&direct.ctx.db)
        .await
        .unwrap();
    let mut seen: Vec<(String, Vec<String>)> = rows
        .iter()
        .map(|row| {
            let event = crm_proto::common::Event::decode(row.payload.as_slice()).unwrap();
            (
                event.resource_name,
                event.changes.into_iter().map(|c| c.path).collect(),
            )
        })
        .collect();
    seen.sort();
    let mut expected = vec![
        (contact.name.clone(), vec!["account".to_owned()]),
        (child.name.clone(), vec!["parent_account".to_owned()]),
    ];
    expected.sort();
    assert_eq!(seen, expected);
}
on_both_backends!(purge_clears_links);

async fn events_carry_the_account_and_its_changes(backend: Backend) {
    use crm_platform::events::outbox;
    use crm_proto::contact::contact_service_server::ContactService as _;
    use prost::Message as _;
    use sea_orm::{EntityTrait as _, QueryOrder as _};
    let direct = Direct::start(backend).await;
    let api = &direct.api;
    let mut new = company("Acme");
    new.employee_count = 10;
    let created = api
        .create_account(as_admin(CreateAccountRequest {
            account: Some(new),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let patch = Account {
        name: created.name.clone(),
        display_name: "Acme AG".into(),
        employee_count: 20,
        industry: "not in the mask".into(),
        ..Default::default()
    };
    let mask = FieldMask {
        paths: vec!["display_name".into(), "employee_count".into()],
    };
    // validate_only answers with the result and stores nothing.
    let preview = api
        .update_account(as_admin(UpdateAccountRequest {
            account: Some(patch.clone()),
            update_mask: Some(mask.clone()),
            validate_only: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(preview.display_name, "Acme AG");
    let unchanged = api
        .get_account(as_admin(GetAccountRequest {
            name: created.name.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unchanged, created);
    api.update_account(as_admin(UpdateAccountRequest {
        account: Some(patch),
        update_mask: Some(mask),
        ..Default::default()
    }))
    .await
    .unwrap();
    api.delete_account(as_admin(DeleteAccountRequest {
        name: created.name.clone(),
        ..Default::default()
    }))
    .await
    .unwrap();
    api.undelete_account(as_admin(UndeleteAccountRequest {
        name: created.name.clone(),
        ..Default::default()
    }))
    .await
    .unwrap();

    let events: Vec<crm_proto::common::Event> = outbox::Entity::find()
        .order_by_asc(outbox::Column::EventTimeUs)
        .order_by_asc(outbox::Column::Id)
        .all(&direct.ctx.db)
        .await
        .unwrap()
        .iter()
        .map(|row| crm_proto::common::Event::decode(row.payload.as_slice()).unwrap())
        .collect();
    let types: Vec<&str> = events.iter().map(|e| e.r#type.as_str()).collect();
    assert_eq!(
        types,
        [
            "crm.contact.v1.AccountCreated",
            "crm.contact.v1.AccountUpdated",
            "crm.contact.v1.AccountDeleted",
            "crm.contact.v1.AccountUndeleted",
        ]
    );
    assert!(events.iter().all(|e| e.resource_name == created.name));
    let payload = events[1].payload.as_ref().unwrap();
    assert_eq!(
        payload.type_url,
        "type.googleapis.com/crm.contact.v1.Account"
    );
    let after = Account::decode(payload.value.as_slice()).unwrap();
    assert_eq!(
        (after.display_name.as_str(), after.etag.as_str()),
        ("Acme AG", "r2")
    );
    let text = |v: &Option<prost_types::Value>| match v.as_ref().and_then(|v| v.kind.as_ref()) {
        Some(prost_types::value::Kind::StringValue(s)) => s.clone(),
        Some(prost_types::value::Kind::NumberValue(n)) => n.to_string(),
        other => format!("{other:?}"),
    };
    let changes: Vec<(String, String, String)> = events[1]
        .changes
        .iter()
        .map(|c| (c.path.clone(), text(&c.old_value), text(&c.new_value)))
        .collect();
    assert_eq!(
        changes,
        [
            ("display_name".into(), "Acme".into(), "Acme AG".into()),
            ("employee_count".into(), "10".into(), "20".into()),
        ]
    );
    assert_eq!(events[1].actor.as_ref().unwrap().subject, "admin");
}
on_both_backends!(events_carry_the_account_and_its_changes);

/// Two concurrent re-parentings that together would make a cycle (A under B, B under
/// A): at most one may win, on every try.
async fn concurrent_reparenting_never_cycles(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = admin("acme");
    let mut client = server.client().await;
    for round in 0..5 {
        let a = create(&mut client, &token, company(&format!("A{round}"))).await;
        let b = create(&mut client, &token, company(&format!("B{round}"))).await;
        let (mut one, mut two) = (server.client().await, server.client().await);
        let (t1, t2) = (token.clone(), token.clone());
        let (a1, b1, a2, b2) = (
            a.name.clone(),
            b.name.clone(),
            a.name.clone(),
            b.name.clone(),
        );
        let (first, second) = tokio::join!(
            tokio::spawn(async move { set_parent(&mut one, &t1, &a1, &b1).await }),
            tokio::spawn(async move { set_parent(&mut two, &t2, &b2, &a2).await }),
        );
        let outcomes = [first.unwrap(), second.unwrap()];
        let wins = outcomes.iter().filter(|o| o.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {outcomes:?}");
        for outcome in outcomes.iter().filter_map(|o| o.as_ref().err()) {
            assert_eq!(violated_fields(outcome), ["account.parent_account"]);
        }
        let a_now = get(&mut client, &token, &a.name).await.unwrap();
        let b_now = get(&mut client, &token, &b.name).await.unwrap();
        assert!(a_now.parent_account.is_empty() || b_now.parent_account.is_empty());
    }
}
on_both_backends!(concurrent_reparenting_never_cycles);
