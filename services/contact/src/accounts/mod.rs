//! Accounts (companies): standard methods, parent hierarchy, contact links.
//!
//! `mod.rs` holds the gRPC handlers (decode, validate, authorise, then the store);
//! `validate` the rules, `query` filters, orders and field changes, `store` the
//! persistence, `purge` the hard delete of expired accounts.

pub mod migration;
pub mod purge;
pub mod query;
pub mod store;
pub mod validate;

use tonic::{Request, Response, Status};

use crm_platform::auth::Caller;
use crm_platform::db::{micros_to_timestamp, now_micros};
use crm_platform::idempotency;
use crm_platform::pagination::{self, PageTokens};
use crm_platform::{ApiError, Violations};
use crm_proto::contact::*;

use crate::context::Context;
use crate::domain::names;
use store::{Change, ListQuery, StoredAccount, Write};
use validate::account_name;

pub use purge::purge_expired;
pub use store::exists;

const MAX_BATCH: usize = 1000;

pub struct AccountsApi {
    ctx: Context,
}

/// Non-managers may change only accounts they own or that are unassigned, and may
/// assign them only to themselves.
fn ensure_may_change(
    caller: &Caller,
    current_owner: &str,
    new_owner: Option<&str>,
) -> Result<(), ApiError> {
    if !caller.may_change_owned_by(current_owner) {
        return Err(ApiError::permission_denied(
            "only the owner or a manager may change this account",
        ));
    }
    if let Some(owner) = new_owner
        && owner != current_owner
        && !caller.may_change_owned_by(owner)
    {
        return Err(ApiError::permission_denied(
            "only a manager may assign an account to someone else",
        ));
    }
    Ok(())
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

/// Fills the output-only fields of an account being created.
fn prepare_new(account: &mut Account, id: &str) {
    let now = now_micros();
    account.name = account_name(id);
    account.contact_count = 0;
    account.create_time = Some(micros_to_timestamp(now));
    account.update_time = account.create_time;
    account.delete_time = None;
    account.expire_time = None;
    account.etag = names::etag(1);
}

impl AccountsApi {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    /// The account as answered: with its contact count.
    async fn answer(
        &self,
        tenant: &str,
        stored: StoredAccount,
    ) -> Result<Response<Account>, Status> {
        let mut accounts = [stored.account];
        store::with_counts(&self.ctx.db, tenant, &mut accounts).await?;
        let [account] = accounts;
        Ok(Response::new(account))
    }

    pub async fn create_account(
        &self,
        request: Request<CreateAccountRequest>,
    ) -> Result<Response<Account>, Status> {
        let caller = Caller::from_request(&request)?;
        let request = request.into_inner();
        let hash = request_hash(&request);
        let mut violations = Violations::new();
        if let Err(ApiError::InvalidArgument(found)) = idempotency::validate(&request.request_id) {
            found
                .into_iter()
                .for_each(|v| violations.add(v.field, v.description));
        }
        let Some(mut account) = request.account else {
            return Err(ApiError::invalid("account", "is required").into());
        };
        validate::account(&mut violations, "account", &mut account);
        validate::complete(&mut violations, "account", &account);
        let id = names::chosen_or_new_id(&mut violations, "account_id", &request.account_id);
        violations.into_result()?;
        ensure_may_change(&caller, "", Some(&account.owner))?;
        prepare_new(&mut account, &id);
        let write = Write {
            caller: &caller,
            method: "CreateAccount",
            request_id: &request.request_id,
            hash: &hash,
            validate_only: request.validate_only,
        };
        let stored = store::create(&self.ctx.db, &self.ctx.feed, &write, account).await?;
        if !request.validate_only {
            tracing::info!(account = %stored.account.name, tenant = %caller.tenant, "account stored");
        }
        self.answer(&caller.tenant, stored).await
    }

    pub async fn get_account(
        &self,
        request: Request<GetAccountRequest>,
    ) -> Result<Response<Account>, Status> {
        let caller = Caller::from_request(&request)?;
        let id = names::parse(names::ACCOUNTS, "name", &request.get_ref().name)?;
        let stored = store::find(&self.ctx.db, &caller.tenant, &id)
            .await?
            .ok_or_else(|| ApiError::not_found(account_name(&id)))?;
        self.answer(&caller.tenant, stored).await
    }

    pub async fn batch_get_accounts(
        &self,
        request: Request<BatchGetAccountsRequest>,
    ) -> Result<Response<BatchGetAccountsResponse>, Status> {
        let caller = Caller::from_request(&request)?;
        let names_in = &request.get_ref().names;
        if names_in.len() > MAX_BATCH {
            return Err(ApiError::invalid("names", format!("at most {MAX_BATCH} names")).into());
        }
        let mut violations = Violations::new();
        let mut ids = Vec::with_capacity(names_in.len());
        for (i, name) in names_in.iter().enumerate() {
            match names::parse(names::ACCOUNTS, &format!("names[{i}]"), name) {
                Ok(id) => ids.push(id),
                Err(_) => violations.add(format!("names[{i}]"), "must be accounts/{uuid}"),
            }
        }
        violations.into_result()?;
        let found = store::find_many(&self.ctx.db, &caller.tenant, &ids).await?;
        let mut accounts = Vec::with_capacity(ids.len());
        for id in &ids {
            let name = account_name(id);
            let account = found
                .iter()
                .find(|s| s.account.name == name)
                .map(|s| s.account.clone())
                .ok_or_else(|| ApiError::not_found(name))?;
            accounts.push(account);
        }
        store::with_counts(&self.ctx.db, &caller.tenant, &mut accounts).await?;
        Ok(Response::new(BatchGetAccountsResponse { accounts }))
    }

    pub async fn list_accounts(
        &self,
        request: Request<ListAccountsRequest>,
    ) -> Result<Response<ListAccountsResponse>, Status> {
        let caller = Caller::from_request(&request)?;
        let request = request.into_inner();
        let limit = pagination::page_size(request.page_size, 50, 1000)?;
        let order = query::parse_order(&request.order_by)?;
        let condition =
            query::account_filter(&request.filter, self.ctx.filter_scope(&caller.tenant))?;
        let fingerprint = PageTokens::fingerprint(&[
            "accounts",
            &request.filter,
            &request.order_by,
            if request.show_deleted { "deleted" } else { "" },
        ]);
        let page = self
            .ctx
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
                    store::list(&self.ctx.db, &caller.tenant, query).await
                },
                async || {
                    let filter = condition.clone();
                    store::count(&self.ctx.db, &caller.tenant, filter, request.show_deleted).await
                },
            )
            .await?;
        let total_size = page.total_size_i64();
        let mut accounts: Vec<Account> = page.rows.into_iter().map(|s| s.account).collect();
        store::with_counts(&self.ctx.db, &caller.tenant, &mut accounts).await?;
        Ok(Response::new(ListAccountsResponse {
            accounts,
            next_page_token: page.next_page_token,
            total_size,
        }))
    }

    pub async fn update_account(
        &self,
        request: Request<UpdateAccountRequest>,
    ) -> Result<Response<Account>, Status> {
        let (caller, request, hash) = mutation(request, |r| &r.request_id)?;
        let Some(mut patch) = request.account else {
            return Err(ApiError::invalid("account", "is required").into());
        };
        let id = names::parse(names::ACCOUNTS, "account.name", &patch.name)?;
        let paths = validate::mask_paths(request.update_mask.as_ref())?;
        let etag = if request.etag.is_empty() {
            patch.etag.clone()
        } else {
            request.etag.clone()
        };
        // Validate the patch's own fields first, so errors name what the caller sent.
        let mut violations = Violations::new();
        validate::account(&mut violations, "account", &mut patch);
        violations.into_result()?;

        let validate_only = request.validate_only;
        let write = Write {
            caller: &caller,
            method: "UpdateAccount",
            request_id: &request.request_id,
            hash: &hash,
            validate_only,
        };
        let outcome = store::modify(&self.ctx.db, &self.ctx.feed, &write, &id, |current| {
            let name = current.account.name.clone();
            names::check_etag(&etag, current.revision, &name)?;
            if current.account.delete_time.is_some() {
                return Err(ApiError::FailedPrecondition {
                    reason: "ACCOUNT_DELETED",
                    message: format!("{name} is deleted; undelete it first"),
                });
            }
            let mut account = current.account.clone();
            validate::apply_mask(&mut account, &patch, &paths);
            ensure_may_change(&caller, &current.account.owner, Some(&account.owner))?;
            let mut violations = Violations::new();
            validate::complete(&mut violations, "account", &account);
            violations.into_result()?;
            let changes = query::changes(&current.account, &account, &paths);
            if changes.is_empty() {
                return Ok(None);
            }
            account.update_time = Some(micros_to_timestamp(now_micros()));
            Ok(Some(Change {
                account,
                event_type: "crm.contact.v1.AccountUpdated",
                changes,
            }))
        })
        .await;
        let outcome = match outcome {
            // AIP-134: with allow_missing, an update of a missing account creates it.
            Err(ApiError::NotFound { .. }) if request.allow_missing => {
                let mut account = Account::default();
                validate::apply_mask(&mut account, &patch, &paths);
                let mut violations = Violations::new();
                validate::complete(&mut violations, "account", &account);
                violations.into_result()?;
                ensure_may_change(&caller, "", Some(&account.owner))?;
                prepare_new(&mut account, &id);
                store::create(&self.ctx.db, &self.ctx.feed, &write, account).await?
            }
            outcome => outcome?,
        };
        if !validate_only {
            tracing::info!(account = %outcome.account.name, tenant = %caller.tenant, "account updated");
        }
        self.answer(&caller.tenant, outcome).await
    }

    pub async fn delete_account(
        &self,
        request: Request<DeleteAccountRequest>,
    ) -> Result<Response<Account>, Status> {
        let (caller, request, hash) = mutation(request, |r| &r.request_id)?;
        let id = names::parse(names::ACCOUNTS, "name", &request.name)?;
        let write = Write {
            caller: &caller,
            method: "DeleteAccount",
            request_id: &request.request_id,
            hash: &hash,
            validate_only: false,
        };
        let outcome = store::modify(&self.ctx.db, &self.ctx.feed, &write, &id, |current| {
            names::check_etag(&request.etag, current.revision, &current.account.name)?;
            ensure_may_change(&caller, &current.account.owner, None)?;
            if current.account.delete_time.is_some() {
                return Ok(None);
            }
            let now = now_micros();
            let mut account = current.account;
            account.delete_time = Some(micros_to_timestamp(now));
            account.expire_time = Some(micros_to_timestamp(now + store::SOFT_DELETE_RETENTION_US));
            account.update_time = account.delete_time;
            Ok(Some(Change {
                account,
                event_type: "crm.contact.v1.AccountDeleted",
                changes: Vec::new(),
            }))
        })
        .await?;
        tracing::info!(account = %outcome.account.name, tenant = %caller.tenant, "account deleted");
        self.answer(&caller.tenant, outcome).await
    }

    pub async fn undelete_account(
        &self,
        request: Request<UndeleteAccountRequest>,
    ) -> Result<Response<Account>, Status> {
        let (caller, request, hash) = mutation(request, |r| &r.request_id)?;
        let id = names::parse(names::ACCOUNTS, "name", &request.name)?;
        let write = Write {
            caller: &caller,
            method: "UndeleteAccount",
            request_id: &request.request_id,
            hash: &hash,
            validate_only: false,
        };
        let outcome = store::modify(&self.ctx.db, &self.ctx.feed, &write, &id, |current| {
            ensure_may_change(&caller, &current.account.owner, None)?;
            if current.account.delete_time.is_none() {
                return Err(ApiError::AlreadyExists {
                    resource: current.account.name,
                });
            }
            let mut account = current.account;
            account.delete_time = None;
            account.expire_time = None;
            account.update_time = Some(micros_to_timestamp(now_micros()));
            Ok(Some(Change {
                account,
                event_type: "crm.contact.v1.AccountUndeleted",
                changes: Vec::new(),
            }))
        })
        .await?;
        tracing::info!(account = %outcome.account.name, tenant = %caller.tenant, "account undeleted");
        self.answer(&caller.tenant, outcome).await
    }
}
