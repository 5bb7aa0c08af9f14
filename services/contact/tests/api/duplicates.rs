//! FindDuplicates, the duplicate rules on CreateContact, and MergeContacts.

use std::time::Duration;

use crm_contact::duplicates::matching::DuplicateLookup;
use crm_contact::policy;
use crm_contact::store::{ContactStore, CreatedWithQuery, prepare_new};
use crm_platform::auth::{Caller, Role};
use crm_platform::events::EventFeed;
use crm_platform::events::HEARTBEAT_TYPE;
use crm_proto::common::{AttributeValue, Event, WatchEventsRequest, attribute_value};
use crm_proto::contact::*;
use prost_types::FieldMask;
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::contacts::{create, person};
use crate::harness::{Backend, TestServer, admin, authed, token};
use crate::on_both_backends;

type Client = contact_service_client::ContactServiceClient<tonic::transport::Channel>;

/// Every event of the tenant so far (read until the feed goes quiet).
pub(crate) async fn feed(client: &mut Client, token: &str) -> Vec<Event> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut stream = client
        .watch_events(authed(
            WatchEventsRequest {
                after_position: 0,
                heartbeat_seconds: 1,
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("an event or heartbeat within 10 s")
            .unwrap()
            .expect("stream open");
        if event.r#type == HEARTBEAT_TYPE {
            return events;
        }
        events.push(event);
    }
}

async fn find(
    client: &mut Client,
    token: &str,
    target: find_duplicates_request::Target,
) -> Vec<(String, f64, Vec<i32>)> {
    client
        .find_duplicates(authed(
            FindDuplicatesRequest {
                target: Some(target),
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
        .candidates
        .into_iter()
        .map(|c| {
            (
                c.duplicate.unwrap().name,
                c.score,
                c.matched_fields.iter().map(|m| m.rule).collect(),
            )
        })
        .collect()
}

async fn finds_duplicates_by_email_phone_and_similar_name(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    let anna = create(
        &mut client,
        &token,
        person("Anna", "Müller", "anna@acme.ch"),
    )
    .await;
    let same_email = create(&mut client, &token, person("A.", "M.", "ANNA@acme.ch")).await;
    let typo = create(
        &mut client,
        &token,
        person("Anna", "Muller", "a.mueller@acme.ch"),
    )
    .await;
    let mut by_phone = person("Hanna", "Meier", "hanna@elsewhere.ch");
    by_phone.phones.push(PhoneNumber {
        number: "+41 79 000 00 01".into(),
        ..Default::default()
    });
    let by_phone = create(&mut client, &token, by_phone).await;
    create(&mut client, &token, person("Bob", "Brown", "bob@brown.ch")).await;
    // Another tenant's twin is never a candidate.
    create(
        &mut client,
        &admin("globex"),
        person("Anna", "Müller", "anna@acme.ch"),
    )
    .await;

    let found = find(
        &mut client,
        &token,
        find_duplicates_request::Target::Contact(anna.name.clone()),
    )
    .await;
    let names: Vec<&str> = found.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(
        names,
        [same_email.name.as_str(), typo.name.as_str()],
        "{found:?}"
    );
    assert_eq!(found[0].1, 1.0);
    assert_eq!(found[0].2, [DuplicateMatchRule::ExactEmail as i32]);
    assert!(found[1].1 >= 0.85 && found[1].1 < 1.0);
    assert_eq!(
        found[1].2,
        [DuplicateMatchRule::SimilarNameSameEmailDomain as i32]
    );

    // A probe (not stored): by phone in another form.
    let mut probe = person("Someone", "Else", "someone@else.ch");
    probe.phones.push(PhoneNumber {
        number: "+41790000001".into(),
        ..Default::default()
    });
    let found = find(
        &mut client,
        &token,
        find_duplicates_request::Target::Probe(probe),
    )
    .await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0, by_phone.name);
    assert_eq!(found[0].2, [DuplicateMatchRule::ExactPhone as i32]);

    // The tenant scan lists each pair once, the older contact first.
    let pairs = scan_pairs(&mut client, &token, 1).await;
    assert!(
        pairs.contains(&(anna.name.clone(), same_email.name.clone(), 1.0)),
        "{pairs:?}"
    );
    assert!(
        pairs.iter().any(|p| p.0 == anna.name && p.1 == typo.name),
        "{pairs:?}"
    );
    let mut unique = pairs.clone();
    unique.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    unique.dedup();
    assert_eq!(unique.len(), pairs.len());

    let bad = client
        .find_duplicates(authed(
            FindDuplicatesRequest {
                min_score: 1.5,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    server.finish().await;
}
on_both_backends!(finds_duplicates_by_email_phone_and_similar_name);

/// Every pair of the tenant scan, page after page of `page_size`: (older, newer,
/// score). Each page is best first.
async fn scan_pairs(
    client: &mut Client,
    token: &str,
    page_size: i32,
) -> Vec<(String, String, f64)> {
    let mut pairs = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .find_duplicates(authed(
                FindDuplicatesRequest {
                    page_size,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
                token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.candidates.len() <= page_size as usize);
        assert!(
            page.candidates.windows(2).all(|w| w[0].score >= w[1].score),
            "best first: {:?}",
            page.candidates
        );
        pairs.extend(
            page.candidates
                .into_iter()
                .map(|c| (c.contact, c.duplicate.unwrap().name, c.score)),
        );
        if page.next_page_token.is_empty() {
            return pairs;
        }
        page_token = page.next_page_token;
    }
}

/// A tenant scan looks at a bounded number of contacts per call (1,000): behind more
/// people than that without a duplicate, a page comes back empty with a token, and the
/// pairs after it come on the next pages, each once, however small the pages.
async fn tenant_scan_goes_on_past_its_budget(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    let strangers: Vec<ImportRow> = (0..1_100)
        .map(|i| {
            crate::transfer::row(
                &i.to_string(),
                person(
                    &format!("G{i}"),
                    &format!("F{i}"),
                    &format!("p{i}@d{i}.example"),
                ),
            )
        })
        .collect();
    let (_, summary) = crate::transfer::import(
        &mut client,
        &token,
        crate::transfer::options(ImportMode::CreateOnly),
        strangers.chunks(500).map(<[ImportRow]>::to_vec).collect(),
    )
    .await
    .unwrap();
    assert_eq!(summary.created, 1_100);
    // Four people with one address, created after everyone else: six pairs.
    let mut twins = Vec::new();
    for given in ["Ada", "Bea", "Cleo", "Dana"] {
        twins.push(
            create(
                &mut client,
                &token,
                person(given, "Lovelace", "twin@acme.ch"),
            )
            .await
            .name,
        );
    }
    let mut expected = Vec::new();
    for (i, older) in twins.iter().enumerate() {
        for newer in &twins[i + 1..] {
            expected.push((older.clone(), newer.clone()));
        }
    }

    let first = client
        .find_duplicates(authed(FindDuplicatesRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    assert!(first.candidates.is_empty(), "{:?}", first.candidates);
    assert!(!first.next_page_token.is_empty());

    for page_size in [1, 2, 50] {
        let pairs = scan_pairs(&mut client, &token, page_size).await;
        let mut found: Vec<(String, String)> =
            pairs.iter().map(|p| (p.0.clone(), p.1.clone())).collect();
        found.sort();
        let mut wanted = expected.clone();
        wanted.sort();
        assert_eq!(found, wanted, "page size {page_size}");
        assert!(pairs.iter().all(|p| p.2 == 1.0));
    }

    // A token is bound to its kind of call and its minimum score.
    let stale = client
        .find_duplicates(authed(
            FindDuplicatesRequest {
                min_score: 0.99,
                page_token: first.next_page_token.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::InvalidArgument);
    let other_kind = client
        .find_duplicates(authed(
            FindDuplicatesRequest {
                target: Some(find_duplicates_request::Target::Contact(twins[0].clone())),
                page_token: first.next_page_token,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(other_kind.code(), Code::InvalidArgument);
    server.finish().await;
}
on_both_backends!(tenant_scan_goes_on_past_its_budget);

/// The scan's cursor names the last pair returned, not how many: a pair gone between two
/// calls (its duplicate deleted) neither hides the next one nor repeats one, and a
/// cursor whose own contact is gone goes on after it. Pages of one pair, three contacts
/// per call.
async fn tenant_scan_resumes_after_its_pair_through_changes(backend: Backend) {
    use crm_contact::duplicates::scan::{self, ScanCursor};

    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    let db = server.database().await;
    let feed = EventFeed::new(
        db.clone(),
        "contact",
        crm_platform::config::EventsConfig::default(),
    );
    let ctx = crm_contact::context::Context {
        db: db.clone(),
        feed: feed.clone(),
        cache: crm_platform::cache::CacheHandle::new(
            std::sync::Arc::new(crm_platform::cache::NoCache),
            Duration::from_secs(1),
        ),
        tokens: crm_platform::pagination::PageTokens::new(b"scan test"),
        contacts: ContactStore::new(db.clone(), feed),
    };
    let rules = crm_contact::duplicates::matching::rules(&db, "acme")
        .await
        .unwrap();
    let mut made = Vec::new();
    for (given, email) in [
        ("Ada", "ada@one.ch"),
        ("Stranger", "s1@two.ch"),
        ("Ada", "ada@one.ch"),
        ("Bea", "bea@three.ch"),
        ("Ada", "ada@one.ch"),
        ("Other", "s2@four.ch"),
        ("Bea", "bea@three.ch"),
    ] {
        made.push(
            create(&mut client, &token, person(given, "Lovelace", email))
                .await
                .name,
        );
    }
    let (a1, a2, a3, b1, b2) = (&made[0], &made[2], &made[4], &made[3], &made[6]);
    let pair = |x: &String, y: &String| (x.clone(), y.clone());
    let rest_of = |from: Option<ScanCursor>| {
        let ctx = ctx.clone();
        let rules = rules.clone();
        async move {
            let mut found = Vec::new();
            let mut cursor = from;
            loop {
                let page = scan::scan(&ctx, "acme", &rules, cursor, 1, 3)
                    .await
                    .unwrap();
                found.extend(page.pairs.into_iter().map(|p| (p.older, p.newer)));
                match page.next {
                    Some(next) => cursor = Some(next),
                    None => return found,
                }
            }
        }
    };
    let mut all = rest_of(None).await;
    all.sort();
    let mut expected = vec![pair(a1, a2), pair(a1, a3), pair(a2, a3), pair(b1, b2)];
    expected.sort();
    assert_eq!(all, expected);

    // The first page: Ada's first pair, with the next Ada.
    let first = scan::scan(&ctx, "acme", &rules, None, 1, 1_000)
        .await
        .unwrap();
    let returned: Vec<_> = first
        .pairs
        .iter()
        .map(|p| (p.older.clone(), p.newer.clone()))
        .collect();
    assert_eq!(returned, [pair(a1, a2)]);
    let cursor = first.next.expect("more to come");
    assert!(matches!(&cursor, ScanCursor::Within { .. }), "{cursor:?}");

    // That duplicate is deleted: the first Ada's other pair still comes, once.
    client
        .delete_contact(authed(
            DeleteContactRequest {
                name: a2.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap();
    let mut rest = rest_of(Some(cursor.clone())).await;
    rest.sort();
    let mut expected = vec![pair(a1, a3), pair(b1, b2)];
    expected.sort();
    assert_eq!(rest, expected);

    // The cursor's own contact deleted: the scan goes on after it.
    client
        .delete_contact(authed(
            DeleteContactRequest {
                name: a1.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap();
    assert_eq!(rest_of(Some(cursor)).await, [pair(b1, b2)]);
    server.finish().await;
}
on_both_backends!(tenant_scan_resumes_after_its_pair_through_changes);

async fn duplicate_rules_decide_create(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    let rules = client
        .get_duplicate_rules(authed(
            GetDuplicateRulesRequest {
                name: "duplicateRules".into(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rules.on_create, DuplicateAction::Warn as i32);
    assert_eq!(rules.on_import, DuplicateAction::Block as i32);
    assert_eq!(rules.min_score, 0.85);
    assert_eq!(rules.etag, "r0");

    let first = create(
        &mut client,
        &token,
        person("Ada", "Lovelace", "ada@example.com"),
    )
    .await;
    // WARN (the default): created, with the candidates in a header.
    let warned = client
        .create_contact(authed(
            CreateContactRequest {
                contact: Some(person("Ada", "L.", "ada@example.com")),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap();
    assert_eq!(
        warned
            .metadata()
            .get("crm-duplicates")
            .unwrap()
            .to_str()
            .unwrap(),
        first.name
    );

    let update = |rules: DuplicateRules, paths: &[&str], etag: &str| UpdateDuplicateRulesRequest {
        duplicate_rules: Some(DuplicateRules {
            name: "duplicateRules".into(),
            ..rules
        }),
        update_mask: Some(FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }),
        etag: etag.into(),
        ..Default::default()
    };
    // A rep may not change the rules.
    let rep = token_for_rep();
    let denied = client
        .update_duplicate_rules(authed(
            update(
                DuplicateRules {
                    on_create: DuplicateAction::Block as i32,
                    ..Default::default()
                },
                &["on_create"],
                "",
            ),
            &rep,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let blocked_rules = client
        .update_duplicate_rules(authed(
            update(
                DuplicateRules {
                    on_create: DuplicateAction::Block as i32,
                    ..Default::default()
                },
                &["on_create"],
                "r0",
            ),
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(blocked_rules.on_create, DuplicateAction::Block as i32);
    assert_eq!(blocked_rules.etag, "r1");
    let stale = client
        .update_duplicate_rules(authed(
            update(DuplicateRules::default(), &["on_create"], "r0"),
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    for (rules, path) in [
        (
            DuplicateRules {
                min_score: 1.5,
                ..Default::default()
            },
            "min_score",
        ),
        (
            DuplicateRules {
                match_rules: vec![99],
                ..Default::default()
            },
            "match_rules",
        ),
    ] {
        let err = client
            .update_duplicate_rules(authed(update(rules, &[path], ""), &token))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.get_details_bad_request().unwrap().field_violations[0]
                .field
                .starts_with(&format!("duplicate_rules.{path}"))
        );
    }

    // BLOCK: refused with the candidates named.
    let refused = client
        .create_contact(authed(
            CreateContactRequest {
                contact: Some(person("Ada", "Byron", "ADA@example.com")),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists);
    let info = refused.get_details_error_info().unwrap();
    assert_eq!(info.reason, "DUPLICATE_CONTACT");
    assert!(info.metadata["duplicates"].contains(&first.name));
    // Someone new is still welcome.
    create(
        &mut client,
        &token,
        person("Grace", "Hopper", "grace@example.com"),
    )
    .await;
    server.finish().await;
}
on_both_backends!(duplicate_rules_decide_create);

/// The contacts a create's answer warns of (its `crm-duplicates` header), sorted.
fn warned_of(response: &tonic::Response<Contact>) -> Vec<String> {
    let mut warned: Vec<String> = response
        .metadata()
        .get("crm-duplicates")
        .map(|v| v.to_str().unwrap().split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    warned.sort();
    warned
}

/// Under WARN a create without a request id reads its candidates in the statement that
/// inserts it (Postgres), one with a request id looks them up first: both find the
/// same stored contacts, never the new contact itself, and store it with its event.
async fn warned_duplicates_are_found_with_and_without_a_request_id(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    let create_warned = |request_id: &str| CreateContactRequest {
        contact: Some(person("Grace", "Hopper", "grace@navy.example")),
        request_id: request_id.into(),
        ..Default::default()
    };
    let mut stored: Vec<String> = Vec::new();
    for (i, request_id) in ["", "", "9b3f0c1e-1d2a-4c53-9a61-0e5a2f6b7c80", ""]
        .into_iter()
        .enumerate()
    {
        let response = client
            .create_contact(authed(create_warned(request_id), &token))
            .await
            .unwrap();
        let warned = warned_of(&response);
        let created = response.into_inner();
        let mut expected = stored.clone();
        expected.sort();
        assert_eq!(warned, expected, "create {i} warns of every earlier one");
        assert!(!warned.contains(&created.name), "never of itself");
        let read = client
            .get_contact(authed(
                GetContactRequest {
                    name: created.name.clone(),
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(read.emails[0].address, "grace@navy.example");
        stored.push(created.name);
    }
    // The request id again: the contact its first call stored, warned of the others only.
    let replayed = client
        .create_contact(authed(
            create_warned("9b3f0c1e-1d2a-4c53-9a61-0e5a2f6b7c80"),
            &token,
        ))
        .await
        .unwrap();
    assert_eq!(replayed.get_ref().name, stored[2]);
    let mut others: Vec<String> = stored
        .iter()
        .filter(|name| **name != stored[2])
        .cloned()
        .collect();
    others.sort();
    assert_eq!(warned_of(&replayed), others);
    // A contact with nothing to look up by (a name alone) is stored without a warning.
    let alone = client
        .create_contact(authed(
            CreateContactRequest {
                contact: Some(Contact {
                    given_name: "Solitary".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap();
    assert!(warned_of(&alone).is_empty());
    let created: Vec<String> = feed(&mut client, &token)
        .await
        .into_iter()
        .filter(|e| e.r#type == "crm.contact.v1.ContactCreated")
        .map(|e| e.resource_name)
        .collect();
    stored.push(alone.into_inner().name);
    assert_eq!(created, stored, "one event per create, in order");
    server.finish().await;
}
on_both_backends!(warned_duplicates_are_found_with_and_without_a_request_id);

/// The store's create-and-query on Postgres: one statement whose query reads the tenant
/// as it was before the insert (the stored contact holding the address, not the new
/// one). On SQLite it declines and writes nothing.
async fn create_and_query_reads_the_tenant_before_the_insert(backend: Backend) {
    let server = TestServer::start(backend).await;
    let db = server.database().await;
    let feed = EventFeed::new(
        db.clone(),
        "contact",
        crm_platform::config::EventsConfig::default(),
    );
    let store = ContactStore::new(db, feed);
    let caller = Caller {
        subject: "admin".into(),
        tenant: "acme".into(),
        roles: vec![Role::Admin],
        token: "".into(),
    };
    let new_person = || {
        let mut contact = person("Grace", "Hopper", "grace@navy.example");
        prepare_new(&mut contact, &uuid::Uuid::now_v7().to_string());
        contact
    };
    let first = store.create(&caller, new_person(), "", "").await.unwrap();
    let second = new_person();
    let second_name = second.name.clone();
    let lookup = DuplicateLookup::of(std::slice::from_ref(&second));
    let outcome = store
        .create_and_query(&caller, second, lookup.holders_query_postgres("acme"), None)
        .await
        .unwrap();
    let stored_second = store
        .get("acme", second_name.trim_start_matches("contacts/"))
        .await
        .unwrap();
    match (backend, outcome) {
        (Backend::Postgres, CreatedWithQuery::Created(stored, holders)) => {
            let holders: std::collections::BTreeSet<String> = holders
                .iter()
                .map(|row| format!("contacts/{}", row.try_get_by_index::<String>(2).unwrap()))
                .collect();
            assert_eq!(holders, [first.contact.name].into(), "not the new contact");
            assert_eq!(stored.contact.name, second_name);
            assert!(stored_second.is_some(), "the new contact is stored");
        }
        (Backend::Sqlite, CreatedWithQuery::NotOneStatement(returned)) => {
            assert_eq!(returned.name, second_name);
            assert!(stored_second.is_none(), "nothing written");
        }
        (backend, _) => panic!("unexpected outcome on {backend:?}"),
    }
    server.finish().await;
}
on_both_backends!(create_and_query_reads_the_tenant_before_the_insert);

/// CreateContact acts on the tenant policy its process last read, which its insert
/// statement checks (`policy::guard_postgres`): a policy changed since, whether the
/// duplicate rules, the default phone region or the suppression salt of a first
/// erasure, makes the statement write nothing; the policy read afresh passes.
#[tokio::test]
async fn a_create_on_a_policy_changed_since_writes_nothing() {
    let server = TestServer::start(Backend::Postgres).await;
    let db = server.database().await;
    let feed = EventFeed::new(
        db.clone(),
        "contact",
        crm_platform::config::EventsConfig::default(),
    );
    let store = ContactStore::new(db.clone(), feed);
    let caller = Caller {
        subject: "admin".into(),
        tenant: "acme".into(),
        roles: vec![Role::Admin],
        token: "".into(),
    };
    let token = admin("acme");
    let mut client = server.client().await;
    let erased = create(
        &mut client,
        &token,
        person("Ada", "Lovelace", "ada@example.org"),
    )
    .await;

    // Creates `email` on `policy`: whether it was stored.
    let create_on = async |policy: &policy::TenantPolicy, email: &str| -> bool {
        let mut contact = person("Grace", "Hopper", email);
        prepare_new(&mut contact, &uuid::Uuid::now_v7().to_string());
        let name = contact.name.clone();
        let lookup = DuplicateLookup::of(std::slice::from_ref(&contact));
        let guard = Box::new(policy::guard_postgres("acme", policy));
        let outcome = store
            .create_and_query(
                &caller,
                contact,
                lookup.holders_query_postgres("acme"),
                Some(guard),
            )
            .await
            .unwrap();
        let stored = store
            .get("acme", name.trim_start_matches("contacts/"))
            .await
            .unwrap()
            .is_some();
        match outcome {
            CreatedWithQuery::Created(..) => assert!(stored, "created means stored"),
            CreatedWithQuery::PolicyChanged => assert!(!stored, "nothing of a refused create"),
            CreatedWithQuery::NotOneStatement(_) => panic!("one statement on Postgres"),
        }
        stored
    };

    for (i, what) in [
        "duplicate rules",
        "default phone region",
        "suppression salt",
    ]
    .into_iter()
    .enumerate()
    {
        let before = policy::load(&db, "acme").await.unwrap();
        let unchanged = create_on(&before, &format!("before-{i}@example.org")).await;
        assert!(unchanged, "{what}: unchanged");
        match what {
            "duplicate rules" => {
                let rules = DuplicateRules {
                    name: "duplicateRules".into(),
                    on_create: DuplicateAction::Allow as i32,
                    ..Default::default()
                };
                let request = UpdateDuplicateRulesRequest {
                    duplicate_rules: Some(rules),
                    update_mask: Some(FieldMask {
                        paths: vec!["on_create".into()],
                    }),
                    ..Default::default()
                };
                client
                    .update_duplicate_rules(authed(request, &token))
                    .await
                    .unwrap();
            }
            "default phone region" => {
                let settings = ContactSettings {
                    name: "contactSettings".into(),
                    default_phone_region: "CH".into(),
                    ..Default::default()
                };
                let request = UpdateContactSettingsRequest {
                    contact_settings: Some(settings),
                    update_mask: Some(FieldMask {
                        paths: vec!["default_phone_region".into()],
                    }),
                    ..Default::default()
                };
                client
                    .update_contact_settings(authed(request, &token))
                    .await
                    .unwrap();
            }
            _ => {
                let request = ErasePersonalDataRequest {
                    contact: erased.name.clone(),
                    reason: "GDPR request".into(),
                    ..Default::default()
                };
                client
                    .erase_personal_data(authed(request, &token))
                    .await
                    .unwrap();
            }
        }
        let stale = create_on(&before, &format!("stale-{i}@example.org")).await;
        assert!(!stale, "{what}: changed");
        let now = policy::load(&db, "acme").await.unwrap();
        let afresh = create_on(&now, &format!("after-{i}@example.org")).await;
        assert!(afresh, "{what}: read afresh");
    }
    server.finish().await;
}

/// A name word held by more people at one domain than a group holds is not compared by
/// name; an address held by more yields a group of holders; and a batch whose keys'
/// holders reach the lookup's row limit is looked up probe by probe, so no probe loses
/// its candidates (an exact address among them) to the others'.
async fn lookup_limits_bound_groups_and_batches(backend: Backend) {
    use crm_contact::duplicates::matching::{self, LookupLimits};

    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    let db = server.database().await;
    let rules = matching::rules(&db, "acme").await.unwrap();
    // Five people named Ada at one company domain, one of them Ada Lovelase; three
    // sharing the address info@; one Grace with her own address.
    for (family, email) in [
        ("Lovelase", "lovelase@big.example"),
        ("Byron", "byron@big.example"),
        ("King", "king@big.example"),
        ("Smith", "smith@big.example"),
        ("Jones", "jones@big.example"),
    ] {
        create(&mut client, &token, person("Ada", family, email)).await;
    }
    for family in ["One", "Two", "Three"] {
        create(
            &mut client,
            &token,
            person("Info", family, "info@desk.example"),
        )
        .await;
    }
    let grace = create(
        &mut client,
        &token,
        person("Grace", "Hopper", "grace@navy.example"),
    )
    .await;

    let probe = |given: &str, family: &str, email: &str| {
        let mut contact = person(given, family, email);
        prepare_new(&mut contact, &uuid::Uuid::now_v7().to_string());
        contact
    };
    let names = |found: &[matching::Candidate]| -> Vec<String> {
        let mut names: Vec<String> = found.iter().map(|c| c.contact.clone()).collect();
        names.sort();
        names
    };
    let lovelace = probe("Ada", "Lovelace", "ada.lovelace@big.example");
    let info = probe("Desk", "Person", "info@desk.example");
    let hopper = probe("G.", "H.", "grace@navy.example");
    let probes = [lovelace, info, hopper];

    let roomy = matching::candidates_of_each(&db, "acme", &probes, &rules)
        .await
        .unwrap();
    assert_eq!(
        roomy[0].len(),
        1,
        "Ada Lovelase by a similar name: {:?}",
        roomy[0]
    );
    assert_eq!(roomy[1].len(), 3, "the three holders of info@");
    assert_eq!(names(&roomy[2]), vec![grace.name.clone()]);

    // Groups of two: five Adas are too many to compare by name; three holders of one
    // address give two of them.
    let small_groups = LookupLimits {
        group: 2,
        holders: LookupLimits::DEFAULT.holders,
    };
    let found = matching::candidates_of_each_within(&db, "acme", &probes, &rules, small_groups)
        .await
        .unwrap();
    assert!(
        found[0].is_empty(),
        "a name word of five is not compared: {:?}",
        found[0]
    );
    assert_eq!(
        found[1].len(),
        2,
        "an address's holders, as many as a group holds"
    );
    assert_eq!(names(&found[2]), vec![grace.name.clone()]);

    // Three rows for a batch whose keys have four holders: read at once, the batch
    // loses candidates; the lookup goes on probe by probe and each gets its own.
    let few_rows = LookupLimits {
        group: LookupLimits::DEFAULT.group,
        holders: 3,
    };
    let pair = [probes[1].clone(), probes[2].clone()];
    let batch = DuplicateLookup::of(&pair)
        .within(few_rows)
        .find(&db, "acme", &rules)
        .await
        .unwrap();
    assert!(
        batch.iter().map(Vec::len).sum::<usize>() < 4,
        "the batch alone is cut short: {batch:?}"
    );
    let each = matching::candidates_of_each_within(&db, "acme", &pair, &rules, few_rows)
        .await
        .unwrap();
    assert_eq!(names(&each[0]), names(&roomy[1]));
    assert_eq!(names(&each[1]), vec![grace.name.clone()]);
    server.finish().await;
}
on_both_backends!(lookup_limits_bound_groups_and_batches);

fn token_for_rep() -> String {
    token("acme", "rep-1", &[Role::SalesRep])
}

fn text(value: &str) -> AttributeValue {
    AttributeValue {
        kind: Some(attribute_value::Kind::StringValue(value.into())),
    }
}

async fn merge_three_duplicates(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    let mut winner = person("Anna", "Müller", "anna@acme.ch");
    winner.job_title = "Engineer".into();
    winner.tags = vec!["vip".into()];
    winner.lifecycle_stage = LifecycleStage::Lead as i32;
    winner.attributes.insert("shoe_size".into(), text("38"));
    let winner = create(&mut client, &token, winner).await;
    let mut second = person("Anna", "Muller", "anna.private@gmail.com");
    second.job_title = "Head of Engineering".into();
    second.tags = vec!["press".into()];
    second.phones.push(PhoneNumber {
        number: "+41 79 111 22 33".into(),
        ..Default::default()
    });
    second.attributes.insert("shoe_size".into(), text("39"));
    second.attributes.insert("team".into(), text("core"));
    let second = create(&mut client, &token, second).await;
    let mut third = person("A.", "Müller", "a.mueller@acme.ch");
    third.lifecycle_stage = LifecycleStage::Customer as i32;
    let third = create(&mut client, &token, third).await;
    for (contact, note) in [(&winner, "first"), (&second, "second"), (&third, "third")] {
        crate::privacy::attach_records(&mut client, &token, contact, note).await;
    }
    let before = feed(&mut client, &token).await.len();

    let request = MergeContactsRequest {
        winner: winner.name.clone(),
        losers: vec![second.name.clone(), third.name.clone()],
        field_choices: [("job_title".to_owned(), second.name.clone())].into(),
        request_id: "0192f0c1-7b1e-7cc3-9a44-4d2a3f1e9b10".into(),
        ..Default::default()
    };
    // A dry run shows the result and changes nothing.
    let preview = client
        .merge_contacts(authed(
            MergeContactsRequest {
                dry_run: true,
                request_id: String::new(),
                ..request.clone()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(preview.dry_run);
    assert_eq!(
        preview.merged_contact.as_ref().unwrap().job_title,
        "Head of Engineering"
    );
    let unchanged = client
        .get_contact(authed(
            GetContactRequest {
                name: second.name.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        unchanged.name, second.name,
        "a dry run leaves the loser alone"
    );

    let merged = client
        .merge_contacts(authed(request.clone(), &token))
        .await
        .unwrap()
        .into_inner();
    let contact = merged.merged_contact.clone().unwrap();
    assert!(!merged.dry_run);
    assert_eq!(contact.name, winner.name);
    assert_eq!(contact.job_title, "Head of Engineering");
    let emails: Vec<&str> = contact.emails.iter().map(|e| e.address.as_str()).collect();
    assert_eq!(
        emails,
        [
            "anna@acme.ch",
            "anna.private@gmail.com",
            "a.mueller@acme.ch"
        ]
    );
    assert_eq!(contact.emails.iter().filter(|e| e.primary).count(), 1);
    assert_eq!(contact.phones[0].number, "+41791112233");
    assert_eq!(contact.tags, ["vip", "press"]);
    assert_eq!(
        contact.attributes["shoe_size"],
        text("38"),
        "the winner's value stays"
    );
    assert_eq!(
        contact.attributes["team"],
        text("core"),
        "the loser's extra is kept"
    );
    assert_eq!(contact.stage_history.len(), 2);
    assert_eq!(
        merged.merged_contacts,
        [second.name.clone(), third.name.clone()]
    );
    assert!(merged.changes.iter().any(|c| c.path == "job_title"));
    // Nothing lost: every interaction, consent statement and list membership moved.
    assert_eq!(merged.interactions_moved, 2);
    assert_eq!(merged.consent_records_moved, 2);
    assert_eq!(merged.segment_memberships_moved, 2);
    let timeline = client
        .list_interactions(authed(
            ListInteractionsRequest {
                contact: winner.name.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(timeline.interactions.len(), 3);
    assert!(
        timeline
            .interactions
            .iter()
            .all(|i| i.contact == winner.name)
    );
    let history = client
        .list_consent_history(authed(
            ListConsentHistoryRequest {
                contact: winner.name.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.consent_records.len(), 3);

    // Losers redirect, are not listed, not searched, and cannot be merged again.
    for loser in [&second.name, &third.name] {
        let got = client
            .get_contact(authed(
                GetContactRequest {
                    name: loser.clone(),
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.name, winner.name);
    }
    let listed = client
        .list_contacts(authed(ListContactsRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total_size, 1);
    let searched = client
        .search_contacts(authed(
            SearchContactsRequest {
                query: "anna".into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(searched.results.len(), 1);
    let again = client
        .merge_contacts(authed(
            MergeContactsRequest {
                request_id: String::new(),
                ..request.clone()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);

    // A retry with the same request id answers the same, and publishes nothing more.
    let retried = client
        .merge_contacts(authed(request.clone(), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried, merged);
    let events = feed(&mut client, &token).await;
    let merges: Vec<&Event> = events
        .iter()
        .filter(|e| e.r#type == "crm.contact.v1.ContactsMerged")
        .collect();
    assert_eq!(merges.len(), 1, "one merge event");
    assert_eq!(events.len(), before + 1, "and nothing else");
    assert_eq!(merges[0].resource_name, winner.name);
    server.finish().await;
}
on_both_backends!(merge_three_duplicates);

async fn merge_validation_and_rules(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    let a = create(&mut client, &token, person("A", "One", "a@one.ch")).await;
    let b = create(&mut client, &token, person("B", "Two", "b@two.ch")).await;
    let other_tenant = create(
        &mut client,
        &admin("globex"),
        person("C", "Three", "c@three.ch"),
    )
    .await;
    let cases: Vec<(MergeContactsRequest, Code)> = vec![
        (
            MergeContactsRequest {
                winner: a.name.clone(),
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        (
            MergeContactsRequest {
                winner: a.name.clone(),
                losers: vec![a.name.clone()],
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        (
            MergeContactsRequest {
                winner: a.name.clone(),
                losers: vec![b.name.clone(), b.name.clone()],
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        (
            MergeContactsRequest {
                winner: a.name.clone(),
                losers: vec![b.name.clone()],
                field_choices: [("emails".to_owned(), b.name.clone())].into(),
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        (
            MergeContactsRequest {
                winner: a.name.clone(),
                losers: vec![b.name.clone()],
                field_choices: [("job_title".to_owned(), other_tenant.name.clone())].into(),
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        (
            MergeContactsRequest {
                winner: a.name.clone(),
                losers: vec![other_tenant.name.clone()],
                ..Default::default()
            },
            Code::NotFound,
        ),
        (
            MergeContactsRequest {
                winner: a.name.clone(),
                losers: vec![b.name.clone()],
                etag: "r99".into(),
                ..Default::default()
            },
            Code::Aborted,
        ),
    ];
    for (request, code) in cases {
        let err = client
            .merge_contacts(authed(request.clone(), &token))
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{request:?}: {err:?}");
    }
    // A rep cannot merge someone else's contacts.
    let mut owned = person("D", "Four", "d@four.ch");
    owned.owner = "rep-2".into();
    let owned = create(&mut client, &token, owned).await;
    let err = client
        .merge_contacts(authed(
            MergeContactsRequest {
                winner: a.name.clone(),
                losers: vec![owned.name.clone()],
                ..Default::default()
            },
            &token_for_rep(),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    server.finish().await;
}
on_both_backends!(merge_validation_and_rules);
