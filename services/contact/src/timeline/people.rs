//! What other parts of the service do to a person's timeline: re-point it on a merge,
//! erase it, export it. Each takes the caller's connection or transaction, so the
//! caller's transaction holds the change together with its own.

use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder};

use crm_platform::ApiError;
use crm_platform::db::{micros_to_timestamp, now_micros};
use crm_platform::errors::from_db;
use crm_proto::contact::{Episode, Interaction};

use super::rows::{self, episode_row, link_row};
use super::store::{
    self, Scope, interactions_in, rewrite_episode, rewrite_interaction, with_counts,
};
use crate::domain::names;

/// The ids of the interactions with any of `contacts` as contact or participant.
async fn linked_interactions<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    contacts: &[String],
) -> Result<Vec<String>, ApiError> {
    let links = link_row::Entity::find()
        .filter(link_row::Column::TenantId.eq(tenant))
        .filter(link_row::Column::ContactId.is_in(contacts.iter().map(String::as_str)))
        .all(conn)
        .await
        .map_err(|e| from_db(e, "interactions"))?;
    let mut ids: Vec<String> = links.into_iter().map(|l| l.interaction_id).collect();
    ids.sort();
    ids.dedup();
    Ok(ids)
}

async fn episodes_of<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    contact_names: &[String],
) -> Result<Vec<episode_row::Model>, ApiError> {
    episode_row::Entity::find()
        .filter(episode_row::Column::TenantId.eq(tenant))
        .filter(episode_row::Column::Contact.is_in(contact_names.iter().map(String::as_str)))
        .order_by_desc(episode_row::Column::StartTimeUs)
        .order_by_desc(episode_row::Column::Id)
        .all(conn)
        .await
        .map_err(|e| from_db(e, "episodes"))
}

/// Moves the timeline of the `losers` (contact ids) to the `winner` (a contact id):
/// interactions with a loser as contact or participant, and episodes about a loser.
/// Participants that become duplicates of the contact or of each other are dropped, and
/// the links are rebuilt without duplicates. Returns (interactions moved, episodes
/// moved).
pub async fn repoint_contacts<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    losers: &[String],
    winner: &str,
) -> Result<(u64, u64), ApiError> {
    let losers: Vec<String> = losers
        .iter()
        .filter(|l| l.as_str() != winner)
        .cloned()
        .collect();
    if losers.is_empty() {
        return Ok((0, 0));
    }
    let loser_names: Vec<String> = losers.iter().map(|id| names::contact_name(id)).collect();
    let winner_name = names::contact_name(winner);
    let now = micros_to_timestamp(now_micros());
    let mut interactions_moved = 0;
    for id in linked_interactions(conn, tenant, &losers).await? {
        let Some(stored) = store::load_interaction(conn, tenant, &id, true).await? else {
            continue;
        };
        let mut interaction = stored.interaction;
        if loser_names.contains(&interaction.contact) {
            interaction.contact.clone_from(&winner_name);
        }
        for participant in &mut interaction.participants {
            if loser_names.contains(&participant.contact) {
                participant.contact.clone_from(&winner_name);
            }
        }
        let mut seen = std::collections::HashSet::new();
        let contact = interaction.contact.clone();
        interaction.participants.retain(|p| {
            p.contact.is_empty() || (p.contact != contact && seen.insert(p.contact.clone()))
        });
        interaction.etag = names::etag(stored.revision + 1);
        interaction.update_time = Some(now);
        rewrite_interaction(conn, tenant, &id, stored.revision, &interaction).await?;
        interactions_moved += 1;
    }
    let mut episodes_moved = 0;
    for row in episodes_of(conn, tenant, &loser_names).await? {
        let stored = rows::decode_episode(&row)?;
        let mut episode = stored.episode;
        episode.contact.clone_from(&winner_name);
        episode.etag = names::etag(stored.revision + 1);
        episode.update_time = Some(now);
        rewrite_episode(
            conn,
            tenant,
            &row.id,
            stored.revision,
            &row.creator,
            &episode,
        )
        .await?;
        episodes_moved += 1;
    }
    Ok((interactions_moved, episodes_moved))
}

/// Removes a person's personal data from the timeline (GDPR erasure): for every
/// interaction with the person as contact or participant, the subject, body and the
/// participants' display names and email addresses (participants left with nothing
/// that identifies them are dropped); for every episode about the person, the
/// description, and the display name becomes "erased". Returns (interactions erased,
/// episodes erased).
pub async fn erase_contact<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    contact_id: &str,
) -> Result<(u64, u64), ApiError> {
    let now = micros_to_timestamp(now_micros());
    let mut interactions_erased = 0;
    for id in linked_interactions(conn, tenant, &[contact_id.to_owned()]).await? {
        let Some(stored) = store::load_interaction(conn, tenant, &id, true).await? else {
            continue;
        };
        let mut interaction = stored.interaction;
        interaction.subject.clear();
        interaction.body.clear();
        for participant in &mut interaction.participants {
            participant.display_name.clear();
            participant.email_address.clear();
        }
        interaction
            .participants
            .retain(|p| !p.contact.is_empty() || !p.user.is_empty());
        interaction.etag = names::etag(stored.revision + 1);
        interaction.update_time = Some(now);
        rewrite_interaction(conn, tenant, &id, stored.revision, &interaction).await?;
        interactions_erased += 1;
    }
    let mut episodes_erased = 0;
    for row in episodes_of(conn, tenant, &[names::contact_name(contact_id)]).await? {
        let stored = rows::decode_episode(&row)?;
        let mut episode = stored.episode;
        episode.description.clear();
        episode.display_name = "erased".into();
        episode.etag = names::etag(stored.revision + 1);
        episode.update_time = Some(now);
        rewrite_episode(
            conn,
            tenant,
            &row.id,
            stored.revision,
            &row.creator,
            &episode,
        )
        .await?;
        episodes_erased += 1;
    }
    Ok((interactions_erased, episodes_erased))
}

/// Everything the timeline holds about a person, newest first: the interactions with
/// them as contact or participant, and the episodes about them (for GDPR export).
pub async fn for_contact<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    contact_id: &str,
) -> Result<(Vec<Interaction>, Vec<Episode>), ApiError> {
    let found = interactions_in(tenant, &Scope::Contact(contact_id.to_owned()))
        .order_by_desc(link_row::Column::LinkTimeUs)
        .order_by_desc(link_row::Column::InteractionId)
        .all(conn)
        .await
        .map_err(|e| from_db(e, "interactions"))?;
    let interactions = found
        .iter()
        .map(|row| rows::decode_interaction(row).map(|s| s.interaction))
        .collect::<Result<Vec<_>, _>>()?;
    let mut episodes = episodes_of(conn, tenant, &[names::contact_name(contact_id)])
        .await?
        .iter()
        .map(|row| rows::decode_episode(row).map(|s| s.episode))
        .collect::<Result<Vec<_>, _>>()?;
    with_counts(conn, tenant, &mut episodes).await?;
    Ok((interactions, episodes))
}
