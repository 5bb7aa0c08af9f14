//! The rules of a segment, collected as field violations.

use crm_platform::{ApiError, Violations};
use crm_proto::contact::{Segment, SegmentType};

use crate::domain::names;

pub const MAX_DISPLAY_NAME: usize = 200;
pub const MAX_DESCRIPTION: usize = 2000;
pub const MAX_OWNER: usize = 128;
pub const MAX_MEMBERS_PER_CALL: usize = 1000;

/// The fields an update mask may name.
pub const MUTABLE_FIELDS: &[&str] = &["display_name", "description", "filter", "owner"];

/// A segment type by name, with or without the `SEGMENT_TYPE_` prefix (for filters).
pub fn parse_type(name: &str) -> Option<i32> {
    SegmentType::from_str_name(name)
        .or_else(|| SegmentType::from_str_name(&format!("SEGMENT_TYPE_{name}")))
        .filter(|t| *t != SegmentType::Unspecified)
        .map(|t| t as i32)
}

/// Checks a whole segment (as it would be stored); `prefix` is its field path.
pub fn segment(violations: &mut Violations, prefix: &str, segment: &Segment) {
    let display_name = segment.display_name.trim();
    if display_name.is_empty() {
        violations.add(format!("{prefix}.display_name"), "is required");
    } else if display_name.chars().count() > MAX_DISPLAY_NAME {
        violations.add(
            format!("{prefix}.display_name"),
            format!("at most {MAX_DISPLAY_NAME} characters"),
        );
    }
    if segment.description.chars().count() > MAX_DESCRIPTION {
        violations.add(
            format!("{prefix}.description"),
            format!("at most {MAX_DESCRIPTION} characters"),
        );
    }
    if segment.owner.chars().count() > MAX_OWNER || segment.owner.chars().any(char::is_control) {
        violations.add(
            format!("{prefix}.owner"),
            format!("at most {MAX_OWNER} printable characters"),
        );
    }
    let filter_path = format!("{prefix}.filter");
    match SegmentType::try_from(segment.r#type) {
        Ok(SegmentType::Dynamic) => {
            if segment.filter.trim().is_empty() {
                violations.add(filter_path, "is required for DYNAMIC segments");
            } else if let Err(err) = crate::grpc::contact_filter(
                &segment.filter,
                // Only whether the filter reads is asked here, the same on every backend
                // and in every tenant; the condition is not used.
                crm_platform::filter::FilterScope {
                    backend: sea_orm::DbBackend::Sqlite,
                    tenant: "",
                },
            ) {
                match err {
                    ApiError::InvalidArgument(found) => found
                        .into_iter()
                        .for_each(|v| violations.add(filter_path.clone(), v.description)),
                    _ => violations.add(filter_path, "cannot be read"),
                }
            }
        }
        Ok(SegmentType::Static) => {
            if !segment.filter.is_empty() {
                violations.add(filter_path, "must be empty for STATIC segments");
            }
        }
        Ok(SegmentType::Unspecified) => violations.add(format!("{prefix}.type"), "is required"),
        Err(_) => violations.add(format!("{prefix}.type"), "is not a known segment type"),
    }
}

/// The update mask's paths; `*` means every mutable field. `type` is immutable.
pub fn mask_paths(mask: Option<&prost_types::FieldMask>) -> Result<Vec<String>, ApiError> {
    let Some(mask) = mask.filter(|m| !m.paths.is_empty()) else {
        return Err(ApiError::invalid(
            "update_mask",
            "is required; use \"*\" to replace every mutable field",
        ));
    };
    let mut paths = Vec::new();
    let mut violations = Violations::new();
    for path in &mask.paths {
        let path = path.trim();
        if path == "*" {
            paths.extend(MUTABLE_FIELDS.iter().map(|f| (*f).to_owned()));
        } else if MUTABLE_FIELDS.contains(&path) {
            paths.push(path.to_owned());
        } else if path == "type" {
            violations.add("update_mask", "type cannot be changed after creation");
        } else {
            violations.add(
                "update_mask",
                format!("{path:?} is not a mutable field of Segment"),
            );
        }
    }
    violations.into_result()?;
    paths.sort();
    paths.dedup();
    Ok(paths)
}

/// Copies the masked fields of `patch` onto `target`.
pub fn apply(target: &mut Segment, patch: &Segment, paths: &[String]) {
    for path in paths {
        match path.as_str() {
            "display_name" => target.display_name = patch.display_name.trim().to_owned(),
            "description" => target.description.clone_from(&patch.description),
            "filter" => target.filter.clone_from(&patch.filter),
            "owner" => target.owner.clone_from(&patch.owner),
            _ => {}
        }
    }
}

/// `contacts/{id}` names of a membership call → ids (deduplicated, order kept), with
/// every bad name reported.
pub fn member_ids(names_in: &[String]) -> Result<Vec<String>, ApiError> {
    if names_in.is_empty() || names_in.len() > MAX_MEMBERS_PER_CALL {
        return Err(ApiError::invalid(
            "contacts",
            format!("1 to {MAX_MEMBERS_PER_CALL} contact names"),
        ));
    }
    let mut violations = Violations::new();
    let mut ids: Vec<String> = Vec::with_capacity(names_in.len());
    for (i, name) in names_in.iter().enumerate() {
        match names::parse(names::CONTACTS, &format!("contacts[{i}]"), name) {
            Ok(id) => {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            Err(_) => violations.add(format!("contacts[{i}]"), "must be contacts/{uuid}"),
        }
    }
    violations.into_result()?;
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(segment_in: &Segment) -> Vec<String> {
        let mut violations = Violations::new();
        segment(&mut violations, "segment", segment_in);
        match violations.into_result() {
            Ok(()) => Vec::new(),
            Err(ApiError::InvalidArgument(v)) => v.into_iter().map(|v| v.field).collect(),
            Err(_) => vec!["?".into()],
        }
    }

    #[test]
    fn rules() {
        let ok = Segment {
            display_name: "VIPs".into(),
            r#type: SegmentType::Dynamic as i32,
            filter: "lifecycle_stage = CUSTOMER".into(),
            ..Default::default()
        };
        assert!(fields(&ok).is_empty());
        let bad = Segment {
            display_name: "x".repeat(201),
            r#type: SegmentType::Dynamic as i32,
            filter: "nope = 1".into(),
            ..Default::default()
        };
        assert_eq!(fields(&bad), ["segment.display_name", "segment.filter"]);
        let static_with_filter = Segment {
            display_name: "List".into(),
            r#type: SegmentType::Static as i32,
            filter: "owner = \"u\"".into(),
            ..Default::default()
        };
        assert_eq!(fields(&static_with_filter), ["segment.filter"]);
        assert_eq!(
            fields(&Segment::default()),
            ["segment.display_name", "segment.type"]
        );
        assert_eq!(parse_type("STATIC"), Some(SegmentType::Static as i32));
        assert_eq!(parse_type("UNSPECIFIED"), None);
    }

    #[test]
    fn masks_and_members() {
        let mask = |paths: &[&str]| prost_types::FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        };
        assert_eq!(mask_paths(Some(&mask(&["*"]))).unwrap().len(), 4);
        assert!(mask_paths(Some(&mask(&["type"]))).is_err());
        assert!(mask_paths(None).is_err());
        let id = "0192f0c1-7b1e-7cc3-9a44-4d2a3f1e9b10";
        let name = format!("contacts/{id}");
        assert_eq!(member_ids(&[name.clone(), name]).unwrap(), [id]);
        assert!(member_ids(&[]).is_err());
        assert!(member_ids(&["contacts/x".into()]).is_err());
    }
}
