//! What a write must know of its tenant before it validates and checks duplicates: the
//! default phone region, the duplicate rules in force and the suppression salt. They
//! are read in one round trip (three scalar subqueries), so that CreateContact and each
//! import pay one query for them instead of three, and no replica ever acts on rules
//! another replica has already changed.

use sea_orm::ConnectionTrait;
use sea_orm::sea_query::{Alias, Expr, ExprTrait as _, Query, SelectStatement, SubQueryStatement};

use crm_platform::ApiError;
use crm_platform::errors::from_db;
use crm_proto::contact::DuplicateRules;

use crate::consent::migration::{ContactSettings, SuppressionSalts};
use crate::consent::suppression;
use crate::duplicates::migration::DuplicateRulesTable;
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

fn scalar(select: SelectStatement) -> Expr {
    Expr::SubQuery(None, Box::new(SubQueryStatement::SelectStatement(select)))
}

/// Reads the tenant's policy in one statement.
pub async fn load<C: ConnectionTrait>(conn: &C, tenant: &str) -> Result<TenantPolicy, ApiError> {
    let region = Query::select()
        .column(ContactSettings::DefaultPhoneRegion)
        .from(ContactSettings::Table)
        .and_where(Expr::col(ContactSettings::TenantId).eq(tenant))
        .to_owned();
    let rules_data = Query::select()
        .column(DuplicateRulesTable::Data)
        .from(DuplicateRulesTable::Table)
        .and_where(Expr::col(DuplicateRulesTable::TenantId).eq(tenant))
        .to_owned();
    let salt = Query::select()
        .column(SuppressionSalts::Salt)
        .from(SuppressionSalts::Table)
        .and_where(Expr::col(SuppressionSalts::TenantId).eq(tenant))
        .to_owned();
    let statement = Query::select()
        .expr_as(scalar(region), Alias::new("phone_region"))
        .expr_as(scalar(rules_data), Alias::new("rules"))
        .expr_as(scalar(salt), Alias::new("salt"))
        .to_owned();
    let db = |e| from_db(e, "tenant settings");
    let row = conn
        .query_one(&statement)
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
