//! TLS and mutual TLS between services, with certificates generated for the test: a
//! client with a certificate of the cluster's CA is served; one without a certificate,
//! with a certificate of another CA, in plaintext, or not trusting the server's CA is
//! refused. The plaintext health listener answers probes and nothing else.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crm_platform::clients::{self, Resolve};
use crm_platform::config::{ClientsConfig, ServerConfig};
use crm_platform::tls;

/// A certificate authority and the files of the leaf certificates it signed.
struct Authority {
    issuer: Issuer<'static, KeyPair>,
    ca_file: String,
}

impl Authority {
    fn new(dir: &Path, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        let ca_file = write(dir, &format!("{name}-ca.crt"), &certificate.pem());
        Self {
            issuer: Issuer::new(params, key),
            ca_file,
        }
    }

    /// A leaf certificate for `names` with `usage`; (certificate file, key file).
    fn leaf(
        &self,
        dir: &Path,
        file: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, file);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        (
            write(dir, &format!("{file}.crt"), &certificate.pem()),
            write(dir, &format!("{file}.key"), &key.serialize_pem()),
        )
    }
}

fn write(dir: &Path, name: &str, pem: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path.to_string_lossy().into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn clients_config(ca: &str, identity: Option<&(String, String)>, domain: &str) -> ClientsConfig {
    ClientsConfig {
        tls_ca_file: ca.to_owned(),
        tls_cert_file: identity.map(|(c, _)| c.clone()).unwrap_or_default(),
        tls_key_file: identity.map(|(_, k)| k.clone()).unwrap_or_default(),
        tls_domain: domain.to_owned(),
        timeout_ms: 3_000,
        connect_timeout_ms: 1_000,
        ..ClientsConfig::default()
    }
}

/// Overall health through `channel`: SERVING, or the code of the failure. Waits for the
/// server to have built its (empty) service set.
async fn health(channel: tonic::transport::Channel) -> Result<ServingStatus, Code> {
    let mut client = HealthClient::new(channel);
    let mut last = Err(Code::Unknown);
    for _ in 0..50 {
        last = client
            .check(HealthCheckRequest::default())
            .await
            .map(|answer| answer.into_inner().status())
            .map_err(|status| status.code());
        match last {
            Ok(ServingStatus::Serving) | Err(_) => return last,
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    last
}

fn channel(target: &str, config: &ClientsConfig) -> tonic::transport::Channel {
    clients::balanced_channel(target, config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_clients_with_a_certificate_of_the_cluster_ca_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let cluster = Authority::new(dir, "cluster");
    let rogue = Authority::new(dir, "rogue");
    // The server certificate names the service, not an address.
    let (server_cert, server_key) = cluster.leaf(
        dir,
        "contact",
        &["contact.crm.svc", "localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let pipeline = cluster.leaf(
        dir,
        "pipeline",
        &["pipeline"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let impostor = rogue.leaf(
        dir,
        "impostor",
        &["pipeline"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let health_port = free_port();
    let (addr, _stop) = common::start_empty(ServerConfig {
        tls_cert_file: server_cert,
        tls_key_file: server_key,
        tls_client_ca_file: cluster.ca_file.clone(),
        health_addr: format!("127.0.0.1:{health_port}"),
        ..ServerConfig::default()
    })
    .await;
    let port = addr.port();

    // The cluster's own client, by name (host:port becomes https).
    let trusted = clients_config(&cluster.ca_file, Some(&pipeline), "");
    assert_eq!(
        health(channel(&format!("localhost:{port}"), &trusted)).await,
        Ok(ServingStatus::Serving)
    );
    // By address, the certificate's name is given by clients.tls_domain.
    let by_address = clients_config(&cluster.ca_file, Some(&pipeline), "contact.crm.svc");
    assert_eq!(
        health(channel(&format!("127.0.0.1:{port}"), &by_address)).await,
        Ok(ServingStatus::Serving)
    );
    // A DNS target's endpoints are addresses; the certificate is checked against its name.
    let resolved = tls::client_config(&trusted, Some("contact.crm.svc")).unwrap();
    let dns = clients::resolving_channel(Fixed(addr), "https".into(), &trusted, resolved);
    assert_eq!(health(dns).await, Ok(ServingStatus::Serving));

    // Refused: no client certificate, another CA's certificate, a name the server
    // certificate does not carry, a server this client does not trust, plaintext.
    let refused = [
        (
            "no client certificate",
            channel(
                &format!("localhost:{port}"),
                &clients_config(&cluster.ca_file, None, ""),
            ),
        ),
        (
            "a certificate of another CA",
            channel(
                &format!("localhost:{port}"),
                &clients_config(&cluster.ca_file, Some(&impostor), ""),
            ),
        ),
        (
            "an address the certificate does not name",
            channel(&format!("127.0.0.1:{port}"), &trusted),
        ),
        (
            "a client that trusts only another CA",
            channel(
                &format!("localhost:{port}"),
                &clients_config(&rogue.ca_file, Some(&pipeline), ""),
            ),
        ),
        (
            "plaintext",
            tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
                .unwrap()
                .timeout(Duration::from_secs(3))
                .connect_lazy(),
        ),
    ];
    for (case, channel) in refused {
        let answer = health(channel).await;
        assert!(answer.is_err(), "{case}: {answer:?}");
        assert_ne!(
            answer,
            Err(Code::DeadlineExceeded),
            "{case}: refused, not hung"
        );
    }

    // The health listener is plaintext, answers probes, and serves nothing else.
    let probe_channel =
        tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{health_port}"))
            .unwrap()
            .connect_lazy();
    assert_eq!(
        health(probe_channel.clone()).await,
        Ok(ServingStatus::Serving)
    );
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
            probe_channel,
        );
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let listed = match reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
    {
        Ok(response) => response.into_inner().message().await.map(|_| ()),
        Err(status) => Err(status),
    };
    assert_eq!(listed.map_err(|s| s.code()), Err(Code::Unimplemented));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_only_tls_serves_clients_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let cluster = Authority::new(dir, "cluster");
    let (server_cert, server_key) = cluster.leaf(
        dir,
        "contact",
        &["localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (addr, _stop) = common::start_empty(ServerConfig {
        tls_cert_file: server_cert,
        tls_key_file: server_key,
        ..ServerConfig::default()
    })
    .await;
    let anonymous = clients_config(&cluster.ca_file, None, "");
    assert_eq!(
        health(channel(&format!("localhost:{}", addr.port()), &anonymous)).await,
        Ok(ServingStatus::Serving)
    );
    // A plaintext endpoint is refused up front rather than silently called in plaintext.
    let err = clients::balanced_channel(&format!("http://localhost:{}", addr.port()), &anonymous)
        .unwrap_err();
    assert!(err.to_string().contains("clients.tls_ca_file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_is_not_a_key_stops_the_server_with_the_setting_named() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Authority::new(dir.path(), "cluster");
    let (server_cert, _) = cluster.leaf(
        dir.path(),
        "contact",
        &["localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = ServerConfig {
        tls_cert_file: server_cert.clone(),
        // A certificate where the key should be.
        tls_key_file: server_cert,
        ..ServerConfig::default()
    };
    let err = common::serve_empty(&config, listener, std::future::pending())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("server.tls_key_file"), "{err}");
}

/// Resolves to one fixed address.
struct Fixed(SocketAddr);

impl Resolve for Fixed {
    fn resolve(
        &self,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + '_>,
    > {
        let addr = self.0;
        Box::pin(async move { Ok(vec![addr]) })
    }
}
