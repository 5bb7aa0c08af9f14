//! Validation and normalisation of a contact as a client sends it. Every violation is
//! collected with its field path, so one response names all bad fields.

use std::collections::HashSet;

use crm_platform::Violations;
use crm_proto::common::{Address, AttributeValue, Channel, attribute_value};
use crm_proto::contact::{Contact, ContactFrequency, EmailType, LifecycleStage, PhoneType};

use super::names;

pub const MAX_NAME: usize = 200;
pub const MAX_SHORT: usize = 200;
pub const MAX_EMAILS: usize = 20;
pub const MAX_PHONES: usize = 20;
pub const MAX_TAGS: usize = 50;
pub const MAX_TAG: usize = 64;
pub const MAX_ATTRIBUTES: usize = 100;
pub const MAX_ATTRIBUTE_TEXT: usize = 2000;

/// Text a person typed: trimmed, no control characters, at most `max` characters.
pub(crate) fn text(violations: &mut Violations, field: &str, value: &mut String, max: usize) {
    let trimmed = value.trim();
    if trimmed.len() != value.len() {
        *value = trimmed.to_owned();
    }
    if value.chars().count() > max {
        violations.add(field, format!("at most {max} characters"));
    }
    if value.chars().any(char::is_control) {
        violations.add(field, "must not contain control characters");
    }
}

/// A plausible email address (RFC 5321 lengths, one `@`, a dotted domain), lower-cased.
pub fn normalise_email(raw: &str) -> Result<String, &'static str> {
    let email = raw.trim().to_lowercase();
    if email.is_empty() {
        return Err("must not be empty");
    }
    if email.len() > 254 {
        return Err("at most 254 characters");
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err("must be an email address");
    };
    let domain_ok = domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && domain
            .chars()
            .all(|c| c.is_alphanumeric() || c == '.' || c == '-');
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.contains('@')
        && local
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && !"<>()[]\\,;:\"|".contains(c));
    if domain_ok && local_ok {
        Ok(email)
    } else {
        Err("must be an email address")
    }
}

/// A phone number in E.164 (`+` and 8 to 15 digits); spaces, dots, dashes and
/// parentheses are dropped. Numbers without a country code are refused.
pub fn normalise_phone(raw: &str) -> Result<String, &'static str> {
    let mut digits = String::new();
    let mut plus = false;
    for (i, c) in raw.trim().chars().enumerate() {
        match c {
            '+' if i == 0 => plus = true,
            '0'..='9' => digits.push(c),
            ' ' | '-' | '.' | '(' | ')' | '/' => {}
            _ => return Err("must contain only digits, spaces, dashes, dots and parentheses"),
        }
    }
    if !plus {
        return Err("must be in international format, starting with + and the country code");
    }
    if !(8..=15).contains(&digits.len()) || digits.starts_with('0') {
        return Err("must be a country code and number of 8 to 15 digits");
    }
    Ok(format!("+{digits}"))
}

/// A phone number in E.164. With the tenant's default region (ISO 3166-1 alpha-2), a
/// number in national format ("044 668 18 00") is read as a number of that region and
/// must be a valid one; without it, such numbers are refused.
pub fn normalise_phone_in(raw: &str, region: Option<&str>) -> Result<String, &'static str> {
    let international = raw.trim_start().starts_with('+');
    let Some(region) = region.filter(|r| !r.is_empty() && !international) else {
        return normalise_phone(raw);
    };
    if raw
        .trim()
        .chars()
        .any(|c| !(c.is_ascii_digit() || " -.()/".contains(c)))
    {
        return Err("must contain only digits, spaces, dashes, dots and parentheses");
    }
    let country: phonenumber::country::Id = region
        .parse()
        .map_err(|_| "cannot be read: the default phone region is unknown")?;
    let number = phonenumber::parse(Some(country), raw.trim())
        .map_err(|_| "must be a phone number of the default region, or start with +")?;
    if !phonenumber::is_valid(&number) {
        return Err("is not a valid number of the default region");
    }
    normalise_phone(&number.format().mode(phonenumber::Mode::E164).to_string())
}

fn enum_known<E: TryFrom<i32>>(violations: &mut Violations, field: &str, value: i32) {
    if E::try_from(value).is_err() {
        violations.add(field, format!("unknown value {value}"));
    }
}

pub(crate) fn attribute_key_ok(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some('a'..='z'))
        && key.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

pub(crate) fn attribute(violations: &mut Violations, field: &str, value: &mut AttributeValue) {
    match &mut value.kind {
        None => violations.add(field, "must have a value"),
        Some(attribute_value::Kind::StringValue(s)) => {
            text(violations, field, s, MAX_ATTRIBUTE_TEXT)
        }
        Some(attribute_value::Kind::NumberValue(n)) => {
            if !n.is_finite() {
                violations.add(field, "must be a finite number");
            }
        }
        Some(attribute_value::Kind::BoolValue(_)) => {}
        Some(attribute_value::Kind::DateValue(date)) => {
            let valid = (1..=9999).contains(&date.year)
                && (1..=12).contains(&date.month)
                && (1..=days_in_month(date.year, date.month)).contains(&date.day);
            if !valid {
                violations.add(field, "must be a valid calendar date");
            }
        }
    }
}

pub(crate) fn days_in_month(year: i32, month: i32) -> i32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

pub(crate) fn address(violations: &mut Violations, field: &str, address: &mut Address) {
    if address.lines.len() > 5 {
        violations.add(format!("{field}.lines"), "at most 5 lines");
    }
    for (i, line) in address.lines.iter_mut().enumerate() {
        text(violations, &format!("{field}.lines[{i}]"), line, MAX_SHORT);
    }
    text(
        violations,
        &format!("{field}.locality"),
        &mut address.locality,
        MAX_SHORT,
    );
    text(
        violations,
        &format!("{field}.region"),
        &mut address.region,
        MAX_SHORT,
    );
    text(
        violations,
        &format!("{field}.postal_code"),
        &mut address.postal_code,
        32,
    );
    address.country_code = address.country_code.trim().to_uppercase();
    let country_ok = address.country_code.is_empty()
        || (address.country_code.len() == 2
            && address.country_code.chars().all(|c| c.is_ascii_uppercase()));
    if !country_ok {
        violations.add(
            format!("{field}.country_code"),
            "must be an ISO 3166-1 alpha-2 code",
        );
    }
}

/// Validates and normalises the client-settable fields of `contact`, reporting paths
/// under `prefix` (e.g. `contact`). Output-only fields are left to the caller.
pub fn contact(violations: &mut Violations, prefix: &str, contact: &mut Contact) {
    contact_in_region(violations, prefix, contact, None);
}

/// Validates and normalises a contact; phone numbers in national format are read in
/// `region` (the tenant's default phone region), when there is one.
pub fn contact_in_region(
    violations: &mut Violations,
    prefix: &str,
    contact: &mut Contact,
    region: Option<&str>,
) {
    let at = |field: &str| format!("{prefix}.{field}");
    text(
        violations,
        &at("given_name"),
        &mut contact.given_name,
        MAX_NAME,
    );
    text(
        violations,
        &at("family_name"),
        &mut contact.family_name,
        MAX_NAME,
    );
    text(
        violations,
        &at("job_title"),
        &mut contact.job_title,
        MAX_SHORT,
    );
    text(violations, &at("source"), &mut contact.source, 100);
    text(violations, &at("owner"), &mut contact.owner, 128);
    text(violations, &at("language"), &mut contact.language, 35);
    text(violations, &at("time_zone"), &mut contact.time_zone, 64);
    if !contact.language.is_empty()
        && !contact
            .language
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        violations.add(
            at("language"),
            "must be a BCP 47 language tag such as de-CH",
        );
    }
    if !contact.time_zone.is_empty()
        && !contact
            .time_zone
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_-+".contains(c))
    {
        violations.add(
            at("time_zone"),
            "must be an IANA time zone such as Europe/Zurich",
        );
    }
    if !contact.account.is_empty() {
        match names::parse(names::ACCOUNTS, &at("account"), &contact.account) {
            Ok(id) => contact.account = format!("{}/{id}", names::ACCOUNTS),
            Err(crm_platform::ApiError::InvalidArgument(found)) => {
                for v in found {
                    violations.add(v.field, v.description);
                }
            }
            Err(_) => violations.add(at("account"), "invalid"),
        }
    }

    if contact.emails.len() > MAX_EMAILS {
        violations.add(at("emails"), format!("at most {MAX_EMAILS} addresses"));
    }
    let mut seen = HashSet::new();
    for (i, email) in contact.emails.iter_mut().enumerate() {
        let field = at(&format!("emails[{i}].address"));
        match normalise_email(&email.address) {
            Ok(normal) => {
                if !seen.insert(normal.clone()) {
                    violations.add(&field, "appears twice");
                }
                email.address = normal;
            }
            Err(why) => violations.add(&field, why),
        }
        enum_known::<EmailType>(violations, &at(&format!("emails[{i}].type")), email.r#type);
    }
    match contact.emails.iter().filter(|e| e.primary).count() {
        0 => {
            if let Some(first) = contact.emails.first_mut() {
                first.primary = true;
            }
        }
        1 => {}
        _ => violations.add(at("emails"), "at most one address may be primary"),
    }

    if contact.phones.len() > MAX_PHONES {
        violations.add(at("phones"), format!("at most {MAX_PHONES} numbers"));
    }
    let mut seen = HashSet::new();
    for (i, phone) in contact.phones.iter_mut().enumerate() {
        let field = at(&format!("phones[{i}].number"));
        match normalise_phone_in(&phone.number, region) {
            Ok(normal) => {
                if !seen.insert(normal.clone()) {
                    violations.add(&field, "appears twice");
                }
                phone.number = normal;
            }
            Err(why) => violations.add(&field, why),
        }
        enum_known::<PhoneType>(violations, &at(&format!("phones[{i}].type")), phone.r#type);
    }
    match contact.phones.iter().filter(|p| p.primary).count() {
        0 => {
            if let Some(first) = contact.phones.first_mut() {
                first.primary = true;
            }
        }
        1 => {}
        _ => violations.add(at("phones"), "at most one number may be primary"),
    }

    if contact.tags.len() > MAX_TAGS {
        violations.add(at("tags"), format!("at most {MAX_TAGS} tags"));
    }
    let mut tags = Vec::with_capacity(contact.tags.len());
    for (i, tag) in contact.tags.iter().enumerate() {
        let field = at(&format!("tags[{i}]"));
        let tag = tag.trim().to_lowercase();
        if tag.is_empty() || tag.chars().count() > MAX_TAG {
            violations.add(&field, format!("must be 1 to {MAX_TAG} characters"));
        } else if tag.contains('|') || tag.chars().any(char::is_control) {
            violations.add(&field, "must not contain '|' or control characters");
        } else if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    contact.tags = tags;

    enum_known::<LifecycleStage>(violations, &at("lifecycle_stage"), contact.lifecycle_stage);
    enum_known::<Channel>(
        violations,
        &at("preferred_channel"),
        contact.preferred_channel,
    );
    enum_known::<ContactFrequency>(
        violations,
        &at("contact_frequency"),
        contact.contact_frequency,
    );

    if let Some(addr) = contact.address.as_mut() {
        address(violations, &at("address"), addr);
    }

    if contact.attributes.len() > MAX_ATTRIBUTES {
        violations.add(
            at("attributes"),
            format!("at most {MAX_ATTRIBUTES} attributes"),
        );
    }
    for (key, value) in contact.attributes.iter_mut() {
        let field = at(&format!("attributes.{key}"));
        if !attribute_key_ok(key) {
            violations.add(&field, "key must match [a-z][a-z0-9_]{0,62}");
            continue;
        }
        attribute(violations, &field, value);
    }
}

/// A contact needs something to call it by.
pub fn identifiable(violations: &mut Violations, prefix: &str, contact: &Contact) {
    if contact.given_name.is_empty()
        && contact.family_name.is_empty()
        && contact.emails.is_empty()
        && contact.phones.is_empty()
    {
        violations.add(
            format!("{prefix}.given_name"),
            "a contact needs a name, an email address or a phone number",
        );
    }
}

/// "given family", else the primary email, else the primary phone.
pub fn display_name(contact: &Contact) -> String {
    let full = format!("{} {}", contact.given_name, contact.family_name);
    let full = full.trim();
    if !full.is_empty() {
        return full.to_owned();
    }
    if let Some(email) = contact.emails.iter().find(|e| e.primary) {
        return email.address.clone();
    }
    contact
        .phones
        .iter()
        .find(|p| p.primary)
        .map(|p| p.number.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crm_proto::contact::{EmailAddress, PhoneNumber};

    #[test]
    fn emails() {
        assert_eq!(
            normalise_email("  Ana.Lopez@Example.COM ").unwrap(),
            "ana.lopez@example.com"
        );
        for bad in [
            "",
            "ana",
            "ana@",
            "@x.io",
            "ana@x",
            "a b@x.io",
            "ana@x..io",
            "ana@@x.io",
        ] {
            assert!(normalise_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn phones() {
        assert_eq!(normalise_phone("+41 44 668 18 00").unwrap(), "+41446681800");
        assert_eq!(
            normalise_phone("+1 (415) 555-0100").unwrap(),
            "+14155550100"
        );
        for bad in [
            "",
            "044 668 18 00",
            "+12",
            "+41 44 668 18 00 12 34 56",
            "+41-abc",
            "+0123456789",
        ] {
            assert!(normalise_phone(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn national_numbers_use_the_default_region() {
        assert_eq!(
            normalise_phone_in("044 668 18 00", Some("CH")).unwrap(),
            "+41446681800"
        );
        assert_eq!(
            normalise_phone_in("(415) 555-0132", Some("US")).unwrap(),
            "+14155550132"
        );
        // International numbers do not depend on the region.
        assert_eq!(
            normalise_phone_in("+49 30 1234567", Some("CH")).unwrap(),
            "+49301234567"
        );
        for (bad, region) in [
            ("044 668 18 00", None),
            ("12", Some("CH")),
            ("abc", Some("CH")),
        ] {
            assert!(normalise_phone_in(bad, region).is_err(), "{bad}");
        }
    }

    #[test]
    fn violations_name_each_field() {
        let mut contact = Contact {
            given_name: "x".repeat(300),
            emails: vec![
                EmailAddress {
                    address: "bad".into(),
                    ..Default::default()
                },
                EmailAddress {
                    address: "a@x.io".into(),
                    primary: true,
                    ..Default::default()
                },
                EmailAddress {
                    address: "A@x.io".into(),
                    primary: true,
                    ..Default::default()
                },
            ],
            phones: vec![PhoneNumber {
                number: "123".into(),
                ..Default::default()
            }],
            lifecycle_stage: 99,
            tags: vec!["ok".into(), "".into()],
            ..Default::default()
        };
        contact
            .attributes
            .insert("Bad Key".into(), AttributeValue::default());
        let mut violations = Violations::new();
        super::contact(&mut violations, "contact", &mut contact);
        let err = violations.into_result().unwrap_err();
        let crm_platform::ApiError::InvalidArgument(found) = err else {
            panic!()
        };
        let fields: Vec<&str> = found.iter().map(|v| v.field.as_str()).collect();
        for expected in [
            "contact.given_name",
            "contact.emails[0].address",
            "contact.emails[2].address",
            "contact.emails",
            "contact.phones[0].number",
            "contact.tags[1]",
            "contact.lifecycle_stage",
            "contact.attributes.Bad Key",
        ] {
            assert!(
                fields.contains(&expected),
                "{expected} missing from {fields:?}"
            );
        }
    }

    #[test]
    fn display_names() {
        let mut contact = Contact {
            given_name: "Ana".into(),
            ..Default::default()
        };
        assert_eq!(display_name(&contact), "Ana");
        contact.given_name.clear();
        contact.emails.push(EmailAddress {
            address: "a@x.io".into(),
            primary: true,
            ..Default::default()
        });
        assert_eq!(display_name(&contact), "a@x.io");
    }
}
