//! What other parts of the service hold on a person: gathered for an export, erased
//! for an erasure.

use sea_orm::ConnectionTrait;

use crm_platform::ApiError;
use crm_proto::contact::{
    AuditEvent, ConsentRecord, Episode, ErasePersonalDataResponse, Interaction,
};

use crate::consent::suppression;
use crate::{audit, consent, segments, timeline};

/// Everything held on a person outside the contact itself.
#[derive(Default)]
pub struct Held {
    pub interactions: Vec<Interaction>,
    pub episodes: Vec<Episode>,
    pub consent_records: Vec<ConsentRecord>,
    pub segments: Vec<String>,
    pub audit_events: Vec<AuditEvent>,
}

impl Held {
    /// The names of every record about the person, contacts included.
    fn record_names(&self, ids: &[String]) -> Vec<String> {
        let mut names: Vec<String> = ids.iter().map(|id| format!("contacts/{id}")).collect();
        names.extend(self.interactions.iter().map(|i| i.name.clone()));
        names.extend(self.episodes.iter().map(|e| e.name.clone()));
        names.extend(self.consent_records.iter().map(|c| c.name.clone()));
        names.sort();
        names.dedup();
        names
    }
}

/// Everything held on the contacts `ids` (a person and the contacts merged into it).
pub async fn held<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    ids: &[String],
) -> Result<Held, ApiError> {
    let mut held = Held::default();
    for id in ids {
        let (interactions, episodes) = timeline::for_contact(conn, tenant, id).await?;
        held.interactions.extend(interactions);
        held.episodes.extend(episodes);
        held.consent_records
            .extend(consent::history_for_contact(conn, tenant, id).await?);
        held.segments
            .extend(segments::static_segments_for(conn, tenant, id).await?);
    }
    let time = |t: &Option<prost_types::Timestamp>| t.as_ref().map(|t| (t.seconds, t.nanos));
    held.interactions.sort_by(|a, b| {
        time(&b.interaction_time)
            .cmp(&time(&a.interaction_time))
            .then_with(|| b.name.cmp(&a.name))
    });
    held.interactions.dedup_by(|a, b| a.name == b.name);
    held.episodes.sort_by(|a, b| {
        time(&b.start_time)
            .cmp(&time(&a.start_time))
            .then_with(|| b.name.cmp(&a.name))
    });
    held.episodes.dedup_by(|a, b| a.name == b.name);
    held.consent_records.sort_by(|a, b| {
        time(&b.create_time)
            .cmp(&time(&a.create_time))
            .then_with(|| b.name.cmp(&a.name))
    });
    held.segments.sort();
    held.segments.dedup();
    let names = held.record_names(ids);
    held.audit_events = audit::events_about(conn, tenant, &names).await?;
    Ok(held)
}

/// Erases the person's data held elsewhere: interactions, episodes, consent history,
/// the events about all of them; and puts the email addresses on the suppression list.
pub async fn erase<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    ids: &[String],
    emails: &[String],
    personal_values: &[String],
    response: &mut ErasePersonalDataResponse,
) -> Result<(), ApiError> {
    // The records are named before their content goes, so their events can be found.
    let held = held(conn, tenant, ids).await?;
    for id in ids {
        let (interactions, episodes) = timeline::erase_contact(conn, tenant, id).await?;
        response.interactions_erased += interactions as i64;
        response.episodes_erased += episodes as i64;
        response.consent_records_erased += consent::erase_contact(conn, tenant, id).await? as i64;
    }
    let mut names = held.record_names(ids);
    // Events of other records that carry the person's values: merges into them.
    names.extend(held.audit_events.iter().map(|e| e.resource_name.clone()));
    names.sort();
    names.dedup();
    response.events_redacted =
        audit::redact_events(conn, tenant, &names, personal_values).await? as i64;
    response.addresses_suppressed = suppression::suppress(conn, tenant, emails).await?;
    Ok(())
}
