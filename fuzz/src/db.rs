//! A stand-in for `crm_platform::db::DbBackend` (a re-export of sea-orm's), the one
//! thing `filter.rs` takes from the database module: which SQL dialect a filter is
//! translated for.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbBackend {
    MySql,
    Postgres,
    Sqlite,
}
