//! Segments: saved filters and static lists.

pub mod migration;

use tonic::{Request, Response, Status};

use crm_proto::contact::*;

use crate::context::Context;

pub struct SegmentsApi {
    ctx: Context,
}

impl SegmentsApi {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    pub async fn create_segment(
        &self,
        request: Request<CreateSegmentRequest>,
    ) -> Result<Response<Segment>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented("create_segment is not built yet"))
    }

    pub async fn get_segment(
        &self,
        request: Request<GetSegmentRequest>,
    ) -> Result<Response<Segment>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented("get_segment is not built yet"))
    }

    pub async fn list_segments(
        &self,
        request: Request<ListSegmentsRequest>,
    ) -> Result<Response<ListSegmentsResponse>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented("list_segments is not built yet"))
    }

    pub async fn update_segment(
        &self,
        request: Request<UpdateSegmentRequest>,
    ) -> Result<Response<Segment>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented("update_segment is not built yet"))
    }

    pub async fn delete_segment(
        &self,
        request: Request<DeleteSegmentRequest>,
    ) -> Result<Response<DeleteSegmentResponse>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented("delete_segment is not built yet"))
    }

    pub async fn list_segment_members(
        &self,
        request: Request<ListSegmentMembersRequest>,
    ) -> Result<Response<ListSegmentMembersResponse>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented(
            "list_segment_members is not built yet",
        ))
    }

    pub async fn add_segment_members(
        &self,
        request: Request<AddSegmentMembersRequest>,
    ) -> Result<Response<AddSegmentMembersResponse>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented(
            "add_segment_members is not built yet",
        ))
    }

    pub async fn remove_segment_members(
        &self,
        request: Request<RemoveSegmentMembersRequest>,
    ) -> Result<Response<RemoveSegmentMembersResponse>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented(
            "remove_segment_members is not built yet",
        ))
    }
}
