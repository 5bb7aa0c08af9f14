//! SearchContacts on a seeded data set with typos, prefixes, accents, emails, phones
//! and tags; and `attributes.<key>` filters on ListContacts.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crm_proto::common::{AttributeValue, attribute_value};
use crm_proto::contact::*;
use sea_orm::ConnectionTrait as _;
use tonic::Code;

use crate::contacts::{create, person};
use crate::harness::{Backend, TestServer, admin, authed};
use crate::on_both_backends;
use crate::transfer::{import, options, row};

type Client = contact_service_client::ContactServiceClient<tonic::transport::Channel>;

async fn search(
    client: &mut Client,
    token: &str,
    query: &str,
    filter: &str,
) -> Vec<(String, f64, Vec<String>)> {
    client
        .search_contacts(authed(
            SearchContactsRequest {
                query: query.into(),
                filter: filter.into(),
                ..Default::default()
            },
            token,
        ))
        .await
        .expect("search")
        .into_inner()
        .results
        .into_iter()
        .map(|r| {
            let c = r.contact.expect("contact");
            (c.display_name, r.score, r.matched_fields)
        })
        .collect()
}

async fn seed(client: &mut Client, token: &str) -> HashMap<&'static str, String> {
    let people = [
        (
            "Anna",
            "Müller",
            "anna.mueller@acme.ch",
            "+41 44 668 18 00",
            "vip",
        ),
        (
            "Annabelle",
            "Meier",
            "a.meier@globex.com",
            "+41 79 123 45 67",
            "",
        ),
        (
            "John",
            "Smith",
            "john.smith@initech.com",
            "+1 212 555 0100",
            "press",
        ),
        ("Johanna", "Schmidt", "jo@schmidt.de", "+49 30 1234567", ""),
        (
            "Peter",
            "Meyer",
            "peter@meyer.ch",
            "+41 31 555 66 77",
            "vip",
        ),
        (
            "Élodie",
            "Durand",
            "elodie.durand@exemple.fr",
            "+33 1 23 45 67 89",
            "",
        ),
    ];
    let mut names = HashMap::new();
    for (given, family, email, phone, tag) in people {
        let mut contact = person(given, family, email);
        contact.phones.push(PhoneNumber {
            number: phone.into(),
            ..Default::default()
        });
        if !tag.is_empty() {
            contact.tags.push(tag.into());
        }
        let created = create(client, token, contact).await;
        names.insert(given, created.name);
    }
    names
}

async fn finds_people_with_typos_prefixes_and_accents(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    seed(&mut client, &token).await;

    let first = |results: &[(String, f64, Vec<String>)]| results.first().map(|r| r.0.clone());
    // Accents fold: "muller" finds Müller.
    let found = search(&mut client, &token, "muller", "").await;
    assert_eq!(first(&found).as_deref(), Some("Anna Müller"), "{found:?}");
    // A transposition typo.
    let found = search(&mut client, &token, "jonh", "").await;
    assert_eq!(first(&found).as_deref(), Some("John Smith"), "{found:?}");
    // One wrong letter.
    let found = search(&mut client, &token, "schmitt", "").await;
    assert_eq!(
        first(&found).as_deref(),
        Some("Johanna Schmidt"),
        "{found:?}"
    );
    // A prefix finds both Anna and Annabelle, the exact word first.
    let found = search(&mut client, &token, "anna", "").await;
    let names: Vec<&str> = found.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(names.first(), Some(&"Anna Müller"), "{found:?}");
    assert!(names.contains(&"Annabelle Meier"), "{found:?}");
    // Two words: both must match; Meier and Meyer differ by one letter.
    let found = search(&mut client, &token, "peter meier", "").await;
    assert_eq!(first(&found).as_deref(), Some("Peter Meyer"), "{found:?}");
    assert_eq!(found.len(), 1, "{found:?}");
    // An email prefix, a phone in another form, a tag.
    let found = search(&mut client, &token, "john.smith@init", "").await;
    assert_eq!(first(&found).as_deref(), Some("John Smith"));
    assert_eq!(found[0].2, ["emails"]);
    let found = search(&mut client, &token, "+41 79 123", "").await;
    assert_eq!(first(&found).as_deref(), Some("Annabelle Meier"));
    assert_eq!(found[0].2, ["phones"]);
    let found = search(&mut client, &token, "vip", "").await;
    assert_eq!(found.len(), 2, "{found:?}");
    // Scores are ordered.
    let found = search(&mut client, &token, "me", "").await;
    assert!(found.windows(2).all(|w| w[0].1 >= w[1].1), "{found:?}");
    // Nothing for nonsense; a filter narrows.
    assert!(search(&mut client, &token, "zzzzqx", "").await.is_empty());
    let found = search(&mut client, &token, "vip", "family_name = \"Meyer\"").await;
    assert_eq!(found.len(), 1);
    server.finish().await;
}
on_both_backends!(finds_people_with_typos_prefixes_and_accents);

/// The vocabulary lookup reads, under a word's first letters, only the terms of the
/// lengths a typo allows: the word's length less its typo budget, up to a typo in the
/// typed part of a completion four letters longer. A term at each edge is found; one a
/// letter past the upper edge is not.
async fn typos_are_found_at_the_edges_of_the_lengths_read(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    // "vanderbilt" has ten letters and a budget of two typos: lengths 8 to 14.
    for (given, family) in [
        ("Ada", "Vandrblt"),         // 8 letters, two letters dropped
        ("Bea", "Vandarbiltsons"),   // 14 letters, a typo in the first ten
        ("Cleo", "Vandarbiltsonss"), // 15 letters: past the reach of a typo
    ] {
        let email = format!("{}@example.com", given.to_lowercase());
        create(&mut client, &token, person(given, family, &email)).await;
    }
    let found: BTreeSet<String> = search(&mut client, &token, "vanderbilt", "")
        .await
        .into_iter()
        .map(|r| r.0)
        .collect();
    let expected: BTreeSet<String> = ["Ada Vandrblt", "Bea Vandarbiltsons"]
        .map(String::from)
        .into();
    assert_eq!(found, expected);
    server.finish().await;
}
on_both_backends!(typos_are_found_at_the_edges_of_the_lengths_read);

async fn search_is_tenant_scoped_paged_and_validated(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let acme = admin("acme");
    let names = seed(&mut client, &acme).await;
    let globex = admin("globex");
    assert!(search(&mut client, &globex, "anna", "").await.is_empty());

    // Pages of one, through every match of the prefix "ann": Anna and Annabelle.
    let mut token = String::new();
    let mut seen = Vec::new();
    loop {
        let page = client
            .search_contacts(authed(
                SearchContactsRequest {
                    query: "ann".into(),
                    page_size: 1,
                    page_token: token.clone(),
                    ..Default::default()
                },
                &acme,
            ))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.results.into_iter().map(|r| r.contact.unwrap().name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    // The page token is bound to the tenant and the query.
    let first_page = client
        .search_contacts(authed(
            SearchContactsRequest {
                query: "ann".into(),
                page_size: 1,
                ..Default::default()
            },
            &acme,
        ))
        .await
        .unwrap()
        .into_inner();
    for (query, tenant) in [("john", &acme), ("ann", &globex)] {
        let err = client
            .search_contacts(authed(
                SearchContactsRequest {
                    query: query.into(),
                    page_token: first_page.next_page_token.clone(),
                    ..Default::default()
                },
                tenant,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }

    // Deleted contacts are not found.
    client
        .delete_contact(authed(
            DeleteContactRequest {
                name: names["Anna"].clone(),
                ..Default::default()
            },
            &acme,
        ))
        .await
        .unwrap();
    let found = search(&mut client, &acme, "muller", "").await;
    assert!(found.is_empty(), "{found:?}");

    for bad in ["", "   ", &"x".repeat(201)] {
        let err = client
            .search_contacts(authed(
                SearchContactsRequest {
                    query: bad.into(),
                    ..Default::default()
                },
                &acme,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }
    server.finish().await;
}
on_both_backends!(search_is_tenant_scoped_paged_and_validated);

fn attribute(kind: attribute_value::Kind) -> AttributeValue {
    AttributeValue { kind: Some(kind) }
}

async fn attributes_filter_by_type(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    let mut gold = person("Gina", "Gold", "gina@gold.ch");
    gold.attributes.insert(
        "score".into(),
        attribute(attribute_value::Kind::NumberValue(42.0)),
    );
    gold.attributes.insert(
        "tier".into(),
        attribute(attribute_value::Kind::StringValue("gold".into())),
    );
    gold.attributes.insert(
        "newsletter".into(),
        attribute(attribute_value::Kind::BoolValue(true)),
    );
    create(&mut client, &token, gold).await;
    let mut silver = person("Sam", "Silver", "sam@silver.ch");
    silver.attributes.insert(
        "score".into(),
        attribute(attribute_value::Kind::NumberValue(7.5)),
    );
    silver.attributes.insert(
        "tier".into(),
        attribute(attribute_value::Kind::StringValue("silver".into())),
    );
    create(&mut client, &token, silver).await;
    // Another tenant with the same attributes must never leak in.
    let mut other = person("Otto", "Other", "otto@other.ch");
    other.attributes.insert(
        "score".into(),
        attribute(attribute_value::Kind::NumberValue(99.0)),
    );
    create(&mut client, &admin("globex"), other).await;

    let list = |filter: &'static str| {
        let mut client = client.clone();
        let token = token.clone();
        async move {
            let mut names: Vec<String> = client
                .list_contacts(authed(
                    ListContactsRequest {
                        filter: filter.into(),
                        ..Default::default()
                    },
                    &token,
                ))
                .await
                .map(|r| {
                    r.into_inner()
                        .contacts
                        .into_iter()
                        .map(|c| c.family_name)
                        .collect()
                })
                .map_err(|s| s.code())?;
            names.sort();
            Ok::<_, Code>(names)
        }
    };
    assert_eq!(list("attributes.score > 10").await, Ok(vec!["Gold".into()]));
    assert_eq!(
        list("attributes.score <= 10").await,
        Ok(vec!["Silver".into()])
    );
    assert_eq!(
        list("attributes.tier = \"silver\"").await,
        Ok(vec!["Silver".into()])
    );
    assert_eq!(
        list("attributes.newsletter = true").await,
        Ok(vec!["Gold".into()])
    );
    assert_eq!(
        list("attributes.newsletter:*").await,
        Ok(vec!["Gold".into()])
    );
    assert_eq!(
        list("attributes.score > 5 AND NOT attributes.tier = \"gold\"").await,
        Ok(vec!["Silver".into()])
    );
    assert_eq!(
        list("attributes.Bad-Key = 1").await,
        Err(Code::InvalidArgument)
    );
    assert_eq!(
        list("attributes.score > abc").await,
        Err(Code::InvalidArgument)
    );
    server.finish().await;
}
on_both_backends!(attributes_filter_by_type);

async fn account_attributes_filter(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    for (name, seats) in [("Big AG", 500.0), ("Small GmbH", 5.0)] {
        let mut account = Account {
            display_name: name.into(),
            ..Default::default()
        };
        account.attributes.insert(
            "seats".into(),
            attribute(attribute_value::Kind::NumberValue(seats)),
        );
        client
            .create_account(authed(
                CreateAccountRequest {
                    account: Some(account),
                    ..Default::default()
                },
                &token,
            ))
            .await
            .unwrap();
    }
    // A contact with the same attribute is not an account.
    let mut contact = person("Cora", "Contact", "cora@example.com");
    contact.attributes.insert(
        "seats".into(),
        attribute(attribute_value::Kind::NumberValue(900.0)),
    );
    create(&mut client, &token, contact).await;
    let listed = client
        .list_accounts(authed(
            ListAccountsRequest {
                filter: "attributes.seats >= 100".into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = listed
        .accounts
        .iter()
        .map(|a| a.display_name.as_str())
        .collect();
    assert_eq!(names, ["Big AG"]);
    server.finish().await;
}
on_both_backends!(account_attributes_filter);

/// A crowd of people sharing a few names, so that every query word has more postings
/// than a page: the Postgres ranking, which reads each word's postings only as far as
/// the page needs, must give the ranking that aggregating every posting gives (SQLite).
async fn seed_crowd(client: &mut Client, token: &str) {
    let given = ["Anna", "Annabelle", "Anne", "Jon", "John", "Johanna"];
    let family = [
        "Müller",
        "Mueller",
        "Meier",
        "Meyer",
        "Smith",
        "Schmidt",
        "Müller-Meier",
    ];
    let mut i = 0;
    for round in 0..6 {
        for g in given {
            for f in family {
                i += 1;
                // Some people have another name's word in their address or as a tag, so
                // that words also match outside the names.
                let local = match i % 5 {
                    0 => format!("meier.{i}"),
                    1 => format!("anna{i}"),
                    _ => format!("p{i}"),
                };
                let mut contact = person(g, f, &format!("{local}@d{i}.example"));
                contact.phones.push(PhoneNumber {
                    number: format!("+41 79 {:03} {:02} {:02}", i, round, i % 97),
                    ..Default::default()
                });
                match i % 7 {
                    0 => contact.tags.push("vip".into()),
                    3 => contact.tags.push("anna".into()),
                    _ => {}
                }
                create(client, token, contact).await;
            }
        }
    }
}

/// Every result of a query, page by page: (score, display name, email), in the
/// order of the ranking except among equal scores (ids differ between the servers).
async fn full_ranking(client: &mut Client, token: &str, query: &str) -> Vec<(i64, String)> {
    full_ranking_in_pages(client, token, query, 7).await
}

async fn full_ranking_in_pages(
    client: &mut Client,
    token: &str,
    query: &str,
    page_size: i32,
) -> Vec<(i64, String)> {
    let mut page_token = String::new();
    let mut ranking = Vec::new();
    loop {
        let page = client
            .search_contacts(authed(
                SearchContactsRequest {
                    query: query.into(),
                    page_size,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
                token,
            ))
            .await
            .expect("search")
            .into_inner();
        for result in page.results {
            let contact = result.contact.expect("contact");
            let email = contact.emails.first().map(|e| e.address.clone());
            ranking.push((
                (result.score * 1000.0).round() as i64,
                format!("{} <{}>", contact.display_name, email.unwrap_or_default()),
            ));
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let scores: Vec<i64> = ranking.iter().map(|r| r.0).collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "{query}: {ranking:?}"
    );
    ranking.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    ranking
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bounded_ranking_on_postgres_equals_the_full_ranking() {
    let sqlite = TestServer::start(Backend::Sqlite).await;
    let postgres = TestServer::start(Backend::Postgres).await;
    let token = admin("acme");
    let mut on_sqlite = sqlite.client().await;
    let mut on_postgres = postgres.client().await;
    seed_crowd(&mut on_sqlite, &token).await;
    seed_crowd(&mut on_postgres, &token).await;
    for query in [
        "anna",
        "ann",
        "anne",
        "muller",
        "mull",
        "meyr",
        "schmid",
        "smith",
        "anna muller",
        "muller anna",
        "anna mueller",
        "anna muller meier",
        "müller-meier",
        "john smith",
        "jon smith",
        "johanna schmitt",
        "annabelle meier",
        "anna vip",
        "vip anna",
        "anna.meier",
        "meier 41",
        "+41 79 01",
        "0790",
        "anna zzzz",
        "ann mu",
        "jo sm",
        "anna anna",
        "meier anna muller",
        "muller meier",
    ] {
        let expected = full_ranking(&mut on_sqlite, &token, query).await;
        let got = full_ranking(&mut on_postgres, &token, query).await;
        assert_eq!(got, expected, "{query}");
    }
    sqlite.finish().await;
    postgres.finish().await;
}

/// People whose family name has two words, many of them with the same full name and
/// others with one of the words only in their address: a query of three or four words
/// can be settled by the shortest name pair on Postgres, and must still give the full
/// ranking on every page.
async fn seed_families(client: &mut Client, token: &str) {
    let people = [
        ("Xenia", "de Vries", "p", 15),
        ("Anna", "de Vries", "xenia", 10),
        ("Xenia", "Vries", "de", 6),
        ("Xenia", "de Graaf", "vries", 4),
        ("Nikolai", "O'Brien", "p", 9),
        ("Xenia", "O'Brien", "nikolai", 5),
        ("Nikolai", "Brien", "o", 3),
    ];
    let mut i = 0;
    for (given, family, local, count) in people {
        for _ in 0..count {
            i += 1;
            create(
                client,
                token,
                person(given, family, &format!("{local}.{i}@f{i}.example")),
            )
            .await;
        }
    }
}

/// Seeds a tenant on each backend with `seed`, then checks query by query that
/// Postgres's bounded ranking is SQLite's full one.
async fn postgres_ranks_as_sqlite(seed: impl AsyncFn(&mut Client, &str), queries: &[&str]) {
    postgres_ranks_as_sqlite_in_pages(seed, queries, 7).await;
}

/// [`postgres_ranks_as_sqlite`], reading the rankings `page_size` at a time.
async fn postgres_ranks_as_sqlite_in_pages(
    seed: impl AsyncFn(&mut Client, &str),
    queries: &[&str],
    page_size: i32,
) {
    let sqlite = TestServer::start(Backend::Sqlite).await;
    let postgres = TestServer::start(Backend::Postgres).await;
    let token = admin("acme");
    let mut on_sqlite = sqlite.client().await;
    let mut on_postgres = postgres.client().await;
    seed(&mut on_sqlite, &token).await;
    seed(&mut on_postgres, &token).await;
    for query in queries {
        let expected = full_ranking_in_pages(&mut on_sqlite, &token, query, page_size).await;
        let got = full_ranking_in_pages(&mut on_postgres, &token, query, page_size).await;
        assert!(!expected.is_empty(), "{query}: someone matches");
        assert_eq!(got, expected, "{query}");
    }
    sqlite.finish().await;
    postgres.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_word_names_on_postgres_rank_as_the_full_ranking() {
    postgres_ranks_as_sqlite(
        async |client: &mut Client, token: &str| seed_families(client, token).await,
        &[
            "xenia de vries",
            "de vries xenia",
            "vries de xenia",
            "anna de vries",
            "xenia de graaf",
            "nikolai o brien",
            "nikolai o'brien",
            "o'brien nikolai",
            "xenia o brien",
            "xenia de vrie",
            "xenia o brien nikolai",
            "xenia de vries p",
        ],
    )
    .await;
}

/// Imports a family of 1,200 people, longer than the candidates a query scores.
async fn import_family(client: &mut Client, token: &str, member: impl Fn(usize) -> Contact) {
    // Two messages: at most 1,000 rows go in one.
    let messages = [0..600, 600..1_200]
        .map(|rows| rows.map(|i| row(&i.to_string(), member(i))).collect())
        .into();
    let (_, summary) = import(client, token, options(ImportMode::CreateOnly), messages)
        .await
        .expect("import");
    assert_eq!(summary.created, 1_200, "{summary:?}");
}

/// A family pair list longer than the candidates a query scores ("de vries" of 1,200
/// people): three- and four-word queries that do not settle on their shortest pair
/// list take its people and the rests' intersections, and still rank as the full
/// ranking does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_word_names_beside_a_long_family_rank_as_the_full_ranking() {
    postgres_ranks_as_sqlite(
        async |client: &mut Client, token: &str| {
            seed_families(client, token).await;
            import_family(client, token, |i| {
                person("Anna", "de Vries", &format!("a.{i}@v{i}.example"))
            })
            .await;
        },
        &[
            "xenia de vries",
            "vries xenia de",
            "xenia de vrie",
            "xenia de vries p",
            "de vries xenia p",
            "xenia o brien nikolai",
        ],
    )
    .await;
}

/// Two words that reach the same long list ("rosa" is a typo of the start of
/// "romano"): the intersection of one word's other postings with the other word's
/// would hold the whole Romano family of 1,200, so it is not run, and the query falls
/// back to the full aggregation (with and without typos at once). It ranks as the full
/// ranking does (read 100 at a time: a query's 1,000 candidates).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn words_reaching_one_long_family_rank_as_the_full_ranking() {
    postgres_ranks_as_sqlite_in_pages(
        async |client: &mut Client, token: &str| {
            let given = ["Paolo", "Giulia", "Marco", "Rosa", "Rosalind", "Elena"];
            import_family(client, token, |i| {
                let first = given[i % given.len()];
                let email = format!("{}.romano.{i}@r{i}.example", first.to_lowercase());
                person(first, "Romano", &email)
            })
            .await;
            for (first, family) in [("Rosa", "Rossi"), ("Rosa", "Romanov"), ("Rosa", "Roma")] {
                create(
                    client,
                    token,
                    person(first, family, &format!("{first}.{family}@example.com")),
                )
                .await;
            }
        },
        &["rosa romano", "romano rosa", "rosa.rom"],
        100,
    )
    .await;
}

/// Contacts stored before the name-pair terms get them from the migration, the same
/// rows as a write derives.
async fn name_pairs_of_stored_contacts_are_backfilled(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    seed(&mut client, &token).await;
    create(
        &mut client,
        &token,
        person("Anna-Lena", "Müller-Meier", "al@example.com"),
    )
    .await;
    let db = server.database().await;
    let pairs = || async {
        db.query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT tenant_id, term, field, contact_id FROM contact_terms \
             WHERE field >= 10 ORDER BY tenant_id, term, field, contact_id",
        ))
        .await
        .expect("read pairs")
        .iter()
        .map(|row| {
            let term: String = row.try_get_by_index(1).expect("term");
            let field: i16 = row.try_get_by_index(2).expect("field");
            let contact: String = row.try_get_by_index(3).expect("contact");
            (term, field, contact)
        })
        .collect::<Vec<_>>()
    };
    let written = pairs().await;
    let terms: Vec<&str> = written.iter().map(|(term, _, _)| term.as_str()).collect();
    for expected in [
        "anna muller",
        "muller anna",
        "anna lena",
        "muller meier",
        "lena meier",
    ] {
        assert!(terms.contains(&expected), "{expected} in {terms:?}");
    }
    db.execute_unprepared("DELETE FROM contact_terms WHERE field >= 10")
        .await
        .expect("drop pairs");
    db.execute_unprepared(crm_contact::index::migration::NAME_PAIR_BACKFILL)
        .await
        .expect("backfill");
    assert_eq!(pairs().await, written);
    let found = search(&mut client, &token, "muller anna", "").await;
    assert_eq!(
        found.first().map(|r| r.0.as_str()),
        Some("Anna Müller"),
        "{found:?}"
    );
    server.finish().await;
}
on_both_backends!(name_pairs_of_stored_contacts_are_backfilled);

/// People whose given names start alike ("jo": more completions than a word pairs one
/// by one), some with the words also in their addresses, one family named like a
/// given name: a two-word query with such a prefix reads its pair terms by prefix
/// ranges on Postgres and must still give the full ranking on every page.
async fn seed_typing_crowd(client: &mut Client, token: &str) {
    let given = [
        "Jo", "Joan", "Joana", "Joe", "Joel", "Johan", "John", "Jonas", "Jordan", "Jorge", "Josef",
        "Joshua",
    ];
    let family = ["Johansson", "Jonas", "Smith", "Meier"];
    let mut i = 0;
    for round in 0..2 {
        for g in given {
            for f in family {
                i += 1;
                let local = match i % 4 {
                    0 => format!("jonas.{i}"),
                    1 => format!("jo{i}"),
                    _ => format!("p{i}"),
                };
                let mut contact = person(g, f, &format!("{local}@t{round}.example"));
                if i % 9 == 0 {
                    contact.tags.push("jonas".into());
                }
                create(client, token, contact).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_word_being_typed_beside_another_ranks_as_the_full_ranking() {
    postgres_ranks_as_sqlite(
        async |client: &mut Client, token: &str| seed_typing_crowd(client, token).await,
        &[
            "smith jo",
            "jo smith",
            "jonas jo",
            "jo jonas",
            "meier jo",
            "jo johansson",
            "joh jo",
            "jo jo",
            "jonas jon",
            "josef jo",
            // Few completions, one of them shared: "joel" matches both words.
            "joel joe",
            "johan joh",
        ],
    )
    .await;
}

/// Each contact's term set (`contact_term_sets`), decoded, and its postings
/// (`contact_terms`), as sets of (term, field) per contact id.
async fn term_sets_and_postings(
    db: &sea_orm::DatabaseConnection,
) -> (
    BTreeMap<String, BTreeSet<(String, i16)>>,
    BTreeMap<String, BTreeSet<(String, i16)>>,
) {
    let backend = db.get_database_backend();
    let mut sets: BTreeMap<String, BTreeSet<(String, i16)>> = BTreeMap::new();
    for row in db
        .query_all_raw(sea_orm::Statement::from_string(
            backend,
            "SELECT contact_id, terms FROM contact_term_sets",
        ))
        .await
        .expect("read term sets")
    {
        let id: String = row.try_get_by_index(0).expect("contact_id");
        let terms: String = row.try_get_by_index(1).expect("terms");
        let decoded = crm_contact::index::decode_term_set(&terms).expect("a term set decodes");
        assert!(!decoded.is_empty(), "an empty term set is not stored: {id}");
        let entry = sets.entry(id).or_default();
        for (term, field) in decoded {
            entry.insert((term, field.code()));
        }
    }
    let mut postings: BTreeMap<String, BTreeSet<(String, i16)>> = BTreeMap::new();
    for row in db
        .query_all_raw(sea_orm::Statement::from_string(
            backend,
            "SELECT contact_id, term, field FROM contact_terms",
        ))
        .await
        .expect("read postings")
    {
        let id: String = row.try_get_by_index(0).expect("contact_id");
        let term: String = row.try_get_by_index(1).expect("term");
        let field: i16 = row.try_get_by_index(2).expect("field");
        postings.entry(id).or_default().insert((term, field));
    }
    (sets, postings)
}

/// Every write keeps a contact's term set equal to its postings (updates, merges,
/// deletion and undeletion, erasure rewrite them through it), and the migration's
/// backfill derives the same sets from the postings.
async fn term_sets_list_exactly_the_postings(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    let seeded = seed(&mut client, &token).await;
    let anna = create(
        &mut client,
        &token,
        person("Anna-Lena", "Müller-Meier", "al@example.com"),
    )
    .await;
    let twin = create(
        &mut client,
        &token,
        person("Anna-Lena", "Muller-Meier", "al.mm@example.com"),
    )
    .await;
    let db = server.database().await;
    let (before, _) = term_sets_and_postings(&db).await;
    let anna_id = anna.name.trim_start_matches("contacts/").to_owned();
    let old_anna = before.get(&anna_id).cloned().expect("anna's term set");

    client
        .update_contact(authed(
            UpdateContactRequest {
                contact: Some(Contact {
                    name: anna.name.clone(),
                    family_name: "Brunner".into(),
                    tags: vec!["board".into()],
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["family_name".into(), "tags".into()],
                }),
                ..Default::default()
            },
            &token,
        ))
        .await
        .expect("update");
    client
        .merge_contacts(authed(
            MergeContactsRequest {
                winner: anna.name.clone(),
                losers: vec![twin.name.clone()],
                ..Default::default()
            },
            &token,
        ))
        .await
        .expect("merge");
    let some_seeded = seeded.values().next().expect("a seeded contact").clone();
    client
        .delete_contact(authed(
            DeleteContactRequest {
                name: some_seeded.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .expect("delete");
    client
        .undelete_contact(authed(
            UndeleteContactRequest {
                name: some_seeded.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .expect("undelete");

    let (sets, postings) = term_sets_and_postings(&db).await;
    assert_eq!(sets, postings, "term sets list exactly the postings");
    let twin_id = twin.name.trim_start_matches("contacts/").to_owned();
    assert!(!sets.contains_key(&twin_id), "a merged loser has no terms");
    let new_anna = sets.get(&anna_id).expect("anna's new term set");
    assert!(
        new_anna.contains(&("brunner".to_owned(), 2)),
        "{new_anna:?}"
    );
    assert!(new_anna.contains(&("board".to_owned(), 7)), "{new_anna:?}");
    assert!(
        !new_anna.contains(&("meier".to_owned(), 2)),
        "the old family name's postings are gone: {new_anna:?}"
    );
    assert_ne!(&old_anna, new_anna);
    let seeded_id = some_seeded.trim_start_matches("contacts/").to_owned();
    assert!(sets.contains_key(&seeded_id), "undeleted terms are back");

    // The migration's backfill gives the same sets from the postings.
    db.execute_unprepared("DELETE FROM contact_term_sets")
        .await
        .expect("drop term sets");
    db.execute_unprepared(match backend {
        Backend::Postgres => crm_contact::index::migration::TERM_SETS_BACKFILL_POSTGRES,
        _ => crm_contact::index::migration::TERM_SETS_BACKFILL_SQLITE,
    })
    .await
    .expect("backfill");
    let (backfilled, _) = term_sets_and_postings(&db).await;
    assert_eq!(backfilled, sets);

    // Prefix ranges of terms are right in code point order only: on Postgres the terms
    // are compared so whatever the database's own collation.
    if backend == Backend::Postgres {
        let collations = db
            .query_all_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                "SELECT table_name, collation_name FROM information_schema.columns \
                 WHERE table_schema = 'crm_contact' AND column_name = 'term' \
                 ORDER BY table_name",
            ))
            .await
            .expect("read collations")
            .iter()
            .map(|row| {
                let table: String = row.try_get_by_index(0).expect("table");
                let collation: String = row.try_get_by_index(1).expect("collation");
                (table, collation)
            })
            .collect::<Vec<_>>();
        assert_eq!(
            collations,
            [
                ("contact_terms".to_owned(), "C".to_owned()),
                ("search_vocabulary".to_owned(), "C".to_owned()),
            ]
        );
    }
    server.finish().await;
}
on_both_backends!(term_sets_list_exactly_the_postings);

/// A write that leaves a contact's search terms as they were (a new job title) keeps
/// its postings and term set as stored, row for row; one that changes them rewrites
/// them, and search follows.
async fn unchanged_terms_are_not_rewritten(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    let ada = create(&mut client, &token, person("Ada", "Lovelace", "ada@one.ch")).await;
    // Another term set after Ada's, so that SQLite gives a rewritten row a new rowid.
    create(&mut client, &token, person("Bea", "Curie", "bea@two.ch")).await;
    let id = ada.name.trim_start_matches("contacts/").to_owned();
    let db = server.database().await;
    // The row version of the term set: a deletion and insertion makes a new one.
    let version = || {
        let column = match backend {
            Backend::Postgres => "xmin::text",
            Backend::Sqlite => "CAST(rowid AS TEXT)",
        };
        let sql = format!("SELECT {column} FROM contact_term_sets WHERE contact_id = '{id}'");
        let statement = sea_orm::Statement::from_string(db.get_database_backend(), sql);
        let db = &db;
        async move {
            let row = db
                .query_one_raw(statement)
                .await
                .unwrap()
                .expect("a term set");
            row.try_get_by_index::<String>(0).unwrap()
        }
    };
    let update = |contact: Contact, paths: &[&str]| UpdateContactRequest {
        contact: Some(Contact {
            name: ada.name.clone(),
            ..contact
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }),
        ..Default::default()
    };
    let before = version().await;
    client
        .update_contact(authed(
            update(
                Contact {
                    job_title: "Analyst".into(),
                    ..Default::default()
                },
                &["job_title"],
            ),
            &token,
        ))
        .await
        .unwrap();
    assert_eq!(version().await, before, "a new job title rewrites no terms");
    let found = search(&mut client, &token, "lovelace", "").await;
    assert_eq!(found.len(), 1, "{found:?}");

    client
        .update_contact(authed(
            update(
                Contact {
                    family_name: "Byron".into(),
                    ..Default::default()
                },
                &["family_name"],
            ),
            &token,
        ))
        .await
        .unwrap();
    assert_ne!(version().await, before, "a new name rewrites them");
    assert_eq!(search(&mut client, &token, "byron", "").await.len(), 1);
    assert!(search(&mut client, &token, "lovelace", "").await.is_empty());
    server.finish().await;
}
on_both_backends!(unchanged_terms_are_not_rewritten);
