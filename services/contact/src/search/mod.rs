//! Ranked, prefix- and typo-tolerant contact search.

use tonic::{Request, Response, Status};

use crm_proto::contact::*;

use crate::context::Context;

pub struct SearchApi {
    ctx: Context,
}

impl SearchApi {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    pub async fn search_contacts(
        &self,
        request: Request<SearchContactsRequest>,
    ) -> Result<Response<SearchContactsResponse>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented("search_contacts is not built yet"))
    }
}
