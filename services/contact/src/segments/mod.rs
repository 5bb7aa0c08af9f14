//! Segments: saved contact filters (DYNAMIC) and hand-kept lists (STATIC), their
//! members, and the membership helpers merges and the GDPR export call.

mod members;
pub mod migration;
pub mod store;
mod validate;

use prost::Message as _;
use sea_orm::sea_query::Condition;
use tonic::{Request, Response, Status};

use crm_platform::auth::Caller;
use crm_platform::db::{micros_to_timestamp, now_micros};
use crm_platform::filter::{self, FieldKind, FilterField};
use crm_platform::idempotency;
use crm_platform::pagination::{self, PageTokens};
use crm_platform::{ApiError, Violations};
use crm_proto::contact::*;

use crate::context::Context;
use crate::domain::names;
use crate::store::ListQuery;

pub use members::{repoint_contacts, static_segments_for};
use store::{SEGMENTS, SegmentStore, segment_row, to_proto};

/// The fields ListSegments filters on, and their columns.
pub const SEGMENT_FILTER_FIELDS: &[FilterField] = &[
    FilterField {
        name: "display_name",
        column: "display_name",
        kind: FieldKind::Text,
    },
    FilterField {
        name: "type",
        column: "segment_type",
        kind: FieldKind::Enum(validate::parse_type),
    },
    FilterField {
        name: "owner",
        column: "owner",
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
];

pub struct SegmentsApi {
    ctx: Context,
    store: SegmentStore,
}

/// Non-managers may change only segments they own or that are unassigned, and may
/// assign them only to themselves (the rule of contacts).
fn ensure_may_change(
    caller: &Caller,
    current_owner: &str,
    new_owner: &str,
) -> Result<(), ApiError> {
    if !caller.may_change_owned_by(current_owner) {
        return Err(ApiError::permission_denied(
            "only the owner or a manager may change this segment",
        ));
    }
    if new_owner != current_owner && !caller.may_change_owned_by(new_owner) {
        return Err(ApiError::permission_denied(
            "only a manager may assign a segment to someone else",
        ));
    }
    Ok(())
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
    let hash = idempotency::request_hash(&request.encode_to_vec());
    Ok((caller, request, hash))
}

fn parse_name(field: &str, name: &str) -> Result<String, ApiError> {
    names::parse(SEGMENTS, field, name)
}

impl SegmentsApi {
    pub fn new(ctx: Context) -> Self {
        let store = SegmentStore::new(ctx.db.clone(), ctx.feed.clone());
        Self { ctx, store }
    }

    /// The condition on the contacts table that selects the segment's members.
    fn members_condition(
        &self,
        tenant: &str,
        row: &segment_row::Model,
    ) -> Result<Condition, ApiError> {
        if row.segment_type == SegmentType::Static as i32 {
            return Ok(store::static_members(tenant, &row.id));
        }
        match crate::grpc::contact_filter(&row.filter, self.ctx.filter_scope(tenant)) {
            Ok(Some(condition)) => Ok(condition),
            // A dynamic segment always has a filter; an empty one would select everyone.
            Ok(None) | Err(_) => Err(ApiError::FailedPrecondition {
                reason: "SEGMENT_FILTER_INVALID",
                message: format!(
                    "the filter of {} no longer reads; update it",
                    store::segment_name(&row.id)
                ),
            }),
        }
    }

    /// The segment with its member count (soft-deleted and merged contacts excluded).
    async fn counted(&self, tenant: &str, row: &segment_row::Model) -> Result<Segment, ApiError> {
        let mut segment = to_proto(row);
        let condition = self.members_condition(tenant, row);
        segment.member_count = match condition {
            Ok(condition) => {
                self.ctx
                    .contacts
                    .count(tenant, Some(condition), false)
                    .await? as i64
            }
            Err(_) => {
                tracing::warn!(segment = %segment.name, "segment filter no longer reads; count is 0");
                0
            }
        };
        segment.member_count_time = Some(micros_to_timestamp(now_micros()));
        Ok(segment)
    }

    pub async fn create_segment(
        &self,
        request: Request<CreateSegmentRequest>,
    ) -> Result<Response<Segment>, Status> {
        let caller = Caller::from_request(&request)?;
        let request = request.into_inner();
        let hash = idempotency::request_hash(&request.encode_to_vec());
        let mut violations = Violations::new();
        if let Err(ApiError::InvalidArgument(found)) = idempotency::validate(&request.request_id) {
            found
                .into_iter()
                .for_each(|v| violations.add(v.field, v.description));
        }
        let Some(mut segment) = request.segment else {
            return Err(ApiError::invalid("segment", "is required").into());
        };
        segment.display_name = segment.display_name.trim().to_owned();
        validate::segment(&mut violations, "segment", &segment);
        let id = names::chosen_or_new_id(&mut violations, "segment_id", &request.segment_id);
        violations.into_result()?;
        ensure_may_change(&caller, "", &segment.owner)?;
        let now = now_micros();
        let row = segment_row::Model {
            tenant_id: caller.tenant.clone(),
            id,
            display_name: segment.display_name,
            description: segment.description,
            segment_type: segment.r#type,
            filter: segment.filter,
            owner: segment.owner,
            revision: 1,
            create_time_us: now,
            update_time_us: now,
        };
        let stored = if request.validate_only {
            row
        } else {
            self.store
                .create(&caller, row, &request.request_id, &hash)
                .await?
        };
        let segment = self.counted(&caller.tenant, &stored).await?;
        if !request.validate_only {
            tracing::info!(segment = %segment.name, tenant = %caller.tenant, "segment stored");
        }
        Ok(Response::new(segment))
    }

    pub async fn get_segment(
        &self,
        request: Request<GetSegmentRequest>,
    ) -> Result<Response<Segment>, Status> {
        let caller = Caller::from_request(&request)?;
        let id = parse_name("name", &request.get_ref().name)?;
        let row = self
            .store
            .get(&caller.tenant, &id)
            .await?
            .ok_or_else(|| ApiError::not_found(store::segment_name(&id)))?;
        Ok(Response::new(self.counted(&caller.tenant, &row).await?))
    }

    pub async fn list_segments(
        &self,
        request: Request<ListSegmentsRequest>,
    ) -> Result<Response<ListSegmentsResponse>, Status> {
        let caller = Caller::from_request(&request)?;
        let request = request.into_inner();
        let limit = pagination::page_size(request.page_size, 50, 1000)?;
        let order = store::parse_order(&request.order_by)?;
        let condition = filter::condition(
            &request.filter,
            SEGMENT_FILTER_FIELDS,
            self.ctx.filter_scope(&caller.tenant),
        )?;
        let fingerprint =
            PageTokens::fingerprint(&["segments", &request.filter, &request.order_by]);
        let page = self
            .ctx
            .tokens
            .keyset_page(
                &request.page_token,
                &caller.tenant,
                &fingerprint,
                async |after| {
                    self.store
                        .list(&caller.tenant, condition.clone(), &order, after, limit)
                        .await
                },
                async || self.store.count(&caller.tenant, condition.clone()).await,
            )
            .await?;
        // One count per segment on the page: bounded by the page size.
        let mut segments = Vec::with_capacity(page.rows.len());
        for row in &page.rows {
            segments.push(self.counted(&caller.tenant, row).await?);
        }
        Ok(Response::new(ListSegmentsResponse {
            segments,
            total_size: page.total_size_i64(),
            next_page_token: page.next_page_token,
        }))
    }

    pub async fn update_segment(
        &self,
        request: Request<UpdateSegmentRequest>,
    ) -> Result<Response<Segment>, Status> {
        let (caller, request, hash) = mutation(request, |r| &r.request_id)?;
        let Some(patch) = request.segment else {
            return Err(ApiError::invalid("segment", "is required").into());
        };
        let id = parse_name("segment.name", &patch.name)?;
        let paths = validate::mask_paths(request.update_mask.as_ref())?;
        let etag = if request.etag.is_empty() {
            patch.etag.clone()
        } else {
            request.etag.clone()
        };
        let validate_only = request.validate_only;
        let mut preview = None;
        let stored = self
            .store
            .update(&caller, &id, &request.request_id, &hash, |current| {
                let name = store::segment_name(&current.id);
                names::check_etag(&etag, current.revision, &name)?;
                let mut next = to_proto(current);
                validate::apply(&mut next, &patch, &paths);
                ensure_may_change(&caller, &current.owner, &next.owner)?;
                let mut violations = Violations::new();
                validate::segment(&mut violations, "segment", &next);
                violations.into_result()?;
                let row = segment_row::Model {
                    display_name: next.display_name,
                    description: next.description,
                    filter: next.filter,
                    owner: next.owner,
                    update_time_us: now_micros(),
                    ..current.clone()
                };
                if validate_only {
                    preview = Some(row);
                    return Ok(None);
                }
                if store::changes(current, &row).is_empty() {
                    return Ok(None);
                }
                Ok(Some(row))
            })
            .await?;
        let row = preview.unwrap_or(stored);
        Ok(Response::new(self.counted(&caller.tenant, &row).await?))
    }

    pub async fn delete_segment(
        &self,
        request: Request<DeleteSegmentRequest>,
    ) -> Result<Response<DeleteSegmentResponse>, Status> {
        let (caller, request, hash) = mutation(request, |r| &r.request_id)?;
        let id = parse_name("name", &request.name)?;
        self.store
            .delete(&caller, &id, &request.request_id, &hash, |current| {
                names::check_etag(
                    &request.etag,
                    current.revision,
                    &store::segment_name(&current.id),
                )?;
                ensure_may_change(&caller, &current.owner, &current.owner)
            })
            .await?;
        tracing::info!(segment = %store::segment_name(&id), tenant = %caller.tenant, "segment deleted");
        Ok(Response::new(DeleteSegmentResponse {}))
    }

    pub async fn list_segment_members(
        &self,
        request: Request<ListSegmentMembersRequest>,
    ) -> Result<Response<ListSegmentMembersResponse>, Status> {
        let caller = Caller::from_request(&request)?;
        let request = request.into_inner();
        let id = parse_name("segment", &request.segment)?;
        let limit = pagination::page_size(request.page_size, 50, 1000)?;
        let order = crate::grpc::parse_order(&request.order_by)?;
        let extra =
            crate::grpc::contact_filter(&request.filter, self.ctx.filter_scope(&caller.tenant))?;
        let row = self
            .store
            .get(&caller.tenant, &id)
            .await?
            .ok_or_else(|| ApiError::not_found(store::segment_name(&id)))?;
        let mut condition = Condition::all().add(self.members_condition(&caller.tenant, &row)?);
        if let Some(extra) = extra {
            condition = condition.add(extra);
        }
        // Bound to the segment and its filter: a page token of another segment, or of
        // this one before its filter changed, is refused.
        let fingerprint = PageTokens::fingerprint(&[
            "segment members",
            &row.id,
            &row.filter,
            &request.filter,
            &request.order_by,
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
                        filter: Some(condition.clone()),
                        order,
                        after,
                        limit,
                        show_deleted: false,
                    };
                    self.ctx.contacts.list(&caller.tenant, query).await
                },
                async || {
                    let filter = Some(condition.clone());
                    self.ctx.contacts.count(&caller.tenant, filter, false).await
                },
            )
            .await?;
        Ok(Response::new(ListSegmentMembersResponse {
            total_size: page.total_size_i64(),
            contacts: page.rows.into_iter().map(|s| s.contact).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    /// The shared body of Add/RemoveSegmentMembers: the count it reports, and the
    /// member count after the call.
    async fn change_members(
        &self,
        caller: &Caller,
        segment: &str,
        contacts: &[String],
        add: bool,
        (request_id, hash): (&str, &str),
    ) -> Result<(i32, i64), ApiError> {
        let mut violations = Violations::new();
        let id = parse_name("segment", segment).unwrap_or_else(|_| {
            violations.add("segment", "must be segments/{uuid}");
            String::new()
        });
        let ids = match validate::member_ids(contacts) {
            Ok(ids) => ids,
            Err(ApiError::InvalidArgument(found)) => {
                found
                    .into_iter()
                    .for_each(|v| violations.add(v.field, v.description));
                Vec::new()
            }
            Err(other) => return Err(other),
        };
        violations.into_result()?;
        let outcome = self
            .store
            .change_members(caller, &id, &ids, add, (request_id, hash), |row| {
                if row.segment_type != SegmentType::Static as i32 {
                    return Err(ApiError::FailedPrecondition {
                        reason: "SEGMENT_NOT_STATIC",
                        message: format!(
                            "{} is not STATIC; its members follow its filter",
                            store::segment_name(&row.id)
                        ),
                    });
                }
                ensure_may_change(caller, &row.owner, &row.owner)
            })
            .await?;
        let after = self.counted(&caller.tenant, &outcome.segment).await?;
        Ok((outcome.count, after.member_count))
    }

    pub async fn add_segment_members(
        &self,
        request: Request<AddSegmentMembersRequest>,
    ) -> Result<Response<AddSegmentMembersResponse>, Status> {
        let (caller, request, hash) = mutation(request, |r| &r.request_id)?;
        let (added_count, member_count) = self
            .change_members(
                &caller,
                &request.segment,
                &request.contacts,
                true,
                (&request.request_id, &hash),
            )
            .await?;
        Ok(Response::new(AddSegmentMembersResponse {
            added_count,
            member_count,
        }))
    }

    pub async fn remove_segment_members(
        &self,
        request: Request<RemoveSegmentMembersRequest>,
    ) -> Result<Response<RemoveSegmentMembersResponse>, Status> {
        let (caller, request, hash) = mutation(request, |r| &r.request_id)?;
        let (removed_count, member_count) = self
            .change_members(
                &caller,
                &request.segment,
                &request.contacts,
                false,
                (&request.request_id, &hash),
            )
            .await?;
        Ok(Response::new(RemoveSegmentMembersResponse {
            removed_count,
            member_count,
        }))
    }
}
