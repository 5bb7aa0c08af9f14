//! The tenant's contact settings: one row per tenant, read with defaults when it was
//! never written.

use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait,
    QueryFilter, QuerySelect,
};

use crm_platform::ApiError;
use crm_platform::auth::Caller;
use crm_platform::db::{micros_to_timestamp, now_micros};
use crm_platform::errors::from_db;
use crm_platform::events::{self, EventFeed, NewEvent};
use crm_platform::idempotency;
use crm_proto::common::FieldChange;
use crm_proto::contact::ContactSettings;

use crate::domain::names;

pub const SETTINGS_NAME: &str = "contactSettings";
pub const UPDATE_SETTINGS: &str = "UpdateContactSettings";
pub const SETTINGS_UPDATED: &str = "crm.contact.v1.ContactSettingsUpdated";
pub const MUTABLE_FIELDS: &[&str] = &["default_phone_region"];

/// The officially assigned ISO 3166-1 alpha-2 codes (249).
pub const REGION_CODES: &[&str] = &[
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ",
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS",
    "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN",
    "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE",
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF",
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM",
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM",
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC",
    "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK",
    "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA",
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG",
    "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW",
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS",
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI",
    "VN", "VU", "WF", "WS", "YE", "YT", "ZA", "ZM", "ZW",
];

pub mod settings_row {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "contact_settings")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        pub default_phone_region: String,
        pub revision: i64,
        pub update_time_us: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

use settings_row::{Column, Entity as Settings};

/// A region as a client sends it, upper-cased; `Err` is the reason it is refused.
pub fn normalise_region(raw: &str) -> Result<String, &'static str> {
    let region = raw.trim().to_ascii_uppercase();
    if region.is_empty() || REGION_CODES.binary_search(&region.as_str()).is_ok() {
        Ok(region)
    } else {
        Err("must be empty or an assigned ISO 3166-1 alpha-2 code, e.g. \"CH\"")
    }
}

fn to_message(row: Option<&settings_row::Model>) -> ContactSettings {
    match row {
        Some(row) => ContactSettings {
            name: SETTINGS_NAME.to_owned(),
            default_phone_region: row.default_phone_region.clone(),
            update_time: Some(micros_to_timestamp(row.update_time_us)),
            etag: names::etag(row.revision),
        },
        None => ContactSettings {
            name: SETTINGS_NAME.to_owned(),
            etag: names::etag(0),
            ..Default::default()
        },
    }
}

async fn row<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    lock: bool,
) -> Result<Option<settings_row::Model>, ApiError> {
    let mut find = Settings::find().filter(Column::TenantId.eq(tenant));
    if lock && conn.get_database_backend() == DbBackend::Postgres {
        find = find.lock_exclusive();
    }
    find.one(conn).await.map_err(|e| from_db(e, SETTINGS_NAME))
}

/// The tenant's settings, defaults (etag "r0") when never set.
pub async fn get<C: ConnectionTrait>(conn: &C, tenant: &str) -> Result<ContactSettings, ApiError> {
    Ok(to_message(row(conn, tenant, false).await?.as_ref()))
}

/// The region used to normalise phone numbers written without a country code, when
/// the tenant set one.
pub async fn default_phone_region<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
) -> Result<Option<String>, ApiError> {
    Ok(row(conn, tenant, false)
        .await?
        .map(|r| r.default_phone_region)
        .filter(|region| !region.is_empty()))
}

fn string_value(text: &str) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(text.to_owned())),
    }
}

/// Writes the settings: `patch` already validated, `paths` the masked fields.
pub async fn update(
    db: &DatabaseConnection,
    feed: &EventFeed,
    caller: &Caller,
    patch: &ContactSettings,
    paths: &[String],
    etag: &str,
    (request_id, hash): (&str, &str),
) -> Result<ContactSettings, ApiError> {
    let txn = events::begin_write(db)
        .await
        .map_err(|e| from_db(e, SETTINGS_NAME))?;
    if !request_id.is_empty()
        && idempotency::lookup(&txn, &caller.tenant, UPDATE_SETTINGS, request_id, hash)
            .await?
            .is_some()
    {
        return get(&txn, &caller.tenant).await;
    }
    let current = row(&txn, &caller.tenant, true).await?;
    let revision = current.as_ref().map_or(0, |r| r.revision);
    names::check_etag(etag, revision, SETTINGS_NAME)?;
    let before = to_message(current.as_ref());
    let mut after = before.clone();
    for path in paths {
        if path == "default_phone_region" {
            after
                .default_phone_region
                .clone_from(&patch.default_phone_region);
        }
    }
    let changes: Vec<FieldChange> = MUTABLE_FIELDS
        .iter()
        .filter(|field| **field == "default_phone_region")
        .filter(|_| before.default_phone_region != after.default_phone_region)
        .map(|field| FieldChange {
            path: (*field).to_owned(),
            old_value: Some(string_value(&before.default_phone_region)),
            new_value: Some(string_value(&after.default_phone_region)),
        })
        .collect();
    if changes.is_empty() {
        return Ok(before);
    }
    let now = now_micros();
    let new_revision = revision + 1;
    let model = settings_row::ActiveModel {
        tenant_id: Set(caller.tenant.clone()),
        default_phone_region: Set(after.default_phone_region.clone()),
        revision: Set(new_revision),
        update_time_us: Set(now),
    };
    let concurrent = || ApiError::Aborted {
        reason: "CONCURRENT_MODIFICATION",
        message: format!("{SETTINGS_NAME} was changed concurrently; retry"),
    };
    if current.is_none() {
        // Two first writers: the loser meets the primary key and is told to retry.
        Settings::insert(model)
            .exec_without_returning(&txn)
            .await
            .map_err(|e| match from_db(e, SETTINGS_NAME) {
                ApiError::AlreadyExists { .. } => concurrent(),
                other => other,
            })?;
    } else {
        let updated = Settings::update_many()
            .set(model)
            .filter(Column::TenantId.eq(caller.tenant.as_str()))
            .filter(Column::Revision.eq(revision))
            .exec(&txn)
            .await
            .map_err(|e| from_db(e, SETTINGS_NAME))?;
        if updated.rows_affected != 1 {
            return Err(concurrent());
        }
    }
    if !request_id.is_empty() {
        idempotency::record(
            &txn,
            &caller.tenant,
            UPDATE_SETTINGS,
            request_id,
            hash,
            SETTINGS_NAME,
        )
        .await
        .map_err(|e| from_db(e, "request"))?;
    }
    after.update_time = Some(micros_to_timestamp(now));
    after.etag = names::etag(new_revision);
    events::append(
        &txn,
        caller,
        NewEvent {
            event_type: SETTINGS_UPDATED,
            resource_name: SETTINGS_NAME.to_owned(),
            changes,
            payload: Some(prost_types::Any {
                type_url: "type.googleapis.com/crm.contact.v1.ContactSettings".into(),
                value: prost::Message::encode_to_vec(&after),
            }),
            request_id: request_id.to_owned(),
        },
    )
    .await
    .map_err(|e| from_db(e, "event"))?;
    txn.commit().await.map_err(|e| from_db(e, SETTINGS_NAME))?;
    feed.committed();
    Ok(after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_codes_are_sorted_unique_and_complete() {
        assert_eq!(REGION_CODES.len(), 249);
        assert!(REGION_CODES.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(normalise_region(" ch ").as_deref(), Ok("CH"));
        assert_eq!(normalise_region("").as_deref(), Ok(""));
        assert!(normalise_region("XX").is_err());
        assert!(normalise_region("CHE").is_err());
        assert!(normalise_region("UK").is_err());
    }
}
