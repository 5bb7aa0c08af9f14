//! What every CRM service shares, with no business logic: configuration, telemetry,
//! authentication, errors, database, cache, events, filters, page tokens, the server
//! stack, TLS and outbound clients. Each concern lives in its own module.

pub mod admission;
pub mod auth;
pub mod bulk;
pub mod cache;
pub mod clients;
pub mod config;
pub mod db;
pub mod encoded;
pub mod errors;
pub mod events;
pub mod filter;
pub mod idempotency;
pub mod lookup;
pub mod pagination;
pub mod process;
pub mod server;
pub mod telemetry;
pub mod tls;

pub use errors::{ApiError, FieldViolation, Violations};
