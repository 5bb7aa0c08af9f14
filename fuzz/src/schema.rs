//! The filter whitelists the `filter_parser` target parses against: `(table, fields)`.

use crate::filter::FilterField;

/// The contact service's own whitelists, one per filterable resource.
#[cfg(feature = "service")]
pub const RESOURCES: &[(&str, &[FilterField])] = &[
    ("contacts", crm_contact::grpc::CONTACT_FILTER_FIELDS),
    (
        "accounts",
        crm_contact::accounts::query::ACCOUNT_FILTER_FIELDS,
    ),
    (
        "interactions",
        crm_contact::timeline::query::INTERACTION_FILTER_FIELDS,
    ),
    (
        "episodes",
        crm_contact::timeline::query::EPISODE_FILTER_FIELDS,
    ),
    (
        "consent_records",
        crm_contact::consent::CONSENT_FILTER_FIELDS,
    ),
    ("segments", crm_contact::segments::SEGMENT_FILTER_FIELDS),
    ("audit_events", crm_contact::audit::AUDIT_FIELDS),
    ("record_history", crm_contact::audit::HISTORY_FIELDS),
];

/// Without the service: whitelists shaped like the contact service's (the same field
/// names and every kind of field), so that the same seeds reach every translation.
#[cfg(not(feature = "service"))]
pub const RESOURCES: &[(&str, &[FilterField])] = &[
    ("contacts", built_in::CONTACTS),
    ("accounts", built_in::ACCOUNTS),
    ("interactions", built_in::INTERACTIONS),
    ("episodes", built_in::CONTACTS),
    ("consent_records", built_in::CONSENT),
    ("segments", built_in::CONTACTS),
    ("audit_events", built_in::AUDIT),
    ("record_history", built_in::AUDIT),
];

#[cfg(not(feature = "service"))]
mod built_in {
    use sea_query::{Expr, ExprTrait, SimpleExpr};

    use crate::filter::{FieldKind, FilterField, Op, Value};

    const fn field(name: &'static str, column: &'static str, kind: FieldKind) -> FilterField {
        FilterField { name, column, kind }
    }

    /// An enum by its names, with or without the type prefix (as the services do).
    fn lifecycle_stage(name: &str) -> Option<i32> {
        const STAGES: &[&str] = &[
            "SUBSCRIBER",
            "LEAD",
            "MARKETING_QUALIFIED",
            "SALES_QUALIFIED",
            "OPPORTUNITY",
            "CUSTOMER",
            "EVANGELIST",
            "CHURNED",
        ];
        let name = name.strip_prefix("LIFECYCLE_STAGE_").unwrap_or(name);
        STAGES
            .iter()
            .position(|stage| *stage == name)
            .map(|i| i as i32 + 1)
    }

    fn interaction_type(name: &str) -> Option<i32> {
        let name = name.strip_prefix("INTERACTION_TYPE_").unwrap_or(name);
        ["CALL", "EMAIL", "MEETING", "NOTE"]
            .iter()
            .position(|t| *t == name)
            .map(|i| i as i32 + 1)
    }

    /// `attributes.<key>`, as the contact service's attribute index builds it.
    fn attribute(key: &str, op: Op, value: &Value) -> Result<SimpleExpr, String> {
        let valid_key = key.len() <= 63
            && key.starts_with(|c: char| c.is_ascii_lowercase())
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid_key {
            return Err("attribute keys are [a-z][a-z0-9_]{0,62}".into());
        }
        let compare = |column: &'static str, v: sea_query::Value| {
            let col = Expr::col(column);
            match op {
                Op::Eq | Op::Has => col.eq(v),
                Op::Ne => col.ne(v),
                Op::Lt => col.lt(v),
                Op::Le => col.lte(v),
                Op::Gt => col.gt(v),
                Op::Ge => col.gte(v),
            }
        };
        let test = match (op, value) {
            (Op::Has, Value::Word(w)) if w == "*" => Expr::col("key").is_not_null(),
            (_, Value::Text(text)) => compare("text_value", text.clone().into()),
            (_, Value::Word(w)) if w == "true" || w == "false" => {
                if !matches!(op, Op::Eq | Op::Ne | Op::Has) {
                    return Err("booleans compare with = and != only".into());
                }
                compare("bool_value", (w == "true").into())
            }
            (_, Value::Word(w)) => {
                let number: f64 = w
                    .parse()
                    .ok()
                    .filter(|n: &f64| n.is_finite())
                    .ok_or("expected a number, true, false, or a quoted text")?;
                compare("number_value", number.into())
            }
        };
        Ok(Expr::col("key").eq(key).and(test))
    }

    pub const CONTACTS: &[FilterField] = &[
        field("given_name", "given_name", FieldKind::Text),
        field("family_name", "family_name", FieldKind::Text),
        field("display_name", "display_name", FieldKind::Text),
        field("email", "emails_index", FieldKind::TenantList),
        field("phone", "phones_index", FieldKind::TenantList),
        field("tags", "tags_index", FieldKind::TenantList),
        field("job_title", "job_title", FieldKind::Text),
        field("account", "account", FieldKind::Text),
        field("owner", "owner", FieldKind::Text),
        field(
            "lifecycle_stage",
            "lifecycle_stage",
            FieldKind::Enum(lifecycle_stage),
        ),
        field("type", "type", FieldKind::Enum(lifecycle_stage)),
        field("create_time", "create_time_us", FieldKind::Timestamp),
        field("update_time", "update_time_us", FieldKind::Timestamp),
        field("delete_time", "delete_time_us", FieldKind::Timestamp),
        field("start_time", "start_time_us", FieldKind::Timestamp),
        field("attributes.", "", FieldKind::Keyed(attribute)),
    ];

    pub const ACCOUNTS: &[FilterField] = &[
        field("display_name", "display_name", FieldKind::Text),
        field("domain", "domain", FieldKind::LowerText),
        field("industry", "industry", FieldKind::Text),
        field("employee_count", "employee_count", FieldKind::Integer),
        field("annual_revenue.units", "revenue_units", FieldKind::Integer),
        field("tags", "tags_index", FieldKind::TenantList),
        field("create_time", "create_time_us", FieldKind::Timestamp),
        field("attributes.", "", FieldKind::Keyed(attribute)),
    ];

    pub const INTERACTIONS: &[FilterField] = &[
        field("type", "type", FieldKind::Enum(interaction_type)),
        field("contact", "contact", FieldKind::Text),
        field("participants.user", "participant_users", FieldKind::List),
        field("create_time", "create_time_us", FieldKind::Timestamp),
    ];

    pub const CONSENT: &[FilterField] = &[
        field("address", "address", FieldKind::LowerText),
        field("source", "source", FieldKind::Text),
        field("consent_time", "consent_time_us", FieldKind::Timestamp),
    ];

    pub const AUDIT: &[FilterField] = &[
        field("type", "event_type", FieldKind::Text),
        field("resource_name", "resource_name", FieldKind::Text),
        field("actor.subject", "actor_subject", FieldKind::Text),
        field("actor.roles", "actor_roles", FieldKind::List),
        field("changes.path", "changed_paths", FieldKind::List),
        field("redacted", "redacted", FieldKind::Bool),
        field("event_time", "event_time_us", FieldKind::Timestamp),
    ];
}
