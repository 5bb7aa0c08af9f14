//! A stand-in for `crm_platform::errors::ApiError` with the constructors that
//! `filter.rs` and `pagination.rs` call (the real one maps to `tonic::Status`, which
//! would bring gRPC and the database driver into the fuzz build).

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    InvalidArgument(Vec<FieldViolation>),
    Internal { detail: String },
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation {
            field: field.into(),
            description: description.into(),
        }])
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self::Internal {
            detail: detail.to_string(),
        }
    }
}
