//! The interaction timeline and its episodes.

pub mod migration;

use tonic::{Request, Response, Status};

use crm_proto::contact::*;

use crate::context::Context;

pub struct TimelineApi {
    ctx: Context,
}

impl TimelineApi {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    pub async fn create_interaction(
        &self,
        request: Request<CreateInteractionRequest>,
    ) -> Result<Response<Interaction>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented("create_interaction is not built yet"))
    }

    pub async fn get_interaction(
        &self,
        request: Request<GetInteractionRequest>,
    ) -> Result<Response<Interaction>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented("get_interaction is not built yet"))
    }

    pub async fn list_interactions(
        &self,
        request: Request<ListInteractionsRequest>,
    ) -> Result<Response<ListInteractionsResponse>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented("list_interactions is not built yet"))
    }

    pub async fn update_interaction(
        &self,
        request: Request<UpdateInteractionRequest>,
    ) -> Result<Response<Interaction>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented("update_interaction is not built yet"))
    }

    pub async fn delete_interaction(
        &self,
        request: Request<DeleteInteractionRequest>,
    ) -> Result<Response<DeleteInteractionResponse>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented("delete_interaction is not built yet"))
    }

    pub async fn create_episode(
        &self,
        request: Request<CreateEpisodeRequest>,
    ) -> Result<Response<Episode>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented("create_episode is not built yet"))
    }

    pub async fn get_episode(
        &self,
        request: Request<GetEpisodeRequest>,
    ) -> Result<Response<Episode>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented("get_episode is not built yet"))
    }

    pub async fn list_episodes(
        &self,
        request: Request<ListEpisodesRequest>,
    ) -> Result<Response<ListEpisodesResponse>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented("list_episodes is not built yet"))
    }

    pub async fn update_episode(
        &self,
        request: Request<UpdateEpisodeRequest>,
    ) -> Result<Response<Episode>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented("update_episode is not built yet"))
    }
}
