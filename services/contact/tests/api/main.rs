//! The contact service over gRPC, against real SQLite and real Postgres (and real
//! Redis for the cache cases). One binary, a module per concern.

// A test that cannot set up must fail loudly: panicking helpers are the point here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::field_reassign_with_default
)]

mod harness;
mod links;

mod accounts;
mod audit;
mod auth;
mod cache;
mod consent;
mod contacts;
mod duplicates;
mod list_filters;
mod listing;
mod outbox;
mod privacy;
mod scan;
mod search;
mod segments;
mod shutdown;
mod tenancy;
mod timeline;
mod tracing_propagation;
mod transfer;
