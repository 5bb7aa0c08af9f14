//! The one mapping from service errors to `tonic::Status` (AIP-193).
//!
//! Every status carries a `google.rpc.ErrorInfo` with an UPPER_SNAKE reason and the
//! CRM domain; bad input also carries a `google.rpc.BadRequest` naming each field.
//! Messages never contain SQL, internals or another tenant's data.

use std::collections::HashMap;

use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every error the suite returns.
pub const ERROR_DOMAIN: &str = "crm.dev";

/// One invalid field of a request, by its path (e.g. `contact.emails[1].address`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// Collects field violations while a request is validated, so that a caller learns of
/// every bad field at once instead of one per round trip.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// `Ok(())` when nothing was added, else `ApiError::InvalidArgument`.
    pub fn into_result(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::InvalidArgument(self.0))
        }
    }
}

/// Errors a request can end in, each with its canonical code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("request has invalid fields")]
    InvalidArgument(Vec<FieldViolation>),
    #[error("{resource} not found")]
    NotFound { resource: String },
    #[error("{resource} already exists")]
    AlreadyExists { resource: String },
    /// A new record that looks like existing ones, refused by the tenant's rules.
    #[error("{message}")]
    Duplicate {
        message: String,
        /// The names of the existing records it looks like.
        duplicates: Vec<String>,
    },
    #[error("the etag does not match the current version of {resource}")]
    EtagMismatch { resource: String },
    #[error("{message}")]
    Aborted {
        reason: &'static str,
        message: String,
    },
    #[error("{message}")]
    FailedPrecondition {
        reason: &'static str,
        message: String,
    },
    #[error("{message}")]
    Unauthenticated {
        reason: &'static str,
        message: String,
    },
    #[error("{message}")]
    PermissionDenied {
        reason: &'static str,
        message: String,
    },
    #[error("{message}")]
    ResourceExhausted {
        reason: &'static str,
        message: String,
    },
    #[error("{dependency} is unavailable")]
    Unavailable { dependency: &'static str },
    /// A bug or an unexpected failure. The detail is logged, never returned.
    #[error("internal error")]
    Internal { detail: String },
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    pub fn not_found(resource: impl Into<String>) -> Self {
        Self::NotFound {
            resource: resource.into(),
        }
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self::Internal {
            detail: detail.to_string(),
        }
    }

    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::PermissionDenied {
            reason: "PERMISSION_DENIED",
            message: message.into(),
        }
    }

    pub fn unauthenticated(reason: &'static str, message: impl Into<String>) -> Self {
        Self::Unauthenticated {
            reason,
            message: message.into(),
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::NotFound { .. } => Code::NotFound,
            Self::AlreadyExists { .. } | Self::Duplicate { .. } => Code::AlreadyExists,
            Self::EtagMismatch { .. } | Self::Aborted { .. } => Code::Aborted,
            Self::FailedPrecondition { .. } => Code::FailedPrecondition,
            Self::Unauthenticated { .. } => Code::Unauthenticated,
            Self::PermissionDenied { .. } => Code::PermissionDenied,
            Self::ResourceExhausted { .. } => Code::ResourceExhausted,
            Self::Unavailable { .. } => Code::Unavailable,
            Self::Internal { .. } => Code::Internal,
        }
    }

    /// The UPPER_SNAKE `ErrorInfo.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidArgument(_) => "INVALID_ARGUMENT",
            Self::NotFound { .. } => "RESOURCE_NOT_FOUND",
            Self::AlreadyExists { .. } => "RESOURCE_ALREADY_EXISTS",
            Self::Duplicate { .. } => "DUPLICATE_CONTACT",
            Self::EtagMismatch { .. } => "ETAG_MISMATCH",
            Self::Aborted { reason, .. }
            | Self::FailedPrecondition { reason, .. }
            | Self::Unauthenticated { reason, .. }
            | Self::PermissionDenied { reason, .. }
            | Self::ResourceExhausted { reason, .. } => reason,
            Self::Unavailable { .. } => "DEPENDENCY_UNAVAILABLE",
            Self::Internal { .. } => "INTERNAL",
        }
    }
}

/// Longest message or violation description sent: they travel in HTTP/2 headers
/// (`grpc-message`, `grpc-status-details-bin`), whose total size peers limit (often to
/// 16 KiB), and they may quote what the caller sent.
const MAX_TEXT: usize = 512;

/// `text` cut to at most [`MAX_TEXT`] bytes on a character boundary, marked with `…`.
fn bounded(text: &str) -> String {
    if text.len() <= MAX_TEXT {
        return text.to_owned();
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

impl From<ApiError> for tonic::Status {
    fn from(err: ApiError) -> Self {
        let mut metadata = HashMap::new();
        match &err {
            ApiError::NotFound { resource }
            | ApiError::AlreadyExists { resource }
            | ApiError::EtagMismatch { resource } => {
                metadata.insert("resource".to_owned(), bounded(resource));
            }
            ApiError::Unavailable { dependency } => {
                metadata.insert("dependency".to_owned(), (*dependency).to_owned());
            }
            ApiError::Duplicate { duplicates, .. } => {
                metadata.insert("duplicates".to_owned(), bounded(&duplicates.join(",")));
            }
            ApiError::Internal { detail } => {
                tracing::error!(error.detail = %detail, "internal error");
            }
            _ => {}
        }
        let mut details = ErrorDetails::with_error_info(err.reason(), ERROR_DOMAIN, metadata);
        let message = match &err {
            ApiError::InvalidArgument(violations) => {
                // At most 50 violations: enough to fix a request, small enough for headers.
                for violation in violations.iter().take(50) {
                    details.add_bad_request_violation(
                        bounded(&violation.field),
                        bounded(&violation.description),
                    );
                }
                let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
                bounded(&format!("invalid fields: {}", fields.join(", ")))
            }
            ApiError::Unavailable { .. } => {
                details.set_retry_info(Some(std::time::Duration::from_millis(200)));
                err.to_string()
            }
            _ => bounded(&err.to_string()),
        };
        tonic::Status::with_error_details(err.code(), message, details)
    }
}

/// Maps a database error: unique violations become `ALREADY_EXISTS`, a database that
/// cannot be reached (or broke the connection mid-statement, or is shutting down or
/// starting) `UNAVAILABLE`, anything else `INTERNAL` (logged, never shown).
pub fn from_db(err: sea_orm::DbErr, resource: &str) -> ApiError {
    use sea_orm::{DbErr, RuntimeErr, SqlErr};
    if let Some(SqlErr::UniqueConstraintViolation(_)) = err.sql_err() {
        return ApiError::AlreadyExists {
            resource: resource.to_owned(),
        };
    }
    match &err {
        DbErr::RecordNotFound(_) => ApiError::not_found(resource),
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => ApiError::Unavailable {
            dependency: "database",
        },
        DbErr::Exec(RuntimeErr::SqlxError(inner)) | DbErr::Query(RuntimeErr::SqlxError(inner))
            if is_connection_error(inner) =>
        {
            ApiError::Unavailable {
                dependency: "database",
            }
        }
        _ => ApiError::internal(err),
    }
}

/// The SQLSTATE a database error carries, if the database reported one.
pub fn sql_state(err: &sea_orm::DbErr) -> Option<std::borrow::Cow<'_, str>> {
    use sea_orm::{DbErr, RuntimeErr, sqlx};
    match err {
        DbErr::Exec(RuntimeErr::SqlxError(inner)) | DbErr::Query(RuntimeErr::SqlxError(inner)) => {
            match &**inner {
                sqlx::Error::Database(db) => db.code(),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Whether the database failed rather than the statement: the connection broke (I/O,
/// TLS, EOF mid-reply), none could be had, or the server refuses work for now (SQLSTATE
/// class 08 connection exceptions, 57P01..57P03 shutdown or start-up, 53300 too many
/// connections). Such a call is safe to retry.
fn is_connection_error(err: &sea_orm::sqlx::Error) -> bool {
    use sea_orm::sqlx::Error;
    match err {
        Error::Io(_)
        | Error::Tls(_)
        | Error::PoolTimedOut
        | Error::PoolClosed
        | Error::WorkerCrashed => true,
        Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(err: sea_orm::DbErr) -> Self {
        from_db(err, "record")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn invalid_argument_names_every_field() {
        let mut violations = Violations::new();
        violations.add("contact.given_name", "too long");
        violations.add("contact.emails[0].address", "not an email address");
        let status: tonic::Status = violations.into_result().unwrap_err().into();
        assert_eq!(status.code(), Code::InvalidArgument);
        let bad = status.get_details_bad_request().unwrap();
        let fields: Vec<_> = bad
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["contact.given_name", "contact.emails[0].address"]);
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "INVALID_ARGUMENT");
        assert_eq!(info.domain, ERROR_DOMAIN);
    }

    #[test]
    fn echoed_input_stays_small() {
        let huge = "é".repeat(40_000);
        let mut violations = Violations::new();
        for i in 0..500 {
            violations.add(format!("{huge}{i}"), huge.clone());
        }
        let status: tonic::Status = violations.into_result().unwrap_err().into();
        assert!(status.message().len() <= MAX_TEXT + 3);
        let bad = status.get_details_bad_request().unwrap();
        assert_eq!(bad.field_violations.len(), 50);
        assert!(
            bad.field_violations
                .iter()
                .all(|v| v.description.len() <= MAX_TEXT + 3)
        );
        let status: tonic::Status = ApiError::not_found(huge).into();
        assert!(status.message().len() <= MAX_TEXT + 3);
    }

    #[test]
    fn a_lost_database_is_unavailable() {
        use sea_orm::{DbErr, RuntimeErr, sqlx};
        let lost = |err: sqlx::Error| DbErr::Query(RuntimeErr::SqlxError(Arc::new(err)));
        let eof = std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "expected to read 5 bytes, got 0 bytes at EOF",
        );
        for err in [
            lost(sqlx::Error::Io(eof)),
            lost(sqlx::Error::PoolTimedOut),
            lost(sqlx::Error::PoolClosed),
        ] {
            assert_eq!(from_db(err, "contact").code(), Code::Unavailable);
        }
        let bug = lost(sqlx::Error::ColumnNotFound("x".into()));
        assert_eq!(from_db(bug, "contact").code(), Code::Internal);
    }

    #[test]
    fn internal_errors_hide_their_detail() {
        let status: tonic::Status = ApiError::internal("SELECT * FROM secrets").into();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("SELECT"));
    }
}
