//! How accounts are filtered, ordered and compared: the AIP-160 field table, the
//! `order_by` fields, and the field changes events carry.

use crm_platform::ApiError;
use crm_platform::encoded::{KeyType, SortKey};
use crm_platform::filter::{self, FieldKind, FilterField, FilterScope};
use crm_proto::common::FieldChange;
use crm_proto::contact::{Account, AccountTier};
use sea_orm::sea_query::Expr;

use super::store::{Accounts, Column};

/// The fields ListAccounts filters on, and their columns. `attributes.<key>` is left to
/// the shared attribute mechanism (the attributes are in the encoded `data` only).
pub const ACCOUNT_FILTER_FIELDS: &[FilterField] = &[
    FilterField {
        name: "display_name",
        column: "display_name",
        kind: FieldKind::Text,
    },
    FilterField {
        name: "domain",
        column: "domain",
        kind: FieldKind::LowerText,
    },
    FilterField {
        name: "industry",
        column: "industry",
        kind: FieldKind::Text,
    },
    FilterField {
        name: "employee_count",
        column: "employee_count",
        kind: FieldKind::Integer,
    },
    FilterField {
        name: "annual_revenue.currency_code",
        column: "revenue_currency",
        kind: FieldKind::Text,
    },
    FilterField {
        name: "annual_revenue.units",
        column: "revenue_units",
        kind: FieldKind::Integer,
    },
    FilterField {
        name: "tier",
        column: "tier",
        kind: FieldKind::Enum(parse_tier),
    },
    FilterField {
        name: "owner",
        column: "owner",
        kind: FieldKind::Text,
    },
    FilterField {
        name: "parent_account",
        column: "parent_account",
        kind: FieldKind::Text,
    },
    FilterField {
        name: "tags",
        column: "tags_index",
        kind: FieldKind::TenantList,
    },
    FilterField {
        name: "address.country_code",
        column: "country_code",
        kind: FieldKind::Text,
    },
    FilterField {
        name: "create_time",
        column: "create_time_us",
        kind: FieldKind::Timestamp,
    },
    FilterField {
        name: "update_time",
        column: "update_time_us",
        kind: FieldKind::Timestamp,
    },
    FilterField {
        name: "attributes.",
        column: "",
        kind: FieldKind::Keyed(crate::index::account_attribute_condition),
    },
];

/// A ListAccounts filter as a condition on the accounts table.
pub fn account_filter(
    filter: &str,
    scope: FilterScope,
) -> Result<Option<sea_orm::sea_query::Condition>, ApiError> {
    filter::condition(filter, ACCOUNT_FILTER_FIELDS, scope)
}

/// "STRATEGIC" or "ACCOUNT_TIER_STRATEGIC".
pub fn parse_tier(name: &str) -> Option<i32> {
    AccountTier::from_str_name(name)
        .or_else(|| AccountTier::from_str_name(&format!("ACCOUNT_TIER_{name}")))
        .map(|tier| tier as i32)
}

/// The sortable fields of ListAccounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortField {
    CreateTime,
    UpdateTime,
    DisplayName,
    Domain,
    EmployeeCount,
    Id,
}

impl SortField {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "create_time" => Self::CreateTime,
            "update_time" => Self::UpdateTime,
            "display_name" => Self::DisplayName,
            "domain" => Self::Domain,
            "employee_count" => Self::EmployeeCount,
            "name" => Self::Id,
            _ => return None,
        })
    }

    pub fn column(self) -> Column {
        match self {
            Self::CreateTime => Column::CreateTimeUs,
            Self::UpdateTime => Column::UpdateTimeUs,
            Self::DisplayName => Column::DisplayName,
            Self::Domain => Column::Domain,
            Self::EmployeeCount => Column::EmployeeCount,
            Self::Id => Column::Id,
        }
    }

    /// This field as a key of a listing's order.
    pub fn key(self, descending: bool) -> SortKey {
        SortKey {
            expr: Expr::col((Accounts, self.column())),
            descending,
            kind: self.key_type(),
        }
    }

    /// How a cursor reads this field's column back.
    fn key_type(self) -> KeyType {
        match self {
            Self::CreateTime | Self::UpdateTime => KeyType::Int,
            Self::EmployeeCount => KeyType::Int32,
            Self::DisplayName | Self::Domain | Self::Id => KeyType::Text,
        }
    }
}

/// Parses `order_by` ("display_name, create_time desc"); the id ends every order.
pub fn parse_order(order_by: &str) -> Result<Vec<(SortField, bool)>, ApiError> {
    let mut order = Vec::new();
    for part in order_by.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut words = part.split_whitespace();
        let field_name = words.next().unwrap_or_default();
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
        let field = SortField::parse(field_name).ok_or_else(|| {
            ApiError::invalid(
                "order_by",
                format!(
                    "cannot sort by {field_name:?}; use create_time, update_time, display_name, domain, employee_count or name"
                ),
            )
        })?;
        if order.iter().any(|(f, _)| *f == field) {
            return Err(ApiError::invalid(
                "order_by",
                format!("{field_name} appears twice"),
            ));
        }
        order.push((field, descending));
    }
    if order.len() > 3 {
        return Err(ApiError::invalid("order_by", "at most 3 fields"));
    }
    if order.is_empty() {
        order.push((SortField::CreateTime, false));
    }
    if !order.iter().any(|(f, _)| *f == SortField::Id) {
        order.push((SortField::Id, false));
    }
    Ok(order)
}

fn string_value(text: &str) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(text.to_owned())),
    }
}

fn number_value(n: f64) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::NumberValue(n)),
    }
}

fn null_value() -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::NullValue(0)),
    }
}

fn list_value<'a>(items: impl Iterator<Item = &'a str>) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::ListValue(
            prost_types::ListValue {
                values: items.map(string_value).collect(),
            },
        )),
    }
}

/// The value of one field path, for the audit trail in events.
fn field_value(account: &Account, path: &str) -> prost_types::Value {
    use crm_proto::common::attribute_value::Kind;
    match path {
        "display_name" => string_value(&account.display_name),
        "domain" => string_value(&account.domain),
        "industry" => string_value(&account.industry),
        "employee_count" => number_value(f64::from(account.employee_count)),
        // Money as text ("CHF 12.500000000"), so no precision is lost in a double.
        "annual_revenue" => match &account.annual_revenue {
            Some(m) => string_value(&format!(
                "{} {}{}.{:09}",
                m.currency_code,
                if m.units < 0 || m.nanos < 0 { "-" } else { "" },
                m.units.unsigned_abs(),
                m.nanos.unsigned_abs()
            )),
            None => null_value(),
        },
        "tier" => string_value(
            AccountTier::try_from(account.tier)
                .map(|t| t.as_str_name())
                .unwrap_or_default(),
        ),
        "owner" => string_value(&account.owner),
        "parent_account" => string_value(&account.parent_account),
        "tags" => list_value(account.tags.iter().map(String::as_str)),
        "address" => {
            let address = account.address.clone().unwrap_or_default();
            let mut lines = address.lines.clone();
            lines.extend([
                address.postal_code,
                address.locality,
                address.region,
                address.country_code,
            ]);
            list_value(lines.iter().map(String::as_str).filter(|s| !s.is_empty()))
        }
        other => {
            let key = other.strip_prefix("attributes.").unwrap_or(other);
            match account.attributes.get(key).and_then(|v| v.kind.as_ref()) {
                Some(Kind::StringValue(s)) => string_value(s),
                Some(Kind::NumberValue(n)) => number_value(*n),
                Some(Kind::BoolValue(b)) => prost_types::Value {
                    kind: Some(prost_types::value::Kind::BoolValue(*b)),
                },
                Some(Kind::DateValue(d)) => {
                    string_value(&format!("{:04}-{:02}-{:02}", d.year, d.month, d.day))
                }
                None => null_value(),
            }
        }
    }
}

/// The changed fields between two versions, by the mask's paths.
pub fn changes(before: &Account, after: &Account, paths: &[String]) -> Vec<FieldChange> {
    let mut out = Vec::new();
    for path in paths {
        let expanded: Vec<String> = if path == "attributes" {
            let mut keys: Vec<&String> = before
                .attributes
                .keys()
                .chain(after.attributes.keys())
                .collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .map(|k| format!("attributes.{k}"))
                .collect()
        } else {
            vec![path.clone()]
        };
        for path in expanded {
            let old = field_value(before, &path);
            let new = field_value(after, &path);
            if old != new {
                out.push(FieldChange {
                    path,
                    old_value: Some(old),
                    new_value: Some(new),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders() {
        assert_eq!(
            parse_order("").unwrap(),
            [(SortField::CreateTime, false), (SortField::Id, false)]
        );
        assert_eq!(
            parse_order("employee_count desc, name").unwrap(),
            [(SortField::EmployeeCount, true), (SortField::Id, false)]
        );
        assert!(parse_order("industry").is_err());
        assert!(parse_order("domain sideways").is_err());
        assert!(parse_order("domain, domain").is_err());
    }

    #[test]
    fn tiers_parse_with_or_without_prefix() {
        assert_eq!(parse_tier("KEY"), Some(AccountTier::Key as i32));
        assert_eq!(
            parse_tier("ACCOUNT_TIER_STRATEGIC"),
            Some(AccountTier::Strategic as i32)
        );
        assert_eq!(parse_tier("GOLD"), None);
    }

    #[test]
    fn changes_name_the_fields() {
        let before = Account {
            display_name: "Acme".into(),
            employee_count: 10,
            ..Default::default()
        };
        let after = Account {
            display_name: "Acme AG".into(),
            employee_count: 10,
            ..Default::default()
        };
        let found = changes(
            &before,
            &after,
            &["display_name".into(), "employee_count".into()],
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path, "display_name");
    }
}
