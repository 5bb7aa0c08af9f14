//! Applying an `update_mask` (AIP-134, AIP-161) to a stored contact.

use crm_platform::ApiError;
use crm_proto::contact::Contact;

/// The fields a client may set, as they appear in a field mask.
pub const MUTABLE_FIELDS: &[&str] = &[
    "given_name",
    "family_name",
    "emails",
    "phones",
    "job_title",
    "account",
    "owner",
    "lifecycle_stage",
    "source",
    "tags",
    "address",
    "language",
    "time_zone",
    "preferred_channel",
    "contact_frequency",
    "attributes",
];

/// The paths to update: `*` means every mutable field. `attributes.<key>` updates one
/// attribute. Unknown or output-only paths are refused.
pub fn paths(mask: Option<&prost_types::FieldMask>) -> Result<Vec<String>, ApiError> {
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
                format!("{path:?} is not a mutable field of Contact"),
            ));
        }
    }
    paths.sort();
    paths.dedup();
    Ok(paths)
}

/// Copies the masked fields of `patch` onto `target`.
pub fn apply(target: &mut Contact, patch: &Contact, paths: &[String]) {
    for path in paths {
        match path.as_str() {
            "given_name" => target.given_name.clone_from(&patch.given_name),
            "family_name" => target.family_name.clone_from(&patch.family_name),
            "emails" => target.emails.clone_from(&patch.emails),
            "phones" => target.phones.clone_from(&patch.phones),
            "job_title" => target.job_title.clone_from(&patch.job_title),
            "account" => target.account.clone_from(&patch.account),
            "owner" => target.owner.clone_from(&patch.owner),
            "lifecycle_stage" => target.lifecycle_stage = patch.lifecycle_stage,
            "source" => target.source.clone_from(&patch.source),
            "tags" => target.tags.clone_from(&patch.tags),
            "address" => target.address.clone_from(&patch.address),
            "language" => target.language.clone_from(&patch.language),
            "time_zone" => target.time_zone.clone_from(&patch.time_zone),
            "preferred_channel" => target.preferred_channel = patch.preferred_channel,
            "contact_frequency" => target.contact_frequency = patch.contact_frequency,
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

    fn mask(paths: &[&str]) -> prost_types::FieldMask {
        prost_types::FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    #[test]
    fn masks() {
        assert!(paths(None).is_err());
        assert_eq!(
            paths(Some(&mask(&["*"]))).unwrap().len(),
            MUTABLE_FIELDS.len()
        );
        assert!(paths(Some(&mask(&["create_time"]))).is_err());
        assert!(paths(Some(&mask(&["etag"]))).is_err());
        let mut target = Contact {
            given_name: "A".into(),
            family_name: "B".into(),
            ..Default::default()
        };
        let patch = Contact {
            given_name: "C".into(),
            ..Default::default()
        };
        apply(
            &mut target,
            &patch,
            &paths(Some(&mask(&["given_name"]))).unwrap(),
        );
        assert_eq!(
            (target.given_name.as_str(), target.family_name.as_str()),
            ("C", "B")
        );
    }
}
