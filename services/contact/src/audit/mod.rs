//! Audit history, read from the outbox (the event feed).

use tonic::{Request, Response, Status};

use crm_proto::contact::*;

use crate::context::Context;

pub struct AuditApi {
    ctx: Context,
}

impl AuditApi {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    pub async fn get_record_history(
        &self,
        request: Request<GetRecordHistoryRequest>,
    ) -> Result<Response<GetRecordHistoryResponse>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented("get_record_history is not built yet"))
    }

    pub async fn list_audit_events(
        &self,
        request: Request<ListAuditEventsRequest>,
    ) -> Result<Response<ListAuditEventsResponse>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented("list_audit_events is not built yet"))
    }
}
