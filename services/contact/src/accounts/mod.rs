//! Accounts (companies): standard methods, parent hierarchy, contact links.

pub mod migration;

use tonic::{Request, Response, Status};

use crm_proto::contact::*;

use crate::context::Context;

pub struct AccountsApi {
    ctx: Context,
}

impl AccountsApi {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    pub async fn create_account(
        &self,
        request: Request<CreateAccountRequest>,
    ) -> Result<Response<Account>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented("create_account is not built yet"))
    }

    pub async fn get_account(
        &self,
        request: Request<GetAccountRequest>,
    ) -> Result<Response<Account>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented("get_account is not built yet"))
    }

    pub async fn batch_get_accounts(
        &self,
        request: Request<BatchGetAccountsRequest>,
    ) -> Result<Response<BatchGetAccountsResponse>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented("batch_get_accounts is not built yet"))
    }

    pub async fn list_accounts(
        &self,
        request: Request<ListAccountsRequest>,
    ) -> Result<Response<ListAccountsResponse>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented("list_accounts is not built yet"))
    }

    pub async fn update_account(
        &self,
        request: Request<UpdateAccountRequest>,
    ) -> Result<Response<Account>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented("update_account is not built yet"))
    }

    pub async fn delete_account(
        &self,
        request: Request<DeleteAccountRequest>,
    ) -> Result<Response<Account>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented("delete_account is not built yet"))
    }

    pub async fn undelete_account(
        &self,
        request: Request<UndeleteAccountRequest>,
    ) -> Result<Response<Account>, Status> {
        let _ = (&self.ctx, request);
        Err(Status::unimplemented("undelete_account is not built yet"))
    }
}
