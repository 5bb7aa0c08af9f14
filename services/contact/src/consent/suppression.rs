//! The erasure suppression list: email addresses of erased people, kept only as
//! salted hashes, so that imports cannot bring them back and GetConsent answers
//! OPTED_OUT for them.
//!
//! hash = hex(SHA-256(salt || lower-cased email)), with a random 32-byte salt per
//! tenant kept in its own table, so that the list of one tenant cannot be matched
//! against another's or against a precomputed table of common addresses.

use std::collections::{HashMap, HashSet};

use sea_orm::ConnectionTrait;
use sea_orm::sea_query::{Expr, ExprTrait as _, OnConflict, Query};

use crm_platform::ApiError;
use crm_platform::db::now_micros;
use crm_platform::errors::from_db;
use crm_platform::lookup::any_text;

use super::migration::{SuppressedEmails, SuppressionSalts};
use super::sha256;

/// Adds lower-cased email addresses to the tenant's suppression list; returns how many
/// were not on it before.
pub async fn suppress<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    emails: &[String],
) -> Result<i32, ApiError> {
    let addresses = normalised(emails);
    if addresses.is_empty() {
        return Ok(0);
    }
    let salt = salt_for_writing(conn, tenant).await?;
    let now = now_micros();
    let mut insert = Query::insert();
    insert
        .into_table(SuppressedEmails::Table)
        .columns([
            SuppressedEmails::TenantId,
            SuppressedEmails::EmailHash,
            SuppressedEmails::CreateTimeUs,
        ])
        .on_conflict(
            OnConflict::columns([SuppressedEmails::TenantId, SuppressedEmails::EmailHash])
                .do_nothing()
                .to_owned(),
        );
    for address in &addresses {
        insert
            .values([tenant.into(), hash(&salt, address).into(), now.into()])
            .map_err(ApiError::internal)?;
    }
    // Both backends count only the rows actually inserted, not the ignored ones.
    let inserted = conn
        .execute(&insert)
        .await
        .map_err(|e| from_db(e, "suppression list"))?
        .rows_affected();
    tracing::info!(tenant = %tenant, added = inserted, "addresses suppressed");
    Ok(i32::try_from(inserted).unwrap_or(i32::MAX))
}

/// Of the given lower-cased email addresses, those on the tenant's suppression list.
pub async fn suppressed<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    emails: &[String],
) -> Result<HashSet<String>, ApiError> {
    if normalised(emails).is_empty() {
        return Ok(HashSet::new());
    }
    let salt = read_salt(conn, tenant).await?;
    suppressed_with_salt(conn, tenant, salt.as_deref(), emails).await
}

/// As [`suppressed`], with the tenant's salt already read (`None`: the tenant never
/// suppressed anyone, and nothing is looked up).
pub async fn suppressed_with_salt<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    salt: Option<&[u8]>,
    emails: &[String],
) -> Result<HashSet<String>, ApiError> {
    let addresses = normalised(emails);
    let Some(salt) = salt.filter(|_| !addresses.is_empty()) else {
        return Ok(HashSet::new());
    };
    let by_hash: HashMap<String, &String> = addresses
        .iter()
        .map(|address| (hash(salt, address), address))
        .collect();
    let rows = conn
        .query_all(
            &Query::select()
                .column(SuppressedEmails::EmailHash)
                .from(SuppressedEmails::Table)
                .and_where(Expr::col(SuppressedEmails::TenantId).eq(tenant))
                .and_where(any_text(
                    conn.get_database_backend(),
                    Expr::col(SuppressedEmails::EmailHash),
                    by_hash.keys().cloned(),
                ))
                .to_owned(),
        )
        .await
        .map_err(|e| from_db(e, "suppression list"))?;
    let mut found = HashSet::new();
    for row in rows {
        let stored: String = row
            .try_get_by_index(0)
            .map_err(|e| from_db(e, "suppression list"))?;
        if let Some(address) = by_hash.get(&stored) {
            found.insert((*address).clone());
        }
    }
    Ok(found)
}

/// The addresses trimmed, lower-cased, without empties and duplicates.
fn normalised(emails: &[String]) -> Vec<String> {
    let mut out: Vec<String> = emails
        .iter()
        .map(|e| e.trim().to_lowercase())
        .filter(|e| !e.is_empty())
        .collect();
    out.sort();
    out.dedup();
    out
}

fn hash(salt: &[u8], address: &str) -> String {
    let mut input = Vec::with_capacity(salt.len() + address.len());
    input.extend_from_slice(salt);
    input.extend_from_slice(address.as_bytes());
    sha256::hex(&sha256::digest(&input))
}

/// 32 random bytes. The uuid crate draws the random bits of each v7 UUID from the OS
/// CSPRNG (getrandom), at least 32 fresh bits per UUID; eight of them, hashed, give
/// 256 bits. (The crate has no direct `rand` dependency; see sha256.rs.)
fn new_salt() -> [u8; 32] {
    rand::random()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

async fn read_salt<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
) -> Result<Option<Vec<u8>>, ApiError> {
    let row = conn
        .query_one(
            &Query::select()
                .column(SuppressionSalts::Salt)
                .from(SuppressionSalts::Table)
                .and_where(Expr::col(SuppressionSalts::TenantId).eq(tenant))
                .to_owned(),
        )
        .await
        .map_err(|e| from_db(e, "suppression salt"))?;
    let Some(row) = row else { return Ok(None) };
    let text: String = row
        .try_get_by_index(0)
        .map_err(|e| from_db(e, "suppression salt"))?;
    parse_salt(&text).map(Some)
}

/// A salt as stored (hex of 32 bytes).
pub(crate) fn parse_salt(text: &str) -> Result<Vec<u8>, ApiError> {
    decode_hex(text)
        .filter(|salt| salt.len() == 32)
        .ok_or_else(|| ApiError::internal("stored suppression salt is malformed"))
}

/// The tenant's salt, created on first use. Race-safe: two first writers both insert
/// with ON CONFLICT DO NOTHING, and both then read the one row that won.
async fn salt_for_writing<C: ConnectionTrait>(conn: &C, tenant: &str) -> Result<Vec<u8>, ApiError> {
    if let Some(salt) = read_salt(conn, tenant).await? {
        return Ok(salt);
    }
    let mut insert = Query::insert();
    insert
        .into_table(SuppressionSalts::Table)
        .columns([
            SuppressionSalts::TenantId,
            SuppressionSalts::Salt,
            SuppressionSalts::CreateTimeUs,
        ])
        .values([
            tenant.into(),
            sha256::hex(&new_salt()).into(),
            now_micros().into(),
        ])
        .map_err(ApiError::internal)?
        .on_conflict(
            OnConflict::column(SuppressionSalts::TenantId)
                .do_nothing()
                .to_owned(),
        );
    conn.execute(&insert)
        .await
        .map_err(|e| from_db(e, "suppression salt"))?;
    read_salt(conn, tenant)
        .await?
        .ok_or_else(|| ApiError::internal("suppression salt missing after insert"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_salted_and_case_blind_after_normalising() {
        let salt_a = new_salt();
        let salt_b = new_salt();
        assert_ne!(salt_a, salt_b);
        let addresses = normalised(&[" Ana@Example.com ".into(), "ana@example.com".into()]);
        assert_eq!(addresses, ["ana@example.com"]);
        let h = hash(&salt_a, "ana@example.com");
        assert_eq!(h.len(), 64);
        assert_ne!(h, hash(&salt_b, "ana@example.com"));
        assert!(!h.contains("ana"));
        assert_eq!(
            decode_hex(&sha256::hex(&salt_a)).as_deref(),
            Some(&salt_a[..])
        );
        assert_eq!(decode_hex("zz"), None);
    }
}
