//! Reads every row of every table of the contact database, to prove that values are
//! gone (after an erasure) — text columns as text, blobs as their bytes.

use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};

fn hex(value: &str) -> String {
    value.bytes().map(|b| format!("{b:02x}")).collect()
}

/// (table, value) for every value found anywhere in the database.
pub async fn find_values(database_url: &str, values: &[String]) -> Vec<(String, String)> {
    let db = Database::connect(database_url)
        .await
        .expect("connect for the scan");
    let backend = db.get_database_backend();
    let list = match backend {
        DbBackend::Postgres => {
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'crm_contact'"
        }
        _ => "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
    };
    let tables: Vec<String> = db
        .query_all_raw(Statement::from_string(backend, list))
        .await
        .expect("list tables")
        .iter()
        .map(|row| row.try_get_by_index::<String>(0).expect("table name"))
        .collect();
    assert!(tables.len() > 5, "the scan sees the tables: {tables:?}");
    let mut found = Vec::new();
    for table in tables {
        let rows: Vec<String> = match backend {
            DbBackend::Postgres => db
                .query_all_raw(Statement::from_string(
                    backend,
                    format!("SELECT lower(t::text) FROM crm_contact.\"{table}\" t"),
                ))
                .await
                .expect("read table")
                .iter()
                .map(|row| row.try_get_by_index::<String>(0).expect("row text"))
                .collect(),
            _ => {
                let columns: Vec<String> = db
                    .query_all_raw(Statement::from_string(
                        backend,
                        format!("SELECT name FROM pragma_table_info('{table}')"),
                    ))
                    .await
                    .expect("columns")
                    .iter()
                    .map(|row| row.try_get_by_index::<String>(0).expect("column"))
                    .collect();
                let hexed: Vec<String> = columns
                    .iter()
                    .map(|c| format!("lower(hex(\"{c}\"))"))
                    .collect();
                db.query_all_raw(Statement::from_string(
                    backend,
                    format!("SELECT {} FROM \"{table}\"", hexed.join(" || '|' || ")),
                ))
                .await
                .expect("read table")
                .iter()
                .map(|row| {
                    row.try_get_by_index::<Option<String>>(0)
                        .expect("row")
                        .unwrap_or_default()
                })
                .collect()
            }
        };
        for value in values {
            let needle_text = value.to_lowercase();
            let needle_hex = hex(value);
            let needle_lower_hex = hex(&value.to_lowercase());
            if rows.iter().any(|row| {
                (backend == DbBackend::Postgres && row.contains(&needle_text))
                    || row.contains(&needle_hex)
                    || row.contains(&needle_lower_hex)
            }) {
                found.push((table.clone(), value.clone()));
            }
        }
    }
    db.close().await.ok();
    found
}
