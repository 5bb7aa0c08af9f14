//! The AIP-160 filter parser over the contact service's field whitelists (its own with
//! the `service` feature, same-shaped built-in ones without: see src/schema.rs).
//!
//! Input: the first byte picks one of the filterable resources (contacts, accounts,
//! interactions, episodes, consent records, segments, audit events, record history);
//! the rest is the filter, as UTF-8 when it is, else lossily converted (a
//! gRPC string is always UTF-8, so invalid bytes can only reach the parser as U+FFFD).
//!
//! Properties:
//! - parsing and translating never panic, whatever the input;
//! - a filter longer than `MAX_FILTER_LEN` is refused;
//! - `condition` agrees with `parse` followed by `to_condition`, for SQLite and for
//!   Postgres, and both accept the same filters;
//! - anything accepted compiles to SQL for its backend, and every value the caller wrote
//!   is a bound parameter: the parameterised SQL carries no string literal except the
//!   LIKE escape character, the list separator of `string_to_array(…, '|')` and those of
//!   the tenant-scoped list expression (`filter::tenant_elements_sql`).

#![no_main]

use crm_fuzz::db::DbBackend;
use crm_fuzz::filter::{self, FieldKind, FilterField, FilterScope, MAX_FILTER_LEN};
use crm_fuzz::schema::RESOURCES;
use libfuzzer_sys::fuzz_target;
use sea_query::{PostgresQueryBuilder, Query, SqliteQueryBuilder};

/// The parameterised SQL must not carry a literal other than `ESCAPE '\'`, the list
/// separator of Postgres' list comparisons and the tenant-scoped list expressions of
/// `fields`.
fn assert_values_are_bound(sql: &str, text: &str, fields: &[FilterField]) {
    let mut sql = sql.to_owned();
    for field in fields {
        if matches!(field.kind, FieldKind::TenantList) {
            sql = sql.replace(&filter::tenant_elements_sql(field.column), "");
        }
    }
    let without_escape = sql
        .replace(r"ESCAPE '\'", "")
        .replace(r"ESCAPE E'\\'", "")
        .replace(", '|')", "");
    assert!(
        !without_escape.contains('\''),
        "a literal reached the SQL text of {text:?}: {sql}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (table, fields) = RESOURCES[usize::from(selector) % RESOURCES.len()];
    let text = String::from_utf8_lossy(rest);

    let parsed = filter::parse(&text);
    if text.len() > MAX_FILTER_LEN {
        assert!(parsed.is_err(), "an oversize filter was parsed");
    }
    let mut accepted = Vec::new();
    for backend in [DbBackend::Sqlite, DbBackend::Postgres] {
        let scope = FilterScope {
            backend,
            tenant: "acme",
        };
        let translated = match &parsed {
            Ok(Some(expr)) => Some(filter::to_condition(expr, fields, scope)),
            Ok(None) => None,
            Err(_) => None,
        };
        // The one-step API gives the same verdict as the two steps.
        let combined = filter::condition(&text, fields, scope);
        match (&parsed, &translated, &combined) {
            (Err(_), _, Err(_)) | (Ok(None), None, Ok(None)) => {}
            (Ok(Some(_)), Some(Ok(_)), Ok(Some(_))) | (Ok(Some(_)), Some(Err(_)), Err(_)) => {}
            _ => panic!("condition() disagrees with parse() + to_condition() on {text:?}"),
        }
        accepted.push(combined.is_ok());
        let Ok(Some(condition)) = combined else {
            continue;
        };
        let mut select = Query::select();
        select.column("id").from(table).cond_where(condition);
        // Inlined SQL (values rendered as literals) must render without panicking.
        let _ = select.to_string(SqliteQueryBuilder);
        let _ = select.to_string(PostgresQueryBuilder);
        // Parameterised SQL: every caller value is a bound parameter.
        let sql = if backend == DbBackend::Postgres {
            select.build(PostgresQueryBuilder).0
        } else {
            select.build(SqliteQueryBuilder).0
        };
        assert_values_are_bound(&sql, &text, fields);
    }
    assert!(
        accepted[0] == accepted[1],
        "SQLite and Postgres disagree on whether {text:?} is a valid filter"
    );
    if parsed.is_ok() && text.trim().is_empty() {
        assert!(matches!(parsed, Ok(None)), "a blank filter must match all");
    }
});
