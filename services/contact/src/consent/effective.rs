//! The effective consent of a person: pure rules, no I/O.
//!
//! For each contact and address the newest record counts; of those, the least
//! permissive wins (OPTED_OUT over UNKNOWN over OPTED_IN); with no record the answer is
//! UNKNOWN. "Newest" is by consent time (when the person said it), then by recording
//! time: a statement imported late must not override one the person made later.

use std::collections::HashMap;

use crm_proto::contact::{ConsentRecord, ConsentStatus, EffectiveConsent};

use super::validate::timestamp_micros;

/// Which records speak for the address that was asked about.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Asked by this email: on the EMAIL channel only records about it (or about all
    /// the contact's addresses) count.
    pub email: Option<String>,
    /// Asked by this phone number: likewise on SMS and PHONE.
    pub phone: Option<String>,
    /// Channels on which an address is on the suppression list: OPTED_OUT, suppressed.
    pub suppressed_channels: Vec<i32>,
}

/// Lower is less permissive.
fn permissiveness(status: i32) -> u8 {
    match ConsentStatus::try_from(status) {
        Ok(ConsentStatus::OptedOut) => 0,
        Ok(ConsentStatus::OptedIn) => 2,
        _ => 1,
    }
}

fn age_key(record: &ConsentRecord) -> (i64, i64, &str) {
    let micros = |ts: Option<&prost_types::Timestamp>| ts.and_then(timestamp_micros).unwrap_or(0);
    (
        micros(record.consent_time.as_ref()),
        micros(record.create_time.as_ref()),
        record.name.as_str(),
    )
}

fn in_scope(record: &ConsentRecord, scope: &Scope) -> bool {
    use super::validate::is_phone_channel;
    use crm_proto::common::Channel;
    let about = |wanted: &Option<String>| match wanted {
        Some(address) => record.address.is_empty() || record.address == *address,
        None => true,
    };
    if record.channel == Channel::Email as i32 {
        about(&scope.email)
    } else if is_phone_channel(record.channel) {
        about(&scope.phone)
    } else {
        true
    }
}

/// The answer for every channel × purpose asked, from the records of all the person's
/// contacts.
pub fn resolve(
    records: &[ConsentRecord],
    channels: &[i32],
    purposes: &[i32],
    scope: &Scope,
) -> Vec<EffectiveConsent> {
    // The newest record per (channel, purpose, contact, address).
    let mut newest: HashMap<(i32, i32, &str, &str), &ConsentRecord> = HashMap::new();
    for record in records.iter().filter(|r| in_scope(r, scope)) {
        let key = (
            record.channel,
            record.purpose,
            record.contact.as_str(),
            record.address.as_str(),
        );
        newest
            .entry(key)
            .and_modify(|kept| {
                if age_key(record) > age_key(kept) {
                    *kept = record;
                }
            })
            .or_insert(record);
    }
    let mut out = Vec::with_capacity(channels.len() * purposes.len());
    for &channel in channels {
        for &purpose in purposes {
            if scope.suppressed_channels.contains(&channel) {
                out.push(EffectiveConsent {
                    channel,
                    purpose,
                    status: ConsentStatus::OptedOut as i32,
                    deciding_record: None,
                    suppressed: true,
                });
                continue;
            }
            // The least permissive; among equals the newest, so the answer is stable.
            let deciding = newest
                .iter()
                .filter(|((c, p, _, _), _)| *c == channel && *p == purpose)
                .map(|(_, record)| *record)
                .min_by(|a, b| {
                    permissiveness(a.status)
                        .cmp(&permissiveness(b.status))
                        .then_with(|| age_key(b).cmp(&age_key(a)))
                });
            out.push(EffectiveConsent {
                channel,
                purpose,
                status: deciding.map_or(ConsentStatus::Unknown as i32, |r| {
                    if permissiveness(r.status) == 1 {
                        ConsentStatus::Unknown as i32
                    } else {
                        r.status
                    }
                }),
                deciding_record: deciding.cloned(),
                suppressed: false,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crm_proto::common::Channel;
    use crm_proto::contact::ConsentPurpose;

    const EMAIL: i32 = Channel::Email as i32;
    const SMS: i32 = Channel::Sms as i32;
    const MARKETING: i32 = ConsentPurpose::Marketing as i32;
    const IN: i32 = ConsentStatus::OptedIn as i32;
    const OUT: i32 = ConsentStatus::OptedOut as i32;
    const UNKNOWN: i32 = ConsentStatus::Unknown as i32;

    fn rec(name: &str, contact: &str, address: &str, status: i32, at: i64) -> ConsentRecord {
        ConsentRecord {
            name: name.into(),
            contact: contact.into(),
            channel: EMAIL,
            purpose: MARKETING,
            status,
            address: address.into(),
            consent_time: Some(prost_types::Timestamp {
                seconds: at,
                nanos: 0,
            }),
            create_time: Some(prost_types::Timestamp {
                seconds: 100,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    fn answer(records: &[ConsentRecord], scope: &Scope) -> (i32, Option<String>, bool) {
        let got = resolve(records, &[EMAIL], &[MARKETING], scope);
        assert_eq!(got.len(), 1);
        let e = &got[0];
        (
            e.status,
            e.deciding_record.as_ref().map(|r| r.name.clone()),
            e.suppressed,
        )
    }

    #[test]
    fn newest_per_contact_then_least_permissive() {
        let none = Scope::default();
        assert_eq!(answer(&[], &none), (UNKNOWN, None, false));
        // One contact: out, then in again: the newest (in) counts.
        let one = [rec("r1", "c1", "", OUT, 1), rec("r2", "c1", "", IN, 2)];
        assert_eq!(answer(&one, &none), (IN, Some("r2".into()), false));
        // A late-recorded statement made earlier does not win.
        let mut late = rec("r3", "c1", "", OUT, 0);
        late.create_time = Some(prost_types::Timestamp {
            seconds: 999,
            nanos: 0,
        });
        assert_eq!(answer(&[one[1].clone(), late], &none).0, IN);
        // Two contacts: one in, one out: out wins.
        let two = [rec("r1", "c1", "", IN, 5), rec("r2", "c2", "", OUT, 1)];
        assert_eq!(answer(&two, &none), (OUT, Some("r2".into()), false));
        // UNKNOWN beats OPTED_IN.
        let unknown = [rec("r1", "c1", "", IN, 5), rec("r2", "c2", "", UNKNOWN, 1)];
        assert_eq!(answer(&unknown, &none).0, UNKNOWN);
    }

    #[test]
    fn addresses_are_separate_and_scoped() {
        let records = [
            rec("r1", "c1", "a@x.ch", OUT, 1),
            rec("r2", "c1", "b@x.ch", IN, 2),
        ];
        assert_eq!(answer(&records, &Scope::default()).0, OUT);
        let about_b = Scope {
            email: Some("b@x.ch".into()),
            ..Default::default()
        };
        assert_eq!(answer(&records, &about_b), (IN, Some("r2".into()), false));
    }

    #[test]
    fn suppression_overrides() {
        let records = [rec("r1", "c1", "", IN, 1)];
        let scope = Scope {
            suppressed_channels: vec![EMAIL],
            ..Default::default()
        };
        assert_eq!(answer(&records, &scope), (OUT, None, true));
        let got = resolve(&records, &[EMAIL, SMS], &[MARKETING], &scope);
        assert_eq!(got[1].status, UNKNOWN);
        assert!(!got[1].suppressed);
    }
}
