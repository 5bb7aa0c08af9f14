//! Duplicate finding, merge, and the tenant duplicate rules.

pub mod matching;
pub mod migration;

use tonic::{Request, Response, Status};

use crm_proto::contact::*;

use crate::context::Context;

pub struct DuplicatesApi {
    ctx: Context,
}

impl DuplicatesApi {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    pub async fn find_duplicates(
        &self,
        request: Request<FindDuplicatesRequest>,
    ) -> Result<Response<FindDuplicatesResponse>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented("find_duplicates is not built yet"))
    }

    pub async fn merge_contacts(
        &self,
        request: Request<MergeContactsRequest>,
    ) -> Result<Response<MergeContactsResponse>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented("merge_contacts is not built yet"))
    }

    pub async fn get_duplicate_rules(
        &self,
        request: Request<GetDuplicateRulesRequest>,
    ) -> Result<Response<DuplicateRules>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented(
            "get_duplicate_rules is not built yet",
        ))
    }

    pub async fn update_duplicate_rules(
        &self,
        request: Request<UpdateDuplicateRulesRequest>,
    ) -> Result<Response<DuplicateRules>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented(
            "update_duplicate_rules is not built yet",
        ))
    }
}
