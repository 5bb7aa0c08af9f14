//! Authentication and the role table over the wire.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use crm_platform::auth::Role;
use crm_proto::contact::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tonic::Code;

use crate::harness::{Backend, SECRET, TestServer, authed, token};
use crate::on_both_backends;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn signed(claims: serde_json::Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

async fn bad_tokens_are_unauthenticated(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let claims = serde_json::json!({"sub": "a", "tenant": "acme", "roles": ["admin"],
        "exp": now() + 600, "iss": "crm", "aud": "crm"});
    let mut expired = claims.clone();
    expired["exp"] = (now() - 120).into();
    let mut audience = claims.clone();
    audience["aud"] = "another-api".into();
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let alg_none = format!(
        "{}.{}.",
        engine.encode(br#"{"alg":"none","typ":"JWT"}"#),
        engine.encode(claims.to_string())
    );
    let cases = [
        ("no token", None),
        ("expired", Some(signed(expired, SECRET.as_bytes()))),
        (
            "wrong signature",
            Some(signed(
                claims.clone(),
                b"some-other-secret-of-enough-length",
            )),
        ),
        ("alg none", Some(alg_none)),
        ("wrong audience", Some(signed(audience, SECRET.as_bytes()))),
        ("garbage", Some("abc.def.ghi".to_owned())),
    ];
    for (case, token) in cases {
        let mut request = tonic::Request::new(ListContactsRequest::default());
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        let status = client.list_contacts(request).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{case}: {status:?}");
    }
    // Health and reflection need no token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let answer = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "crm.contact.v1.ContactService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    server.finish().await;
}
on_both_backends!(bad_tokens_are_unauthenticated);

async fn roles_without_the_right_are_denied(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let viewer = token("acme", "vic", &[Role::Viewer]);
    let create = CreateContactRequest {
        contact: Some(Contact {
            given_name: "Ana".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let status = client
        .create_contact(authed(create.clone(), &viewer))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    client
        .list_contacts(authed(ListContactsRequest::default(), &viewer))
        .await
        .expect("viewers read");
    let system = token("acme", "feed", &[Role::System]);
    let status = client
        .list_contacts(authed(ListContactsRequest::default(), &system))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "system reads feeds, not lists"
    );
    let rep = token("acme", "ana", &[Role::SalesRep]);
    client
        .create_contact(authed(create, &rep))
        .await
        .expect("reps create");
    server.finish().await;
}
on_both_backends!(roles_without_the_right_are_denied);
