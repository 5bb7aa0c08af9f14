//! The filters and sort orders of ListInteractions and ListEpisodes.

use sea_orm::sea_query::{Condition, Expr, ExprTrait as _};

use crm_platform::ApiError;
use crm_platform::filter::{self, FieldKind, FilterField, FilterScope, Op};
use crm_proto::common::Channel;
use crm_proto::contact::{InteractionDirection, InteractionOutcome, InteractionType};

use super::store::SortKey;

fn with_prefix(name: &str, prefix: &str, parse: fn(&str) -> Option<i32>) -> Option<i32> {
    parse(name).or_else(|| parse(&format!("{prefix}{name}")))
}

fn parse_type(name: &str) -> Option<i32> {
    with_prefix(name, "INTERACTION_TYPE_", |n| {
        InteractionType::from_str_name(n).map(|e| e as i32)
    })
}

fn parse_channel(name: &str) -> Option<i32> {
    with_prefix(name, "CHANNEL_", |n| {
        Channel::from_str_name(n).map(|e| e as i32)
    })
}

fn parse_direction(name: &str) -> Option<i32> {
    with_prefix(name, "INTERACTION_DIRECTION_", |n| {
        InteractionDirection::from_str_name(n).map(|e| e as i32)
    })
}

fn parse_outcome(name: &str) -> Option<i32> {
    with_prefix(name, "INTERACTION_OUTCOME_", |n| {
        InteractionOutcome::from_str_name(n).map(|e| e as i32)
    })
}

const fn field(name: &'static str, column: &'static str, kind: FieldKind) -> FilterField {
    FilterField { name, column, kind }
}

/// The fields ListInteractions filters on, and their columns.
pub const INTERACTION_FILTER_FIELDS: &[FilterField] = &[
    field("type", "interaction_type", FieldKind::Enum(parse_type)),
    field("channel", "channel", FieldKind::Enum(parse_channel)),
    field("direction", "direction", FieldKind::Enum(parse_direction)),
    field("outcome", "outcome", FieldKind::Enum(parse_outcome)),
    field("episode", "episode", FieldKind::Text),
    field("source", "source", FieldKind::Text),
    field("creator", "creator", FieldKind::Text),
    field(
        "interaction_time",
        "interaction_time_us",
        FieldKind::Timestamp,
    ),
    field("create_time", "create_time_us", FieldKind::Timestamp),
    field("participants.user", "participant_users", FieldKind::List),
];

/// The fields ListEpisodes filters on, and their columns.
pub const EPISODE_FILTER_FIELDS: &[FilterField] = &[
    field("contact", "contact", FieldKind::Text),
    field("account", "account", FieldKind::Text),
    field("display_name", "display_name", FieldKind::Text),
    field("start_time", "start_time_us", FieldKind::Timestamp),
    field("end_time", "end_time_us", FieldKind::Timestamp),
    field("create_time", "create_time_us", FieldKind::Timestamp),
];

/// Fields where `field:*` ("has a value", AIP-160) applies: the column, and whether an
/// absent value is NULL (else the empty string).
const INTERACTION_PRESENCE: &[(&str, &str, bool)] =
    &[("episode", "episode", false), ("source", "source", false)];
const EPISODE_PRESENCE: &[(&str, &str, bool)] = &[
    ("end_time", "end_time_us", true),
    ("contact", "contact", false),
    ("account", "account", false),
];

fn translate(
    expr: &filter::Expr,
    fields: &[FilterField],
    presence: &[(&str, &'static str, bool)],
    scope: FilterScope,
) -> Result<Condition, ApiError> {
    Ok(match expr {
        filter::Expr::And(terms) => {
            let mut all = Condition::all();
            for term in terms {
                all = all.add(translate(term, fields, presence, scope)?);
            }
            all
        }
        filter::Expr::Or(terms) => {
            let mut any = Condition::any();
            for term in terms {
                any = any.add(translate(term, fields, presence, scope)?);
            }
            any
        }
        filter::Expr::Not(inner) => translate(inner, fields, presence, scope)?.not(),
        filter::Expr::Compare {
            field,
            op: Op::Has,
            value,
            ..
        } if value.as_str() == "*" && presence.iter().any(|(name, _, _)| name == field) => {
            let (_, column, nullable) = presence
                .iter()
                .find(|(name, _, _)| name == field)
                .copied()
                .unwrap_or_default();
            Condition::all().add(if nullable {
                Expr::col(column).is_not_null()
            } else {
                Expr::col(column).ne("")
            })
        }
        compare => filter::to_condition(compare, fields, scope)?,
    })
}

fn condition(
    text: &str,
    fields: &[FilterField],
    presence: &[(&str, &'static str, bool)],
    scope: FilterScope,
) -> Result<Option<Condition>, ApiError> {
    filter::parse(text)?
        .map(|expr| translate(&expr, fields, presence, scope))
        .transpose()
}

pub fn interaction_filter(text: &str, scope: FilterScope) -> Result<Option<Condition>, ApiError> {
    condition(text, INTERACTION_FILTER_FIELDS, INTERACTION_PRESENCE, scope)
}

pub fn episode_filter(text: &str, scope: FilterScope) -> Result<Option<Condition>, ApiError> {
    condition(text, EPISODE_FILTER_FIELDS, EPISODE_PRESENCE, scope)
}

/// Parses `order_by` over `allowed` fields (name and key); the id ends every order,
/// in the direction of the field before it, so one index serves the whole order.
pub fn order(
    order_by: &str,
    allowed: &[(&str, SortKey)],
    default: (SortKey, bool),
) -> Result<Vec<(SortKey, bool)>, ApiError> {
    let mut order: Vec<(SortKey, bool)> = Vec::new();
    for part in order_by.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut words = part.split_whitespace();
        let name = words.next().unwrap_or_default();
        let descending = match words.next() {
            None | Some("asc") => false,
            Some("desc") => true,
            Some(other) => {
                return Err(ApiError::invalid(
                    "order_by",
                    format!("unknown direction {other:?}"),
                ));
            }
        };
        if words.next().is_some() {
            return Err(ApiError::invalid(
                "order_by",
                format!("cannot read {part:?}"),
            ));
        }
        let key = allowed
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, k)| *k)
            .ok_or_else(|| {
                let names: Vec<&str> = allowed.iter().map(|(n, _)| *n).collect();
                ApiError::invalid(
                    "order_by",
                    format!("cannot sort by {name:?}; use {}", names.join(" or ")),
                )
            })?;
        if order.iter().any(|(k, _)| *k == key) {
            return Err(ApiError::invalid(
                "order_by",
                format!("{name} appears twice"),
            ));
        }
        order.push((key, descending));
    }
    if order.is_empty() {
        order.push(default);
    }
    let last = order.last().map_or(default.1, |(_, d)| *d);
    order.push((SortKey::Id, last));
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::DbBackend;

    #[test]
    fn orders() {
        let allowed = [("interaction_time", SortKey::InteractionTime)];
        assert_eq!(
            order("", &allowed, (SortKey::InteractionTime, true)).unwrap(),
            [(SortKey::InteractionTime, true), (SortKey::Id, true)]
        );
        assert_eq!(
            order(
                "interaction_time",
                &allowed,
                (SortKey::InteractionTime, true)
            )
            .unwrap(),
            [(SortKey::InteractionTime, false), (SortKey::Id, false)]
        );
        assert!(order("subject", &allowed, (SortKey::InteractionTime, true)).is_err());
    }

    #[test]
    fn filters_parse() {
        let sqlite = FilterScope {
            backend: DbBackend::Sqlite,
            tenant: "acme",
        };
        assert!(interaction_filter("type = CALL AND channel = CHANNEL_PHONE", sqlite).is_ok());
        assert!(interaction_filter("type = NOPE", sqlite).is_err());
        assert!(interaction_filter("participants.user: \"u1\" AND episode:*", sqlite).is_ok());
        assert!(episode_filter("end_time:* AND NOT contact:*", sqlite).is_ok());
        assert!(episode_filter("body = 1", sqlite).is_err());
    }
}
