//! Bulk transfer: client-streaming import and server-streaming export of contacts.

use tonic::{Request, Response, Status, Streaming};

use crm_proto::contact::*;

use crate::context::Context;
use crate::grpc::BoxStream;

pub struct TransferApi {
    ctx: Context,
}

impl TransferApi {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    pub async fn import_contacts(
        &self,
        request: Request<Streaming<ImportContactsRequest>>,
    ) -> Result<Response<BoxStream<ImportContactsResponse>>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented("import_contacts is not built yet"))
    }

    pub async fn export_contacts(
        &self,
        request: Request<ExportContactsRequest>,
    ) -> Result<Response<BoxStream<ExportContactsResponse>>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented("export_contacts is not built yet"))
    }
}
