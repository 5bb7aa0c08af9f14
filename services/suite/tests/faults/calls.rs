//! Calls the tests make: tokens, contacts, and reading the event feed.

use std::time::{Duration, Instant};

use crm_platform::auth::{Role, TokenIssuer};
use crm_proto::common::{Event, WatchEventsRequest};
use crm_proto::contact::contact_service_client::ContactServiceClient;
use crm_proto::contact::{Contact, CreateContactRequest, GetContactRequest};
use tonic::Code;
use tonic::transport::Channel;

use super::service::SECRET;

pub const HEARTBEAT: &str = "crm.common.v1.Heartbeat";
pub const CONTACT_CREATED: &str = "crm.contact.v1.ContactCreated";

pub fn admin(tenant: &str) -> String {
    TokenIssuer::new(SECRET.as_bytes(), "crm", "crm")
        .issue("faults", tenant, &[Role::Admin], Duration::from_secs(3600))
        .expect("token")
}

/// `message` with a bearer token and a deadline.
pub fn authed<T>(message: T, token: &str, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    request.set_timeout(deadline);
    request
}

/// A CreateContact request with a request id, as a client that retries would send it.
pub fn create_request(given_name: &str, request_id: &str) -> CreateContactRequest {
    CreateContactRequest {
        contact: Some(Contact {
            given_name: given_name.into(),
            family_name: "Fault".into(),
            ..Default::default()
        }),
        request_id: request_id.into(),
        ..Default::default()
    }
}

/// The outcome of one call, as the client saw it: the code (a client-side timeout is
/// DEADLINE_EXCEEDED) and how long it took.
pub struct Outcome<T> {
    pub result: Result<T, tonic::Status>,
    pub took: Duration,
}

impl<T> Outcome<T> {
    pub fn code(&self) -> Code {
        match &self.result {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        }
    }
}

/// Runs `call`, giving up on the client side after `limit` (DEADLINE_EXCEEDED): a call
/// that hangs is seen as such even if the server never answers.
pub async fn timed<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Outcome<T> {
    let start = Instant::now();
    let result = match tokio::time::timeout(limit, call).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded("client-side limit")),
    };
    Outcome {
        result,
        took: start.elapsed(),
    }
}

pub async fn create(
    client: &mut ContactServiceClient<Channel>,
    token: &str,
    request: CreateContactRequest,
    deadline: Duration,
) -> Outcome<Contact> {
    timed(
        deadline + Duration::from_secs(2),
        client.create_contact(authed(request, token, deadline)),
    )
    .await
}

pub async fn get(
    client: &mut ContactServiceClient<Channel>,
    token: &str,
    name: &str,
    deadline: Duration,
) -> Outcome<Contact> {
    timed(
        deadline + Duration::from_secs(2),
        client.get_contact(authed(
            GetContactRequest { name: name.into() },
            token,
            deadline,
        )),
    )
    .await
}

/// Reads the feed after `after` (all types when `types` is empty) with one-second
/// heartbeats, and returns the events (heartbeats left out) once `done` holds for them
/// at a heartbeat: the server sends one only when it has nothing more to send, so
/// everything stamped by then has arrived. Also returns the last heartbeat's position.
pub async fn read_feed(
    client: &mut ContactServiceClient<Channel>,
    token: &str,
    after: i64,
    types: &[&str],
    done: impl Fn(&[Event]) -> bool,
    within: Duration,
) -> (Vec<Event>, i64) {
    let start = Instant::now();
    let request = WatchEventsRequest {
        after_position: after,
        types: types.iter().map(|t| (*t).to_owned()).collect(),
        heartbeat_seconds: 1,
    };
    let mut request = tonic::Request::new(request);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    let mut stream = client
        .watch_events(request)
        .await
        .expect("WatchEvents")
        .into_inner();
    let mut events = Vec::new();
    loop {
        let left = within.saturating_sub(start.elapsed());
        let next = tokio::time::timeout(left, stream.message())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "feed not complete within {within:?}: {} events read",
                    events.len()
                )
            })
            .expect("the feed stream broke")
            .expect("the feed stream ended");
        if next.r#type == HEARTBEAT {
            if done(&events) {
                return (events, next.position);
            }
        } else {
            events.push(next);
        }
    }
}
