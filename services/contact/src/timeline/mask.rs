//! Field masks of UpdateInteraction and UpdateEpisode, and the field changes their
//! events carry.

use crm_platform::ApiError;
use crm_proto::common::FieldChange;
use crm_proto::contact::{Episode, Interaction};

pub const INTERACTION_FIELDS: &[&str] = &[
    "type",
    "channel",
    "direction",
    "contact",
    "account",
    "interaction_time",
    "duration",
    "outcome",
    "participants",
    "episode",
    "subject",
    "body",
    "amount",
    "source",
];

pub const EPISODE_FIELDS: &[&str] = &[
    "display_name",
    "description",
    "contact",
    "account",
    "start_time",
    "end_time",
];

/// The paths to update; `*` means every mutable field. Unknown or output-only paths
/// are refused.
pub fn paths(
    mask: Option<&prost_types::FieldMask>,
    mutable: &[&str],
    resource: &str,
) -> Result<Vec<String>, ApiError> {
    let Some(mask) = mask.filter(|m| !m.paths.is_empty()) else {
        return Err(ApiError::invalid(
            "update_mask",
            "is required; use \"*\" to replace every mutable field",
        ));
    };
    let mut paths = Vec::new();
    for path in &mask.paths {
        let path = path.trim();
        if path == "*" {
            paths.extend(mutable.iter().map(|f| (*f).to_owned()));
        } else if mutable.contains(&path) {
            paths.push(path.to_owned());
        } else {
            return Err(ApiError::invalid(
                "update_mask",
                format!("{path:?} is not a mutable field of {resource}"),
            ));
        }
    }
    paths.sort();
    paths.dedup();
    Ok(paths)
}

pub fn apply_interaction(target: &mut Interaction, patch: &Interaction, paths: &[String]) {
    for path in paths {
        match path.as_str() {
            "type" => target.r#type = patch.r#type,
            "channel" => target.channel = patch.channel,
            "direction" => target.direction = patch.direction,
            "contact" => target.contact.clone_from(&patch.contact),
            "account" => target.account.clone_from(&patch.account),
            "interaction_time" => target.interaction_time = patch.interaction_time,
            "duration" => target.duration = patch.duration,
            "outcome" => target.outcome = patch.outcome,
            "participants" => target.participants.clone_from(&patch.participants),
            "episode" => target.episode.clone_from(&patch.episode),
            "subject" => target.subject.clone_from(&patch.subject),
            "body" => target.body.clone_from(&patch.body),
            "amount" => target.amount.clone_from(&patch.amount),
            "source" => target.source.clone_from(&patch.source),
            _ => {}
        }
    }
}

pub fn apply_episode(target: &mut Episode, patch: &Episode, paths: &[String]) {
    for path in paths {
        match path.as_str() {
            "display_name" => target.display_name.clone_from(&patch.display_name),
            "description" => target.description.clone_from(&patch.description),
            "contact" => target.contact.clone_from(&patch.contact),
            "account" => target.account.clone_from(&patch.account),
            "start_time" => target.start_time = patch.start_time,
            "end_time" => target.end_time = patch.end_time,
            _ => {}
        }
    }
}

fn string(text: impl Into<String>) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(text.into())),
    }
}

fn null() -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::NullValue(0)),
    }
}

fn time(ts: Option<&prost_types::Timestamp>) -> prost_types::Value {
    ts.map_or_else(null, |t| string(t.to_string()))
}

fn enum_name(name: Option<&str>, number: i32) -> prost_types::Value {
    string(name.map_or_else(|| number.to_string(), str::to_owned))
}

fn interaction_value(i: &Interaction, path: &str) -> prost_types::Value {
    use crm_proto::common::Channel;
    use crm_proto::contact::{InteractionDirection, InteractionOutcome, InteractionType};
    match path {
        "type" => enum_name(
            InteractionType::try_from(i.r#type)
                .ok()
                .map(|e| e.as_str_name()),
            i.r#type,
        ),
        "channel" => enum_name(
            Channel::try_from(i.channel).ok().map(|e| e.as_str_name()),
            i.channel,
        ),
        "direction" => enum_name(
            InteractionDirection::try_from(i.direction)
                .ok()
                .map(|e| e.as_str_name()),
            i.direction,
        ),
        "outcome" => enum_name(
            InteractionOutcome::try_from(i.outcome)
                .ok()
                .map(|e| e.as_str_name()),
            i.outcome,
        ),
        "contact" => string(&i.contact),
        "account" => string(&i.account),
        "interaction_time" => time(i.interaction_time.as_ref()),
        "duration" => i
            .duration
            .as_ref()
            .map_or_else(null, |d| string(d.to_string())),
        "participants" => prost_types::Value {
            kind: Some(prost_types::value::Kind::ListValue(
                prost_types::ListValue {
                    values: i
                        .participants
                        .iter()
                        .map(|p| {
                            string(
                                [&p.contact, &p.user, &p.email_address]
                                    .into_iter()
                                    .find(|v| !v.is_empty())
                                    .cloned()
                                    .unwrap_or_default(),
                            )
                        })
                        .collect(),
                },
            )),
        },
        "episode" => string(&i.episode),
        "subject" => string(&i.subject),
        "body" => string(&i.body),
        "amount" => i.amount.as_ref().map_or_else(null, |m| {
            string(format!("{} {} {}", m.currency_code, m.units, m.nanos))
        }),
        "source" => string(&i.source),
        _ => null(),
    }
}

fn episode_value(e: &Episode, path: &str) -> prost_types::Value {
    match path {
        "display_name" => string(&e.display_name),
        "description" => string(&e.description),
        "contact" => string(&e.contact),
        "account" => string(&e.account),
        "start_time" => time(e.start_time.as_ref()),
        "end_time" => time(e.end_time.as_ref()),
        _ => null(),
    }
}

fn diff<T>(
    before: &T,
    after: &T,
    paths: &[String],
    value: fn(&T, &str) -> prost_types::Value,
) -> Vec<FieldChange> {
    paths
        .iter()
        .filter_map(|path| {
            let old = value(before, path);
            let new = value(after, path);
            (old != new).then(|| FieldChange {
                path: path.clone(),
                old_value: Some(old),
                new_value: Some(new),
            })
        })
        .collect()
}

pub fn interaction_changes(
    before: &Interaction,
    after: &Interaction,
    paths: &[String],
) -> Vec<FieldChange> {
    diff(before, after, paths, interaction_value)
}

pub fn episode_changes(before: &Episode, after: &Episode, paths: &[String]) -> Vec<FieldChange> {
    diff(before, after, paths, episode_value)
}
