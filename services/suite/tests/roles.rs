//! Every RPC of every service × every role: allowed, or PERMISSION_DENIED, exactly as
//! the services' role tables say. The methods come from the contracts' descriptor set,
//! so a new RPC without a table entry fails here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf as _, BufMut as _, Bytes};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

use crm_platform::auth::{KeyMaterial, Role, RoleTable, TokenIssuer, service_methods};
use crm_platform::config::Config;
use crm_platform::server::{self, ServicePlan, ServiceSet};

/// Sends and receives protobuf bytes as they are, so that any method can be called.
#[derive(Clone, Default)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let len = src.remaining();
        Ok(Some(src.copy_to_bytes(len)))
    }
}

const SECRET: &str = "role-table-test-secret-0123456789abcdef";

/// The code a call of `path` with an empty request and `token` ends in (OK for a
/// stream that opened).
async fn call(channel: &tonic::transport::Channel, path: &str, token: &str) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(tokio_stream::once(Bytes::new()));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request.set_timeout(Duration::from_secs(10));
    let path = http::uri::PathAndQuery::from_str(path).unwrap();
    match grpc.streaming(request, path, RawCodec).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_every_role_as_the_table_says() {
    let data = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: data.path().to_path_buf(),
        ..Config::default()
    };
    config.database.url = format!("sqlite://{}/{{service}}.db?mode=rwc", data.path().display());
    config.auth.hs256_secret = SECRET.into();
    let keys = KeyMaterial::load(&config).unwrap();
    let mut services = ServiceSet::new();
    crm_contact::add_to(&mut services, &config, &keys)
        .await
        .unwrap();
    crm_pipeline::add_to(&mut services, &config, &keys)
        .await
        .unwrap();
    crm_ticket::add_to(&mut services, &config, &keys)
        .await
        .unwrap();
    crm_analytics::add_to(&mut services, &config, &keys)
        .await
        .unwrap();
    let tables: [(&str, RoleTable); 4] = [
        (
            crm_contact::roles::SERVICE_NAME,
            crm_contact::roles::role_table(),
        ),
        (crm_pipeline::SERVICE_NAME, crm_pipeline::role_table()),
        (crm_ticket::SERVICE_NAME, crm_ticket::role_table()),
        (crm_analytics::SERVICE_NAME, crm_analytics::role_table()),
    ];
    let mut plan = ServicePlan::new();
    for (name, table) in &tables {
        plan.add(name, table.clone());
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let authenticator = Arc::new(keys.authenticator(&config).unwrap());
    let server_config = config.server.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        server::serve(
            &server_config,
            listener,
            plan,
            authenticator,
            async { services },
            async {
                let _ = stopped.await;
            },
        )
        .await
        .unwrap();
    });
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let issuer = TokenIssuer::new(SECRET.as_bytes(), "crm", "crm");
    // Wait until the services are attached (health SERVING).
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for _ in 0..500 {
        let serving = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .is_ok_and(|r| r.into_inner().status == 1);
        if serving {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut checked = 0;
    let mut wrong = Vec::new();
    for (service, table) in &tables {
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
                let token = issuer
                    .issue("user-1", "acme", &[role], Duration::from_secs(600))
                    .unwrap();
                let code = call(&channel, &path, &token).await;
                let denied = matches!(code, Code::PermissionDenied | Code::Unauthenticated);
                let expected_allowed = allowed.contains(&role);
                if denied == expected_allowed {
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
    let _ = stop.send(());
    server.await.unwrap();
}
