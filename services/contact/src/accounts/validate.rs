//! Account rules: validation and normalisation as a client sends an account, and the
//! update mask. Pure functions, no I/O. Every violation is collected with its field
//! path, so one response names all bad fields.
//!
//! The text, address and attribute rules are copies of the contact rules in
//! `domain/validate.rs`, which keeps them private; they must stay in step.

use crate::domain::validate::{address, attribute, attribute_key_ok, text};
use crm_platform::{ApiError, Violations};
use crm_proto::common::Money;
use crm_proto::contact::{Account, AccountTier};

use crate::domain::names;
use crate::domain::validate::{MAX_ATTRIBUTES, MAX_TAG, MAX_TAGS};

pub const MAX_DISPLAY_NAME: usize = 200;
pub const MAX_INDUSTRY: usize = 200;
pub const MAX_OWNER: usize = 128;
const MAX_NANOS: i32 = 999_999_999;

/// The fields a client may set, as they appear in a field mask.
pub const MUTABLE_FIELDS: &[&str] = &[
    "display_name",
    "domain",
    "industry",
    "employee_count",
    "annual_revenue",
    "tier",
    "owner",
    "parent_account",
    "address",
    "tags",
    "attributes",
];

/// A company's web domain as people paste it ("https://WWW.Acme.ch:443/about?x#y")
/// reduced to the host name ("acme.ch"): lower case, no scheme, user, port, path,
/// leading "www." or trailing dot. Refused unless it is a plausible host name: dotted
/// labels of letters, digits and inner hyphens, and not an IP address.
pub fn normalise_domain(raw: &str) -> Result<String, &'static str> {
    let mut host = raw.trim().to_lowercase();
    if let Some((_, rest)) = host.split_once("://") {
        host = rest.to_owned();
    }
    if let Some(end) = host.find(['/', '?', '#']) {
        host.truncate(end);
    }
    if let Some((_, rest)) = host.rsplit_once('@') {
        host = rest.to_owned();
    }
    if let Some((name, port)) = host.rsplit_once(':')
        && port.chars().all(|c| c.is_ascii_digit())
    {
        host = name.to_owned();
    }
    let host = host.strip_suffix('.').unwrap_or(&host);
    let host = host.strip_prefix("www.").unwrap_or(host).to_owned();
    if host.is_empty() {
        return Err("must be a domain name such as acme.ch");
    }
    if host.len() > 253 {
        return Err("at most 253 characters");
    }
    let labels: Vec<&str> = host.split('.').collect();
    let label_ok = |label: &&str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_alphanumeric() || c == '-')
    };
    let top_ok = labels
        .last()
        .is_some_and(|top| top.chars().any(|c| !c.is_ascii_digit()));
    if labels.len() < 2 || !labels.iter().all(label_ok) || !top_ok {
        return Err("must be a domain name such as acme.ch");
    }
    Ok(host)
}

/// An amount of money (google.type.Money rules); revenue is never negative.
fn money(violations: &mut Violations, field: &str, money: &mut Money) {
    money.currency_code = money.currency_code.trim().to_owned();
    let code_ok = money.currency_code.len() == 3
        && money.currency_code.chars().all(|c| c.is_ascii_uppercase());
    if !code_ok {
        violations.add(
            format!("{field}.currency_code"),
            "must be an ISO 4217 code such as EUR",
        );
    }
    if !(-MAX_NANOS..=MAX_NANOS).contains(&money.nanos) {
        violations.add(
            format!("{field}.nanos"),
            format!("must be within -{MAX_NANOS} ..= {MAX_NANOS}"),
        );
    } else if (money.units > 0 && money.nanos < 0) || (money.units < 0 && money.nanos > 0) {
        violations.add(format!("{field}.nanos"), "must have the same sign as units");
    }
    if money.units < 0 || (money.units == 0 && money.nanos < 0) {
        violations.add(format!("{field}.units"), "must not be negative");
    }
}

/// Tags as contacts keep them: trimmed, lower case, first occurrence kept.
fn tags(violations: &mut Violations, field: &str, values: &mut Vec<String>) {
    if values.len() > MAX_TAGS {
        violations.add(field, format!("at most {MAX_TAGS} tags"));
    }
    let mut kept: Vec<String> = Vec::with_capacity(values.len());
    for (i, tag) in values.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let tag = tag.trim().to_lowercase();
        if tag.is_empty() || tag.chars().count() > MAX_TAG {
            violations.add(&at, format!("must be 1 to {MAX_TAG} characters"));
        } else if tag.contains('|') || tag.chars().any(char::is_control) {
            violations.add(&at, "must not contain '|' or control characters");
        } else if !kept.contains(&tag) {
            kept.push(tag);
        }
    }
    *values = kept;
}

/// Validates and normalises the client-settable fields of `account`, reporting paths
/// under `prefix` (e.g. `account`). Whether a display name is present is checked on the
/// whole account by [`complete`], since an update may leave it out of its mask.
pub fn account(violations: &mut Violations, prefix: &str, account: &mut Account) {
    let at = |field: &str| format!("{prefix}.{field}");
    text(
        violations,
        &at("display_name"),
        &mut account.display_name,
        MAX_DISPLAY_NAME,
    );
    text(
        violations,
        &at("industry"),
        &mut account.industry,
        MAX_INDUSTRY,
    );
    text(violations, &at("owner"), &mut account.owner, MAX_OWNER);
    if !account.domain.trim().is_empty() {
        match normalise_domain(&account.domain) {
            Ok(domain) => account.domain = domain,
            Err(why) => violations.add(at("domain"), why),
        }
    } else {
        account.domain.clear();
    }
    if account.employee_count < 0 {
        violations.add(at("employee_count"), "must not be negative");
    }
    if let Some(revenue) = account.annual_revenue.as_mut() {
        money(violations, &at("annual_revenue"), revenue);
    }
    if AccountTier::try_from(account.tier).is_err() {
        violations.add(at("tier"), format!("unknown value {}", account.tier));
    }
    let parent = account.parent_account.trim();
    if parent.is_empty() {
        account.parent_account.clear();
    } else {
        match names::parse(names::ACCOUNTS, &at("parent_account"), parent) {
            Ok(id) => account.parent_account = account_name(&id),
            Err(_) => violations.add(at("parent_account"), "must be accounts/{uuid}"),
        }
    }
    if let Some(addr) = account.address.as_mut() {
        address(violations, &at("address"), addr);
    }
    tags(violations, &at("tags"), &mut account.tags);
    if account.attributes.len() > MAX_ATTRIBUTES {
        violations.add(
            at("attributes"),
            format!("at most {MAX_ATTRIBUTES} attributes"),
        );
    }
    for (key, value) in account.attributes.iter_mut() {
        let field = at(&format!("attributes.{key}"));
        if !attribute_key_ok(key) {
            violations.add(&field, "key must match [a-z][a-z0-9_]{0,62}");
            continue;
        }
        attribute(violations, &field, value);
    }
}

/// What a stored account needs whatever the mask: a name to call it by.
pub fn complete(violations: &mut Violations, prefix: &str, account: &Account) {
    if account.display_name.is_empty() {
        violations.add(format!("{prefix}.display_name"), "is required");
    }
}

pub fn account_name(id: &str) -> String {
    format!("{}/{id}", names::ACCOUNTS)
}

/// The paths to update: `*` means every mutable field. `attributes.<key>` updates one
/// attribute. Unknown or output-only paths are refused.
pub fn mask_paths(mask: Option<&prost_types::FieldMask>) -> Result<Vec<String>, ApiError> {
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
            paths.extend(MUTABLE_FIELDS.iter().map(|f| (*f).to_owned()));
        } else if MUTABLE_FIELDS.contains(&path)
            || path
                .strip_prefix("attributes.")
                .is_some_and(|key| !key.is_empty())
        {
            paths.push(path.to_owned());
        } else {
            return Err(ApiError::invalid(
                "update_mask",
                format!("{path:?} is not a mutable field of Account"),
            ));
        }
    }
    paths.sort();
    paths.dedup();
    Ok(paths)
}

/// Copies the masked fields of `patch` onto `target`.
pub fn apply_mask(target: &mut Account, patch: &Account, paths: &[String]) {
    for path in paths {
        match path.as_str() {
            "display_name" => target.display_name.clone_from(&patch.display_name),
            "domain" => target.domain.clone_from(&patch.domain),
            "industry" => target.industry.clone_from(&patch.industry),
            "employee_count" => target.employee_count = patch.employee_count,
            "annual_revenue" => target.annual_revenue.clone_from(&patch.annual_revenue),
            "tier" => target.tier = patch.tier,
            "owner" => target.owner.clone_from(&patch.owner),
            "parent_account" => target.parent_account.clone_from(&patch.parent_account),
            "address" => target.address.clone_from(&patch.address),
            "tags" => target.tags.clone_from(&patch.tags),
            "attributes" => target.attributes.clone_from(&patch.attributes),
            other => {
                if let Some(key) = other.strip_prefix("attributes.") {
                    match patch.attributes.get(key) {
                        Some(value) => {
                            target.attributes.insert(key.to_owned(), value.clone());
                        }
                        None => {
                            target.attributes.remove(key);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_normalise() {
        for (raw, expected) in [
            ("https://WWW.Acme.ch/about", "acme.ch"),
            ("acme.ch", "acme.ch"),
            ("  Acme.CH. ", "acme.ch"),
            ("http://shop.acme.co.uk:8080/x?y#z", "shop.acme.co.uk"),
            ("www.example.com", "example.com"),
            ("ftp://user@files.example.org", "files.example.org"),
            ("zürich.ch", "zürich.ch"),
        ] {
            assert_eq!(normalise_domain(raw).as_deref(), Ok(expected), "{raw}");
        }
        for bad in [
            "localhost",
            "acme",
            "-acme.ch",
            "acme-.ch",
            "ac me.ch",
            "acme..ch",
            "192.168.1.1",
            "https://",
            "a_b.ch",
            &format!("{}.ch", "a".repeat(64)),
        ] {
            assert!(normalise_domain(bad).is_err(), "{bad}");
        }
    }

    fn fields(account: &mut Account) -> Vec<String> {
        let mut violations = Violations::new();
        super::account(&mut violations, "account", account);
        complete(&mut violations, "account", account);
        match violations.into_result() {
            Ok(()) => Vec::new(),
            Err(ApiError::InvalidArgument(found)) => found.into_iter().map(|v| v.field).collect(),
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn money_rules() {
        let mut ok = Account {
            display_name: "Acme".into(),
            annual_revenue: Some(Money {
                currency_code: "CHF".into(),
                units: 12,
                nanos: 500_000_000,
            }),
            ..Default::default()
        };
        assert!(fields(&mut ok).is_empty());
        for (code, units, nanos, field) in [
            ("chf", 1, 0, "account.annual_revenue.currency_code"),
            ("CH", 1, 0, "account.annual_revenue.currency_code"),
            ("CHF", 1, 1_000_000_000, "account.annual_revenue.nanos"),
            ("CHF", 1, -5, "account.annual_revenue.nanos"),
            ("CHF", -1, 0, "account.annual_revenue.units"),
        ] {
            let mut bad = Account {
                display_name: "Acme".into(),
                annual_revenue: Some(Money {
                    currency_code: code.into(),
                    units,
                    nanos,
                }),
                ..Default::default()
            };
            assert!(fields(&mut bad).contains(&field.to_owned()), "{field}");
        }
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut bad = Account {
            display_name: " ".into(),
            domain: "not a domain".into(),
            employee_count: -1,
            tier: 9,
            parent_account: "contacts/x".into(),
            tags: vec!["ok".into(), "".into()],
            ..Default::default()
        };
        bad.attributes
            .insert("Bad".into(), crm_proto::common::AttributeValue::default());
        let found = fields(&mut bad);
        for expected in [
            "account.display_name",
            "account.domain",
            "account.employee_count",
            "account.tier",
            "account.parent_account",
            "account.tags[1]",
            "account.attributes.Bad",
        ] {
            assert!(
                found.contains(&expected.to_owned()),
                "{expected}: {found:?}"
            );
        }
    }

    #[test]
    fn tags_and_parent_normalise() {
        let mut account = Account {
            display_name: " Acme AG ".into(),
            tags: vec!["VIP".into(), "vip ".into(), "b2b".into()],
            parent_account: "accounts/0192F0C1-7B1E-7CC3-9A44-4D2A3F1E9B10".into(),
            ..Default::default()
        };
        assert!(fields(&mut account).is_empty());
        assert_eq!(account.display_name, "Acme AG");
        assert_eq!(account.tags, ["vip", "b2b"]);
        assert_eq!(
            account.parent_account,
            "accounts/0192f0c1-7b1e-7cc3-9a44-4d2a3f1e9b10"
        );
    }
}
