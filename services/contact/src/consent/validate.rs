//! The rules of a consent statement as a client sends it. Every violation is collected
//! with its field path, so one response names all bad fields.

use crm_platform::Violations;
use crm_platform::db::now_micros;
use crm_proto::common::Channel;
use crm_proto::contact::{ConsentPurpose, ConsentRecord, ConsentStatus, LegalBasis};

use crate::domain::{names, validate};

pub const MAX_SOURCE: usize = 200;
pub const MAX_EVIDENCE: usize = 2000;
/// How far in the future a consent time may lie: the clocks of callers drift.
pub const CLOCK_SKEW_US: i64 = 5 * 60 * 1_000_000;

/// The channels consent is recorded for.
pub const CONSENT_CHANNELS: [Channel; 4] = [
    Channel::Email,
    Channel::Sms,
    Channel::Phone,
    Channel::Postal,
];

pub const PURPOSES: [ConsentPurpose; 3] = [
    ConsentPurpose::Marketing,
    ConsentPurpose::Transactional,
    ConsentPurpose::Profiling,
];

pub fn is_consent_channel(value: i32) -> bool {
    CONSENT_CHANNELS.iter().any(|c| *c as i32 == value)
}

pub fn is_purpose(value: i32) -> bool {
    PURPOSES.iter().any(|p| *p as i32 == value)
}

/// Whether addresses on the channel are phone numbers.
pub fn is_phone_channel(value: i32) -> bool {
    value == Channel::Sms as i32 || value == Channel::Phone as i32
}

/// Text a person typed: trimmed, no control characters, at most `max` characters.
fn text(violations: &mut Violations, field: &str, value: &mut String, max: usize) {
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

/// A timestamp as microseconds, when it is a valid one.
pub fn timestamp_micros(ts: &prost_types::Timestamp) -> Option<i64> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return None;
    }
    ts.seconds
        .checked_mul(1_000_000)?
        .checked_add(i64::from(ts.nanos / 1_000))
}

/// What the checks of a record found out, for the checks that need the stored contact.
#[derive(Debug, Default)]
pub struct Checked {
    /// The contact id, when the contact name is well formed.
    pub contact_id: Option<String>,
    /// A non-empty, well-formed address to match against the contact's addresses.
    pub address_to_match: bool,
}

/// Checks and normalises the client-settable fields of `record` (paths under
/// `prefix`). The address is normalised for its channel (email lower-cased, phone in
/// E.164) but not yet matched against the contact: that needs the stored contact. An
/// unset consent time stays unset: it becomes the time of recording.
pub fn record(violations: &mut Violations, prefix: &str, record: &mut ConsentRecord) -> Checked {
    let at = |field: &str| format!("{prefix}.{field}");
    let contact_id = if record.contact.is_empty() {
        violations.add(at("contact"), "is required");
        None
    } else {
        match names::parse(names::CONTACTS, &at("contact"), &record.contact) {
            Ok(id) => Some(id),
            Err(_) => {
                violations.add(at("contact"), "must be contacts/{uuid}");
                None
            }
        }
    };
    if record.channel == 0 {
        violations.add(at("channel"), "is required");
    } else if !is_consent_channel(record.channel) {
        violations.add(at("channel"), "must be EMAIL, SMS, PHONE or POSTAL");
    }
    if record.purpose == 0 {
        violations.add(at("purpose"), "is required");
    } else if !is_purpose(record.purpose) {
        violations.add(at("purpose"), format!("unknown value {}", record.purpose));
    }
    if record.status == 0 {
        violations.add(at("status"), "is required");
    } else if ConsentStatus::try_from(record.status).is_err() {
        violations.add(at("status"), format!("unknown value {}", record.status));
    }
    if LegalBasis::try_from(record.legal_basis).is_err() {
        violations.add(
            at("legal_basis"),
            format!("unknown value {}", record.legal_basis),
        );
    }
    text(violations, &at("source"), &mut record.source, MAX_SOURCE);
    if record.source.is_empty() {
        violations.add(at("source"), "is required");
    }
    text(
        violations,
        &at("evidence"),
        &mut record.evidence,
        MAX_EVIDENCE,
    );
    let address_to_match = address(violations, &at("address"), record);
    let now = now_micros();
    match record.consent_time.as_ref().map(timestamp_micros) {
        None => {}
        Some(None) => violations.add(at("consent_time"), "is not a valid timestamp"),
        Some(Some(time)) if time > now + CLOCK_SKEW_US => {
            violations.add(at("consent_time"), "must not be in the future")
        }
        Some(Some(_)) => {}
    }
    Checked {
        contact_id,
        address_to_match: address_to_match && is_consent_channel(record.channel),
    }
}

/// Normalises the address for its channel; true when it is set and well formed.
fn address(violations: &mut Violations, field: &str, record: &mut ConsentRecord) -> bool {
    let raw = record.address.trim();
    if raw.is_empty() {
        record.address.clear();
        return false;
    }
    let normalised = if record.channel == Channel::Email as i32 {
        validate::normalise_email(raw)
    } else if is_phone_channel(record.channel) {
        validate::normalise_phone(raw)
    } else if record.channel == Channel::Postal as i32 {
        // A contact has one postal address: a postal statement is always about it.
        Err("must be empty on the POSTAL channel")
    } else {
        // The channel itself is reported; nothing to say about the address.
        return false;
    };
    match normalised {
        Ok(address) => {
            record.address = address;
            true
        }
        Err(why) => {
            violations.add(field, why);
            false
        }
    }
}

/// Whether the (normalised) address is one of the contact's addresses on the channel.
pub fn address_belongs(channel: i32, address: &str, emails: &[String], phones: &[String]) -> bool {
    if channel == Channel::Email as i32 {
        emails.iter().any(|e| e == address)
    } else if is_phone_channel(channel) {
        phones.iter().any(|p| p == address)
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> ConsentRecord {
        ConsentRecord {
            contact: "contacts/0192f0c1-7b1e-7cc3-9a44-4d2a3f1e9b10".into(),
            channel: Channel::Email as i32,
            purpose: ConsentPurpose::Marketing as i32,
            status: ConsentStatus::OptedIn as i32,
            address: " Ana@Example.COM ".into(),
            source: " web-form ".into(),
            ..Default::default()
        }
    }

    fn fields(mut r: ConsentRecord) -> Vec<String> {
        let mut v = Violations::new();
        record(&mut v, "consent_record", &mut r);
        match v.into_result() {
            Ok(()) => Vec::new(),
            Err(crm_platform::ApiError::InvalidArgument(found)) => {
                found.into_iter().map(|f| f.field).collect()
            }
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn normalises_a_good_record() {
        let mut r = good();
        let mut v = Violations::new();
        let checked = record(&mut v, "consent_record", &mut r);
        assert!(v.into_result().is_ok());
        assert_eq!(
            checked.contact_id.as_deref(),
            Some("0192f0c1-7b1e-7cc3-9a44-4d2a3f1e9b10")
        );
        assert!(checked.address_to_match);
        assert_eq!(r.address, "ana@example.com");
        assert_eq!(r.source, "web-form");
    }

    #[test]
    fn collects_every_bad_field() {
        let bad = ConsentRecord {
            contact: "people/1".into(),
            channel: Channel::Chat as i32,
            purpose: 0,
            status: 9,
            legal_basis: 42,
            evidence: "x".repeat(2001),
            consent_time: Some(prost_types::Timestamp {
                seconds: 4_000_000_000,
                nanos: 0,
            }),
            ..Default::default()
        };
        assert_eq!(
            fields(bad),
            [
                "consent_record.contact",
                "consent_record.channel",
                "consent_record.purpose",
                "consent_record.status",
                "consent_record.legal_basis",
                "consent_record.source",
                "consent_record.evidence",
                "consent_record.consent_time",
            ]
        );
        let mut postal = good();
        postal.channel = Channel::Postal as i32;
        assert_eq!(fields(postal), ["consent_record.address"]);
        let mut sms = good();
        sms.channel = Channel::Sms as i32;
        sms.address = "044 668 18 00".into();
        assert_eq!(fields(sms), ["consent_record.address"]);
    }

    #[test]
    fn allows_clock_skew() {
        let mut r = good();
        r.consent_time = Some(crm_platform::db::micros_to_timestamp(
            now_micros() + CLOCK_SKEW_US / 2,
        ));
        assert!(fields(r).is_empty());
    }
}
