//! GDPR access and erasure.

use tonic::{Request, Response, Status};

use crm_proto::contact::*;

use crate::context::Context;

pub struct PrivacyApi {
    ctx: Context,
}

impl PrivacyApi {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    pub async fn export_personal_data(
        &self,
        request: Request<ExportPersonalDataRequest>,
    ) -> Result<Response<ExportPersonalDataResponse>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented(
            "export_personal_data is not built yet",
        ))
    }

    pub async fn erase_personal_data(
        &self,
        request: Request<ErasePersonalDataRequest>,
    ) -> Result<Response<ErasePersonalDataResponse>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented(
            "erase_personal_data is not built yet",
        ))
    }
}
