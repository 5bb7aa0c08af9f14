//! Every RPC of every service × every role: allowed, or PERMISSION_DENIED, exactly as
//! the services' role tables say. The methods come from the contracts' descriptor set,
//! so a new RPC without a table entry fails here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use tonic::Code;

use crm_platform::auth::{Role, service_methods};

use common::Backend;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_every_role_as_the_table_says_on_sqlite() {
    every_rpc_answers_every_role_as_the_table_says(Backend::Sqlite).await;
}

/// The role check comes before any storage, but the answers past it (NOT_FOUND,
/// INVALID_ARGUMENT) come from the database: none may be INTERNAL on Postgres either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_every_role_as_the_table_says_on_postgres() {
    every_rpc_answers_every_role_as_the_table_says(Backend::Postgres).await;
}

async fn every_rpc_answers_every_role_as_the_table_says(backend: Backend) {
    let suite = common::Suite::start_on(backend).await;
    let mut checked = 0;
    let mut wrong = Vec::new();
    for (service, table) in &suite.tables {
        let methods = service_methods(service);
        assert!(
            !methods.is_empty(),
            "{service} has no methods in the descriptor"
        );
        for method in methods {
            let path = format!("/{service}/{method}");
            let allowed = table
                .roles_for(&path)
                .unwrap_or_else(|| panic!("{path} is not in the role table"));
            for role in Role::ALL {
                let token = suite.token("acme", &[role]);
                let code = match suite.call(&path, Bytes::new(), &token).await {
                    Ok(()) => Code::Ok,
                    Err(status) => status.code(),
                };
                let denied = matches!(code, Code::PermissionDenied | Code::Unauthenticated);
                if denied == allowed.contains(&role) {
                    wrong.push(format!("{path} as {}: {code:?}", role.as_str()));
                }
                assert_ne!(
                    code,
                    Code::Internal,
                    "{path} as {} answered INTERNAL",
                    role.as_str()
                );
                checked += 1;
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {checked} calls disagree with the role table:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    println!("{checked} (method, role) pairs agree with the role tables");
    suite.stop().await;
}
