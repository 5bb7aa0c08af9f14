//! The interaction timeline and its episodes: decode, validate, authorise, then call
//! the store. `people` holds what merge, erasure and export call.

pub mod mask;
pub mod migration;
pub mod people;
pub mod query;
pub mod rows;
pub mod store;
pub mod validate;

use tonic::{Request, Response, Status};

use crm_platform::auth::Caller;
use crm_platform::db::{micros_to_timestamp, now_micros};
use crm_platform::idempotency;
use crm_platform::pagination::{self, PageTokens};
use crm_platform::{ApiError, Violations};
use crm_proto::contact::*;

use crate::context::Context;
use crate::domain::names;

pub use people::{erase_contact, for_contact, repoint_contacts};
pub use validate::check_account_link;

use self::rows::{EPISODES, INTERACTIONS};
use self::store::{Change, Page, Scope, SortKey, TimelineStore};
use self::validate::absorb;

const DEFAULT_PAGE: u64 = 50;
const MAX_PAGE: u64 = 1000;

pub struct TimelineApi {
    ctx: Context,
    store: TimelineStore,
}

fn request_hash<M: prost::Message>(message: &M) -> String {
    idempotency::request_hash(&message.encode_to_vec())
}

/// The caller, the request, and its hash for replays, with the request id checked.
fn mutation<M: prost::Message>(
    request: Request<M>,
    request_id: impl Fn(&M) -> &str,
) -> Result<(Caller, M, String), Status> {
    let caller = Caller::from_request(&request)?;
    let request = request.into_inner();
    idempotency::validate(request_id(&request))?;
    let hash = request_hash(&request);
    Ok((caller, request, hash))
}

/// A client-chosen id (a UUID), or a new UUIDv7.
fn new_id(violations: &mut Violations, field: &str, chosen: &str) -> String {
    if chosen.is_empty() {
        return uuid::Uuid::now_v7().to_string();
    }
    match names::parse_id(field, chosen) {
        Ok(id) => id,
        Err(_) => {
            violations.add(field, "must be a UUID");
            String::new()
        }
    }
}

/// The creator (or a manager or admin) may change a record; nobody else.
fn ensure_may_change(caller: &Caller, creator: &str, what: &str) -> Result<(), ApiError> {
    if caller.may_change_owned_by(creator) {
        Ok(())
    } else {
        Err(ApiError::permission_denied(format!(
            "only its creator or a manager may change this {what}"
        )))
    }
}

fn etag_of(request_etag: &str, resource_etag: &str) -> String {
    if request_etag.is_empty() {
        resource_etag.to_owned()
    } else {
        request_etag.to_owned()
    }
}

impl TimelineApi {
    pub fn new(ctx: Context) -> Self {
        let store = TimelineStore::new(ctx.db.clone(), ctx.feed.clone());
        Self { ctx, store }
    }

    /// Checks the references of an interaction against the database: the contacts (a
    /// merged one becomes the contact it was merged into), the account and the episode.
    /// `paths` limits the checks to the fields an update changes; `None` checks all and
    /// defaults the account to the contact's.
    async fn resolve_interaction(
        &self,
        violations: &mut Violations,
        tenant: &str,
        interaction: &mut Interaction,
        paths: Option<&[String]>,
    ) -> Result<(), ApiError> {
        let wants = |p: &str| paths.is_none_or(|ps| ps.iter().any(|x| x == p));
        let mut refs: Vec<(String, &mut String)> = Vec::new();
        if wants("contact") && !interaction.contact.is_empty() {
            refs.push(("interaction.contact".into(), &mut interaction.contact));
        }
        if wants("participants") {
            for (i, participant) in interaction.participants.iter_mut().enumerate() {
                if !participant.contact.is_empty() {
                    refs.push((
                        format!("interaction.participants[{i}].contact"),
                        &mut participant.contact,
                    ));
                }
            }
        }
        let accounts =
            validate::resolve_contacts(violations, &self.ctx.contacts, tenant, &mut refs).await?;
        drop(refs);
        if paths.is_none()
            && interaction.account.is_empty()
            && let Some(account) = accounts.get(&interaction.contact)
        {
            interaction.account.clone_from(account);
        }
        if wants("account")
            && let Some(account) = absorb(
                violations,
                check_account_link(
                    &self.ctx.db,
                    tenant,
                    "interaction.account",
                    &interaction.account,
                )
                .await,
            )?
        {
            interaction.account = account;
        }
        if wants("episode") {
            validate::episode_exists(
                violations,
                &self.ctx.db,
                tenant,
                "interaction.episode",
                &interaction.episode,
            )
            .await?;
        }
        Ok(())
    }

    async fn resolve_episode(
        &self,
        violations: &mut Violations,
        tenant: &str,
        episode: &mut Episode,
        paths: Option<&[String]>,
    ) -> Result<(), ApiError> {
        let wants = |p: &str| paths.is_none_or(|ps| ps.iter().any(|x| x == p));
        if wants("contact") && !episode.contact.is_empty() {
            let mut refs = vec![("episode.contact".to_owned(), &mut episode.contact)];
            validate::resolve_contacts(violations, &self.ctx.contacts, tenant, &mut refs).await?;
        }
        if wants("account")
            && let Some(account) = absorb(
                violations,
                check_account_link(&self.ctx.db, tenant, "episode.account", &episode.account).await,
            )?
        {
            episode.account = account;
        }
        Ok(())
    }

    pub async fn create_interaction(
        &self,
        request: Request<CreateInteractionRequest>,
    ) -> Result<Response<Interaction>, Status> {
        let caller = Caller::from_request(&request)?;
        let request = request.into_inner();
        let hash = request_hash(&request);
        let mut violations = Violations::new();
        absorb(&mut violations, idempotency::validate(&request.request_id))?;
        let Some(mut interaction) = request.interaction else {
            return Err(ApiError::invalid("interaction", "is required").into());
        };
        validate::interaction(&mut violations, "interaction", &mut interaction);
        let id = new_id(&mut violations, "interaction_id", &request.interaction_id);
        self.resolve_interaction(&mut violations, &caller.tenant, &mut interaction, None)
            .await?;
        violations.into_result()?;
        let now = micros_to_timestamp(now_micros());
        interaction.name = rows::interaction_name(&id);
        interaction.creator.clone_from(&caller.subject);
        interaction.create_time = Some(now);
        interaction.update_time = Some(now);
        interaction.etag = names::etag(1);
        if request.validate_only {
            return Ok(Response::new(interaction));
        }
        let stored = self
            .store
            .create_interaction(&caller, interaction, &request.request_id, &hash)
            .await?;
        tracing::info!(interaction = %stored.interaction.name, tenant = %caller.tenant, "interaction stored");
        Ok(Response::new(stored.interaction))
    }

    pub async fn get_interaction(
        &self,
        request: Request<GetInteractionRequest>,
    ) -> Result<Response<Interaction>, Status> {
        let caller = Caller::from_request(&request)?;
        let id = names::parse(INTERACTIONS, "name", &request.get_ref().name)?;
        let stored = self
            .store
            .get_interaction(&caller.tenant, &id)
            .await?
            .ok_or_else(|| ApiError::not_found(rows::interaction_name(&id)))?;
        Ok(Response::new(stored.interaction))
    }

    pub async fn list_interactions(
        &self,
        request: Request<ListInteractionsRequest>,
    ) -> Result<Response<ListInteractionsResponse>, Status> {
        let caller = Caller::from_request(&request)?;
        let request = request.into_inner();
        let limit = pagination::page_size(request.page_size, DEFAULT_PAGE, MAX_PAGE)?;
        let scope = match (request.contact.is_empty(), request.account.is_empty()) {
            (true, true) => Scope::Tenant,
            (false, true) => {
                let mut id = names::parse(names::CONTACTS, "contact", &request.contact)?;
                // A merged contact's timeline moved to the contact it was merged into.
                if let Some(found) = self.ctx.contacts.get(&caller.tenant, &id).await?
                    && !found.contact.merged_into.is_empty()
                {
                    id = names::parse(names::CONTACTS, "contact", &found.contact.merged_into)?;
                }
                Scope::Contact(id)
            }
            (true, false) => Scope::Account(
                check_account_link(&self.ctx.db, &caller.tenant, "account", &request.account)
                    .await?,
            ),
            (false, false) => {
                return Err(
                    ApiError::invalid("account", "set at most one of contact and account").into(),
                );
            }
        };
        let filter =
            query::interaction_filter(&request.filter, self.ctx.filter_scope(&caller.tenant))?;
        let order = query::order(
            &request.order_by,
            &[
                ("interaction_time", SortKey::InteractionTime),
                ("create_time", SortKey::CreateTime),
            ],
            (SortKey::InteractionTime, true),
        )?;
        let fingerprint = PageTokens::fingerprint(&[
            "interactions",
            &request.filter,
            &request.order_by,
            &request.contact,
            &request.account,
        ]);
        let page = self
            .ctx
            .tokens
            .keyset_page(
                &request.page_token,
                &caller.tenant,
                &fingerprint,
                async |after| {
                    let page = Page {
                        filter: filter.clone(),
                        order,
                        after,
                        limit,
                    };
                    self.store
                        .list_interactions(&caller.tenant, &scope, page)
                        .await
                },
                async || {
                    let filter = filter.clone();
                    self.store
                        .count_interactions(&caller.tenant, &scope, filter)
                        .await
                },
            )
            .await?;
        Ok(Response::new(ListInteractionsResponse {
            total_size: page.total_size_i64(),
            interactions: page.rows,
            next_page_token: page.next_page_token,
        }))
    }

    pub async fn update_interaction(
        &self,
        request: Request<UpdateInteractionRequest>,
    ) -> Result<Response<Interaction>, Status> {
        let (caller, request, hash) = mutation(request, |r| &r.request_id)?;
        let Some(patch) = request.interaction else {
            return Err(ApiError::invalid("interaction", "is required").into());
        };
        let id = names::parse(INTERACTIONS, "interaction.name", &patch.name)?;
        let mut paths = mask::paths(
            request.update_mask.as_ref(),
            mask::INTERACTION_FIELDS,
            "Interaction",
        )?;
        let etag = etag_of(&request.etag, &patch.etag);
        let name = rows::interaction_name(&id);
        // A retry answers as the first call did, even though the etag has moved on.
        if let Some(done) = self
            .store
            .replayed_interaction(&caller, "UpdateInteraction", &request.request_id, &hash)
            .await?
        {
            return Ok(Response::new(done.interaction));
        }
        // Validate the result against the current version first (outside the write
        // transaction, since the reference checks read other tables); the write then
        // applies the validated fields to the version it locks.
        let current = self
            .store
            .get_interaction(&caller.tenant, &id)
            .await?
            .ok_or_else(|| ApiError::not_found(name.clone()))?;
        names::check_etag(&etag, current.revision, &name)?;
        ensure_may_change(&caller, &current.interaction.creator, "interaction")?;
        let mut merged = current.interaction.clone();
        mask::apply_interaction(&mut merged, &patch, &paths);
        let mut violations = Violations::new();
        let channel = merged.channel;
        validate::interaction(&mut violations, "interaction", &mut merged);
        if merged.channel != channel && !paths.iter().any(|p| p == "channel") {
            // The type changed and the channel took its default: write it too.
            paths.push("channel".into());
        }
        self.resolve_interaction(&mut violations, &caller.tenant, &mut merged, Some(&paths))
            .await?;
        violations.into_result()?;
        if request.validate_only {
            return Ok(Response::new(merged));
        }
        let stored = self
            .store
            .modify_interaction(&caller, &id, &request.request_id, &hash, |current| {
                names::check_etag(&etag, current.revision, &name)?;
                ensure_may_change(&caller, &current.interaction.creator, "interaction")?;
                let mut interaction = current.interaction.clone();
                mask::apply_interaction(&mut interaction, &merged, &paths);
                let changes = mask::interaction_changes(&current.interaction, &interaction, &paths);
                if changes.is_empty() {
                    return Ok(None);
                }
                interaction.update_time = Some(micros_to_timestamp(now_micros()));
                Ok(Some(Change {
                    resource: interaction,
                    changes,
                }))
            })
            .await?;
        Ok(Response::new(stored.interaction))
    }

    pub async fn delete_interaction(
        &self,
        request: Request<DeleteInteractionRequest>,
    ) -> Result<Response<DeleteInteractionResponse>, Status> {
        let (caller, request, hash) = mutation(request, |r| &r.request_id)?;
        let id = names::parse(INTERACTIONS, "name", &request.name)?;
        let name = rows::interaction_name(&id);
        self.store
            .delete_interaction(&caller, &id, &request.request_id, &hash, |current| {
                names::check_etag(&request.etag, current.revision, &name)?;
                ensure_may_change(&caller, &current.interaction.creator, "interaction")
            })
            .await?;
        tracing::info!(interaction = %name, tenant = %caller.tenant, "interaction deleted");
        Ok(Response::new(DeleteInteractionResponse {}))
    }

    pub async fn create_episode(
        &self,
        request: Request<CreateEpisodeRequest>,
    ) -> Result<Response<Episode>, Status> {
        let caller = Caller::from_request(&request)?;
        let request = request.into_inner();
        let hash = request_hash(&request);
        let mut violations = Violations::new();
        absorb(&mut violations, idempotency::validate(&request.request_id))?;
        let Some(mut episode) = request.episode else {
            return Err(ApiError::invalid("episode", "is required").into());
        };
        validate::episode(&mut violations, "episode", &mut episode);
        let id = new_id(&mut violations, "episode_id", &request.episode_id);
        self.resolve_episode(&mut violations, &caller.tenant, &mut episode, None)
            .await?;
        violations.into_result()?;
        let now = micros_to_timestamp(now_micros());
        episode.name = rows::episode_name(&id);
        episode.interaction_count = 0;
        episode.create_time = Some(now);
        episode.update_time = Some(now);
        episode.etag = names::etag(1);
        if request.validate_only {
            return Ok(Response::new(episode));
        }
        let stored = self
            .store
            .create_episode(&caller, episode, &request.request_id, &hash)
            .await?;
        tracing::info!(episode = %stored.episode.name, tenant = %caller.tenant, "episode stored");
        Ok(Response::new(stored.episode))
    }

    pub async fn get_episode(
        &self,
        request: Request<GetEpisodeRequest>,
    ) -> Result<Response<Episode>, Status> {
        let caller = Caller::from_request(&request)?;
        let id = names::parse(EPISODES, "name", &request.get_ref().name)?;
        let stored = self
            .store
            .get_episode(&caller.tenant, &id)
            .await?
            .ok_or_else(|| ApiError::not_found(rows::episode_name(&id)))?;
        Ok(Response::new(stored.episode))
    }

    pub async fn list_episodes(
        &self,
        request: Request<ListEpisodesRequest>,
    ) -> Result<Response<ListEpisodesResponse>, Status> {
        let caller = Caller::from_request(&request)?;
        let request = request.into_inner();
        let limit = pagination::page_size(request.page_size, DEFAULT_PAGE, MAX_PAGE)?;
        let filter = query::episode_filter(&request.filter, self.ctx.filter_scope(&caller.tenant))?;
        let order = query::order(
            &request.order_by,
            &[
                ("start_time", SortKey::StartTime),
                ("end_time", SortKey::EndTime),
                ("create_time", SortKey::CreateTime),
            ],
            (SortKey::StartTime, true),
        )?;
        let fingerprint =
            PageTokens::fingerprint(&["episodes", &request.filter, &request.order_by]);
        let page = self
            .ctx
            .tokens
            .keyset_page(
                &request.page_token,
                &caller.tenant,
                &fingerprint,
                async |after| {
                    let page = Page {
                        filter: filter.clone(),
                        order,
                        after,
                        limit,
                    };
                    self.store.list_episodes(&caller.tenant, page).await
                },
                async || {
                    self.store
                        .count_episodes(&caller.tenant, filter.clone())
                        .await
                },
            )
            .await?;
        Ok(Response::new(ListEpisodesResponse {
            total_size: page.total_size_i64(),
            episodes: page.rows,
            next_page_token: page.next_page_token,
        }))
    }

    pub async fn update_episode(
        &self,
        request: Request<UpdateEpisodeRequest>,
    ) -> Result<Response<Episode>, Status> {
        let (caller, request, hash) = mutation(request, |r| &r.request_id)?;
        let Some(patch) = request.episode else {
            return Err(ApiError::invalid("episode", "is required").into());
        };
        let id = names::parse(EPISODES, "episode.name", &patch.name)?;
        let paths = mask::paths(
            request.update_mask.as_ref(),
            mask::EPISODE_FIELDS,
            "Episode",
        )?;
        let etag = etag_of(&request.etag, &patch.etag);
        let name = rows::episode_name(&id);
        if let Some(done) = self
            .store
            .replayed_episode(&caller, "UpdateEpisode", &request.request_id, &hash)
            .await?
        {
            return Ok(Response::new(done.episode));
        }
        let current = self
            .store
            .get_episode(&caller.tenant, &id)
            .await?
            .ok_or_else(|| ApiError::not_found(name.clone()))?;
        names::check_etag(&etag, current.revision, &name)?;
        ensure_may_change(&caller, &current.creator, "episode")?;
        let mut merged = current.episode.clone();
        mask::apply_episode(&mut merged, &patch, &paths);
        let mut violations = Violations::new();
        validate::episode(&mut violations, "episode", &mut merged);
        self.resolve_episode(&mut violations, &caller.tenant, &mut merged, Some(&paths))
            .await?;
        violations.into_result()?;
        if request.validate_only {
            return Ok(Response::new(merged));
        }
        let stored = self
            .store
            .modify_episode(&caller, &id, &request.request_id, &hash, |current| {
                names::check_etag(&etag, current.revision, &name)?;
                ensure_may_change(&caller, &current.creator, "episode")?;
                let mut episode = current.episode.clone();
                mask::apply_episode(&mut episode, &merged, &paths);
                // The start may have moved past an end set earlier.
                let mut violations = Violations::new();
                validate::episode(&mut violations, "episode", &mut episode);
                violations.into_result()?;
                let changes = mask::episode_changes(&current.episode, &episode, &paths);
                if changes.is_empty() {
                    return Ok(None);
                }
                episode.update_time = Some(micros_to_timestamp(now_micros()));
                Ok(Some(Change {
                    resource: episode,
                    changes,
                }))
            })
            .await?;
        Ok(Response::new(stored.episode))
    }
}
