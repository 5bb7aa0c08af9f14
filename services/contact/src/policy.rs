//! What a write must know of its tenant before it validates and checks duplicates: the
//! default phone region, the duplicate rules in force and the suppression salt. They
//! are read in one round trip (three scalar subqueries), so that CreateContact and each
//! import pay one query for them instead of three, and no replica ever acts on rules
//! another replica has already changed.

use sea_orm::{ConnectionTrait, DbBackend, Statement};

use crm_platform::ApiError;
use crm_platform::errors::from_db;
use crm_proto::contact::DuplicateRules;

use crate::consent::suppression;
use crate::duplicates::rules;

/// The tenant's settings that every contact write consults.
#[derive(Debug, Clone)]
pub struct TenantPolicy {
    /// The region of phone numbers written without a country code, when set.
    pub phone_region: Option<String>,
    /// The duplicate rules in force (the defaults when never set).
    pub rules: DuplicateRules,
    /// The suppression list's salt; `None` while the tenant has erased nobody.
    pub salt: Option<Vec<u8>>,
}

/// The statement of [`load`], per backend: fixed text, since building it with the query
/// builder cost a CreateContact more instructions than reading its result. The tables
/// are those of `consent::migration` (settings, salts) and `duplicates::migration`.
const POLICY_POSTGRES: &str = "SELECT \
     (SELECT default_phone_region FROM contact_settings WHERE tenant_id = $1), \
     (SELECT data FROM duplicate_rules WHERE tenant_id = $1), \
     (SELECT salt FROM suppression_salts WHERE tenant_id = $1)";
const POLICY_SQLITE: &str = "SELECT \
     (SELECT default_phone_region FROM contact_settings WHERE tenant_id = ?), \
     (SELECT data FROM duplicate_rules WHERE tenant_id = ?), \
     (SELECT salt FROM suppression_salts WHERE tenant_id = ?)";

/// Reads the tenant's policy in one statement.
pub async fn load<C: ConnectionTrait>(conn: &C, tenant: &str) -> Result<TenantPolicy, ApiError> {
    let backend = conn.get_database_backend();
    let statement = match backend {
        DbBackend::Postgres => {
            Statement::from_sql_and_values(backend, POLICY_POSTGRES, [tenant.into()])
        }
        _ => Statement::from_sql_and_values(
            backend,
            POLICY_SQLITE,
            [tenant.into(), tenant.into(), tenant.into()],
        ),
    };
    let db = |e| from_db(e, "tenant settings");
    let row = conn
        .query_one_raw(statement)
        .await
        .map_err(db)?
        .ok_or_else(|| ApiError::internal("a select without a table returned no row"))?;
    let phone_region: Option<String> = row.try_get_by_index(0).map_err(db)?;
    let rules_data: Option<Vec<u8>> = row.try_get_by_index(1).map_err(db)?;
    let salt: Option<String> = row.try_get_by_index(2).map_err(db)?;
    Ok(TenantPolicy {
        phone_region: phone_region.filter(|region| !region.is_empty()),
        rules: rules::decode(rules_data.as_deref())?,
        salt: salt.as_deref().map(suppression::parse_salt).transpose()?,
    })
}
