//! The contact service: the system of record for people and companies.
//!
//! A request walks one way: `grpc` (decode, validate, authorise) → `domain` (rules, no
//! I/O) → `store` (one transaction, outbox row included) → back out.

pub mod accounts;
pub mod audit;
pub mod consent;
pub mod context;
pub mod domain;
pub mod duplicates;
pub mod grpc;
pub mod index;
pub mod migrations;
pub mod policy;
pub mod privacy;
pub mod replay;
pub mod roles;
pub mod search;
pub mod segments;
pub mod store;
pub mod timeline;
pub mod transfer;

use std::time::Duration;

use crm_platform::auth::KeyMaterial;
use crm_platform::cache::{self, CacheHandle};
use crm_platform::config::Config;
use crm_platform::db;
use crm_platform::events::EventFeed;
use crm_platform::pagination::PageTokens;
use crm_platform::server::ServiceSet;
use crm_proto::contact::contact_service_server::ContactServiceServer;

pub use grpc::ContactApi;

/// Connects and migrates the contact database, starts the outbox relay, and adds the
/// service to `services`.
pub async fn add_to(
    services: &mut ServiceSet,
    config: &Config,
    keys: &KeyMaterial,
) -> anyhow::Result<EventFeed> {
    let database = db::open::<migrations::Migrator>(config, grpc::SERVICE).await?;
    let feed = EventFeed::start(database.clone(), grpc::SERVICE, config.events.clone());
    crm_platform::idempotency::spawn_expiry(database.clone(), grpc::SERVICE, config, feed.clone());
    let cache = CacheHandle::new(
        cache::from_config(&config.cache)?,
        Duration::from_secs(config.cache.ttl_s.max(1)),
    );
    tracing::info!(
        service = grpc::SERVICE,
        cache.backend = cache.backend(),
        "service ready"
    );
    let ctx = context::Context {
        contacts: store::ContactStore::new(database.clone(), feed.clone()),
        db: database,
        feed: feed.clone(),
        cache,
        tokens: PageTokens::new(&keys.page_token_secret),
    };
    spawn_purge_sweep(ctx.clone());
    let api = ContactApi::new(ctx);
    let max = config.server.max_message_bytes;
    let server = ContactServiceServer::new(api)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let probe = db::DatabaseProbe::open(config, grpc::SERVICE).await?;
    services
        .add(server, Some(feed.clone()))
        .watch_database(roles::SERVICE_NAME, probe);
    Ok(feed)
}

/// How often soft-deleted accounts past their expire time are purged.
const PURGE_INTERVAL: Duration = Duration::from_secs(15 * 60);

/// Purges expired accounts now and then, until the service shuts down.
fn spawn_purge_sweep(ctx: context::Context) {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(PURGE_INTERVAL);
        loop {
            tokio::select! {
                _ = ctx.feed.stopped() => return,
                _ = interval.tick() => {}
            }
            match accounts::purge_expired(&ctx, db::now_micros()).await {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, "expired accounts purged"),
                Err(err) => tracing::warn!(reason = err.reason(), "account purge failed"),
            }
        }
    });
}

/// Runs the pending migrations of the contact database.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    Ok(db::migrate_service::<migrations::Migrator>(config, grpc::SERVICE).await?)
}
