//! Filters on list fields (`email`, `phone`, `tags`): the same answers on both backends
//! (`LIKE` on SQLite, array containment on Postgres), and on Postgres an answer from the
//! tenant-scoped GIN index of the list's elements rather than a test of every contact,
//! reading the tenant's own matches only.

use sea_orm::{ConnectionTrait, Database, DbBackend, Statement, TransactionTrait};

use crm_proto::contact::*;

use crate::contacts::{create, person};
use crate::harness::{Backend, TestServer, admin, authed};
use crate::on_both_backends;

fn tagged(given: &str, email: &str, phone: &str, tags: &[&str]) -> Contact {
    let mut contact = person(given, "Lister", email);
    contact.phones.push(PhoneNumber {
        number: phone.into(),
        ..Default::default()
    });
    contact.tags = tags.iter().map(|t| (*t).to_owned()).collect();
    contact
}

async fn list_filters_agree_on_both_backends(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    for contact in [
        tagged(
            "Ann",
            "ann@example.com",
            "+41 44 668 18 00",
            &["VIP", "press"],
        ),
        tagged("Bea", "bea@example.com", "+41 44 668 18 01", &["vip"]),
        tagged(
            "Cem",
            "cem@example.org",
            "+41 44 668 18 02",
            &["50%_off", "vipx"],
        ),
        tagged("Dan", "dan@example.org", "+41 44 668 18 03", &[]),
    ] {
        create(&mut client, &token, contact).await;
    }
    // Another tenant's contact with the same tag never shows.
    create(
        &mut client,
        &admin("other"),
        tagged("Eve", "eve@example.com", "+41 44 668 18 04", &["vip"]),
    )
    .await;

    let given_names = |filter: &'static str| {
        let mut client = client.clone();
        let token = token.clone();
        async move {
            let page = client
                .list_contacts(authed(
                    ListContactsRequest {
                        filter: filter.into(),
                        order_by: "given_name".into(),
                        ..Default::default()
                    },
                    &token,
                ))
                .await
                .unwrap_or_else(|status| panic!("{filter}: {status:?}"))
                .into_inner();
            assert_eq!(page.total_size as usize, page.contacts.len(), "{filter}");
            page.contacts
                .into_iter()
                .map(|c| c.given_name)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(given_names(r#"tags: "vip""#).await, ["Ann", "Bea"]);
    assert_eq!(given_names(r#"tags = "VIP""#).await, ["Ann", "Bea"]);
    assert_eq!(given_names(r#"NOT tags: "vip""#).await, ["Cem", "Dan"]);
    assert_eq!(given_names(r#"tags != "vip""#).await, ["Cem", "Dan"]);
    // Whole elements only, and `%` and `_` are characters, not wildcards.
    assert!(given_names(r#"tags: "vi""#).await.is_empty());
    assert!(given_names(r#"tags: "50%""#).await.is_empty());
    assert_eq!(given_names(r#"tags: "50%_off""#).await, ["Cem"]);
    assert_eq!(given_names(r#"email: "BEA@example.com""#).await, ["Bea"]);
    assert_eq!(given_names(r#"phone: "+41446681802""#).await, ["Cem"]);
    assert_eq!(
        given_names(r#"tags: "press" OR email: "dan@example.org""#).await,
        ["Ann", "Dan"]
    );
    assert_eq!(
        given_names(r#"tags: "vip" AND NOT email: "ann@example.com""#).await,
        ["Bea"]
    );
    let empty = client
        .list_contacts(authed(
            ListContactsRequest {
                filter: r#"tags: """#.into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .expect_err("an empty element is refused");
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);

    if backend == Backend::Postgres {
        // The service's own condition is answered from the tenant-scoped GIN index of
        // the elements (sequential scans off, as on a table too large to read whole),
        // and the index gives acme's matches only: "vip" is also the other tenant's.
        let db = Database::connect(&server.database_url).await.unwrap();
        for (filter, index, matches) in [
            (
                r#"email: "bea@example.com""#,
                "contacts_emails_by_tenant",
                1,
            ),
            (r#"phone: "+41446681802""#, "contacts_phones_by_tenant", 1),
            (r#"tags: "vip""#, "contacts_tags_by_tenant", 2),
        ] {
            let condition = crm_contact::grpc::contact_filter(
                filter,
                crm_platform::filter::FilterScope {
                    backend: DbBackend::Postgres,
                    tenant: "acme",
                },
            )
            .unwrap()
            .unwrap();
            let select = sea_orm::sea_query::Query::select()
                .column(sea_orm::sea_query::Alias::new("id"))
                .from((
                    sea_orm::sea_query::Alias::new("crm_contact"),
                    sea_orm::sea_query::Alias::new("contacts"),
                ))
                .cond_where(condition)
                .to_owned();
            let built = DbBackend::Postgres.build(&select);
            let plan: String = db
                .transaction::<_, String, sea_orm::DbErr>(|txn| {
                    Box::pin(async move {
                        txn.execute_unprepared("SET LOCAL enable_seqscan = off")
                            .await?;
                        let rows = txn
                            .query_all_raw(Statement::from_sql_and_values(
                                DbBackend::Postgres,
                                format!(
                                    "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) {}",
                                    built.sql
                                ),
                                built.values.map(|v| v.0).unwrap_or_default(),
                            ))
                            .await?;
                        let mut plan = String::new();
                        for row in rows {
                            plan.push_str(&row.try_get_by_index::<String>(0)?);
                            plan.push('\n');
                        }
                        Ok(plan)
                    })
                })
                .await
                .unwrap();
            let scan = format!("Bitmap Index Scan on {index} (actual rows={matches} ");
            assert!(
                plan.contains(&scan),
                "{filter} is not answered by {index} with {matches} entries:\n{plan}"
            );
        }
        db.close().await.unwrap();
    }
    server.finish().await;
}
on_both_backends!(list_filters_agree_on_both_backends);
