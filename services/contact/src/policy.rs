//! What a write must know of its tenant before it validates and checks duplicates: the
//! default phone region, the duplicate rules in force and the suppression salt. They
//! are read in one round trip (three scalar subqueries), so that each import pays one
//! query for them instead of three, and no replica ever acts on rules another replica
//! has already changed.
//!
//! CreateContact, whose insert is one statement, does not read them first: it uses the
//! policy this process last read of the tenant ([`PolicyMemory`]) and its statement
//! checks that the stored policy still equals it ([`guard_postgres`]), failing with
//! nothing written when it does not. The create is then redone with the policy read
//! afresh. So no create acts on a policy changed before its statement, whichever
//! replica changed it, and the common create saves a round trip.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement, Value};

use crm_platform::ApiError;
use crm_platform::errors::{from_db, sql_state};
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
    /// The three values as stored, which [`guard_postgres`] compares.
    stored: StoredPolicy,
}

/// The columns read by [`load`], before decoding.
#[derive(Debug, Clone, Default, PartialEq)]
struct StoredPolicy {
    phone_region: Option<String>,
    rules: Option<Vec<u8>>,
    salt: Option<String>,
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
    let stored = StoredPolicy {
        phone_region: row.try_get_by_index(0).map_err(db)?,
        rules: row.try_get_by_index(1).map_err(db)?,
        salt: row.try_get_by_index(2).map_err(db)?,
    };
    Ok(TenantPolicy {
        phone_region: stored
            .phone_region
            .clone()
            .filter(|region| !region.is_empty()),
        rules: rules::decode(stored.rules.as_deref())?,
        salt: stored
            .salt
            .as_deref()
            .map(suppression::parse_salt)
            .transpose()?,
        stored,
    })
}

/// The SQLSTATE of a statement whose [`guard_postgres`] found the policy changed
/// (raised by the function of [`PolicyGuardFunction`]).
const POLICY_CHANGED: &str = "CRM01";

/// A condition for an insert in a CreateContact statement (Postgres), its parameters
/// numbered from `first`: true when the tenant's stored policy is still `policy`, else
/// an error with SQLSTATE [`POLICY_CHANGED`], so that the statement writes nothing.
/// `CASE` keeps the raising function from being called unless the values differ.
pub fn guard_postgres(
    tenant: &str,
    policy: &TenantPolicy,
) -> impl FnOnce(usize) -> (String, Vec<Value>) + Send + 'static {
    let tenant = tenant.to_owned();
    let stored = policy.stored.clone();
    move |first| {
        let [tenant_at, region_at, rules_at, salt_at] = [first, first + 1, first + 2, first + 3];
        let sql = format!(
            "CASE WHEN (SELECT default_phone_region FROM contact_settings WHERE tenant_id = ${tenant_at}) \
             IS NOT DISTINCT FROM ${region_at}::text \
             AND (SELECT data FROM duplicate_rules WHERE tenant_id = ${tenant_at}) \
             IS NOT DISTINCT FROM ${rules_at}::bytea \
             AND (SELECT salt FROM suppression_salts WHERE tenant_id = ${tenant_at}) \
             IS NOT DISTINCT FROM ${salt_at}::text \
             THEN true ELSE contact_policy_changed() END"
        );
        let values = vec![
            tenant.into(),
            Value::String(stored.phone_region),
            Value::Bytes(stored.rules),
            Value::String(stored.salt),
        ];
        (sql, values)
    }
}

/// Whether a statement failed because its [`guard_postgres`] found the policy changed.
pub fn is_policy_changed(err: &DbErr) -> bool {
    sql_state(err).is_some_and(|code| code == POLICY_CHANGED)
}

/// Tenants whose policy a process remembers at most; past it the memory starts over
/// (a policy is one small read away).
const REMEMBERED_TENANTS: usize = 4_096;

/// The policy this process last read of each tenant, for writes that check it in
/// their own statement ([`guard_postgres`]). It is never trusted otherwise: nothing
/// tells a process that another changed the policy.
#[derive(Clone, Default)]
pub struct PolicyMemory {
    policies: Arc<Mutex<HashMap<String, Arc<TenantPolicy>>>>,
}

impl PolicyMemory {
    /// The policy last read of `tenant`, if any.
    pub fn remembered(&self, tenant: &str) -> Option<Arc<TenantPolicy>> {
        self.policies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
            .cloned()
    }

    /// Reads the tenant's policy and remembers it.
    pub async fn load<C: ConnectionTrait>(
        &self,
        conn: &C,
        tenant: &str,
    ) -> Result<Arc<TenantPolicy>, ApiError> {
        let policy = Arc::new(load(conn, tenant).await?);
        let mut policies = self.policies.lock().unwrap_or_else(PoisonError::into_inner);
        if policies.len() >= REMEMBERED_TENANTS && !policies.contains_key(tenant) {
            policies.clear();
        }
        policies.insert(tenant.to_owned(), Arc::clone(&policy));
        Ok(policy)
    }
}

/// Creates the function a failed [`guard_postgres`] calls (Postgres only): it raises
/// SQLSTATE [`POLICY_CHANGED`]. `VOLATILE`, so that no plan evaluates it ahead of the
/// `CASE` that guards it.
pub struct PolicyGuardFunction;

impl sea_orm_migration::MigrationName for PolicyGuardFunction {
    fn name(&self) -> &str {
        "m0016_policy_guard_function"
    }
}

#[async_trait::async_trait]
impl sea_orm_migration::MigrationTrait for PolicyGuardFunction {
    async fn up(&self, manager: &sea_orm_migration::SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        manager
            .get_connection()
            .execute_unprepared(&format!(
                "CREATE OR REPLACE FUNCTION contact_policy_changed() RETURNS boolean \
                 LANGUAGE plpgsql VOLATILE AS $$ BEGIN \
                 RAISE EXCEPTION 'the tenant policy changed' USING ERRCODE = '{POLICY_CHANGED}'; \
                 END $$"
            ))
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &sea_orm_migration::SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        manager
            .get_connection()
            .execute_unprepared("DROP FUNCTION IF EXISTS contact_policy_changed()")
            .await
            .map(|_| ())
    }
}
