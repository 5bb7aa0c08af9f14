//! The transactional outbox, the relay that gives events feed positions in visibility
//! order, `WatchEvents` (backlog, then live tail, with heartbeats), and a consumer helper
//! with a durable checkpoint.
//!
//! Why a relay: with concurrent writers, sequence numbers commit out of order, so a
//! consumer reading "after N" could skip a row that commits late. Writers therefore
//! insert outbox rows *without* a position, each with a pending row; one relay per
//! service (holding an advisory lock on Postgres; SQLite has one writer anyway) gives
//! the pending events that have become visible their positions, in one transaction that
//! also advances the feed's head. A row that commits late simply gets a later position.

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, Set, SqliteTransactionMode,
    TransactionOptions, TransactionTrait,
};
use sea_orm_migration::prelude::*;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crm_proto::common::{Actor, Event, FieldChange, WatchEventsRequest};

use crate::auth::{Caller, Role};
use crate::config::EventsConfig;
use crate::db::{lock_in_transaction, micros_to_timestamp, now_micros};
use crate::errors::ApiError;

mod positions;

pub use positions::{FeedPositionsMigration, pending_count, positions_of};

/// The event type of heartbeats.
pub const HEARTBEAT_TYPE: &str = "crm.common.v1.Heartbeat";

pub mod outbox {
    //! The `outbox` table: one row per domain event.
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "outbox")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub event_type: String,
        pub resource_name: String,
        pub event_time_us: i64,
        /// The encoded `crm.common.v1.Event`, without its position.
        pub payload: Vec<u8>,
        /// Copies of what the audit trail filters on (see `OutboxAuditColumnsMigration`).
        pub actor_subject: String,
        /// The actor's roles as `|admin|sales_rep|`.
        pub actor_roles: String,
        /// The changed field paths, lower-cased, as `|given_name|emails|`.
        pub changed_paths: String,
        pub request_id: String,
        /// Set when an erasure removed personal values from the payload.
        pub redacted: bool,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The migration creating the outbox, the feed state and consumer checkpoints. Each
/// service lists it in its own migrator.
pub struct OutboxMigration;

impl MigrationName for OutboxMigration {
    fn name(&self) -> &str {
        "m0000_platform_outbox"
    }
}

#[derive(DeriveIden)]
enum Outbox {
    Table,
    Id,
    TenantId,
    EventType,
    ResourceName,
    EventTimeUs,
    Position,
    Payload,
}

/// A small index of the unstamped outbox rows, in the relay's order: the relay looks
/// for them after every commit, and without it a large outbox whose statistics lag
/// behind is scanned whole each time. `FeedPositionsMigration` drops it with the
/// position column: pending events have a table of their own since.
pub struct OutboxUnstampedIndexMigration;

impl MigrationName for OutboxUnstampedIndexMigration {
    fn name(&self) -> &str {
        "m0000_platform_outbox_unstamped"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for OutboxUnstampedIndexMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // A partial index: both backends have them, the schema builder does not.
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX IF NOT EXISTS outbox_unstamped ON outbox (event_time_us, id) \
                 WHERE position IS NULL",
            )
            .await?;
        Ok(())
    }
}

/// Adds the columns the audit trail filters on (actor, changed paths, request id) and
/// the erasure flag to the outbox, with an index for a record's history. Each service
/// lists it right after `OutboxMigration`.
pub struct OutboxAuditColumnsMigration;

impl MigrationName for OutboxAuditColumnsMigration {
    fn name(&self) -> &str {
        "m0000_platform_outbox_audit"
    }
}

#[derive(DeriveIden)]
enum OutboxAudit {
    ActorSubject,
    ActorRoles,
    ChangedPaths,
    RequestId,
    Redacted,
}

#[async_trait::async_trait]
impl MigrationTrait for OutboxAuditColumnsMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite cannot add several in one ALTER TABLE.
        let columns = [
            ColumnDef::new(OutboxAudit::ActorSubject)
                .string_len(128)
                .not_null()
                .default("")
                .to_owned(),
            ColumnDef::new(OutboxAudit::ActorRoles)
                .string_len(256)
                .not_null()
                .default("")
                .to_owned(),
            ColumnDef::new(OutboxAudit::ChangedPaths)
                .text()
                .not_null()
                .default("")
                .to_owned(),
            ColumnDef::new(OutboxAudit::RequestId)
                .string_len(128)
                .not_null()
                .default("")
                .to_owned(),
            ColumnDef::new(OutboxAudit::Redacted)
                .boolean()
                .not_null()
                .default(false)
                .to_owned(),
        ];
        for mut column in columns {
            manager
                .alter_table(
                    Table::alter()
                        .table(Outbox::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        // A record's history and the tenant's audit trail, both newest first.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("outbox_tenant_resource_time")
                    .table(Outbox::Table)
                    .col(Outbox::TenantId)
                    .col(Outbox::ResourceName)
                    .col(Outbox::EventTimeUs)
                    .col(Outbox::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("outbox_tenant_time")
                    .table(Outbox::Table)
                    .col(Outbox::TenantId)
                    .col(Outbox::EventTimeUs)
                    .col(Outbox::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for index in ["outbox_tenant_resource_time", "outbox_tenant_time"] {
            manager
                .drop_index(Index::drop().name(index).table(Outbox::Table).to_owned())
                .await?;
        }
        for column in [
            OutboxAudit::ActorSubject,
            OutboxAudit::ActorRoles,
            OutboxAudit::ChangedPaths,
            OutboxAudit::RequestId,
            OutboxAudit::Redacted,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Outbox::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

/// `|a|b|`, the list form the filters match with `:` (empty for no items).
pub fn list_column<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let items: Vec<String> = items
        .filter(|item| !item.is_empty())
        .map(|item| item.replace('|', "").to_lowercase())
        .collect();
    if items.is_empty() {
        String::new()
    } else {
        format!("|{}|", items.join("|"))
    }
}

#[derive(DeriveIden)]
enum FeedState {
    Table,
    Id,
    HeadPosition,
    PrunedThrough,
}

#[derive(DeriveIden)]
enum ConsumerCheckpoints {
    Table,
    Consumer,
    Position,
    UpdateTimeUs,
}

#[async_trait::async_trait]
impl MigrationTrait for OutboxMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Outbox::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Outbox::Id)
                            .string_len(36)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Outbox::TenantId).string_len(64).not_null())
                    .col(ColumnDef::new(Outbox::EventType).string_len(128).not_null())
                    .col(
                        ColumnDef::new(Outbox::ResourceName)
                            .string_len(128)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Outbox::EventTimeUs).big_integer().not_null())
                    .col(ColumnDef::new(Outbox::Position).big_integer().null())
                    .col(ColumnDef::new(Outbox::Payload).blob().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("outbox_position")
                    .table(Outbox::Table)
                    .col(Outbox::Position)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("outbox_tenant_position")
                    .table(Outbox::Table)
                    .col(Outbox::TenantId)
                    .col(Outbox::Position)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(FeedState::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(FeedState::Id)
                            .integer()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(FeedState::HeadPosition)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(FeedState::PrunedThrough)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::insert()
                    .into_table(FeedState::Table)
                    .columns([
                        FeedState::Id,
                        FeedState::HeadPosition,
                        FeedState::PrunedThrough,
                    ])
                    .values_panic([1.into(), 0i64.into(), 0i64.into()])
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ConsumerCheckpoints::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(ConsumerCheckpoints::Consumer)
                            .string_len(128)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(ConsumerCheckpoints::Position)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ConsumerCheckpoints::UpdateTimeUs)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in ["consumer_checkpoints", "feed_state", "outbox"] {
            manager
                .drop_table(Table::drop().table(Alias::new(table)).to_owned())
                .await?;
        }
        Ok(())
    }
}

/// Starts a write transaction. On SQLite it begins IMMEDIATE, so that a transaction
/// that reads before it writes queues for the write lock instead of failing with BUSY.
pub async fn begin_write(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    db.begin_with_options(TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..TransactionOptions::default()
    })
    .await
}

/// A domain event to append in the writer's transaction.
pub struct NewEvent {
    /// e.g. `crm.contact.v1.ContactCreated`.
    pub event_type: &'static str,
    pub resource_name: String,
    pub changes: Vec<FieldChange>,
    pub payload: Option<prost_types::Any>,
    pub request_id: String,
}

/// The rows of `events`, all written at `now`, for a multi-row insert (`bulk::insert_all`,
/// in order): their outbox rows, then their pending rows, which the relay turns into
/// feed positions. An event written without its pending row would never reach the feed.
pub fn event_rows(
    caller: &Caller,
    events: impl IntoIterator<Item = NewEvent>,
    now: i64,
) -> Result<Vec<crate::bulk::Rows>, DbErr> {
    let mut outbox_rows = Vec::new();
    let mut pending_rows = Vec::new();
    for event in events {
        let id = uuid::Uuid::now_v7().to_string();
        pending_rows.push(positions::pending_row(&id, &caller.tenant, now));
        outbox_rows.push(outbox_row(caller, id, event, now));
    }
    Ok(vec![
        crate::bulk::Rows::of_models(outbox_rows)?,
        crate::bulk::Rows::of_models(pending_rows)?,
    ])
}

/// The outbox row of `event`.
fn outbox_row(caller: &Caller, id: String, event: NewEvent, now: i64) -> outbox::ActiveModel {
    let roles: Vec<String> = caller.roles.iter().map(|r| r.as_str().to_owned()).collect();
    let changed_paths = list_column(event.changes.iter().map(|c| c.path.as_str()));
    let actor_roles = list_column(roles.iter().map(String::as_str));
    let request_id = event.request_id.clone();
    let message = Event {
        position: 0,
        id: id.clone(),
        r#type: event.event_type.to_owned(),
        tenant: caller.tenant.clone(),
        resource_name: event.resource_name.clone(),
        event_time: Some(micros_to_timestamp(now)),
        actor: Some(Actor {
            subject: caller.subject.clone(),
            roles,
        }),
        changes: event.changes,
        payload: event.payload,
        request_id: event.request_id,
    };
    outbox::ActiveModel {
        id: Set(id),
        tenant_id: Set(caller.tenant.clone()),
        event_type: Set(event.event_type.to_owned()),
        resource_name: Set(event.resource_name),
        event_time_us: Set(now),
        payload: Set(message.encode_to_vec()),
        actor_subject: Set(caller.subject.clone()),
        actor_roles: Set(actor_roles),
        changed_paths: Set(changed_paths),
        request_id: Set(request_id),
        redacted: Set(false),
    }
}

/// Appends `event` to the outbox within `txn`, in one statement on Postgres and two on
/// SQLite (so pass a transaction); it becomes visible (and gets its position) only when
/// `txn` commits.
pub async fn append<C: ConnectionTrait>(
    txn: &C,
    caller: &Caller,
    event: NewEvent,
) -> Result<(), DbErr> {
    crate::bulk::insert_all(txn, event_rows(caller, [event], now_micros())?).await
}

/// The event feed of one service: the relay, `WatchEvents`, and pruning.
#[derive(Clone)]
pub struct EventFeed {
    db: DatabaseConnection,
    service: &'static str,
    config: EventsConfig,
    /// Poked by writers after commit, so the relay stamps at once.
    wake_relay: Arc<tokio::sync::Notify>,
    /// The newest stamped position, as this process knows it.
    head: watch::Sender<i64>,
    shutdown: watch::Sender<bool>,
}

impl EventFeed {
    pub fn new(db: DatabaseConnection, service: &'static str, config: EventsConfig) -> Self {
        Self {
            db,
            service,
            config,
            wake_relay: Arc::new(tokio::sync::Notify::new()),
            head: watch::channel(0).0,
            shutdown: watch::channel(false).0,
        }
    }

    /// A feed with its relay running.
    pub fn start(db: DatabaseConnection, service: &'static str, config: EventsConfig) -> Self {
        let feed = Self::new(db, service, config);
        feed.spawn_relay();
        feed
    }

    /// Tells the relay that a transaction with outbox rows has committed.
    pub fn committed(&self) {
        self.wake_relay.notify_one();
    }

    /// Ends every `WatchEvents` stream and the relay (on graceful shutdown).
    pub fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }

    /// Resolves once the feed is shut down: background work tied to the service's
    /// life (sweeps, relays) stops with it.
    pub async fn stopped(&self) {
        let mut receiver = self.shutdown.subscribe();
        let _ = receiver.wait_for(|stopped| *stopped).await;
    }

    /// Runs the relay until shutdown: stamps positions, then prunes past the retention.
    pub fn spawn_relay(&self) -> tokio::task::JoinHandle<()> {
        let feed = self.clone();
        tokio::spawn(async move { feed.relay_loop().await })
    }

    async fn relay_loop(&self) {
        let interval = Duration::from_millis(Ord::max(self.config.relay_interval_ms, 10));
        let mut shutdown = self.shutdown.subscribe();
        let mut last_prune = std::time::Instant::now();
        loop {
            match self.stamp().await {
                Ok(stamped) if stamped > 0 => continue,
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(service = self.service, error = %err, "outbox relay failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            if last_prune.elapsed() > Duration::from_secs(60) {
                last_prune = std::time::Instant::now();
                if let Err(err) = self.prune().await {
                    tracing::warn!(service = self.service, error = %err, "outbox pruning failed");
                }
            }
            tokio::select! {
                _ = self.wake_relay.notified() => {}
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => {
                    // One last pass, so that committed events are stamped before exit.
                    let _ = self.stamp().await;
                    return;
                }
            }
        }
    }

    /// Gives visible pending events their positions; returns how many.
    pub async fn stamp(&self) -> Result<usize, DbErr> {
        const BATCH: i64 = 1000;
        let txn = begin_write(&self.db).await?;
        lock_in_transaction(&txn, &format!("outbox-relay:{}", self.service)).await?;
        let head = head_position(&txn).await?;
        let stamped = positions::stamp_batch(&txn, head, BATCH).await?;
        if stamped == 0 {
            txn.rollback().await?;
            self.head.send_if_modified(|known| {
                let changed = *known < head;
                *known = Ord::max(*known, head);
                changed
            });
            return Ok(0);
        }
        let position = head + stamped as i64;
        txn.execute(
            &Query::update()
                .table(FeedState::Table)
                .value(FeedState::HeadPosition, position)
                .and_where(Expr::col(FeedState::Id).eq(1))
                .to_owned(),
        )
        .await?;
        txn.commit().await?;
        self.head.send_replace(position);
        Ok(stamped as usize)
    }

    async fn prune(&self) -> Result<(), DbErr> {
        let cutoff = now_micros() - (self.config.retention_hours as i64) * 3_600_000_000;
        let pruned = self.prune_before(cutoff).await?;
        if pruned > 0 {
            tracing::info!(service = self.service, pruned, "outbox pruned");
        }
        Ok(())
    }

    /// Deletes the oldest stamped events written before `cutoff` (µs since the epoch),
    /// in position order, and moves `pruned_through` past them; returns how many.
    ///
    /// It walks the position index from `pruned_through` a batch at a time and stops at
    /// the first event that is not yet old enough, so a pass with nothing to prune
    /// costs one index probe whatever the outbox's size (it used to take the maximum
    /// position of all expired rows, a scan of the whole outbox every minute: 0.5–1.4 s
    /// at a million events, with the relay's stamping held up behind it). An event
    /// stamped after a newer one (its transaction committed late) waits for that one.
    pub async fn prune_before(&self, cutoff: i64) -> Result<u64, DbErr> {
        const BATCH: u64 = 1000;
        /// Bounds one pass; the rest waits for the next one.
        const MAX_BATCHES: usize = 100;
        let mut pruned = 0;
        for _ in 0..MAX_BATCHES {
            let txn = begin_write(&self.db).await?;
            // One pruner at a time per service, so that `pruned_through` only grows.
            lock_in_transaction(&txn, &format!("outbox-prune:{}", self.service)).await?;
            let (_, through) = read_state(&txn).await?;
            let oldest = positions::oldest_after(&txn, through, BATCH).await?;
            let expired = oldest
                .iter()
                .take_while(|(_, event_time)| *event_time < cutoff)
                .count();
            let Some(&(new_through, _)) = expired.checked_sub(1).and_then(|last| oldest.get(last))
            else {
                txn.rollback().await?;
                break;
            };
            let deleted = positions::delete_range(&txn, through, new_through).await?;
            txn.execute(
                &Query::update()
                    .table(FeedState::Table)
                    .value(FeedState::PrunedThrough, new_through)
                    .and_where(Expr::col(FeedState::Id).eq(1))
                    .to_owned(),
            )
            .await?;
            txn.commit().await?;
            pruned += deleted;
            if expired < oldest.len() || (oldest.len() as u64) < BATCH {
                break;
            }
        }
        Ok(pruned)
    }

    /// Serves `WatchEvents` for `caller`: the tenant's events (every tenant's for the
    /// `system` role) after `after_position`, then the live tail.
    pub async fn watch(
        &self,
        caller: &Caller,
        request: WatchEventsRequest,
    ) -> Result<ReceiverStream<Result<Event, tonic::Status>>, ApiError> {
        let mut violations = crate::errors::Violations::new();
        if request.after_position < 0 {
            violations.add("after_position", "must not be negative");
        }
        if request.types.len() > 100 {
            violations.add("types", "at most 100 types");
        }
        for (i, event_type) in request.types.iter().enumerate() {
            if event_type.is_empty() || event_type.len() > 128 {
                violations.add(format!("types[{i}]"), "must be 1 to 128 characters");
            }
        }
        if request.heartbeat_seconds < 0 {
            violations.add("heartbeat_seconds", "must not be negative");
        }
        violations.into_result()?;
        let (head, pruned_through) = read_state(&self.db).await?;
        if request.after_position < pruned_through {
            return Err(ApiError::FailedPrecondition {
                reason: CHECKPOINT_EXPIRED,
                message: format!(
                    "events up to position {pruned_through} are past the retention; re-sync from the List methods"
                ),
            });
        }
        // Positions only grow, so a checkpoint beyond the head was taken from another
        // feed (a database restored from an older backup, or another one): waiting for
        // the feed to reach it would skip every event up to it.
        if request.after_position > head {
            return Err(ApiError::FailedPrecondition {
                reason: CHECKPOINT_AHEAD_OF_FEED,
                message: format!(
                    "position {} is beyond the newest position of this feed ({head}); re-sync from the List methods",
                    request.after_position
                ),
            });
        }
        let heartbeat = match request.heartbeat_seconds {
            0 => Duration::from_secs(Ord::max(self.config.heartbeat_s, 1)),
            n => Duration::from_secs(n.clamp(1, 60) as u64),
        };
        let tenant = (!caller.has(Role::System)).then(|| caller.tenant.clone());
        let (tx, rx) = mpsc::channel(64);
        let watcher = Watcher {
            db: self.db.clone(),
            tenant,
            types: request.types,
            cursor: request.after_position,
            batch: self.config.batch_size.clamp(1, 10_000),
            window: SCAN_WINDOW,
            heartbeat,
            poll: Duration::from_millis(Ord::max(self.config.relay_interval_ms, 10)),
            head: self.head.subscribe(),
            shutdown: self.shutdown.subscribe(),
            tx,
        };
        tokio::spawn(watcher.run());
        Ok(ReceiverStream::new(rx))
    }
}

async fn read_state<C: ConnectionTrait>(conn: &C) -> Result<(i64, i64), DbErr> {
    let row = conn
        .query_one(
            &Query::select()
                .columns([FeedState::HeadPosition, FeedState::PrunedThrough])
                .from(FeedState::Table)
                .and_where(Expr::col(FeedState::Id).eq(1))
                .to_owned(),
        )
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("feed_state".into()))?;
    Ok((row.try_get_by_index(0)?, row.try_get_by_index(1)?))
}

/// `WatchEvents`' reason for a checkpoint behind what the retention kept.
pub const CHECKPOINT_EXPIRED: &str = "CHECKPOINT_EXPIRED";
/// `WatchEvents`' reason for a checkpoint beyond the feed's newest position.
pub const CHECKPOINT_AHEAD_OF_FEED: &str = "CHECKPOINT_AHEAD_OF_FEED";

/// Which of the two checkpoint refusals a `FAILED_PRECONDITION` of `WatchEvents` is.
fn checkpoint_refusal(status: &tonic::Status) -> &'static str {
    use tonic_types::StatusExt as _;
    match status.get_details_error_info() {
        Some(info) if info.reason == CHECKPOINT_AHEAD_OF_FEED => CHECKPOINT_AHEAD_OF_FEED,
        _ => CHECKPOINT_EXPIRED,
    }
}

/// The newest position the relay has given.
pub async fn head_position<C: ConnectionTrait>(conn: &C) -> Result<i64, DbErr> {
    Ok(read_state(conn).await?.0)
}

/// The most positions one `WatchEvents` query looks at. A watch of rare event types
/// (or of a tenant with few events) finds a short page after reading up to this many
/// instead of the whole feed after its cursor, and steps on from there.
const SCAN_WINDOW: i64 = 10_000;

struct Watcher {
    db: DatabaseConnection,
    tenant: Option<String>,
    types: Vec<String>,
    /// Every wanted event at or below it has been sent.
    cursor: i64,
    batch: u64,
    /// Positions one query looks at, at most ([`SCAN_WINDOW`]).
    window: i64,
    heartbeat: Duration,
    poll: Duration,
    head: watch::Receiver<i64>,
    shutdown: watch::Receiver<bool>,
    tx: mpsc::Sender<Result<Event, tonic::Status>>,
}

impl Watcher {
    async fn run(mut self) {
        let mut last_sent = tokio::time::Instant::now();
        loop {
            // A client gone while catching up is noticed here, not at the next send.
            if *self.shutdown.borrow() || self.tx.is_closed() {
                return;
            }
            // Everything at or below the head read here has its position and is visible to
            // the query that follows, so a short page means we have seen all up to
            // `through`.
            let step = async {
                let head = head_position(&self.db).await?;
                let through = Ord::min(head, self.cursor.saturating_add(self.window));
                let rows = self.next_rows(through).await?;
                Ok::<_, DbErr>((head, through, rows))
            };
            let (head, through, rows) = match step.await {
                Ok(found) => found,
                Err(err) => {
                    tracing::warn!(error = %err, "watch query failed");
                    let status: tonic::Status = crate::errors::from_db(err, "event feed").into();
                    let _ = self.tx.send(Err(status)).await;
                    return;
                }
            };
            let full_page = rows.len() as u64 == self.batch;
            for (position, payload) in rows {
                let mut event = match Event::decode(payload.as_slice()) {
                    Ok(event) => event,
                    Err(err) => {
                        tracing::error!(position, error = %err, "undecodable outbox row skipped");
                        self.cursor = position;
                        continue;
                    }
                };
                event.position = position;
                self.cursor = position;
                if self.tx.send(Ok(event)).await.is_err() {
                    return;
                }
                last_sent = tokio::time::Instant::now();
            }
            if full_page {
                continue;
            }
            // The next query starts past what this one looked at, not at the last event
            // sent: a watch of rare types would otherwise read the same run of other
            // events again at every poll.
            self.cursor = Ord::max(self.cursor, through);
            if last_sent.elapsed() >= self.heartbeat {
                let beat = Event {
                    position: self.cursor,
                    r#type: HEARTBEAT_TYPE.to_owned(),
                    event_time: Some(micros_to_timestamp(now_micros())),
                    ..Event::default()
                };
                if self.tx.send(Ok(beat)).await.is_err() {
                    return;
                }
                last_sent = tokio::time::Instant::now();
            }
            if through < head {
                // Catching up, one window at a time.
                continue;
            }
            let until_heartbeat = self.heartbeat.saturating_sub(last_sent.elapsed());
            tokio::select! {
                // Caught up: the cursor is at or past the head read above.
                _ = self.head.wait_for(|h| *h > self.cursor) => {}
                // Other replicas' relays stamp rows this process is not told about.
                _ = tokio::time::sleep(self.poll.min(until_heartbeat)) => {}
                _ = self.shutdown.changed() => return,
                _ = self.tx.closed() => return,
            }
        }
    }

    /// (position, payload) of the next events after the cursor, up to `through`.
    async fn next_rows(&self, through: i64) -> Result<Vec<(i64, Vec<u8>)>, DbErr> {
        positions::page_after(
            &self.db,
            self.cursor,
            through,
            self.tenant.as_deref(),
            &self.types,
            self.batch,
        )
        .await
    }
}

/// Applies one event in the consumer's transaction; the checkpoint is saved in the same
/// transaction, so an event's effect is applied exactly once.
#[async_trait::async_trait]
pub trait EventHandler: Send + Sync {
    async fn apply(&self, txn: &DatabaseTransaction, event: &Event) -> Result<(), ApiError>;
}

/// Durable consumer checkpoints in the consumer's own database.
pub struct Checkpoints;

impl Checkpoints {
    pub async fn load<C: ConnectionTrait>(conn: &C, consumer: &str) -> Result<i64, DbErr> {
        let row = conn
            .query_one(
                &Query::select()
                    .column(ConsumerCheckpoints::Position)
                    .from(ConsumerCheckpoints::Table)
                    .and_where(Expr::col(ConsumerCheckpoints::Consumer).eq(consumer))
                    .to_owned(),
            )
            .await?;
        row.map_or(Ok(0), |row| row.try_get_by_index(0))
    }

    pub async fn save<C: ConnectionTrait>(
        conn: &C,
        consumer: &str,
        position: i64,
    ) -> Result<(), DbErr> {
        let updated = conn
            .execute(
                &Query::update()
                    .table(ConsumerCheckpoints::Table)
                    .value(ConsumerCheckpoints::Position, position)
                    .value(ConsumerCheckpoints::UpdateTimeUs, now_micros())
                    .and_where(Expr::col(ConsumerCheckpoints::Consumer).eq(consumer))
                    .to_owned(),
            )
            .await?;
        if updated.rows_affected() == 0 {
            conn.execute(
                &Query::insert()
                    .into_table(ConsumerCheckpoints::Table)
                    .columns([
                        ConsumerCheckpoints::Consumer,
                        ConsumerCheckpoints::Position,
                        ConsumerCheckpoints::UpdateTimeUs,
                    ])
                    .values_panic([consumer.into(), position.into(), now_micros().into()])
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}

/// Consumes a feed from the stored checkpoint until `stop` turns true: each event is
/// applied with its checkpoint in one transaction; heartbeats advance the checkpoint.
/// `open` opens a `WatchEvents` stream after a position. Reconnects with backoff.
pub async fn consume<H, F, Fut>(
    db: &DatabaseConnection,
    consumer: &str,
    handler: &H,
    mut open: F,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ApiError>
where
    H: EventHandler,
    F: FnMut(i64) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Streaming<Event>, tonic::Status>>,
{
    let mut backoff = Duration::from_millis(100);
    while !*stop.borrow() {
        let after = Checkpoints::load(db, consumer).await?;
        let mut stream = match open(after).await {
            Ok(stream) => stream,
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                return Err(ApiError::FailedPrecondition {
                    reason: checkpoint_refusal(&status),
                    message: status.message().to_owned(),
                });
            }
            Err(status) => {
                tracing::warn!(consumer, code = ?status.code(), "feed unavailable; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        loop {
            let next = tokio::select! {
                next = stream.message() => next,
                _ = stop.changed() => return Ok(()),
            };
            let event = match next {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(status) => {
                    tracing::warn!(consumer, code = ?status.code(), "feed stream broke; reconnecting");
                    break;
                }
            };
            let txn = begin_write(db).await?;
            if event.r#type != HEARTBEAT_TYPE {
                handler.apply(&txn, &event).await?;
            }
            Checkpoints::save(&txn, consumer, event.position).await?;
            txn.commit().await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::{DbBackend, EntityTrait, QueryOrder, QuerySelect, Statement};
    use sea_orm_migration::SchemaManager;

    fn caller() -> Caller {
        Caller {
            subject: "relay-test".into(),
            tenant: "acme".into(),
            roles: vec![Role::System],
            token: Arc::from(""),
        }
    }

    fn happened() -> NewEvent {
        NewEvent {
            event_type: "crm.test.v1.Happened",
            resource_name: "things/1".into(),
            changes: Vec::new(),
            payload: None,
            request_id: String::new(),
        }
    }

    async fn database() -> (DatabaseConnection, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/feed.db?mode=rwc", dir.path().display());
        (sea_orm::Database::connect(url).await.unwrap(), dir)
    }

    /// The outbox as it was before feed positions had a table of their own.
    async fn migrate_to_stamped_outbox(db: &DatabaseConnection) {
        let schema = SchemaManager::new(db);
        OutboxMigration.up(&schema).await.unwrap();
        OutboxAuditColumnsMigration.up(&schema).await.unwrap();
        OutboxUnstampedIndexMigration.up(&schema).await.unwrap();
    }

    async fn feed() -> (EventFeed, tempfile::TempDir) {
        let (db, dir) = database().await;
        migrate_to_stamped_outbox(&db).await;
        FeedPositionsMigration
            .up(&SchemaManager::new(&db))
            .await
            .unwrap();
        (EventFeed::new(db, "test", EventsConfig::default()), dir)
    }

    /// Writes one event at each time, in one transaction.
    async fn insert(feed: &EventFeed, times: impl IntoIterator<Item = i64>) {
        let txn = begin_write(&feed.db).await.unwrap();
        for time in times {
            let rows = event_rows(&caller(), [happened()], time).unwrap();
            crate::bulk::insert_all(&txn, rows).await.unwrap();
        }
        txn.commit().await.unwrap();
    }

    async fn stamp_all(feed: &EventFeed) {
        while feed.stamp().await.unwrap() > 0 {}
    }

    /// (position, event time) of every event left, with a position or not.
    async fn left(feed: &EventFeed) -> Vec<(Option<i64>, i64)> {
        let rows: Vec<(String, i64)> = outbox::Entity::find()
            .select_only()
            .column(outbox::Column::Id)
            .column(outbox::Column::EventTimeUs)
            .order_by_asc(outbox::Column::EventTimeUs)
            .into_tuple()
            .all(&feed.db)
            .await
            .unwrap();
        let positions = positions_of(&feed.db, rows.iter().map(|(id, _)| id.as_str()))
            .await
            .unwrap();
        rows.into_iter()
            .map(|(id, time)| (positions.get(&id).copied(), time))
            .collect()
    }

    /// Every position still stored, whether or not its event is.
    async fn positions_kept(feed: &EventFeed) -> Vec<i64> {
        let kept = positions::oldest_after(&feed.db, 0, 10_000).await.unwrap();
        kept.into_iter().map(|(position, _)| position).collect()
    }

    /// (position, event time) of the feed from position 0, as `WatchEvents` reads it.
    async fn feed_times(feed: &EventFeed) -> Vec<(i64, i64)> {
        positions::page_after(&feed.db, 0, i64::MAX, None, &[], 100)
            .await
            .unwrap()
            .into_iter()
            .map(|(position, payload)| {
                let event = Event::decode(payload.as_slice()).unwrap();
                let time = event.event_time.unwrap();
                (
                    position,
                    time.seconds * 1_000_000 + i64::from(time.nanos) / 1_000,
                )
            })
            .collect()
    }

    /// The positions of a `WatchEvents` page after `after`.
    async fn positions_in(
        feed: &EventFeed,
        after: i64,
        tenant: Option<&str>,
        types: &[String],
    ) -> Vec<i64> {
        let page = positions::page_after(&feed.db, after, i64::MAX, tenant, types, 100)
            .await
            .unwrap();
        page.into_iter().map(|(position, _)| position).collect()
    }

    #[tokio::test]
    async fn positions_follow_event_time_and_late_commits_come_last() {
        let (feed, _dir) = feed().await;
        insert(&feed, [300, 100, 200]).await;
        assert_eq!(pending_count(&feed.db).await.unwrap(), 3);
        assert_eq!(feed.stamp().await.unwrap(), 3);
        assert_eq!(pending_count(&feed.db).await.unwrap(), 0);
        insert(&feed, [50]).await;
        stamp_all(&feed).await;
        assert_eq!(
            feed_times(&feed).await,
            vec![(1, 100), (2, 200), (3, 300), (4, 50)]
        );
        assert_eq!(read_state(&feed.db).await.unwrap(), (4, 0));
        // Filters: another tenant's feed is empty, and so is a type never written.
        assert!(positions_in(&feed, 0, Some("globex"), &[]).await.is_empty());
        let other_type = ["crm.test.v1.Other".to_owned()];
        assert!(
            positions_in(&feed, 0, Some("acme"), &other_type)
                .await
                .is_empty()
        );
        let written_type = ["crm.test.v1.Happened".to_owned()];
        assert_eq!(
            positions_in(&feed, 2, Some("acme"), &written_type).await,
            [3, 4]
        );
    }

    #[tokio::test]
    async fn the_migration_keeps_stamped_positions_and_pending_events() {
        let (db, _dir) = database().await;
        migrate_to_stamped_outbox(&db).await;
        for (id, time, position) in [
            ("e1", 100, Some(1)),
            ("e2", 200, Some(2)),
            ("e3", 150, None),
        ] {
            db.execute_raw(Statement::from_sql_and_values(
                DbBackend::Sqlite,
                "INSERT INTO outbox (id, tenant_id, event_type, resource_name, event_time_us, position, payload) \
                 VALUES (?1, 'acme', 'crm.test.v1.Happened', 'things/1', ?2, ?3, x'')",
                [id.into(), i64::from(time).into(), position.into()],
            ))
            .await
            .unwrap();
        }
        db.execute_unprepared("UPDATE feed_state SET head_position = 2 WHERE id = 1")
            .await
            .unwrap();
        FeedPositionsMigration
            .up(&SchemaManager::new(&db))
            .await
            .unwrap();
        let feed = EventFeed::new(db, "test", EventsConfig::default());
        assert_eq!(pending_count(&feed.db).await.unwrap(), 1);
        stamp_all(&feed).await;
        assert_eq!(
            left(&feed).await,
            vec![(Some(1), 100), (Some(3), 150), (Some(2), 200)]
        );
        assert_eq!(read_state(&feed.db).await.unwrap(), (3, 0));
    }

    /// Writes one event of `event_type` at each time, in one transaction.
    async fn insert_typed(
        feed: &EventFeed,
        event_type: &'static str,
        times: impl IntoIterator<Item = i64>,
    ) {
        let txn = begin_write(&feed.db).await.unwrap();
        for time in times {
            let event = NewEvent {
                event_type,
                ..happened()
            };
            let rows = event_rows(&caller(), [event], time).unwrap();
            crate::bulk::insert_all(&txn, rows).await.unwrap();
        }
        txn.commit().await.unwrap();
    }

    #[tokio::test]
    async fn a_watch_of_rare_types_steps_through_the_feed_window_by_window() {
        let (feed, _dir) = feed().await;
        insert_typed(&feed, "crm.test.v1.Rare", [10, 11]).await; // positions 1 and 2
        insert_typed(&feed, "crm.test.v1.Common", 20..40).await; // 3 to 22
        insert_typed(&feed, "crm.test.v1.Rare", [50]).await; // 23
        stamp_all(&feed).await;
        let (tx, mut rx) = mpsc::channel(64);
        let watcher = Watcher {
            db: feed.db.clone(),
            tenant: None,
            types: vec!["crm.test.v1.Rare".into()],
            cursor: 0,
            batch: 2,
            window: 4,
            heartbeat: Duration::ZERO,
            poll: Duration::from_millis(10),
            head: feed.head.subscribe(),
            shutdown: feed.shutdown.subscribe(),
            tx,
        };
        let task = tokio::spawn(watcher.run());
        let (mut sent, mut beats) = (Vec::new(), Vec::new());
        while beats.last() != Some(&23) {
            let event = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("the watch goes on")
                .expect("the watch is open")
                .expect("no error");
            if event.r#type == HEARTBEAT_TYPE {
                beats.push(event.position);
            } else {
                sent.push(event.position);
            }
        }
        task.abort();
        assert_eq!(sent, [1, 2, 23]);
        // The first page is full (two events, positions 1 and 2); then each query looks at
        // the next four positions at most, and the heartbeats say how far it got.
        assert_eq!(beats, [6, 10, 14, 18, 22, 23]);
    }

    #[tokio::test]
    async fn pruning_takes_the_oldest_run_in_position_order() {
        let (feed, _dir) = feed().await;
        insert(&feed, [100, 200, 300, 400, 500]).await;
        stamp_all(&feed).await;
        // Committed late: stamped after newer events, though written before them.
        insert(&feed, [50]).await;
        stamp_all(&feed).await;
        // Not committed yet when the relay passed: never pruned before it is stamped.
        insert(&feed, [10]).await;

        assert_eq!(feed.prune_before(350).await.unwrap(), 3);
        assert_eq!(read_state(&feed.db).await.unwrap(), (6, 3));
        assert_eq!(
            left(&feed).await,
            vec![(None, 10), (Some(6), 50), (Some(4), 400), (Some(5), 500)]
        );
        assert_eq!(positions_kept(&feed).await, [4, 5, 6]);
        // Nothing more is old enough before position 4.
        assert_eq!(feed.prune_before(350).await.unwrap(), 0);
        assert_eq!(read_state(&feed.db).await.unwrap(), (6, 3));

        assert_eq!(feed.prune_before(1_000).await.unwrap(), 3);
        assert_eq!(read_state(&feed.db).await.unwrap(), (6, 6));
        assert_eq!(left(&feed).await, vec![(None, 10)]);
        assert!(positions_kept(&feed).await.is_empty());

        // A consumer whose checkpoint is behind what was pruned must re-sync.
        let behind = feed
            .watch(
                &caller(),
                WatchEventsRequest {
                    after_position: 2,
                    ..Default::default()
                },
            )
            .await
            .expect_err("behind the retention");
        assert!(
            matches!(
                behind,
                ApiError::FailedPrecondition {
                    reason: "CHECKPOINT_EXPIRED",
                    ..
                }
            ),
            "{behind:?}"
        );
        assert!(
            feed.watch(
                &caller(),
                WatchEventsRequest {
                    after_position: 6,
                    ..Default::default()
                },
            )
            .await
            .is_ok()
        );

        // A checkpoint beyond the head is another feed's: refused, not waited for.
        let ahead = feed
            .watch(
                &caller(),
                WatchEventsRequest {
                    after_position: 7,
                    ..Default::default()
                },
            )
            .await
            .expect_err("beyond the head");
        assert!(
            matches!(
                ahead,
                ApiError::FailedPrecondition {
                    reason: CHECKPOINT_AHEAD_OF_FEED,
                    ..
                }
            ),
            "{ahead:?}"
        );
        // A consumer tells the two refusals apart from the status.
        assert_eq!(
            checkpoint_refusal(&tonic::Status::from(ahead)),
            CHECKPOINT_AHEAD_OF_FEED
        );
        assert_eq!(
            checkpoint_refusal(&tonic::Status::from(behind)),
            CHECKPOINT_EXPIRED
        );
    }

    #[tokio::test]
    async fn pruning_goes_on_past_one_batch() {
        let (feed, _dir) = feed().await;
        insert(&feed, 1..=2_500).await;
        stamp_all(&feed).await;
        insert(&feed, [5_000]).await;
        stamp_all(&feed).await;
        assert_eq!(feed.prune_before(4_000).await.unwrap(), 2_500);
        assert_eq!(read_state(&feed.db).await.unwrap(), (2_501, 2_500));
        assert_eq!(left(&feed).await, vec![(Some(2_501), 5_000)]);
        assert_eq!(positions_kept(&feed).await, [2_501]);
    }
}
