//! What every part of the contact service shares: the database, the event feed, the
//! cache, page tokens, and the contact store the other resources refer to.

use sea_orm::DatabaseConnection;

use crm_platform::cache::CacheHandle;
use crm_platform::events::EventFeed;
use crm_platform::filter::FilterScope;
use crm_platform::pagination::PageTokens;

use crate::store::ContactStore;

#[derive(Clone)]
pub struct Context {
    pub db: DatabaseConnection,
    pub feed: EventFeed,
    pub cache: CacheHandle,
    pub tokens: PageTokens,
    pub contacts: ContactStore,
}

impl Context {
    /// Filters of `tenant`'s listings, for this service's database.
    pub fn filter_scope<'a>(&self, tenant: &'a str) -> FilterScope<'a> {
        FilterScope {
            backend: self.db.get_database_backend(),
            tenant,
        }
    }
}
