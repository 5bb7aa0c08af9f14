//! Resource names (`contacts/{uuid}`) and etags.

use crm_platform::{ApiError, Violations};

pub const CONTACTS: &str = "contacts";
pub const ACCOUNTS: &str = "accounts";

/// `contacts/{id}` → the id, lower-cased, checked to be a UUID.
pub fn parse(collection: &str, field: &str, name: &str) -> Result<String, ApiError> {
    let id = name
        .strip_prefix(collection)
        .and_then(|rest| rest.strip_prefix('/'))
        .ok_or_else(|| ApiError::invalid(field, format!("must be {collection}/{{id}}")))?;
    parse_id(field, id)
}

/// A UUID in its canonical lower-case form.
pub fn parse_id(field: &str, id: &str) -> Result<String, ApiError> {
    uuid::Uuid::try_parse(id)
        .map(|uuid| uuid.hyphenated().to_string())
        .map_err(|_| ApiError::invalid(field, "must be a UUID"))
}

/// The id of a resource about to be created: the caller's choice in `field` (a UUID,
/// canonicalised), or a new UUIDv7 when it made none. A choice that is no UUID is a
/// violation of `field` (and the id empty, as the call is refused).
pub fn chosen_or_new_id(violations: &mut Violations, field: &str, chosen: &str) -> String {
    if chosen.is_empty() {
        return uuid::Uuid::now_v7().to_string();
    }
    parse_id(field, chosen).unwrap_or_else(|_| {
        violations.add(field, "must be a UUID");
        String::new()
    })
}

pub fn contact_name(id: &str) -> String {
    format!("{CONTACTS}/{id}")
}

pub fn etag(revision: i64) -> String {
    format!("r{revision}")
}

/// Checks a client's etag against the current revision (empty: no check).
pub fn check_etag(given: &str, revision: i64, resource: &str) -> Result<(), ApiError> {
    if given.is_empty() || given == etag(revision) {
        Ok(())
    } else {
        Err(ApiError::EtagMismatch {
            resource: resource.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let id = "0192f0c1-7b1e-7cc3-9a44-4d2a3f1e9b10";
        assert_eq!(parse(CONTACTS, "name", &contact_name(id)).unwrap(), id);
        assert_eq!(
            parse(
                CONTACTS,
                "name",
                "contacts/0192F0C1-7B1E-7CC3-9A44-4D2A3F1E9B10"
            )
            .unwrap(),
            id
        );
        assert!(parse(CONTACTS, "name", "accounts/x").is_err());
        assert!(parse(CONTACTS, "name", "contacts/not-a-uuid").is_err());
        assert!(parse(CONTACTS, "name", "").is_err());
    }

    #[test]
    fn etags() {
        assert!(check_etag("", 3, "c").is_ok());
        assert!(check_etag("r3", 3, "c").is_ok());
        assert_eq!(
            check_etag("r2", 3, "c").unwrap_err().reason(),
            "ETAG_MISMATCH"
        );
    }
}
