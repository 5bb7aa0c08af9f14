//! The rows of the timeline tables and their translation to and from the resources.
//! The whole resource is stored encoded in `data`; the other columns are copies of what
//! filters, sorts and lookups need.

use prost::Message as _;
use sea_orm::ActiveValue::Set;

use crm_platform::ApiError;
use crm_proto::contact::{Episode, Interaction};

pub mod interaction_row {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "interactions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub interaction_type: i32,
        pub channel: i32,
        pub direction: i32,
        pub outcome: i32,
        /// "episodes/{id}" or "".
        pub episode: String,
        pub source: String,
        pub creator: String,
        /// The bare id of `contact`, or "".
        pub contact_id: String,
        /// "accounts/{id}" or "".
        pub account: String,
        /// "|u1|u2|": the users among the participants, lower-cased.
        pub participant_users: String,
        pub interaction_time_us: i64,
        pub create_time_us: i64,
        pub update_time_us: i64,
        pub revision: i64,
        pub data: Vec<u8>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod link_row {
    use sea_orm::entity::prelude::*;

    /// One contact an interaction is about (its `contact` or a contact participant).
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "interaction_contacts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub interaction_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub contact_id: String,
        /// The interaction's time, copied so a person's timeline is one index range.
        pub link_time_us: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod episode_row {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "episodes")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub display_name: String,
        /// "contacts/{id}" or "".
        pub contact: String,
        /// "accounts/{id}" or "".
        pub account: String,
        /// Not part of the resource: who may change it besides managers.
        pub creator: String,
        pub start_time_us: i64,
        pub end_time_us: Option<i64>,
        pub create_time_us: i64,
        pub update_time_us: i64,
        pub revision: i64,
        pub data: Vec<u8>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub const INTERACTIONS: &str = "interactions";
pub const EPISODES: &str = "episodes";

/// A stored interaction with its revision (the etag).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredInteraction {
    pub interaction: Interaction,
    pub revision: i64,
}

/// A stored episode with its revision and creator.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEpisode {
    pub episode: Episode,
    pub revision: i64,
    pub creator: String,
}

/// Microseconds since the epoch of a timestamp (saturating: validation bounds them).
pub fn micros(ts: Option<&prost_types::Timestamp>) -> Option<i64> {
    ts.map(|t| {
        t.seconds
            .saturating_mul(1_000_000)
            .saturating_add(i64::from(t.nanos / 1_000))
    })
}

/// The bare id of "collection/{id}", or "" when `name` is empty or of another kind.
pub fn id_of<'a>(collection: &str, name: &'a str) -> &'a str {
    name.strip_prefix(collection)
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or("")
}

fn list_index<'a>(values: impl Iterator<Item = &'a str>) -> String {
    let items: Vec<String> = values
        .filter(|v| !v.is_empty())
        .map(str::to_lowercase)
        .collect();
    if items.is_empty() {
        String::new()
    } else {
        format!("|{}|", items.join("|"))
    }
}

/// The ids of the contacts an interaction is about, without duplicates.
pub fn linked_contacts(interaction: &Interaction) -> Vec<String> {
    let mut ids: Vec<String> = std::iter::once(interaction.contact.as_str())
        .chain(interaction.participants.iter().map(|p| p.contact.as_str()))
        .map(|name| id_of(crate::domain::names::CONTACTS, name).to_owned())
        .filter(|id| !id.is_empty())
        .collect();
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(id.clone()));
    ids
}

pub fn decode_interaction(row: &interaction_row::Model) -> Result<StoredInteraction, ApiError> {
    let interaction = Interaction::decode(row.data.as_slice()).map_err(ApiError::internal)?;
    Ok(StoredInteraction {
        interaction,
        revision: row.revision,
    })
}

pub fn interaction_model(
    tenant: &str,
    id: &str,
    revision: i64,
    interaction: &Interaction,
) -> interaction_row::ActiveModel {
    interaction_row::ActiveModel {
        tenant_id: Set(tenant.to_owned()),
        id: Set(id.to_owned()),
        interaction_type: Set(interaction.r#type),
        channel: Set(interaction.channel),
        direction: Set(interaction.direction),
        outcome: Set(interaction.outcome),
        episode: Set(interaction.episode.clone()),
        source: Set(interaction.source.clone()),
        creator: Set(interaction.creator.clone()),
        contact_id: Set(id_of(crate::domain::names::CONTACTS, &interaction.contact).to_owned()),
        account: Set(interaction.account.clone()),
        participant_users: Set(list_index(
            interaction.participants.iter().map(|p| p.user.as_str()),
        )),
        interaction_time_us: Set(micros(interaction.interaction_time.as_ref()).unwrap_or_default()),
        create_time_us: Set(micros(interaction.create_time.as_ref()).unwrap_or_default()),
        update_time_us: Set(micros(interaction.update_time.as_ref()).unwrap_or_default()),
        revision: Set(revision),
        data: Set(interaction.encode_to_vec()),
    }
}

pub fn link_models(
    tenant: &str,
    id: &str,
    interaction: &Interaction,
) -> Vec<link_row::ActiveModel> {
    let time = micros(interaction.interaction_time.as_ref()).unwrap_or_default();
    linked_contacts(interaction)
        .into_iter()
        .map(|contact_id| link_row::ActiveModel {
            tenant_id: Set(tenant.to_owned()),
            interaction_id: Set(id.to_owned()),
            contact_id: Set(contact_id),
            link_time_us: Set(time),
        })
        .collect()
}

pub fn decode_episode(row: &episode_row::Model) -> Result<StoredEpisode, ApiError> {
    let episode = Episode::decode(row.data.as_slice()).map_err(ApiError::internal)?;
    Ok(StoredEpisode {
        episode,
        revision: row.revision,
        creator: row.creator.clone(),
    })
}

pub fn episode_model(
    tenant: &str,
    id: &str,
    revision: i64,
    creator: &str,
    episode: &Episode,
) -> episode_row::ActiveModel {
    // The count is computed on read; a stored copy would go stale.
    let mut stored = episode.clone();
    stored.interaction_count = 0;
    episode_row::ActiveModel {
        tenant_id: Set(tenant.to_owned()),
        id: Set(id.to_owned()),
        display_name: Set(episode.display_name.clone()),
        contact: Set(episode.contact.clone()),
        account: Set(episode.account.clone()),
        creator: Set(creator.to_owned()),
        start_time_us: Set(micros(episode.start_time.as_ref()).unwrap_or_default()),
        end_time_us: Set(micros(episode.end_time.as_ref())),
        create_time_us: Set(micros(episode.create_time.as_ref()).unwrap_or_default()),
        update_time_us: Set(micros(episode.update_time.as_ref()).unwrap_or_default()),
        revision: Set(revision),
        data: Set(stored.encode_to_vec()),
    }
}

pub fn interaction_name(id: &str) -> String {
    format!("{INTERACTIONS}/{id}")
}

pub fn episode_name(id: &str) -> String {
    format!("{EPISODES}/{id}")
}

/// An event payload: the resource as it is after the change.
pub fn payload<M: prost::Message>(type_name: &str, message: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("type.googleapis.com/crm.contact.v1.{type_name}"),
        value: message.encode_to_vec(),
    }
}
