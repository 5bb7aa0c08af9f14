//! Consent per channel and purpose, with its full history, and the tenant settings.

pub mod migration;
pub mod suppression;

use tonic::{Request, Response, Status};

use crm_proto::contact::*;

use crate::context::Context;

pub struct ConsentApi {
    ctx: Context,
}

impl ConsentApi {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    pub async fn record_consent(
        &self,
        request: Request<RecordConsentRequest>,
    ) -> Result<Response<ConsentRecord>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented("record_consent is not built yet"))
    }

    pub async fn get_consent(
        &self,
        request: Request<GetConsentRequest>,
    ) -> Result<Response<GetConsentResponse>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented("get_consent is not built yet"))
    }

    pub async fn list_consent_history(
        &self,
        request: Request<ListConsentHistoryRequest>,
    ) -> Result<Response<ListConsentHistoryResponse>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented(
            "list_consent_history is not built yet",
        ))
    }

    pub async fn get_contact_settings(
        &self,
        request: Request<GetContactSettingsRequest>,
    ) -> Result<Response<ContactSettings>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented(
            "get_contact_settings is not built yet",
        ))
    }

    pub async fn update_contact_settings(
        &self,
        request: Request<UpdateContactSettingsRequest>,
    ) -> Result<Response<ContactSettings>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented(
            "update_contact_settings is not built yet",
        ))
    }
}
