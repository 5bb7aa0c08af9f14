//! What the fuzz targets fuzz: the filter parser and the page-token codec of
//! crm-platform, and the filter whitelists they are used with.
//!
//! By default the crate compiles `shared/platform/src/filter.rs` and
//! `shared/platform/src/pagination.rs` themselves (the same source files, not copies)
//! next to stand-ins for the two things they take from the rest of crm-platform, the
//! `ApiError` and `DbBackend` types. That keeps the instrumented build to a handful of
//! small crates. With the `service` feature the targets use crm-platform and the
//! contact service's whitelists instead.

#[cfg(not(feature = "service"))]
pub mod db;
#[cfg(not(feature = "service"))]
pub mod errors;
#[cfg(not(feature = "service"))]
#[path = "../../shared/platform/src/filter.rs"]
pub mod filter;
#[cfg(not(feature = "service"))]
#[path = "../../shared/platform/src/pagination.rs"]
pub mod pagination;

#[cfg(feature = "service")]
pub use crm_platform::{db, filter, pagination};

pub mod schema;
