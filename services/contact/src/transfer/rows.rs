//! The rules of an import, without I/O: the options, one row's validation and
//! normalisation with the contact rules, and the fields an update overwrites.

use crm_platform::{ApiError, Violations};
use crm_proto::contact::{Contact, ImportMode, ImportOptions, ImportRowOutcome, ImportRowResult};

use crate::domain::{mask, names, validate};

/// Rows per request message, and about how many rows one batch (one transaction) holds.
pub const MAX_ROWS_PER_MESSAGE: usize = 1000;
/// Longest row id echoed back; longer ones are rejected.
pub const MAX_ROW_ID: usize = 128;

/// The import's options, checked.
#[derive(Debug, Clone)]
pub struct Plan {
    pub mode: ImportMode,
    pub dry_run: bool,
    pub summary_only: bool,
    pub source: String,
    /// The fields an update overwrites; `None` means every field the row sets.
    pub update_paths: Option<Vec<String>>,
    /// The tenant's default phone region, for numbers in national format.
    pub phone_region: Option<String>,
}

/// Checks the options of the first message, naming every bad field.
pub fn plan(options: Option<ImportOptions>) -> Result<Plan, ApiError> {
    let Some(options) = options else {
        return Err(ApiError::invalid(
            "options",
            "the first message must carry the import options",
        ));
    };
    let mut violations = Violations::new();
    let mode = match ImportMode::try_from(options.mode) {
        Ok(ImportMode::Unspecified) | Err(_) => {
            violations.add(
                "options.mode",
                "is required: CREATE_ONLY, UPSERT_BY_EMAIL or UPDATE_ONLY",
            );
            ImportMode::Unspecified
        }
        Ok(mode) => mode,
    };
    let source = options.source.trim().to_owned();
    if source.chars().count() > 100 {
        violations.add("options.source", "at most 100 characters");
    }
    if source.chars().any(char::is_control) {
        violations.add("options.source", "must not contain control characters");
    }
    let update_paths = match options.update_mask.as_ref().filter(|m| !m.paths.is_empty()) {
        None => None,
        Some(update_mask) => match mask::paths(Some(update_mask)) {
            Ok(paths) => Some(paths),
            Err(ApiError::InvalidArgument(found)) => {
                for v in found {
                    violations.add("options.update_mask", v.description);
                }
                None
            }
            Err(_) => {
                violations.add("options.update_mask", "invalid");
                None
            }
        },
    };
    violations.into_result()?;
    Ok(Plan {
        phone_region: None,
        mode,
        dry_run: options.dry_run,
        summary_only: options.summary_only,
        source,
        update_paths,
    })
}

/// Why a row is not stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

impl Rejection {
    pub fn new(reason: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            reason,
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn into_result(self, row_id: String) -> ImportRowResult {
        ImportRowResult {
            row_id,
            outcome: ImportRowOutcome::Rejected as i32,
            reason: self.reason.to_owned(),
            field: self.field,
            message: self.message,
            ..Default::default()
        }
    }
}

/// The reason for a violation of the contact rules, by its field path.
fn reason_for(field: &str) -> &'static str {
    if field.starts_with("contact.emails") {
        "INVALID_EMAIL"
    } else if field.starts_with("contact.phones") {
        "INVALID_PHONE"
    } else {
        "INVALID_FIELD"
    }
}

/// Validates and normalises a row's contact with the contact rules. The first
/// violation becomes the rejection: a row result has room for one field.
pub fn check_contact(
    contact: Option<Contact>,
    mode: ImportMode,
    phone_region: Option<&str>,
) -> Result<Contact, Rejection> {
    let Some(mut contact) = contact else {
        return Err(Rejection::new(
            "MISSING_FIELD",
            "contact",
            "the row has no contact",
        ));
    };
    let mut violations = Violations::new();
    validate::contact_in_region(&mut violations, "contact", &mut contact, phone_region);
    if let Err(ApiError::InvalidArgument(found)) = violations.into_result()
        && let Some(first) = found.into_iter().next()
    {
        return Err(Rejection::new(
            reason_for(&first.field),
            first.field,
            first.description,
        ));
    }
    if mode == ImportMode::UpdateOnly {
        // Updates are checked for a name after they are applied; the row needs a key.
        if contact.name.is_empty() {
            if contact.emails.is_empty() {
                return Err(Rejection::new(
                    "MISSING_FIELD",
                    "contact.name",
                    "an UPDATE_ONLY row needs contact.name or an email address",
                ));
            }
        } else {
            match names::parse(names::CONTACTS, "contact.name", &contact.name) {
                Ok(id) => contact.name = names::contact_name(&id),
                Err(_) => {
                    return Err(Rejection::new(
                        "INVALID_FIELD",
                        "contact.name",
                        "must be contacts/{uuid}",
                    ));
                }
            }
        }
    } else {
        // The name of a row that creates or upserts is output only.
        contact.name.clear();
        let mut violations = Violations::new();
        validate::identifiable(&mut violations, "contact", &contact);
        if let Err(ApiError::InvalidArgument(found)) = violations.into_result()
            && let Some(first) = found.into_iter().next()
        {
            return Err(Rejection::new(
                "MISSING_FIELD",
                first.field,
                first.description,
            ));
        }
    }
    Ok(contact)
}

/// The row id, checked for presence and length (uniqueness is the importer's).
pub fn check_row_id(row_id: &str) -> Result<(), Rejection> {
    if row_id.is_empty() {
        return Err(Rejection::new("MISSING_FIELD", "row_id", "is required"));
    }
    if row_id.chars().count() > MAX_ROW_ID {
        return Err(Rejection::new(
            "INVALID_FIELD",
            "row_id",
            format!("at most {MAX_ROW_ID} characters"),
        ));
    }
    Ok(())
}

/// A row id as it is echoed: cut to the longest allowed, so results stay small.
pub fn echoed_row_id(row_id: String) -> String {
    if row_id.chars().count() <= MAX_ROW_ID {
        row_id
    } else {
        row_id.chars().take(MAX_ROW_ID).collect()
    }
}

/// The fields a row sets, as update paths: what an update with an empty
/// `update_mask` overwrites. Attributes are set key by key, so a row's attributes
/// add to the stored ones instead of replacing them.
pub fn row_paths(row: &Contact) -> Vec<String> {
    let mut paths: Vec<String> = [
        ("given_name", !row.given_name.is_empty()),
        ("family_name", !row.family_name.is_empty()),
        ("emails", !row.emails.is_empty()),
        ("phones", !row.phones.is_empty()),
        ("job_title", !row.job_title.is_empty()),
        ("account", !row.account.is_empty()),
        ("owner", !row.owner.is_empty()),
        ("lifecycle_stage", row.lifecycle_stage != 0),
        ("source", !row.source.is_empty()),
        ("tags", !row.tags.is_empty()),
        ("address", row.address.is_some()),
        ("language", !row.language.is_empty()),
        ("time_zone", !row.time_zone.is_empty()),
        ("preferred_channel", row.preferred_channel != 0),
        ("contact_frequency", row.contact_frequency != 0),
    ]
    .into_iter()
    .filter(|(_, set)| *set)
    .map(|(path, _)| path.to_owned())
    .collect();
    let mut keys: Vec<&String> = row.attributes.keys().collect();
    keys.sort();
    paths.extend(keys.into_iter().map(|k| format!("attributes.{k}")));
    paths
}

#[cfg(test)]
mod tests {
    use super::*;
    use crm_proto::contact::{EmailAddress, PhoneNumber};

    fn with_email(address: &str) -> Contact {
        Contact {
            emails: vec![EmailAddress {
                address: address.into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn options_are_checked() {
        assert_eq!(plan(None).unwrap_err().reason(), "INVALID_ARGUMENT");
        let Err(ApiError::InvalidArgument(found)) = plan(Some(ImportOptions {
            source: "x".repeat(101),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["etag".into()],
            }),
            ..Default::default()
        })) else {
            panic!("expected INVALID_ARGUMENT")
        };
        let fields: Vec<&str> = found.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            ["options.mode", "options.source", "options.update_mask"]
        );
        let plan = plan(Some(ImportOptions {
            mode: ImportMode::UpsertByEmail as i32,
            source: " expo ".into(),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(plan.source, "expo");
        assert!(plan.update_paths.is_none());
    }

    #[test]
    fn reasons_follow_the_field() {
        let bad_email = check_contact(Some(with_email("nope")), ImportMode::CreateOnly, None);
        assert_eq!(
            bad_email.unwrap_err(),
            Rejection::new(
                "INVALID_EMAIL",
                "contact.emails[0].address",
                "must be an email address"
            )
        );
        let mut phone = with_email("a@x.io");
        phone.phones.push(PhoneNumber {
            number: "12".into(),
            ..Default::default()
        });
        let rejection = check_contact(Some(phone), ImportMode::CreateOnly, None).unwrap_err();
        assert_eq!(
            (rejection.reason, rejection.field.as_str()),
            ("INVALID_PHONE", "contact.phones[0].number")
        );
        let empty = check_contact(Some(Contact::default()), ImportMode::CreateOnly, None);
        assert_eq!(empty.unwrap_err().reason, "MISSING_FIELD");
        let stage = Contact {
            given_name: "Ana".into(),
            lifecycle_stage: 99,
            ..Default::default()
        };
        assert_eq!(
            check_contact(Some(stage), ImportMode::CreateOnly, None)
                .unwrap_err()
                .reason,
            "INVALID_FIELD"
        );
        assert_eq!(
            check_contact(None, ImportMode::CreateOnly, None)
                .unwrap_err()
                .field,
            "contact"
        );
    }

    #[test]
    fn update_rows_need_a_key() {
        let keyless = Contact {
            job_title: "CTO".into(),
            ..Default::default()
        };
        assert_eq!(
            check_contact(Some(keyless), ImportMode::UpdateOnly, None)
                .unwrap_err()
                .field,
            "contact.name"
        );
        let named = Contact {
            name: "contacts/0192F0C1-7B1E-7CC3-9A44-4D2A3F1E9B10".into(),
            ..Default::default()
        };
        assert_eq!(
            check_contact(Some(named), ImportMode::UpdateOnly, None)
                .unwrap()
                .name,
            "contacts/0192f0c1-7b1e-7cc3-9a44-4d2a3f1e9b10"
        );
        let normalised = check_contact(Some(with_email(" A@X.io ")), ImportMode::CreateOnly, None);
        assert_eq!(normalised.unwrap().emails[0].address, "a@x.io");
    }

    #[test]
    fn row_ids() {
        assert_eq!(check_row_id("").unwrap_err().reason, "MISSING_FIELD");
        assert!(check_row_id("17").is_ok());
        assert_eq!(
            check_row_id(&"x".repeat(200)).unwrap_err().reason,
            "INVALID_FIELD"
        );
        assert_eq!(echoed_row_id("y".repeat(300)).len(), MAX_ROW_ID);
    }

    #[test]
    fn paths_are_what_the_row_sets() {
        let mut row = with_email("a@x.io");
        row.job_title = "CTO".into();
        row.attributes
            .insert("tier".into(), crm_proto::common::AttributeValue::default());
        assert_eq!(row_paths(&row), ["emails", "job_title", "attributes.tier"]);
    }
}
