//! The rules an interaction or an episode must satisfy. The pure checks run first and
//! normalise in place; the reference checks (contacts, episode, account) need the
//! database. Every violation is collected with its field path, so one answer names
//! every bad field.

use std::collections::HashMap;

use sea_orm::{ConnectionTrait, EntityTrait};

use crm_platform::errors::from_db;
use crm_platform::{ApiError, Violations};
use crm_proto::common::{Channel, Money};
use crm_proto::contact::{
    Episode, Interaction, InteractionDirection, InteractionOutcome, InteractionType,
    ParticipantRole,
};

use super::rows::{self, episode_row};
use crate::domain::{names, validate::normalise_email};
use crate::store::ContactStore;

pub const MAX_PARTICIPANTS: usize = 100;
pub const MAX_SUBJECT: usize = 500;
pub const MAX_BODY_BYTES: usize = 64 * 1024;
pub const MAX_SOURCE: usize = 100;
pub const MAX_DISPLAY_NAME: usize = 200;
pub const MAX_DESCRIPTION: usize = 10_000;
pub const MAX_USER: usize = 128;
pub const MAX_DURATION_SECONDS: i64 = 30 * 24 * 3_600;

/// 0001-01-01T00:00:00Z ..= 9999-12-31T23:59:59Z, as RFC 3339 allows.
const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;

/// The medium an interaction of `kind` happens in when the client does not say.
/// Notes and purchases have none.
pub fn default_channel(kind: i32) -> Channel {
    match InteractionType::try_from(kind) {
        Ok(InteractionType::Call) => Channel::Phone,
        Ok(InteractionType::Email) => Channel::Email,
        Ok(InteractionType::Meeting) => Channel::InPerson,
        Ok(InteractionType::Chat) => Channel::Chat,
        Ok(InteractionType::Social) => Channel::Social,
        Ok(InteractionType::WebVisit) => Channel::Web,
        _ => Channel::Unspecified,
    }
}

/// Checks the format of an account link and returns it normalised
/// ("accounts/{uuid}", lower case; "" stays ""), naming a live account of the tenant.
pub async fn check_account_link<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    field: &str,
    account: &str,
) -> Result<String, ApiError> {
    if account.is_empty() {
        return Ok(String::new());
    }
    let id = names::parse(names::ACCOUNTS, field, account)?;
    if !crate::accounts::exists(conn, tenant, &id).await? {
        return Err(ApiError::invalid(field, "names no account of this tenant"));
    }
    Ok(format!("{}/{id}", names::ACCOUNTS))
}

/// Adds the violations of `result` (an `INVALID_ARGUMENT`) to `violations`; any other
/// error is returned.
pub fn absorb<T>(
    violations: &mut Violations,
    result: Result<T, ApiError>,
) -> Result<Option<T>, ApiError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(ApiError::InvalidArgument(found)) => {
            for v in found {
                violations.add(v.field, v.description);
            }
            Ok(None)
        }
        Err(other) => Err(other),
    }
}

fn text(violations: &mut Violations, field: &str, value: &str, max: usize) {
    if value.chars().count() > max {
        violations.add(field, format!("at most {max} characters"));
    }
}

/// One line of text: trimmed, no control characters, at most `max` characters.
fn line(violations: &mut Violations, field: &str, value: &mut String, max: usize) {
    let trimmed = value.trim();
    if trimmed.len() != value.len() {
        *value = trimmed.to_owned();
    }
    text(violations, field, value, max);
    if value.chars().any(char::is_control) {
        violations.add(field, "must not contain control characters");
    }
}

fn enum_known<E: TryFrom<i32>>(violations: &mut Violations, field: &str, value: i32) {
    if E::try_from(value).is_err() {
        violations.add(field, format!("unknown value {value}"));
    }
}

/// A timestamp within the years 1 ..= 9999; `None` when missing.
pub fn timestamp(
    violations: &mut Violations,
    field: &str,
    ts: Option<&prost_types::Timestamp>,
) -> Option<i64> {
    let ts = ts?;
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&ts.seconds) || !(0..1_000_000_000).contains(&ts.nanos)
    {
        violations.add(field, "must be a valid time between the years 1 and 9999");
        return None;
    }
    rows::micros(Some(ts))
}

/// A "contacts/{uuid}" name, normalised in place.
fn contact_name(violations: &mut Violations, field: &str, name: &mut String) {
    if name.is_empty() {
        return;
    }
    match names::parse(names::CONTACTS, field, name) {
        Ok(id) => *name = names::contact_name(&id),
        Err(_) => violations.add(field, "must be contacts/{id} with a UUID id"),
    }
}

pub fn money(violations: &mut Violations, field: &str, money: &mut Money) {
    money.currency_code = money.currency_code.trim().to_owned();
    let code = &money.currency_code;
    if code.len() != 3 || !code.chars().all(|c| c.is_ascii_uppercase()) {
        violations.add(
            format!("{field}.currency_code"),
            "must be an ISO 4217 code of three upper-case letters",
        );
    }
    if !(-999_999_999..=999_999_999).contains(&money.nanos) {
        violations.add(format!("{field}.nanos"), "must be within ±999,999,999");
    } else if (money.units > 0 && money.nanos < 0) || (money.units < 0 && money.nanos > 0) {
        violations.add(format!("{field}.nanos"), "must have the same sign as units");
    }
}

/// The pure rules of an interaction, as the client sends it (output fields aside).
pub fn interaction(violations: &mut Violations, prefix: &str, interaction: &mut Interaction) {
    let at = |field: &str| format!("{prefix}.{field}");
    if interaction.r#type == InteractionType::Unspecified as i32 {
        violations.add(at("type"), "is required");
    } else {
        enum_known::<InteractionType>(violations, &at("type"), interaction.r#type);
    }
    if interaction.channel == Channel::Unspecified as i32 {
        interaction.channel = default_channel(interaction.r#type) as i32;
    }
    enum_known::<Channel>(violations, &at("channel"), interaction.channel);
    enum_known::<InteractionDirection>(violations, &at("direction"), interaction.direction);
    enum_known::<InteractionOutcome>(violations, &at("outcome"), interaction.outcome);
    contact_name(violations, &at("contact"), &mut interaction.contact);
    if interaction.contact.is_empty() && interaction.account.is_empty() {
        violations.add(
            at("contact"),
            "at least one of contact and account is required",
        );
    }
    if interaction.interaction_time.is_none() {
        violations.add(at("interaction_time"), "is required");
    }
    timestamp(
        violations,
        &at("interaction_time"),
        interaction.interaction_time.as_ref(),
    );
    if let Some(duration) = &interaction.duration {
        let in_range = duration.seconds >= 0
            && (0..1_000_000_000).contains(&duration.nanos)
            && (duration.seconds < MAX_DURATION_SECONDS
                || (duration.seconds == MAX_DURATION_SECONDS && duration.nanos == 0));
        if !in_range {
            violations.add(at("duration"), "must be between 0 and 30 days");
        }
    }
    if interaction.participants.len() > MAX_PARTICIPANTS {
        violations.add(
            at("participants"),
            format!("at most {MAX_PARTICIPANTS} participants"),
        );
    }
    for (i, participant) in interaction.participants.iter_mut().enumerate() {
        let field = at(&format!("participants[{i}]"));
        let set = [
            &participant.contact,
            &participant.user,
            &participant.email_address,
        ]
        .iter()
        .filter(|v| !v.trim().is_empty())
        .count();
        if set != 1 {
            violations.add(
                field.clone(),
                "set exactly one of contact, user and email_address",
            );
        }
        participant.contact = participant.contact.trim().to_owned();
        contact_name(
            violations,
            &format!("{field}.contact"),
            &mut participant.contact,
        );
        line(
            violations,
            &format!("{field}.user"),
            &mut participant.user,
            MAX_USER,
        );
        if !participant.email_address.trim().is_empty() {
            match normalise_email(&participant.email_address) {
                Ok(email) => participant.email_address = email,
                Err(why) => violations.add(format!("{field}.email_address"), why),
            }
        }
        line(
            violations,
            &format!("{field}.display_name"),
            &mut participant.display_name,
            MAX_DISPLAY_NAME,
        );
        enum_known::<ParticipantRole>(violations, &format!("{field}.role"), participant.role);
    }
    if !interaction.episode.is_empty() {
        match names::parse(rows::EPISODES, &at("episode"), &interaction.episode) {
            Ok(id) => interaction.episode = rows::episode_name(&id),
            Err(_) => violations.add(at("episode"), "must be episodes/{id} with a UUID id"),
        }
    }
    line(
        violations,
        &at("subject"),
        &mut interaction.subject,
        MAX_SUBJECT,
    );
    if interaction.body.len() > MAX_BODY_BYTES {
        violations.add(at("body"), format!("at most {MAX_BODY_BYTES} bytes"));
    }
    if let Some(amount) = &mut interaction.amount {
        money(violations, &at("amount"), amount);
    }
    line(
        violations,
        &at("source"),
        &mut interaction.source,
        MAX_SOURCE,
    );
}

/// The pure rules of an episode.
pub fn episode(violations: &mut Violations, prefix: &str, episode: &mut Episode) {
    let at = |field: &str| format!("{prefix}.{field}");
    line(
        violations,
        &at("display_name"),
        &mut episode.display_name,
        MAX_DISPLAY_NAME,
    );
    if episode.display_name.is_empty() {
        violations.add(at("display_name"), "is required");
    }
    text(
        violations,
        &at("description"),
        &episode.description,
        MAX_DESCRIPTION,
    );
    contact_name(violations, &at("contact"), &mut episode.contact);
    if episode.contact.is_empty() && episode.account.is_empty() {
        violations.add(
            at("contact"),
            "at least one of contact and account is required",
        );
    }
    if episode.start_time.is_none() {
        violations.add(at("start_time"), "is required");
    }
    let start = timestamp(violations, &at("start_time"), episode.start_time.as_ref());
    let end = timestamp(violations, &at("end_time"), episode.end_time.as_ref());
    if let (Some(start), Some(end)) = (start, end)
        && end < start
    {
        violations.add(at("end_time"), "must not be before start_time");
    }
}

/// The contacts a request refers to, checked against the store: each must exist in the
/// tenant and not be deleted; a merged one is replaced by the contact it was merged
/// into. Returns the account of each resolved contact, by its (resolved) name.
pub async fn resolve_contacts(
    violations: &mut Violations,
    contacts: &ContactStore,
    tenant: &str,
    refs: &mut [(String, &mut String)],
) -> Result<HashMap<String, String>, ApiError> {
    let ids: Vec<String> = refs
        .iter()
        .filter_map(|(_, name)| names::parse(names::CONTACTS, "", name).ok())
        .collect();
    let mut accounts = HashMap::new();
    if ids.is_empty() {
        return Ok(accounts);
    }
    let mut found: HashMap<String, crm_proto::contact::Contact> = contacts
        .get_many(tenant, &ids)
        .await?
        .into_iter()
        .map(|s| (s.contact.name.clone(), s.contact))
        .collect();
    let winners: Vec<String> = found
        .values()
        .filter(|c| !c.merged_into.is_empty())
        .map(|c| rows::id_of(names::CONTACTS, &c.merged_into).to_owned())
        .filter(|id| !id.is_empty())
        .collect();
    if !winners.is_empty() {
        for winner in contacts.get_many(tenant, &winners).await? {
            found.insert(winner.contact.name.clone(), winner.contact);
        }
    }
    for (field, name) in refs.iter_mut() {
        // Malformed names were reported by the pure checks already.
        if names::parse(names::CONTACTS, "", name).is_err() {
            continue;
        }
        let mut contact = found.get(name.as_str());
        if let Some(c) = contact
            && !c.merged_into.is_empty()
        {
            contact = found.get(&c.merged_into);
        }
        match contact {
            None => violations.add(field.clone(), format!("{name} does not exist")),
            Some(c) if c.delete_time.is_some() => {
                violations.add(field.clone(), format!("{name} is deleted"))
            }
            Some(c) => {
                **name = c.name.clone();
                accounts.insert(c.name.clone(), c.account.clone());
            }
        }
    }
    Ok(accounts)
}

/// Checks that `episode` (a normalised "episodes/{id}") exists in the tenant.
pub async fn episode_exists<C: ConnectionTrait>(
    violations: &mut Violations,
    conn: &C,
    tenant: &str,
    field: &str,
    episode: &str,
) -> Result<(), ApiError> {
    // A malformed name was reported by the pure checks already.
    let Ok(id) = names::parse(rows::EPISODES, field, episode) else {
        return Ok(());
    };
    let found = episode_row::Entity::find_by_id((tenant.to_owned(), id))
        .one(conn)
        .await
        .map_err(|e| from_db(e, "episode"))?;
    if found.is_none() {
        violations.add(field, format!("{episode} does not exist"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_default_from_the_type() {
        assert_eq!(
            default_channel(InteractionType::Call as i32),
            Channel::Phone
        );
        assert_eq!(
            default_channel(InteractionType::Meeting as i32),
            Channel::InPerson
        );
        assert_eq!(
            default_channel(InteractionType::Note as i32),
            Channel::Unspecified
        );
        assert_eq!(default_channel(99), Channel::Unspecified);
    }

    #[test]
    fn money_rules() {
        let mut v = Violations::new();
        money(
            &mut v,
            "m",
            &mut Money {
                currency_code: "EUR".into(),
                units: 1,
                nanos: 5,
            },
        );
        assert!(v.into_result().is_ok());
        let mut v = Violations::new();
        money(
            &mut v,
            "m",
            &mut Money {
                currency_code: "eur".into(),
                units: 1,
                nanos: -5,
            },
        );
        match v.into_result() {
            Err(ApiError::InvalidArgument(found)) => {
                let fields: Vec<_> = found.iter().map(|f| f.field.as_str()).collect();
                assert_eq!(fields, ["m.currency_code", "m.nanos"]);
            }
            other => panic!("expected violations, got {other:?}"),
        }
    }
}
