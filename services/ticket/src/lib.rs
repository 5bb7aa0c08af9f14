//! The ticket service. Its contract (`proto/crm/ticket/v1`) is complete; this crate serves
//! the service's event feed (`WatchEvents`) over its own outbox, and every method whose
//! issue has not landed answers UNIMPLEMENTED.

use std::pin::Pin;

use sea_orm_migration::prelude::*;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crm_platform::auth::{Caller, KeyMaterial, Role, RoleTable};
use crm_platform::config::Config;
use crm_platform::db;
use crm_platform::events::EventFeed;
use crm_platform::server::ServiceSet;
use crm_proto::common::{Event, WatchEventsRequest};
use crm_proto::ticket::ticket_service_server::{TicketService, TicketServiceServer};

pub const SERVICE: &str = "ticket";
pub const SERVICE_NAME: &str = "crm.ticket.v1.TicketService";

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The ticket schema: for now the platform's outbox and request ids.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(crm_platform::events::OutboxMigration),
            Box::new(crm_platform::events::OutboxAuditColumnsMigration),
            Box::new(crm_platform::idempotency::IdempotencyMigration),
            Box::new(crm_platform::events::OutboxUnstampedIndexMigration),
            Box::new(crm_platform::events::FeedPositionsMigration),
            Box::new(crm_platform::idempotency::IdempotencyExpiryMigration),
        ]
    }
}

/// Roles by method verb until this service's own issue writes its explicit table.
pub fn role_table() -> RoleTable {
    use Role::*;
    crm_platform::auth::verb_role_table(
        SERVICE_NAME,
        &[
            Admin,
            SupportManager,
            SupportAgent,
            SalesManager,
            Analyst,
            Viewer,
            System,
        ],
        &[Admin, SupportManager, SupportAgent],
    )
}

pub struct TicketApi {
    feed: EventFeed,
}

#[tonic::async_trait]
impl TicketService for TicketApi {
    async fn watch_events(
        &self,
        request: Request<WatchEventsRequest>,
    ) -> Result<Response<BoxStream<Event>>, Status> {
        let caller = Caller::from_request(&request)?;
        let stream = self.feed.watch(&caller, request.into_inner()).await?;
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Connects and migrates the ticket database, starts its relay, adds the service.
pub async fn add_to(
    services: &mut ServiceSet,
    config: &Config,
    _keys: &KeyMaterial,
) -> anyhow::Result<EventFeed> {
    let database = db::open::<Migrator>(config, SERVICE).await?;
    let feed = EventFeed::start(database.clone(), SERVICE, config.events.clone());
    crm_platform::idempotency::spawn_expiry(database, SERVICE, config, feed.clone());
    let max = config.server.max_message_bytes;
    let server = TicketServiceServer::new(TicketApi { feed: feed.clone() })
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let probe = db::DatabaseProbe::open(config, SERVICE).await?;
    services
        .add(server, Some(feed.clone()))
        .watch_database(SERVICE_NAME, probe);
    Ok(feed)
}

/// Runs the pending migrations of the ticket database.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    Ok(db::migrate_service::<Migrator>(config, SERVICE).await?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_method_has_roles() {
        let table = super::role_table();
        let methods = crm_platform::auth::service_methods(super::SERVICE_NAME);
        assert!(methods.iter().any(|m| m == "WatchEvents"));
        for method in methods {
            let path = format!("/{}/{method}", super::SERVICE_NAME);
            assert!(
                table
                    .roles_for(&path)
                    .is_some_and(|r| r.contains(&crm_platform::auth::Role::Admin)),
                "{path}"
            );
        }
    }
}
