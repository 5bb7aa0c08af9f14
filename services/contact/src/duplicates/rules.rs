//! The tenant's duplicate rules: stored, defaulted, validated and updated.

use prost::Message as _;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, Query};
use sea_orm::{ConnectionTrait, DbBackend};

use crm_platform::ApiError;
use crm_platform::Violations;
use crm_platform::errors::from_db;
use crm_proto::contact::{DuplicateAction, DuplicateMatchRule, DuplicateRules};

use super::migration::DuplicateRulesTable;

pub const NAME: &str = "duplicateRules";
pub const DEFAULT_MIN_SCORE: f64 = 0.85;
pub const DEFAULT_NAME_SIMILARITY: f64 = 0.92;
pub const PATHS: &[&str] = &[
    "on_create",
    "on_import",
    "min_score",
    "name_similarity_threshold",
    "match_rules",
];

/// Unset values take their defaults, so readers see the rules in force.
pub fn with_defaults(mut rules: DuplicateRules) -> DuplicateRules {
    rules.name = NAME.into();
    if rules.on_create == DuplicateAction::Unspecified as i32 {
        rules.on_create = DuplicateAction::Warn as i32;
    }
    if rules.on_import == DuplicateAction::Unspecified as i32 {
        rules.on_import = DuplicateAction::Block as i32;
    }
    if rules.min_score <= 0.0 {
        rules.min_score = DEFAULT_MIN_SCORE;
    }
    if rules.name_similarity_threshold <= 0.0 {
        rules.name_similarity_threshold = DEFAULT_NAME_SIMILARITY;
    }
    rules
}

/// The rules and their revision (0 when the tenant never set any).
pub async fn load<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
) -> Result<(DuplicateRules, i64), ApiError> {
    let row = conn
        .query_one(
            &Query::select()
                .columns([DuplicateRulesTable::Revision, DuplicateRulesTable::Data])
                .from(DuplicateRulesTable::Table)
                .and_where(Expr::col(DuplicateRulesTable::TenantId).eq(tenant))
                .to_owned(),
        )
        .await
        .map_err(|e| from_db(e, NAME))?;
    let Some(row) = row else {
        let mut rules = with_defaults(DuplicateRules::default());
        rules.etag = crate::domain::names::etag(0);
        return Ok((rules, 0));
    };
    let revision: i64 = row.try_get_by_index(0).map_err(ApiError::internal)?;
    let data: Vec<u8> = row.try_get_by_index(1).map_err(ApiError::internal)?;
    Ok((decode(Some(&data))?, revision))
}

/// The rules in force from their stored encoding (`None`: never set, the defaults).
pub fn decode(data: Option<&[u8]>) -> Result<DuplicateRules, ApiError> {
    let rules = match data {
        Some(data) => DuplicateRules::decode(data).map_err(ApiError::internal)?,
        None => DuplicateRules::default(),
    };
    Ok(with_defaults(rules))
}

/// Locks the tenant's rules row for the rest of the transaction (Postgres; SQLite
/// write transactions are exclusive already).
pub async fn lock<C: ConnectionTrait>(conn: &C, tenant: &str) -> Result<(), ApiError> {
    if conn.get_database_backend() == DbBackend::Postgres {
        conn.execute(
            &Query::select()
                .column(DuplicateRulesTable::TenantId)
                .from(DuplicateRulesTable::Table)
                .and_where(Expr::col(DuplicateRulesTable::TenantId).eq(tenant))
                .lock_exclusive()
                .to_owned(),
        )
        .await
        .map_err(|e| from_db(e, NAME))?;
    }
    Ok(())
}

pub async fn save<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    rules: &DuplicateRules,
    revision: i64,
    now: i64,
) -> Result<(), ApiError> {
    conn.execute(
        &Query::insert()
            .into_table(DuplicateRulesTable::Table)
            .columns([
                DuplicateRulesTable::TenantId,
                DuplicateRulesTable::Revision,
                DuplicateRulesTable::UpdateTimeUs,
                DuplicateRulesTable::Data,
            ])
            .values_panic([
                tenant.into(),
                revision.into(),
                now.into(),
                rules.encode_to_vec().into(),
            ])
            .on_conflict(
                OnConflict::column(DuplicateRulesTable::TenantId)
                    .update_columns([
                        DuplicateRulesTable::Revision,
                        DuplicateRulesTable::UpdateTimeUs,
                        DuplicateRulesTable::Data,
                    ])
                    .to_owned(),
            )
            .to_owned(),
    )
    .await
    .map_err(|e| from_db(e, NAME))?;
    Ok(())
}

fn action_ok(value: i32) -> bool {
    DuplicateAction::try_from(value).is_ok()
}

/// Checks the fields named by the mask.
pub fn validate(violations: &mut Violations, rules: &DuplicateRules, paths: &[String]) {
    let prefix = "duplicate_rules";
    for path in paths {
        match path.as_str() {
            "on_create" if !action_ok(rules.on_create) => {
                violations.add(format!("{prefix}.on_create"), "unknown action");
            }
            "on_import" if !action_ok(rules.on_import) => {
                violations.add(format!("{prefix}.on_import"), "unknown action");
            }
            "min_score" if !(rules.min_score > 0.0 && rules.min_score <= 1.0) => {
                violations.add(format!("{prefix}.min_score"), "must be > 0 and <= 1");
            }
            "name_similarity_threshold"
                if !(rules.name_similarity_threshold > 0.0
                    && rules.name_similarity_threshold <= 1.0) =>
            {
                violations.add(
                    format!("{prefix}.name_similarity_threshold"),
                    "must be > 0 and <= 1",
                );
            }
            "match_rules" => {
                let mut seen = Vec::new();
                for (i, rule) in rules.match_rules.iter().enumerate() {
                    let known = DuplicateMatchRule::try_from(*rule)
                        .is_ok_and(|r| r != DuplicateMatchRule::Unspecified);
                    if !known {
                        violations.add(format!("{prefix}.match_rules[{i}]"), "unknown rule");
                    } else if seen.contains(rule) {
                        violations.add(format!("{prefix}.match_rules[{i}]"), "appears twice");
                    }
                    seen.push(*rule);
                }
            }
            _ => {}
        }
    }
}

/// Copies the masked fields from `patch` into `target`.
pub fn apply(target: &mut DuplicateRules, patch: &DuplicateRules, paths: &[String]) {
    for path in paths {
        match path.as_str() {
            "on_create" => target.on_create = patch.on_create,
            "on_import" => target.on_import = patch.on_import,
            "min_score" => target.min_score = patch.min_score,
            "name_similarity_threshold" => {
                target.name_similarity_threshold = patch.name_similarity_threshold;
            }
            "match_rules" => target.match_rules.clone_from(&patch.match_rules),
            _ => {}
        }
    }
}

/// The value of one path, for the audit trail.
pub fn value(rules: &DuplicateRules, path: &str) -> prost_types::Value {
    use prost_types::value::Kind;
    let text = |s: &str| Kind::StringValue(s.to_owned());
    let kind = match path {
        "on_create" => text(
            DuplicateAction::try_from(rules.on_create)
                .map(|a| a.as_str_name())
                .unwrap_or_default(),
        ),
        "on_import" => text(
            DuplicateAction::try_from(rules.on_import)
                .map(|a| a.as_str_name())
                .unwrap_or_default(),
        ),
        "min_score" => Kind::NumberValue(rules.min_score),
        "name_similarity_threshold" => Kind::NumberValue(rules.name_similarity_threshold),
        _ => Kind::ListValue(prost_types::ListValue {
            values: rules
                .match_rules
                .iter()
                .map(|r| prost_types::Value {
                    kind: Some(text(
                        DuplicateMatchRule::try_from(*r)
                            .map(|r| r.as_str_name())
                            .unwrap_or_default(),
                    )),
                })
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}
