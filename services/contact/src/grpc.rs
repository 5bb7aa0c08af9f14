//! The ContactService over gRPC: decode, validate, authorise, then call the store.
//! The contact methods live here; every other group of methods lives in its own module
//! and is delegated to.

use std::pin::Pin;

use prost::Message as _;
use sea_orm::DbBackend;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crm_platform::auth::Caller;
use crm_platform::cache::{self, CacheHandle};
use crm_platform::db::{micros_to_timestamp, now_micros};
use crm_platform::events::EventFeed;
use crm_platform::filter::{self, FieldKind, FilterField, FilterScope};
use crm_platform::idempotency;
use crm_platform::pagination::{self, PageTokens};
use crm_platform::{ApiError, Violations};
use crm_proto::common::{Event, WatchEventsRequest};
use crm_proto::contact::contact_service_server::ContactService;
use crm_proto::contact::*;

use crate::accounts::AccountsApi;
use crate::audit::AuditApi;
use crate::consent::{ConsentApi, suppression};
use crate::context::Context;
use crate::domain::{mask, names, validate};
use crate::duplicates::{DuplicatesApi, matching};
use crate::policy::{self, PolicyMemory, TenantPolicy};
use crate::privacy::PrivacyApi;
use crate::search::SearchApi;
use crate::segments::SegmentsApi;
use crate::store::{
    self, Change, ContactStore, CreatedWithQuery, ListQuery, SortField, StoredContact,
};
use crate::timeline::TimelineApi;
use crate::transfer::TransferApi;

pub const SERVICE: &str = "contact";
const MAX_BATCH: usize = 1000;
/// The response header that lists likely duplicates of a created contact (WARN).
pub const DUPLICATES_HEADER: &str = "crm-duplicates";

pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The fields ListContacts filters on, and their columns.
pub const CONTACT_FILTER_FIELDS: &[FilterField] = &[
    FilterField {
        name: "given_name",
        column: "given_name",
        kind: FieldKind::Text,
    },
    FilterField {
        name: "family_name",
        column: "family_name",
        kind: FieldKind::Text,
    },
    FilterField {
        name: "display_name",
        column: "display_name",
        kind: FieldKind::Text,
    },
    FilterField {
        name: "email",
        column: "emails_index",
        kind: FieldKind::TenantList,
    },
    FilterField {
        name: "phone",
        column: "phones_index",
        kind: FieldKind::TenantList,
    },
    FilterField {
        name: "tags",
        column: "tags_index",
        kind: FieldKind::TenantList,
    },
    FilterField {
        name: "job_title",
        column: "job_title",
        kind: FieldKind::Text,
    },
    FilterField {
        name: "account",
        column: "account",
        kind: FieldKind::Text,
    },
    FilterField {
        name: "owner",
        column: "owner",
        kind: FieldKind::Text,
    },
    FilterField {
        name: "lifecycle_stage",
        column: "lifecycle_stage",
        kind: FieldKind::Enum(parse_stage),
    },
    FilterField {
        name: "source",
        column: "source",
        kind: FieldKind::Text,
    },
    FilterField {
        name: "language",
        column: "language",
        kind: FieldKind::Text,
    },
    FilterField {
        name: "time_zone",
        column: "time_zone",
        kind: FieldKind::Text,
    },
    FilterField {
        name: "create_time",
        column: "create_time_us",
        kind: FieldKind::Timestamp,
    },
    FilterField {
        name: "update_time",
        column: "update_time_us",
        kind: FieldKind::Timestamp,
    },
    FilterField {
        name: "delete_time",
        column: "delete_time_us",
        kind: FieldKind::Timestamp,
    },
    FilterField {
        name: "attributes.",
        column: "",
        kind: FieldKind::Keyed(crate::index::attribute_condition),
    },
];

/// A ListContacts filter (AIP-160) as a condition on the contacts table for `scope`
/// (also used by segments, search and export); `None` when it is empty.
pub fn contact_filter(
    filter: &str,
    scope: FilterScope,
) -> Result<Option<sea_orm::sea_query::Condition>, ApiError> {
    filter::condition(filter, CONTACT_FILTER_FIELDS, scope)
}

fn parse_stage(name: &str) -> Option<i32> {
    LifecycleStage::from_str_name(name)
        .or_else(|| LifecycleStage::from_str_name(&format!("LIFECYCLE_STAGE_{name}")))
        .map(|stage| stage as i32)
}

pub struct ContactApi {
    store: ContactStore,
    cache: CacheHandle,
    feed: EventFeed,
    tokens: PageTokens,
    db: sea_orm::DatabaseConnection,
    accounts: AccountsApi,
    timeline: TimelineApi,
    consent: ConsentApi,
    segments: SegmentsApi,
    audit: AuditApi,
    duplicates: DuplicatesApi,
    privacy: PrivacyApi,
    search: SearchApi,
    transfer: TransferApi,
    /// The tenant policies CreateContact checks in its insert statement.
    policies: PolicyMemory,
}

impl ContactApi {
    pub fn new(ctx: Context) -> Self {
        Self {
            store: ctx.contacts.clone(),
            cache: ctx.cache.clone(),
            feed: ctx.feed.clone(),
            tokens: ctx.tokens.clone(),
            db: ctx.db.clone(),
            accounts: AccountsApi::new(ctx.clone()),
            timeline: TimelineApi::new(ctx.clone()),
            consent: ConsentApi::new(ctx.clone()),
            segments: SegmentsApi::new(ctx.clone()),
            audit: AuditApi::new(ctx.clone()),
            duplicates: DuplicatesApi::new(ctx.clone()),
            privacy: PrivacyApi::new(ctx.clone()),
            search: SearchApi::new(ctx.clone()),
            transfer: TransferApi::new(ctx),
            policies: PolicyMemory::default(),
        }
    }

    fn cache_key(tenant: &str, id: &str) -> String {
        cache::key(tenant, SERVICE, "contact", id)
    }

    async fn remember(&self, tenant: &str, stored: &StoredContact) {
        remember(&self.cache, tenant, stored).await;
    }

    /// The contact by id through the cache (misses load once).
    async fn load(&self, tenant: &str, id: &str) -> Result<Option<Contact>, ApiError> {
        let store = self.store.clone();
        let cached = self
            .cache
            .get_or_load(&Self::cache_key(tenant, id), || {
                let store = store.clone();
                async move { store.get_encoded(tenant, id).await }
            })
            .await?;
        cached
            .map(|value| Contact::decode(value.bytes.as_ref()).map_err(ApiError::internal))
            .transpose()
    }

    /// A contact's account must be a live account of the tenant.
    async fn check_account(
        &self,
        violations: &mut Violations,
        tenant: &str,
        account: &str,
    ) -> Result<(), ApiError> {
        if account.is_empty() {
            return Ok(());
        }
        let Ok(id) = names::parse(names::ACCOUNTS, "contact.account", account) else {
            // The format is reported by the contact's validation.
            return Ok(());
        };
        if !crate::accounts::exists(&self.db, tenant, &id).await? {
            violations.add("contact.account", "names no account of this tenant");
        }
        Ok(())
    }

    /// Refuses a contact having an email address of a person whose data was erased: a
    /// new contact must not bring them back.
    async fn refuse_erased(
        &self,
        tenant: &str,
        policy: &TenantPolicy,
        contact: &Contact,
    ) -> Result<(), ApiError> {
        let emails: Vec<String> = contact.emails.iter().map(|e| e.address.clone()).collect();
        if suppression::suppressed_with_salt(&self.db, tenant, policy.salt.as_deref(), &emails)
            .await?
            .is_empty()
        {
            return Ok(());
        }
        Err(ApiError::FailedPrecondition {
            reason: "ERASED_PERSON",
            message: "an email address belongs to a person whose data was erased".into(),
        })
    }

    /// The likely duplicates of a contact about to be created; an error when the
    /// tenant's rules block them.
    async fn duplicates_before_create(
        &self,
        tenant: &str,
        rules: &DuplicateRules,
        lookup: &matching::DuplicateLookup,
    ) -> Result<Vec<String>, ApiError> {
        let found = candidate_names(lookup.find(&self.db, tenant, rules).await?);
        if on_create(rules) == DuplicateAction::Block && !found.is_empty() {
            return Err(ApiError::Duplicate {
                message: "the contact looks like existing contacts; see the duplicates metadata"
                    .into(),
                duplicates: found,
            });
        }
        Ok(found)
    }

    /// The likely duplicates of a contact just created, scored from the holders of its
    /// keys that its insert statement read. The contact is stored whatever happens
    /// here, so a failure costs only the warning, not the answer.
    fn duplicates_after_create(
        rules: &DuplicateRules,
        lookup: &matching::DuplicateLookup,
        holders: &[sea_orm::QueryResult],
    ) -> Vec<String> {
        match lookup.candidates(rules, holders) {
            Ok(found) => candidate_names(found),
            Err(err) => {
                tracing::warn!(error = %err, "duplicates of a created contact not scored");
                Vec::new()
            }
        }
    }

    /// A new contact checked on `policy`, ready to insert: validated (phone numbers
    /// read in the policy's region), its owner allowed, no erased person's address,
    /// and its duplicate lookup under the policy's rules. Writes nothing.
    async fn prepare_create(
        &self,
        caller: &Caller,
        request: &mut CreateContactRequest,
        policy: &TenantPolicy,
    ) -> Result<PreparedCreate, Status> {
        let mut violations = Violations::new();
        if let Err(ApiError::InvalidArgument(found)) = idempotency::validate(&request.request_id) {
            found
                .into_iter()
                .for_each(|v| violations.add(v.field, v.description));
        }
        let Some(mut contact) = request.contact.take() else {
            return Err(ApiError::invalid("contact", "is required").into());
        };
        validate::contact_in_region(
            &mut violations,
            "contact",
            &mut contact,
            policy.phone_region.as_deref(),
        );
        validate::identifiable(&mut violations, "contact", &contact);
        self.check_account(&mut violations, &caller.tenant, &contact.account)
            .await?;
        let id = names::chosen_or_new_id(&mut violations, "contact_id", &request.contact_id);
        violations.into_result()?;
        ensure_may_change(caller, "", Some(&contact.owner))?;
        store::prepare_new(&mut contact, &id);
        self.refuse_erased(&caller.tenant, policy, &contact).await?;
        let action = on_create(&policy.rules);
        let lookup = (action != DuplicateAction::Allow)
            .then(|| matching::DuplicateLookup::of(std::slice::from_ref(&contact)))
            .filter(|lookup| !lookup.is_empty());
        Ok(PreparedCreate {
            contact,
            action,
            lookup,
        })
    }

    /// The answer to a create under WARN whose insert statement also read the holders
    /// of its keys (`ContactStore::create_and_query`): one round trip fewer than looking
    /// them up first, and the same ones, since that statement's reads see the tenant as
    /// it was before it.
    async fn answer_warned(
        &self,
        tenant: &str,
        rules: &DuplicateRules,
        lookup: &matching::DuplicateLookup,
        stored: StoredContact,
        holders: &[sea_orm::QueryResult],
    ) -> Response<Contact> {
        let duplicates = Self::duplicates_after_create(rules, lookup, holders);
        self.answer_created(tenant, stored, &duplicates).await
    }

    /// CreateContact on a policy read for it.
    async fn create_contact_under(
        &self,
        caller: &Caller,
        mut request: CreateContactRequest,
        hash: &str,
        policy: &TenantPolicy,
    ) -> Result<Response<Contact>, Status> {
        let PreparedCreate {
            mut contact,
            action,
            lookup,
        } = self.prepare_create(caller, &mut request, policy).await?;
        let rules = &policy.rules;
        if action == DuplicateAction::Warn
            && !request.validate_only
            && request.request_id.is_empty()
            && let Some(lookup) = &lookup
        {
            let query = lookup.holders_query_postgres(&caller.tenant);
            match self
                .store
                .create_and_query(caller, contact, query, None)
                .await?
            {
                CreatedWithQuery::Created(stored, holders) => {
                    let tenant = &caller.tenant;
                    return Ok(self
                        .answer_warned(tenant, rules, lookup, stored, &holders)
                        .await);
                }
                CreatedWithQuery::NotOneStatement(unstored) => contact = unstored,
                CreatedWithQuery::PolicyChanged => {
                    return Err(
                        ApiError::internal("an unguarded create found a policy change").into(),
                    );
                }
            }
        }
        let duplicates = match &lookup {
            Some(lookup) => {
                self.duplicates_before_create(&caller.tenant, rules, lookup)
                    .await?
            }
            None => Vec::new(),
        };
        if request.validate_only {
            return Ok(with_duplicates(Response::new(contact), &duplicates));
        }
        let stored = self
            .store
            .create(caller, contact, &request.request_id, hash)
            .await?;
        Ok(self
            .answer_created(&caller.tenant, stored, &duplicates)
            .await)
    }

    /// CreateContact on the policy this process remembers of the tenant, where the
    /// insert statement can check it (Postgres, WARN, no request id). `None` when that
    /// create was not made, having written nothing: the policy differs from the stored
    /// one, the contact needs another kind of create, or it was refused on the
    /// remembered policy (a refusal is for the policy read now to give). An error is
    /// that of the insert statement, which may have been written.
    async fn create_contact_on_remembered(
        &self,
        caller: &Caller,
        request: &CreateContactRequest,
    ) -> Result<Option<Response<Contact>>, Status> {
        if self.db.get_database_backend() != DbBackend::Postgres
            || request.validate_only
            || !request.request_id.is_empty()
        {
            return Ok(None);
        }
        // Rules other than WARN need the lookup before the insert: no use preparing.
        let Some(policy) = self
            .policies
            .remembered(&caller.tenant)
            .filter(|policy| on_create(&policy.rules) == DuplicateAction::Warn)
        else {
            return Ok(None);
        };
        let mut request = request.clone();
        let Ok(PreparedCreate {
            contact,
            action: DuplicateAction::Warn,
            lookup: Some(lookup),
        }) = self.prepare_create(caller, &mut request, &policy).await
        else {
            return Ok(None);
        };
        let guard = Box::new(policy::guard_postgres(&caller.tenant, &policy));
        let query = lookup.holders_query_postgres(&caller.tenant);
        Ok(
            match self
                .store
                .create_and_query(caller, contact, query, Some(guard))
                .await?
            {
                CreatedWithQuery::Created(stored, holders) => {
                    let tenant = &caller.tenant;
                    Some(
                        self.answer_warned(tenant, &policy.rules, &lookup, stored, &holders)
                            .await,
                    )
                }
                CreatedWithQuery::NotOneStatement(_) | CreatedWithQuery::PolicyChanged => None,
            },
        )
    }

    /// The answer to a create that stored its contact.
    async fn answer_created(
        &self,
        tenant: &str,
        stored: StoredContact,
        duplicates: &[String],
    ) -> Response<Contact> {
        self.remember(tenant, &stored).await;
        tracing::info!(contact = %stored.contact.name, tenant = %tenant, "contact stored");
        // A retried request id answers with the contact its first call stored, which
        // the lookup before it found as a stored look-alike: not a duplicate of itself.
        let others: Vec<String> = duplicates
            .iter()
            .filter(|name| **name != stored.contact.name)
            .cloned()
            .collect();
        with_duplicates(Response::new(stored.contact), &others)
    }

    /// UpdateContact with `allow_missing` on a contact that does not exist.
    async fn create_missing(
        &self,
        caller: &Caller,
        patch: &Contact,
        paths: &[String],
        id: &str,
        (request_id, hash, validate_only): (&str, &str, bool),
    ) -> Result<Response<Contact>, Status> {
        let mut contact = Contact::default();
        mask::apply(&mut contact, patch, paths);
        let mut violations = Violations::new();
        validate::identifiable(&mut violations, "contact", &contact);
        violations.into_result()?;
        ensure_may_change(caller, "", Some(&contact.owner))?;
        store::prepare_new(&mut contact, id);
        if validate_only {
            return Ok(Response::new(contact));
        }
        let stored = self.store.create(caller, contact, request_id, hash).await?;
        self.remember(&caller.tenant, &stored).await;
        Ok(Response::new(stored.contact))
    }
}

/// Puts a contact just written into the cache, so this process never reads an older
/// version of it afterwards.
pub(crate) async fn remember(cache: &CacheHandle, tenant: &str, stored: &StoredContact) {
    let id = stored.contact.name.trim_start_matches("contacts/");
    cache
        .written(
            &ContactApi::cache_key(tenant, id),
            stored.revision,
            &stored.contact.encode_to_vec(),
        )
        .await;
}

/// A contact ready to insert, with what its duplicate check needs
/// ([`ContactApi::prepare_create`]).
struct PreparedCreate {
    contact: Contact,
    action: DuplicateAction,
    lookup: Option<matching::DuplicateLookup>,
}

/// The response, with the likely duplicates of a created contact in its metadata.
fn with_duplicates(mut response: Response<Contact>, duplicates: &[String]) -> Response<Contact> {
    if !duplicates.is_empty()
        && let Ok(value) = duplicates.join(",").parse()
    {
        response.metadata_mut().insert(DUPLICATES_HEADER, value);
    }
    response
}

/// The names of the candidates found for one or more probes.
fn candidate_names(found: Vec<Vec<matching::Candidate>>) -> Vec<String> {
    found.into_iter().flatten().map(|c| c.contact).collect()
}

/// What the tenant's rules do with a create that looks like stored contacts.
fn on_create(rules: &DuplicateRules) -> DuplicateAction {
    DuplicateAction::try_from(rules.on_create).unwrap_or(DuplicateAction::Warn)
}

/// Non-managers may change only contacts they own or that are unassigned, and may
/// assign them only to themselves.
pub(crate) fn ensure_may_change(
    caller: &Caller,
    current_owner: &str,
    new_owner: Option<&str>,
) -> Result<(), ApiError> {
    if !caller.may_change_owned_by(current_owner) {
        return Err(ApiError::permission_denied(
            "only the owner or a manager may change this contact",
        ));
    }
    if let Some(owner) = new_owner
        && owner != current_owner
        && !caller.may_change_owned_by(owner)
    {
        return Err(ApiError::permission_denied(
            "only a manager may assign a contact to someone else",
        ));
    }
    Ok(())
}

fn record_stage_change(before: i32, after: &mut Contact, now: i64) {
    if after.lifecycle_stage != before && after.lifecycle_stage != 0 {
        after.stage_history.push(StageChange {
            stage: after.lifecycle_stage,
            enter_time: Some(micros_to_timestamp(now)),
        });
    }
}

fn request_hash<M: prost::Message>(message: &M) -> String {
    idempotency::request_hash(&message.encode_to_vec())
}

/// The start of every mutation: the caller, the request, its hash for replays, and its
/// request id checked.
fn mutation<M: prost::Message>(
    request: Request<M>,
    request_id: impl Fn(&M) -> &str,
) -> Result<(Caller, M, String), Status> {
    let caller = Caller::from_request(&request)?;
    let request = request.into_inner();
    idempotency::validate(request_id(&request))?;
    let hash = request_hash(&request);
    Ok((caller, request, hash))
}

/// Parses `order_by` ("family_name, create_time desc"); the id ends every order.
pub(crate) fn parse_order(order_by: &str) -> Result<Vec<(SortField, bool)>, ApiError> {
    let mut order = Vec::new();
    for part in order_by.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut words = part.split_whitespace();
        let field_name = words.next().unwrap_or_default();
        let descending = match words.next() {
            None | Some("asc") => false,
            Some("desc") => true,
            Some(other) => {
                return Err(ApiError::invalid(
                    "order_by",
                    format!("unknown direction {other:?}"),
                ));
            }
        };
        if words.next().is_some() {
            return Err(ApiError::invalid(
                "order_by",
                format!("cannot read {part:?}"),
            ));
        }
        let field = SortField::parse(field_name).ok_or_else(|| {
            ApiError::invalid(
                "order_by",
                format!(
                    "cannot sort by {field_name:?}; use create_time, update_time, given_name, family_name, display_name or name"
                ),
            )
        })?;
        if order.iter().any(|(f, _)| *f == field) {
            return Err(ApiError::invalid(
                "order_by",
                format!("{field_name} appears twice"),
            ));
        }
        order.push((field, descending));
    }
    if order.len() > 3 {
        return Err(ApiError::invalid("order_by", "at most 3 fields"));
    }
    if order.is_empty() {
        order.push((SortField::CreateTime, false));
    }
    if !order.iter().any(|(f, _)| *f == SortField::Id) {
        order.push((SortField::Id, false));
    }
    Ok(order)
}

#[tonic::async_trait]
impl ContactService for ContactApi {
    async fn create_contact(
        &self,
        request: Request<CreateContactRequest>,
    ) -> Result<Response<Contact>, Status> {
        let caller = Caller::from_request(&request)?;
        let request = request.into_inner();
        let hash = request_hash(&request);
        if let Some(created) = self.create_contact_on_remembered(&caller, &request).await? {
            return Ok(created);
        }
        let policy = self.policies.load(&self.db, &caller.tenant).await?;
        self.create_contact_under(&caller, request, &hash, &policy)
            .await
    }

    async fn get_contact(
        &self,
        request: Request<GetContactRequest>,
    ) -> Result<Response<Contact>, Status> {
        let caller = Caller::from_request(&request)?;
        let id = names::parse(names::CONTACTS, "name", &request.get_ref().name)?;
        let mut contact = self
            .load(&caller.tenant, &id)
            .await?
            .ok_or_else(|| ApiError::not_found(names::contact_name(&id)))?;
        // A merged contact redirects to the one it was merged into.
        if !contact.merged_into.is_empty() {
            let winner = names::parse(names::CONTACTS, "name", &contact.merged_into)?;
            contact = self
                .load(&caller.tenant, &winner)
                .await?
                .ok_or_else(|| ApiError::not_found(names::contact_name(&winner)))?;
        }
        Ok(Response::new(contact))
    }

    async fn batch_get_contacts(
        &self,
        request: Request<BatchGetContactsRequest>,
    ) -> Result<Response<BatchGetContactsResponse>, Status> {
        let caller = Caller::from_request(&request)?;
        let names_in = &request.get_ref().names;
        if names_in.len() > MAX_BATCH {
            return Err(ApiError::invalid("names", format!("at most {MAX_BATCH} names")).into());
        }
        let mut violations = Violations::new();
        let mut ids = Vec::with_capacity(names_in.len());
        for (i, name) in names_in.iter().enumerate() {
            match names::parse(names::CONTACTS, &format!("names[{i}]"), name) {
                Ok(id) => ids.push(id),
                Err(_) => violations.add(format!("names[{i}]"), "must be contacts/{uuid}"),
            }
        }
        violations.into_result()?;
        let found = self.store.get_many(&caller.tenant, &ids).await?;
        let mut contacts = Vec::with_capacity(ids.len());
        for id in &ids {
            let contact = found
                .iter()
                .find(|s| s.contact.name.ends_with(id.as_str()))
                .map(|s| s.contact.clone())
                .ok_or_else(|| ApiError::not_found(names::contact_name(id)))?;
            contacts.push(contact);
        }
        Ok(Response::new(BatchGetContactsResponse { contacts }))
    }

    async fn list_contacts(
        &self,
        request: Request<ListContactsRequest>,
    ) -> Result<Response<ListContactsResponse>, Status> {
        let caller = Caller::from_request(&request)?;
        let request = request.into_inner();
        let limit = pagination::page_size(request.page_size, 50, 1000)?;
        let order = parse_order(&request.order_by)?;
        let condition = contact_filter(
            &request.filter,
            FilterScope {
                backend: self.db.get_database_backend(),
                tenant: &caller.tenant,
            },
        )?;
        let fingerprint = PageTokens::fingerprint(&[
            &request.filter,
            &request.order_by,
            if request.show_deleted { "deleted" } else { "" },
        ]);
        let page = self
            .tokens
            .keyset_page(
                &request.page_token,
                &caller.tenant,
                &fingerprint,
                async |after| {
                    let query = ListQuery {
                        filter: condition.clone(),
                        order,
                        after,
                        limit,
                        show_deleted: request.show_deleted,
                    };
                    self.store.list(&caller.tenant, query).await
                },
                async || {
                    let filter = condition.clone();
                    self.store
                        .count(&caller.tenant, filter, request.show_deleted)
                        .await
                },
            )
            .await?;
        Ok(Response::new(ListContactsResponse {
            total_size: page.total_size_i64(),
            contacts: page.rows.into_iter().map(|s| s.contact).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn update_contact(
        &self,
        request: Request<UpdateContactRequest>,
    ) -> Result<Response<Contact>, Status> {
        let (caller, request, hash) = mutation(request, |r| &r.request_id)?;
        let Some(mut patch) = request.contact else {
            return Err(ApiError::invalid("contact", "is required").into());
        };
        let id = names::parse(names::CONTACTS, "contact.name", &patch.name)?;
        let paths = mask::paths(request.update_mask.as_ref())?;
        let etag = if request.etag.is_empty() {
            patch.etag.clone()
        } else {
            request.etag.clone()
        };
        // Validate the patch's own fields first, so errors name what the caller sent.
        let mut violations = Violations::new();
        // The region only reads numbers: a patch without any needs no lookup.
        let region = if patch.phones.is_empty() {
            None
        } else {
            crate::consent::default_phone_region(&self.db, &caller.tenant).await?
        };
        validate::contact_in_region(&mut violations, "contact", &mut patch, region.as_deref());
        if paths.iter().any(|p| p == "account") {
            self.check_account(&mut violations, &caller.tenant, &patch.account)
                .await?;
        }
        violations.into_result()?;

        let validate_only = request.validate_only;
        let mut preview = None;
        let outcome = self
            .store
            .modify(
                &caller,
                &id,
                "UpdateContact",
                &request.request_id,
                &hash,
                |current| {
                    let name = current.contact.name.clone();
                    names::check_etag(&etag, current.revision, &name)?;
                    if current.contact.delete_time.is_some() {
                        return Err(ApiError::FailedPrecondition {
                            reason: "CONTACT_DELETED",
                            message: format!("{name} is deleted; undelete it first"),
                        });
                    }
                    if !current.contact.merged_into.is_empty() {
                        return Err(ApiError::FailedPrecondition {
                            reason: "CONTACT_MERGED",
                            message: format!(
                                "{name} was merged into {}",
                                current.contact.merged_into
                            ),
                        });
                    }
                    let mut contact = current.contact.clone();
                    mask::apply(&mut contact, &patch, &paths);
                    ensure_may_change(&caller, &current.contact.owner, Some(&contact.owner))?;
                    let mut violations = Violations::new();
                    validate::identifiable(&mut violations, "contact", &contact);
                    violations.into_result()?;
                    let now = now_micros();
                    record_stage_change(current.contact.lifecycle_stage, &mut contact, now);
                    contact.display_name = validate::display_name(&contact);
                    let changes = store::changes(&current.contact, &contact, &paths);
                    if validate_only {
                        preview = Some(contact);
                        return Ok(None);
                    }
                    if changes.is_empty() {
                        return Ok(None);
                    }
                    contact.update_time = Some(micros_to_timestamp(now));
                    Ok(Some(Change {
                        contact,
                        event_type: "crm.contact.v1.ContactUpdated",
                        changes,
                    }))
                },
            )
            .await;
        let outcome = match outcome {
            // AIP-134: with allow_missing, an update of a missing contact creates it.
            Err(ApiError::NotFound { .. }) if request.allow_missing => {
                return self
                    .create_missing(
                        &caller,
                        &patch,
                        &paths,
                        &id,
                        (&request.request_id, &hash, validate_only),
                    )
                    .await;
            }
            outcome => outcome?,
        };
        if let Some(contact) = preview {
            return Ok(Response::new(contact));
        }
        self.remember(&caller.tenant, &outcome).await;
        Ok(Response::new(outcome.contact))
    }

    async fn delete_contact(
        &self,
        request: Request<DeleteContactRequest>,
    ) -> Result<Response<Contact>, Status> {
        let (caller, request, hash) = mutation(request, |r| &r.request_id)?;
        let id = names::parse(names::CONTACTS, "name", &request.name)?;
        let outcome = self
            .store
            .modify(
                &caller,
                &id,
                "DeleteContact",
                &request.request_id,
                &hash,
                |current| {
                    names::check_etag(&request.etag, current.revision, &current.contact.name)?;
                    ensure_may_change(&caller, &current.contact.owner, None)?;
                    if current.contact.delete_time.is_some() {
                        return Ok(None);
                    }
                    let now = now_micros();
                    let mut contact = current.contact;
                    contact.delete_time = Some(micros_to_timestamp(now));
                    contact.expire_time =
                        Some(micros_to_timestamp(now + store::SOFT_DELETE_RETENTION_US));
                    contact.update_time = contact.delete_time;
                    Ok(Some(Change {
                        contact,
                        event_type: "crm.contact.v1.ContactDeleted",
                        changes: Vec::new(),
                    }))
                },
            )
            .await?;
        self.remember(&caller.tenant, &outcome).await;
        Ok(Response::new(outcome.contact))
    }

    async fn undelete_contact(
        &self,
        request: Request<UndeleteContactRequest>,
    ) -> Result<Response<Contact>, Status> {
        let (caller, request, hash) = mutation(request, |r| &r.request_id)?;
        let id = names::parse(names::CONTACTS, "name", &request.name)?;
        let outcome = self
            .store
            .modify(
                &caller,
                &id,
                "UndeleteContact",
                &request.request_id,
                &hash,
                |current| {
                    ensure_may_change(&caller, &current.contact.owner, None)?;
                    if current.contact.delete_time.is_none() {
                        return Err(ApiError::AlreadyExists {
                            resource: current.contact.name,
                        });
                    }
                    let mut contact = current.contact;
                    contact.delete_time = None;
                    contact.expire_time = None;
                    contact.update_time = Some(micros_to_timestamp(now_micros()));
                    Ok(Some(Change {
                        contact,
                        event_type: "crm.contact.v1.ContactUndeleted",
                        changes: Vec::new(),
                    }))
                },
            )
            .await?;
        self.remember(&caller.tenant, &outcome).await;
        Ok(Response::new(outcome.contact))
    }

    async fn create_account(
        &self,
        request: Request<CreateAccountRequest>,
    ) -> Result<Response<Account>, Status> {
        self.accounts.create_account(request).await
    }

    async fn get_account(
        &self,
        request: Request<GetAccountRequest>,
    ) -> Result<Response<Account>, Status> {
        self.accounts.get_account(request).await
    }

    async fn batch_get_accounts(
        &self,
        request: Request<BatchGetAccountsRequest>,
    ) -> Result<Response<BatchGetAccountsResponse>, Status> {
        self.accounts.batch_get_accounts(request).await
    }

    async fn list_accounts(
        &self,
        request: Request<ListAccountsRequest>,
    ) -> Result<Response<ListAccountsResponse>, Status> {
        self.accounts.list_accounts(request).await
    }

    async fn update_account(
        &self,
        request: Request<UpdateAccountRequest>,
    ) -> Result<Response<Account>, Status> {
        self.accounts.update_account(request).await
    }

    async fn delete_account(
        &self,
        request: Request<DeleteAccountRequest>,
    ) -> Result<Response<Account>, Status> {
        self.accounts.delete_account(request).await
    }

    async fn undelete_account(
        &self,
        request: Request<UndeleteAccountRequest>,
    ) -> Result<Response<Account>, Status> {
        self.accounts.undelete_account(request).await
    }

    async fn create_interaction(
        &self,
        request: Request<CreateInteractionRequest>,
    ) -> Result<Response<Interaction>, Status> {
        self.timeline.create_interaction(request).await
    }

    async fn get_interaction(
        &self,
        request: Request<GetInteractionRequest>,
    ) -> Result<Response<Interaction>, Status> {
        self.timeline.get_interaction(request).await
    }

    async fn list_interactions(
        &self,
        request: Request<ListInteractionsRequest>,
    ) -> Result<Response<ListInteractionsResponse>, Status> {
        self.timeline.list_interactions(request).await
    }

    async fn update_interaction(
        &self,
        request: Request<UpdateInteractionRequest>,
    ) -> Result<Response<Interaction>, Status> {
        self.timeline.update_interaction(request).await
    }

    async fn delete_interaction(
        &self,
        request: Request<DeleteInteractionRequest>,
    ) -> Result<Response<DeleteInteractionResponse>, Status> {
        self.timeline.delete_interaction(request).await
    }

    async fn create_episode(
        &self,
        request: Request<CreateEpisodeRequest>,
    ) -> Result<Response<Episode>, Status> {
        self.timeline.create_episode(request).await
    }

    async fn get_episode(
        &self,
        request: Request<GetEpisodeRequest>,
    ) -> Result<Response<Episode>, Status> {
        self.timeline.get_episode(request).await
    }

    async fn list_episodes(
        &self,
        request: Request<ListEpisodesRequest>,
    ) -> Result<Response<ListEpisodesResponse>, Status> {
        self.timeline.list_episodes(request).await
    }

    async fn update_episode(
        &self,
        request: Request<UpdateEpisodeRequest>,
    ) -> Result<Response<Episode>, Status> {
        self.timeline.update_episode(request).await
    }

    async fn record_consent(
        &self,
        request: Request<RecordConsentRequest>,
    ) -> Result<Response<ConsentRecord>, Status> {
        self.consent.record_consent(request).await
    }

    async fn get_consent(
        &self,
        request: Request<GetConsentRequest>,
    ) -> Result<Response<GetConsentResponse>, Status> {
        self.consent.get_consent(request).await
    }

    async fn list_consent_history(
        &self,
        request: Request<ListConsentHistoryRequest>,
    ) -> Result<Response<ListConsentHistoryResponse>, Status> {
        self.consent.list_consent_history(request).await
    }

    async fn get_contact_settings(
        &self,
        request: Request<GetContactSettingsRequest>,
    ) -> Result<Response<ContactSettings>, Status> {
        self.consent.get_contact_settings(request).await
    }

    async fn update_contact_settings(
        &self,
        request: Request<UpdateContactSettingsRequest>,
    ) -> Result<Response<ContactSettings>, Status> {
        self.consent.update_contact_settings(request).await
    }

    async fn create_segment(
        &self,
        request: Request<CreateSegmentRequest>,
    ) -> Result<Response<Segment>, Status> {
        self.segments.create_segment(request).await
    }

    async fn get_segment(
        &self,
        request: Request<GetSegmentRequest>,
    ) -> Result<Response<Segment>, Status> {
        self.segments.get_segment(request).await
    }

    async fn list_segments(
        &self,
        request: Request<ListSegmentsRequest>,
    ) -> Result<Response<ListSegmentsResponse>, Status> {
        self.segments.list_segments(request).await
    }

    async fn update_segment(
        &self,
        request: Request<UpdateSegmentRequest>,
    ) -> Result<Response<Segment>, Status> {
        self.segments.update_segment(request).await
    }

    async fn delete_segment(
        &self,
        request: Request<DeleteSegmentRequest>,
    ) -> Result<Response<DeleteSegmentResponse>, Status> {
        self.segments.delete_segment(request).await
    }

    async fn list_segment_members(
        &self,
        request: Request<ListSegmentMembersRequest>,
    ) -> Result<Response<ListSegmentMembersResponse>, Status> {
        self.segments.list_segment_members(request).await
    }

    async fn add_segment_members(
        &self,
        request: Request<AddSegmentMembersRequest>,
    ) -> Result<Response<AddSegmentMembersResponse>, Status> {
        self.segments.add_segment_members(request).await
    }

    async fn remove_segment_members(
        &self,
        request: Request<RemoveSegmentMembersRequest>,
    ) -> Result<Response<RemoveSegmentMembersResponse>, Status> {
        self.segments.remove_segment_members(request).await
    }

    async fn get_record_history(
        &self,
        request: Request<GetRecordHistoryRequest>,
    ) -> Result<Response<GetRecordHistoryResponse>, Status> {
        self.audit.get_record_history(request).await
    }

    async fn list_audit_events(
        &self,
        request: Request<ListAuditEventsRequest>,
    ) -> Result<Response<ListAuditEventsResponse>, Status> {
        self.audit.list_audit_events(request).await
    }

    async fn find_duplicates(
        &self,
        request: Request<FindDuplicatesRequest>,
    ) -> Result<Response<FindDuplicatesResponse>, Status> {
        self.duplicates.find_duplicates(request).await
    }

    async fn merge_contacts(
        &self,
        request: Request<MergeContactsRequest>,
    ) -> Result<Response<MergeContactsResponse>, Status> {
        self.duplicates.merge_contacts(request).await
    }

    async fn get_duplicate_rules(
        &self,
        request: Request<GetDuplicateRulesRequest>,
    ) -> Result<Response<DuplicateRules>, Status> {
        self.duplicates.get_duplicate_rules(request).await
    }

    async fn update_duplicate_rules(
        &self,
        request: Request<UpdateDuplicateRulesRequest>,
    ) -> Result<Response<DuplicateRules>, Status> {
        self.duplicates.update_duplicate_rules(request).await
    }

    async fn export_personal_data(
        &self,
        request: Request<ExportPersonalDataRequest>,
    ) -> Result<Response<ExportPersonalDataResponse>, Status> {
        self.privacy.export_personal_data(request).await
    }

    async fn erase_personal_data(
        &self,
        request: Request<ErasePersonalDataRequest>,
    ) -> Result<Response<ErasePersonalDataResponse>, Status> {
        self.privacy.erase_personal_data(request).await
    }

    async fn search_contacts(
        &self,
        request: Request<SearchContactsRequest>,
    ) -> Result<Response<SearchContactsResponse>, Status> {
        self.search.search_contacts(request).await
    }

    async fn import_contacts(
        &self,
        request: Request<tonic::Streaming<ImportContactsRequest>>,
    ) -> Result<Response<BoxStream<ImportContactsResponse>>, Status> {
        self.transfer.import_contacts(request).await
    }

    async fn export_contacts(
        &self,
        request: Request<ExportContactsRequest>,
    ) -> Result<Response<BoxStream<ExportContactsResponse>>, Status> {
        self.transfer.export_contacts(request).await
    }

    async fn watch_events(
        &self,
        request: Request<WatchEventsRequest>,
    ) -> Result<Response<BoxStream<Event>>, Status> {
        let caller = Caller::from_request(&request)?;
        let stream = self.feed.watch(&caller, request.into_inner()).await?;
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders() {
        assert_eq!(
            parse_order("").unwrap(),
            [(SortField::CreateTime, false), (SortField::Id, false)]
        );
        assert_eq!(
            parse_order("family_name desc, name").unwrap(),
            [(SortField::FamilyName, true), (SortField::Id, false)]
        );
        assert!(parse_order("email").is_err());
        assert!(parse_order("family_name sideways").is_err());
        assert!(parse_order("family_name, family_name").is_err());
    }

    #[test]
    fn stages_parse_with_or_without_prefix() {
        assert_eq!(
            parse_stage("CUSTOMER"),
            Some(LifecycleStage::Customer as i32)
        );
        assert_eq!(
            parse_stage("LIFECYCLE_STAGE_LEAD"),
            Some(LifecycleStage::Lead as i32)
        );
        assert_eq!(parse_stage("PROSPECT"), None);
    }
}
