//! Graceful shutdown: health turns NOT_SERVING first, calls in flight complete.

use std::time::Duration;

use crm_proto::contact::*;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::harness::{Backend, Options, TestServer, admin, authed};
use crate::on_both_backends;

async fn shutdown_drains_in_flight_calls(backend: Backend) {
    let mut server = TestServer::start_with(
        backend,
        Options {
            drain_delay_ms: 500,
            ..Options::default()
        },
    )
    .await;
    let token = admin("acme");
    let mut health = HealthClient::new(server.channel().await);
    let check = |health: &mut HealthClient<_>| {
        let mut health = health.clone();
        async move {
            health
                .check(HealthCheckRequest {
                    service: "crm.contact.v1.ContactService".into(),
                })
                .await
                .map(|r| r.into_inner().status)
        }
    };
    assert_eq!(
        check(&mut health).await.unwrap(),
        ServingStatus::Serving as i32
    );

    let mut calls = Vec::new();
    for i in 0..40 {
        let (mut client, token) = (server.client().await, token.clone());
        calls.push(tokio::spawn(async move {
            let contact = Contact {
                given_name: format!("In flight {i}"),
                ..Default::default()
            };
            client
                .create_contact(authed(
                    CreateContactRequest {
                        contact: Some(contact),
                        ..Default::default()
                    },
                    &token,
                ))
                .await
        }));
    }
    server.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        check(&mut health).await.unwrap(),
        ServingStatus::NotServing as i32,
        "health reports NOT_SERVING while draining"
    );
    for call in calls {
        call.await
            .unwrap()
            .expect("a call in flight at shutdown completes");
    }
    server.finish().await;
}
on_both_backends!(shutdown_drains_in_flight_calls);
