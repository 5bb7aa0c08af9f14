//! Timeline persistence: every write is one transaction holding the change, its request
//! id and its outbox event.

use std::collections::HashMap;

use sea_orm::sea_query::{Condition, Expr, ExprTrait as _, Func, JoinType, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, PaginatorTrait,
    QueryFilter, QuerySelect, QueryTrait, Select,
};

use crm_platform::ApiError;
use crm_platform::auth::Caller;
use crm_platform::encoded::{self, KeyType};
use crm_platform::errors::from_db;
use crm_platform::events::{self, EventFeed, NewEvent};
use crm_platform::idempotency;
use crm_platform::pagination::CursorValue;
use crm_proto::common::FieldChange;
use crm_proto::contact::{Episode, Interaction};

use super::rows::{self, StoredEpisode, StoredInteraction, episode_row, interaction_row, link_row};
use crate::domain::names;
use crate::store::contact_row;

use episode_row::{Column as EpisodeCol, Entity as Episodes};
use interaction_row::{Column as InteractionCol, Entity as Interactions};
use link_row::{Column as LinkCol, Entity as Links};

/// A new version of a resource and the fields that changed.
pub struct Change<T> {
    pub resource: T,
    pub changes: Vec<FieldChange>,
}

/// Which interactions a listing covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Tenant,
    /// A contact id: the interactions with it as contact or as participant.
    Contact(String),
    /// An account name: its own interactions and those of its contacts.
    Account(String),
}

/// The sort keys of the listings; the id always ends an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    InteractionTime,
    StartTime,
    EndTime,
    CreateTime,
    Id,
}

pub struct Page {
    pub filter: Option<Condition>,
    pub order: Vec<(SortKey, bool)>,
    pub after: Option<Vec<CursorValue>>,
    pub limit: u64,
}

#[derive(Clone)]
pub struct TimelineStore {
    db: DatabaseConnection,
    feed: EventFeed,
}

async fn replayed<C: ConnectionTrait>(
    conn: &C,
    caller: &Caller,
    method: &str,
    request_id: &str,
    hash: &str,
) -> Result<Option<String>, ApiError> {
    if request_id.is_empty() {
        return Ok(None);
    }
    idempotency::lookup(conn, &caller.tenant, method, request_id, hash).await
}

async fn claim<C: ConnectionTrait>(
    conn: &C,
    caller: &Caller,
    method: &str,
    request_id: &str,
    hash: &str,
    resource: &str,
) -> Result<(), ApiError> {
    if request_id.is_empty() {
        return Ok(());
    }
    idempotency::record(conn, &caller.tenant, method, request_id, hash, resource)
        .await
        .map_err(|e| from_db(e, "request"))
}

async fn publish<C: ConnectionTrait>(
    conn: &C,
    caller: &Caller,
    event_type: &'static str,
    resource_name: &str,
    changes: Vec<FieldChange>,
    payload: prost_types::Any,
    request_id: &str,
) -> Result<(), ApiError> {
    events::append(
        conn,
        caller,
        NewEvent {
            event_type,
            resource_name: resource_name.to_owned(),
            changes,
            payload: Some(payload),
            request_id: request_id.to_owned(),
        },
    )
    .await
    .map_err(|e| from_db(e, "event"))
}

pub async fn load_interaction<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    id: &str,
    lock: bool,
) -> Result<Option<StoredInteraction>, ApiError> {
    let mut find = Interactions::find_by_id((tenant.to_owned(), id.to_owned()));
    if lock && conn.get_database_backend() == DbBackend::Postgres {
        find = find.lock_exclusive();
    }
    let row = find
        .one(conn)
        .await
        .map_err(|e| from_db(e, "interaction"))?;
    row.as_ref().map(rows::decode_interaction).transpose()
}

pub async fn load_episode<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    id: &str,
    lock: bool,
) -> Result<Option<StoredEpisode>, ApiError> {
    let mut find = Episodes::find_by_id((tenant.to_owned(), id.to_owned()));
    if lock && conn.get_database_backend() == DbBackend::Postgres {
        find = find.lock_exclusive();
    }
    let row = find.one(conn).await.map_err(|e| from_db(e, "episode"))?;
    row.as_ref().map(rows::decode_episode).transpose()
}

/// Replaces the links of one interaction with those its current version implies.
pub async fn relink<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    id: &str,
    interaction: &Interaction,
) -> Result<(), ApiError> {
    Links::delete_many()
        .filter(LinkCol::TenantId.eq(tenant))
        .filter(LinkCol::InteractionId.eq(id))
        .exec(conn)
        .await
        .map_err(|e| from_db(e, "interaction links"))?;
    let links = rows::link_models(tenant, id, interaction);
    if !links.is_empty() {
        Links::insert_many(links)
            .exec_without_returning(conn)
            .await
            .map_err(|e| from_db(e, "interaction links"))?;
    }
    Ok(())
}

/// Writes a new version of a stored interaction if its revision is still `revision`.
pub async fn rewrite_interaction<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    id: &str,
    revision: i64,
    interaction: &Interaction,
) -> Result<(), ApiError> {
    let name = rows::interaction_name(id);
    let updated = Interactions::update_many()
        .set(rows::interaction_model(
            tenant,
            id,
            revision + 1,
            interaction,
        ))
        .filter(InteractionCol::TenantId.eq(tenant))
        .filter(InteractionCol::Id.eq(id))
        .filter(InteractionCol::Revision.eq(revision))
        .exec(conn)
        .await
        .map_err(|e| from_db(e, &name))?;
    if updated.rows_affected != 1 {
        return Err(ApiError::Aborted {
            reason: "CONCURRENT_MODIFICATION",
            message: format!("{name} was changed concurrently; retry"),
        });
    }
    relink(conn, tenant, id, interaction).await
}

/// Writes a new version of a stored episode if its revision is still `revision`.
pub async fn rewrite_episode<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    id: &str,
    revision: i64,
    creator: &str,
    episode: &Episode,
) -> Result<(), ApiError> {
    let name = rows::episode_name(id);
    let updated = Episodes::update_many()
        .set(rows::episode_model(
            tenant,
            id,
            revision + 1,
            creator,
            episode,
        ))
        .filter(EpisodeCol::TenantId.eq(tenant))
        .filter(EpisodeCol::Id.eq(id))
        .filter(EpisodeCol::Revision.eq(revision))
        .exec(conn)
        .await
        .map_err(|e| from_db(e, &name))?;
    if updated.rows_affected != 1 {
        return Err(ApiError::Aborted {
            reason: "CONCURRENT_MODIFICATION",
            message: format!("{name} was changed concurrently; retry"),
        });
    }
    Ok(())
}

/// The number of interactions of each episode (by name), in one grouped query.
pub async fn episode_counts<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    episodes: &[String],
) -> Result<HashMap<String, i64>, ApiError> {
    if episodes.is_empty() {
        return Ok(HashMap::new());
    }
    let counts: Vec<(String, i64)> = Interactions::find()
        .select_only()
        .column(InteractionCol::Episode)
        .column_as(InteractionCol::Id.count(), "n")
        .filter(InteractionCol::TenantId.eq(tenant))
        .filter(InteractionCol::Episode.is_in(episodes.iter().map(String::as_str)))
        .group_by(InteractionCol::Episode)
        .into_tuple()
        .all(conn)
        .await
        .map_err(|e| from_db(e, "episodes"))?;
    Ok(counts.into_iter().collect())
}

/// Sets `interaction_count` on each episode.
pub async fn with_counts<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    episodes: &mut [Episode],
) -> Result<(), ApiError> {
    let names: Vec<String> = episodes.iter().map(|e| e.name.clone()).collect();
    let counts = episode_counts(conn, tenant, &names).await?;
    for episode in episodes {
        episode.interaction_count = counts.get(&episode.name).copied().unwrap_or_default();
    }
    Ok(())
}

impl SortKey {
    /// How a cursor reads this key back: the id is text, every time a count of
    /// microseconds.
    fn kind(self) -> KeyType {
        match self {
            Self::Id => KeyType::Text,
            Self::InteractionTime | Self::StartTime | Self::EndTime | Self::CreateTime => {
                KeyType::Int
            }
        }
    }
}

/// A key of an interaction listing's order. A contact's timeline is ordered by its
/// links (the interaction's time, copied there, and id), which the listing joins.
fn interaction_key(scope: &Scope, key: SortKey, descending: bool) -> encoded::SortKey {
    let expr = match (scope, key) {
        (Scope::Contact(_), SortKey::InteractionTime) => Expr::col((Links, LinkCol::LinkTimeUs)),
        (Scope::Contact(_), SortKey::Id) => Expr::col((Links, LinkCol::InteractionId)),
        (_, SortKey::CreateTime) => Expr::col((Interactions, InteractionCol::CreateTimeUs)),
        (_, SortKey::Id) => Expr::col((Interactions, InteractionCol::Id)),
        _ => Expr::col((Interactions, InteractionCol::InteractionTimeUs)),
    };
    encoded::SortKey {
        expr,
        descending,
        kind: key.kind(),
    }
}

/// A key of an episode listing's order.
fn episode_key(key: SortKey, descending: bool) -> encoded::SortKey {
    let expr = match key {
        SortKey::CreateTime => Expr::col((Episodes, EpisodeCol::CreateTimeUs)),
        // Open episodes sort as if they ended in the infinite future: the same order
        // on both backends, and a keyset without NULLs.
        SortKey::EndTime => Func::coalesce([
            Expr::col((Episodes, EpisodeCol::EndTimeUs)),
            Expr::val(i64::MAX),
        ])
        .into(),
        SortKey::Id => Expr::col((Episodes, EpisodeCol::Id)),
        _ => Expr::col((Episodes, EpisodeCol::StartTimeUs)),
    };
    encoded::SortKey {
        expr,
        descending,
        kind: key.kind(),
    }
}

/// The interactions of `scope` in `tenant`, before filter and paging.
pub fn interactions_in(tenant: &str, scope: &Scope) -> Select<Interactions> {
    let mut select = Interactions::find().filter(InteractionCol::TenantId.eq(tenant));
    match scope {
        Scope::Tenant => {}
        Scope::Contact(contact_id) => {
            QueryTrait::query(&mut select).join(
                JoinType::InnerJoin,
                Links,
                Condition::all()
                    .add(
                        Expr::col((Links, LinkCol::TenantId))
                            .equals((Interactions, InteractionCol::TenantId)),
                    )
                    .add(
                        Expr::col((Links, LinkCol::InteractionId))
                            .equals((Interactions, InteractionCol::Id)),
                    ),
            );
            select = select
                .filter(LinkCol::TenantId.eq(tenant))
                .filter(LinkCol::ContactId.eq(contact_id.as_str()));
        }
        Scope::Account(account) => {
            let members = Query::select()
                .column((contact_row::Entity, contact_row::Column::Id))
                .from(contact_row::Entity)
                .and_where(contact_row::Column::TenantId.eq(tenant))
                .and_where(contact_row::Column::Account.eq(account.as_str()))
                .to_owned();
            select = select.filter(
                Condition::any()
                    .add(InteractionCol::Account.eq(account.as_str()))
                    .add(InteractionCol::ContactId.in_subquery(members)),
            );
        }
    }
    select
}

impl TimelineStore {
    pub fn new(db: DatabaseConnection, feed: EventFeed) -> Self {
        Self { db, feed }
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    pub async fn get_interaction(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<StoredInteraction>, ApiError> {
        load_interaction(&self.db, tenant, id, false).await
    }

    pub async fn get_episode(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<StoredEpisode>, ApiError> {
        let Some(mut stored) = load_episode(&self.db, tenant, id, false).await? else {
            return Ok(None);
        };
        with_counts(&self.db, tenant, std::slice::from_mut(&mut stored.episode)).await?;
        Ok(Some(stored))
    }

    /// The interaction a request id already produced, when it was used before.
    pub async fn replayed_interaction(
        &self,
        caller: &Caller,
        method: &str,
        request_id: &str,
        hash: &str,
    ) -> Result<Option<StoredInteraction>, ApiError> {
        match replayed(&self.db, caller, method, request_id, hash).await? {
            Some(name) => Ok(Some(
                self.replay_interaction(&self.db, caller, &name).await?,
            )),
            None => Ok(None),
        }
    }

    /// The episode a request id already produced, when it was used before.
    pub async fn replayed_episode(
        &self,
        caller: &Caller,
        method: &str,
        request_id: &str,
        hash: &str,
    ) -> Result<Option<StoredEpisode>, ApiError> {
        match replayed(&self.db, caller, method, request_id, hash).await? {
            Some(name) => Ok(Some(self.replay_episode(&self.db, caller, &name).await?)),
            None => Ok(None),
        }
    }

    /// After a failed write with a request id, a concurrent call with the same id may
    /// have won the race (the loser waits on the key, then meets a unique violation):
    /// answer with what the winner committed.
    async fn or_replay_interaction(
        &self,
        attempt: Result<StoredInteraction, ApiError>,
        caller: &Caller,
        method: &str,
        request_id: &str,
        hash: &str,
    ) -> Result<StoredInteraction, ApiError> {
        match attempt {
            Err(err) if !request_id.is_empty() => {
                match replayed(&self.db, caller, method, request_id, hash).await? {
                    Some(name) => self.replay_interaction(&self.db, caller, &name).await,
                    None => Err(err),
                }
            }
            other => other,
        }
    }

    async fn replay_interaction<C: ConnectionTrait>(
        &self,
        conn: &C,
        caller: &Caller,
        name: &str,
    ) -> Result<StoredInteraction, ApiError> {
        let id = rows::id_of(rows::INTERACTIONS, name);
        load_interaction(conn, &caller.tenant, id, false)
            .await?
            .ok_or_else(|| ApiError::not_found(name))
    }

    async fn replay_episode<C: ConnectionTrait>(
        &self,
        conn: &C,
        caller: &Caller,
        name: &str,
    ) -> Result<StoredEpisode, ApiError> {
        let id = rows::id_of(rows::EPISODES, name);
        let mut stored = load_episode(conn, &caller.tenant, id, false)
            .await?
            .ok_or_else(|| ApiError::not_found(name))?;
        with_counts(
            conn,
            &caller.tenant,
            std::slice::from_mut(&mut stored.episode),
        )
        .await?;
        Ok(stored)
    }

    async fn or_replay_episode(
        &self,
        attempt: Result<StoredEpisode, ApiError>,
        caller: &Caller,
        method: &str,
        request_id: &str,
        hash: &str,
    ) -> Result<StoredEpisode, ApiError> {
        match attempt {
            Err(err) if !request_id.is_empty() => {
                match replayed(&self.db, caller, method, request_id, hash).await? {
                    Some(name) => self.replay_episode(&self.db, caller, &name).await,
                    None => Err(err),
                }
            }
            other => other,
        }
    }

    /// Inserts a new interaction (output fields already set) with its links and event.
    pub async fn create_interaction(
        &self,
        caller: &Caller,
        interaction: Interaction,
        request_id: &str,
        hash: &str,
    ) -> Result<StoredInteraction, ApiError> {
        let attempt = self
            .try_create_interaction(caller, interaction, request_id, hash)
            .await;
        self.or_replay_interaction(attempt, caller, "CreateInteraction", request_id, hash)
            .await
    }

    async fn try_create_interaction(
        &self,
        caller: &Caller,
        interaction: Interaction,
        request_id: &str,
        hash: &str,
    ) -> Result<StoredInteraction, ApiError> {
        const METHOD: &str = "CreateInteraction";
        let name = interaction.name.clone();
        let id = rows::id_of(rows::INTERACTIONS, &name).to_owned();
        let txn = events::begin_write(&self.db)
            .await
            .map_err(|e| from_db(e, "interaction"))?;
        if let Some(done) = replayed(&txn, caller, METHOD, request_id, hash).await? {
            return self.replay_interaction(&txn, caller, &done).await;
        }
        // The request id is claimed first, so that a concurrent duplicate waits here.
        claim(&txn, caller, METHOD, request_id, hash, &name).await?;
        Interactions::insert(rows::interaction_model(
            &caller.tenant,
            &id,
            1,
            &interaction,
        ))
        .exec_without_returning(&txn)
        .await
        .map_err(|e| from_db(e, &name))?;
        relink(&txn, &caller.tenant, &id, &interaction).await?;
        publish(
            &txn,
            caller,
            "crm.contact.v1.InteractionCreated",
            &name,
            Vec::new(),
            rows::payload("Interaction", &interaction),
            request_id,
        )
        .await?;
        txn.commit().await.map_err(|e| from_db(e, &name))?;
        self.feed.committed();
        Ok(StoredInteraction {
            interaction,
            revision: 1,
        })
    }

    /// Reads, changes and writes one interaction in a transaction; `change` gets the
    /// current version and returns the new one (or `None`: nothing to write).
    pub async fn modify_interaction<F>(
        &self,
        caller: &Caller,
        id: &str,
        request_id: &str,
        hash: &str,
        change: F,
    ) -> Result<StoredInteraction, ApiError>
    where
        F: FnOnce(StoredInteraction) -> Result<Option<Change<Interaction>>, ApiError>,
    {
        let attempt = self
            .try_modify_interaction(caller, id, request_id, hash, change)
            .await;
        self.or_replay_interaction(attempt, caller, "UpdateInteraction", request_id, hash)
            .await
    }

    async fn try_modify_interaction<F>(
        &self,
        caller: &Caller,
        id: &str,
        request_id: &str,
        hash: &str,
        change: F,
    ) -> Result<StoredInteraction, ApiError>
    where
        F: FnOnce(StoredInteraction) -> Result<Option<Change<Interaction>>, ApiError>,
    {
        const METHOD: &str = "UpdateInteraction";
        let name = rows::interaction_name(id);
        let txn = events::begin_write(&self.db)
            .await
            .map_err(|e| from_db(e, "interaction"))?;
        if let Some(done) = replayed(&txn, caller, METHOD, request_id, hash).await? {
            return self.replay_interaction(&txn, caller, &done).await;
        }
        let current = load_interaction(&txn, &caller.tenant, id, true)
            .await?
            .ok_or_else(|| ApiError::not_found(name.clone()))?;
        let revision = current.revision;
        let Some(Change {
            resource: mut interaction,
            changes,
        }) = change(current.clone())?
        else {
            return Ok(current);
        };
        interaction.etag = names::etag(revision + 1);
        rewrite_interaction(&txn, &caller.tenant, id, revision, &interaction).await?;
        claim(&txn, caller, METHOD, request_id, hash, &name).await?;
        publish(
            &txn,
            caller,
            "crm.contact.v1.InteractionUpdated",
            &name,
            changes,
            rows::payload("Interaction", &interaction),
            request_id,
        )
        .await?;
        txn.commit().await.map_err(|e| from_db(e, &name))?;
        self.feed.committed();
        Ok(StoredInteraction {
            interaction,
            revision: revision + 1,
        })
    }

    /// Deletes an interaction for good; `check` sees the current version first (etag,
    /// permission). A replayed request id answers as the first call did.
    pub async fn delete_interaction<F>(
        &self,
        caller: &Caller,
        id: &str,
        request_id: &str,
        hash: &str,
        check: F,
    ) -> Result<(), ApiError>
    where
        F: FnOnce(&StoredInteraction) -> Result<(), ApiError>,
    {
        const METHOD: &str = "DeleteInteraction";
        let attempt = self
            .try_delete_interaction(caller, id, request_id, hash, check)
            .await;
        match attempt {
            Err(err) if !request_id.is_empty() => {
                match replayed(&self.db, caller, METHOD, request_id, hash).await? {
                    Some(_) => Ok(()),
                    None => Err(err),
                }
            }
            other => other,
        }
    }

    async fn try_delete_interaction<F>(
        &self,
        caller: &Caller,
        id: &str,
        request_id: &str,
        hash: &str,
        check: F,
    ) -> Result<(), ApiError>
    where
        F: FnOnce(&StoredInteraction) -> Result<(), ApiError>,
    {
        const METHOD: &str = "DeleteInteraction";
        let name = rows::interaction_name(id);
        let txn = events::begin_write(&self.db)
            .await
            .map_err(|e| from_db(e, "interaction"))?;
        if replayed(&txn, caller, METHOD, request_id, hash)
            .await?
            .is_some()
        {
            return Ok(());
        }
        let current = load_interaction(&txn, &caller.tenant, id, true)
            .await?
            .ok_or_else(|| ApiError::not_found(name.clone()))?;
        check(&current)?;
        Links::delete_many()
            .filter(LinkCol::TenantId.eq(caller.tenant.as_str()))
            .filter(LinkCol::InteractionId.eq(id))
            .exec(&txn)
            .await
            .map_err(|e| from_db(e, &name))?;
        Interactions::delete_many()
            .filter(InteractionCol::TenantId.eq(caller.tenant.as_str()))
            .filter(InteractionCol::Id.eq(id))
            .exec(&txn)
            .await
            .map_err(|e| from_db(e, &name))?;
        claim(&txn, caller, METHOD, request_id, hash, &name).await?;
        publish(
            &txn,
            caller,
            "crm.contact.v1.InteractionDeleted",
            &name,
            Vec::new(),
            rows::payload("Interaction", &current.interaction),
            request_id,
        )
        .await?;
        txn.commit().await.map_err(|e| from_db(e, &name))?;
        self.feed.committed();
        Ok(())
    }

    pub async fn create_episode(
        &self,
        caller: &Caller,
        episode: Episode,
        request_id: &str,
        hash: &str,
    ) -> Result<StoredEpisode, ApiError> {
        let attempt = self
            .try_create_episode(caller, episode, request_id, hash)
            .await;
        self.or_replay_episode(attempt, caller, "CreateEpisode", request_id, hash)
            .await
    }

    async fn try_create_episode(
        &self,
        caller: &Caller,
        episode: Episode,
        request_id: &str,
        hash: &str,
    ) -> Result<StoredEpisode, ApiError> {
        const METHOD: &str = "CreateEpisode";
        let name = episode.name.clone();
        let id = rows::id_of(rows::EPISODES, &name).to_owned();
        let txn = events::begin_write(&self.db)
            .await
            .map_err(|e| from_db(e, "episode"))?;
        if let Some(done) = replayed(&txn, caller, METHOD, request_id, hash).await? {
            return self.replay_episode(&txn, caller, &done).await;
        }
        claim(&txn, caller, METHOD, request_id, hash, &name).await?;
        Episodes::insert(rows::episode_model(
            &caller.tenant,
            &id,
            1,
            &caller.subject,
            &episode,
        ))
        .exec_without_returning(&txn)
        .await
        .map_err(|e| from_db(e, &name))?;
        publish(
            &txn,
            caller,
            "crm.contact.v1.EpisodeCreated",
            &name,
            Vec::new(),
            rows::payload("Episode", &episode),
            request_id,
        )
        .await?;
        txn.commit().await.map_err(|e| from_db(e, &name))?;
        self.feed.committed();
        Ok(StoredEpisode {
            episode,
            revision: 1,
            creator: caller.subject.clone(),
        })
    }

    pub async fn modify_episode<F>(
        &self,
        caller: &Caller,
        id: &str,
        request_id: &str,
        hash: &str,
        change: F,
    ) -> Result<StoredEpisode, ApiError>
    where
        F: FnOnce(StoredEpisode) -> Result<Option<Change<Episode>>, ApiError>,
    {
        let attempt = self
            .try_modify_episode(caller, id, request_id, hash, change)
            .await;
        self.or_replay_episode(attempt, caller, "UpdateEpisode", request_id, hash)
            .await
    }

    async fn try_modify_episode<F>(
        &self,
        caller: &Caller,
        id: &str,
        request_id: &str,
        hash: &str,
        change: F,
    ) -> Result<StoredEpisode, ApiError>
    where
        F: FnOnce(StoredEpisode) -> Result<Option<Change<Episode>>, ApiError>,
    {
        const METHOD: &str = "UpdateEpisode";
        let name = rows::episode_name(id);
        let txn = events::begin_write(&self.db)
            .await
            .map_err(|e| from_db(e, "episode"))?;
        if let Some(done) = replayed(&txn, caller, METHOD, request_id, hash).await? {
            return self.replay_episode(&txn, caller, &done).await;
        }
        let mut current = load_episode(&txn, &caller.tenant, id, true)
            .await?
            .ok_or_else(|| ApiError::not_found(name.clone()))?;
        with_counts(
            &txn,
            &caller.tenant,
            std::slice::from_mut(&mut current.episode),
        )
        .await?;
        let revision = current.revision;
        let creator = current.creator.clone();
        let Some(Change {
            resource: mut episode,
            changes,
        }) = change(current.clone())?
        else {
            return Ok(current);
        };
        episode.etag = names::etag(revision + 1);
        rewrite_episode(&txn, &caller.tenant, id, revision, &creator, &episode).await?;
        claim(&txn, caller, METHOD, request_id, hash, &name).await?;
        publish(
            &txn,
            caller,
            "crm.contact.v1.EpisodeUpdated",
            &name,
            changes,
            rows::payload("Episode", &episode),
            request_id,
        )
        .await?;
        txn.commit().await.map_err(|e| from_db(e, &name))?;
        self.feed.committed();
        Ok(StoredEpisode {
            episode,
            revision: revision + 1,
            creator,
        })
    }

    pub async fn count_interactions(
        &self,
        tenant: &str,
        scope: &Scope,
        filter: Option<Condition>,
    ) -> Result<u64, ApiError> {
        let mut select = interactions_in(tenant, scope);
        if let Some(filter) = filter {
            select = select.filter(filter);
        }
        select
            .count(&self.db)
            .await
            .map_err(|e| from_db(e, "interactions"))
    }

    /// One page of interactions; returns them and, when more follow, the cursor.
    pub async fn list_interactions(
        &self,
        tenant: &str,
        scope: &Scope,
        page: Page,
    ) -> Result<(Vec<Interaction>, Option<Vec<CursorValue>>), ApiError> {
        let mut select = interactions_in(tenant, scope);
        if let Some(filter) = page.filter {
            select = select.filter(filter);
        }
        let keys: Vec<encoded::SortKey> = page
            .order
            .iter()
            .map(|(key, descending)| interaction_key(scope, *key, *descending))
            .collect();
        let found = encoded::page(
            &self.db,
            select,
            [InteractionCol::Revision, InteractionCol::Data],
            keys,
            page.after.as_deref(),
            page.limit,
            "interactions",
        )
        .await?;
        let interactions = encoded::decode::<Interaction>(&found.rows)?
            .into_iter()
            .map(|(_, interaction)| interaction)
            .collect();
        Ok((interactions, found.cursor))
    }

    pub async fn count_episodes(
        &self,
        tenant: &str,
        filter: Option<Condition>,
    ) -> Result<u64, ApiError> {
        let mut select = Episodes::find().filter(EpisodeCol::TenantId.eq(tenant));
        if let Some(filter) = filter {
            select = select.filter(filter);
        }
        select
            .count(&self.db)
            .await
            .map_err(|e| from_db(e, "episodes"))
    }

    pub async fn list_episodes(
        &self,
        tenant: &str,
        page: Page,
    ) -> Result<(Vec<Episode>, Option<Vec<CursorValue>>), ApiError> {
        let mut select = Episodes::find().filter(EpisodeCol::TenantId.eq(tenant));
        if let Some(filter) = page.filter {
            select = select.filter(filter);
        }
        let keys: Vec<encoded::SortKey> = page
            .order
            .iter()
            .map(|(key, descending)| episode_key(*key, *descending))
            .collect();
        let found = encoded::page(
            &self.db,
            select,
            [EpisodeCol::Revision, EpisodeCol::Data],
            keys,
            page.after.as_deref(),
            page.limit,
            "episodes",
        )
        .await?;
        let mut episodes: Vec<Episode> = encoded::decode(&found.rows)?
            .into_iter()
            .map(|(_, episode)| episode)
            .collect();
        with_counts(&self.db, tenant, &mut episodes).await?;
        Ok((episodes, found.cursor))
    }
}
