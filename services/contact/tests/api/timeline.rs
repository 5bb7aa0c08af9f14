//! The interaction timeline and episodes: every RPC, the validation rules, listings by
//! contact, account and tenant, tenancy, the creator rule, etags, request ids, and the
//! functions merge, erasure and export call.

use std::sync::Arc;

use crm_platform::auth::{Caller, Role};
use crm_proto::common::{Channel, Money};
use crm_proto::contact::contact_service_client::ContactServiceClient;
use crm_proto::contact::contact_service_server::ContactService;
use crm_proto::contact::*;
use prost_types::{Duration, FieldMask, Timestamp};
use tonic::Code;
use tonic::transport::Channel as Transport;
use tonic_types::StatusExt as _;

use crate::harness::{Backend, TestServer, admin, authed, postgres_base, token};
use crate::on_both_backends;

type Client = ContactServiceClient<Transport>;

const ACCOUNT_X: &str = "accounts/0192f0c1-7b1e-7cc3-9a44-4d2a3f1e9b10";

fn at(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos: 0 })
}

/// Creates the account ACCOUNT_X names (links must name live accounts).
async fn account_x(client: &mut Client, token: &str) {
    client
        .create_account(authed(
            CreateAccountRequest {
                account: Some(Account {
                    display_name: "Account X".into(),
                    ..Default::default()
                }),
                account_id: ACCOUNT_X.trim_start_matches("accounts/").into(),
                ..Default::default()
            },
            token,
        ))
        .await
        .expect("create account X");
}

async fn contact(client: &mut Client, token: &str, given: &str, account: &str) -> Contact {
    client
        .create_contact(authed(
            CreateContactRequest {
                contact: Some(Contact {
                    given_name: given.into(),
                    account: account.into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            token,
        ))
        .await
        .expect("create contact")
        .into_inner()
}

fn call(contact: &str, seconds: i64) -> Interaction {
    Interaction {
        r#type: InteractionType::Call as i32,
        contact: contact.into(),
        interaction_time: at(seconds),
        subject: "Intro call".into(),
        ..Default::default()
    }
}

async fn try_create(
    client: &mut Client,
    token: &str,
    interaction: Interaction,
) -> Result<Interaction, tonic::Status> {
    client
        .create_interaction(authed(
            CreateInteractionRequest {
                interaction: Some(interaction),
                ..Default::default()
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn create(client: &mut Client, token: &str, interaction: Interaction) -> Interaction {
    try_create(client, token, interaction)
        .await
        .expect("create interaction")
}

fn fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .expect("bad request details")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

async fn interaction_crud(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    account_x(&mut client, &token).await;
    let ana = contact(&mut client, &token, "Ana", ACCOUNT_X).await;

    let mut new = call(&ana.name, 1_767_225_600);
    new.duration = Some(Duration {
        seconds: 600,
        nanos: 0,
    });
    new.participants = vec![InteractionParticipant {
        email_address: "  Bob@Example.COM ".into(),
        role: ParticipantRole::Attendee as i32,
        ..Default::default()
    }];
    new.amount = Some(Money {
        currency_code: "EUR".into(),
        units: 12,
        nanos: 340_000_000,
    });
    let created = create(&mut client, &token, new).await;
    assert!(created.name.starts_with("interactions/"));
    assert_eq!(created.channel, Channel::Phone as i32, "channel from type");
    assert_eq!(created.account, ACCOUNT_X, "account from the contact");
    assert_eq!(created.creator, "admin");
    assert_eq!(created.participants[0].email_address, "bob@example.com");
    assert_eq!(created.etag, "r1");

    let got = client
        .get_interaction(authed(
            GetInteractionRequest {
                name: created.name.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, created);

    // validate_only stores nothing.
    let preview = client
        .create_interaction(authed(
            CreateInteractionRequest {
                interaction: Some(call(&ana.name, 10)),
                validate_only: true,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let missing = client
        .get_interaction(authed(GetInteractionRequest { name: preview.name }, &token))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // Update: the mask decides; a stale etag is ABORTED; the channel follows a new type.
    let update = |etag: &str, request_id: &str| UpdateInteractionRequest {
        interaction: Some(Interaction {
            name: created.name.clone(),
            r#type: InteractionType::Meeting as i32,
            subject: "ignored: not in the mask".into(),
            outcome: InteractionOutcome::Completed as i32,
            ..Default::default()
        }),
        update_mask: mask(&["type", "outcome"]),
        etag: etag.into(),
        request_id: request_id.into(),
        ..Default::default()
    };
    let updated = client
        .update_interaction(authed(update("r1", "upd-1"), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.r#type, InteractionType::Meeting as i32);
    assert_eq!(
        updated.channel,
        Channel::Phone as i32,
        "a set channel stays"
    );
    assert_eq!(updated.outcome, InteractionOutcome::Completed as i32);
    assert_eq!(updated.subject, "Intro call");
    assert_eq!(updated.etag, "r2");
    let replayed = client
        .update_interaction(authed(update("r1", "upd-1"), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replayed, updated, "the same request id answers the same");
    let stale = client
        .update_interaction(authed(update("r1", ""), &token))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    let bad_mask = client
        .update_interaction(authed(
            UpdateInteractionRequest {
                interaction: Some(Interaction {
                    name: created.name.clone(),
                    ..Default::default()
                }),
                update_mask: mask(&["creator"]),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(fields(&bad_mask), ["update_mask"]);

    // Create with a request id: one record.
    let with_id = || CreateInteractionRequest {
        interaction: Some(call(&ana.name, 20)),
        request_id: "create-1".into(),
        ..Default::default()
    };
    let first = client
        .create_interaction(authed(with_id(), &token))
        .await
        .unwrap()
        .into_inner();
    let second = client
        .create_interaction(authed(with_id(), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, second);
    let reused = client
        .create_interaction(authed(
            CreateInteractionRequest {
                interaction: Some(call(&ana.name, 21)),
                request_id: "create-1".into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(fields(&reused), ["request_id"]);

    // Delete: etag checked, hard, replayable.
    let delete = |etag: &str| DeleteInteractionRequest {
        name: created.name.clone(),
        etag: etag.into(),
        request_id: "del-1".into(),
    };
    let stale = client
        .delete_interaction(authed(delete("r1"), &token))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    client
        .delete_interaction(authed(delete("r2"), &token))
        .await
        .unwrap();
    client
        .delete_interaction(authed(delete("r2"), &token))
        .await
        .expect("a replayed delete succeeds");
    let gone = client
        .get_interaction(authed(
            GetInteractionRequest {
                name: created.name.clone(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let again = client
        .delete_interaction(authed(
            DeleteInteractionRequest {
                name: created.name.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
    server.finish().await;
}
on_both_backends!(interaction_crud);

async fn interaction_validation(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    account_x(&mut client, &token).await;
    let ana = contact(&mut client, &token, "Ana", "").await;

    let missing = client
        .create_interaction(authed(CreateInteractionRequest::default(), &token))
        .await
        .unwrap_err();
    assert_eq!(fields(&missing), ["interaction"]);

    // Every rule at once, each violation with its path.
    let everything_wrong = Interaction {
        r#type: 0,
        channel: 99,
        direction: 7,
        outcome: 42,
        account: "companies/1".into(),
        duration: Some(Duration {
            seconds: 31 * 24 * 3600,
            nanos: 0,
        }),
        participants: vec![
            InteractionParticipant::default(),
            InteractionParticipant {
                user: "u1".into(),
                email_address: "x@example.com".into(),
                ..Default::default()
            },
            InteractionParticipant {
                email_address: "not-an-email".into(),
                ..Default::default()
            },
            InteractionParticipant {
                contact: "contacts/0192f0c1-7b1e-7cc3-9a44-000000000000".into(),
                ..Default::default()
            },
        ],
        episode: "episodes/nope".into(),
        subject: "s".repeat(501),
        body: "b".repeat(64 * 1024 + 1),
        amount: Some(Money {
            currency_code: "euro".into(),
            units: 1,
            nanos: -1,
        }),
        source: "x".repeat(101),
        ..Default::default()
    };
    let status = try_create(&mut client, &token, everything_wrong)
        .await
        .unwrap_err();
    let mut got = fields(&status);
    got.sort();
    let mut expected = vec![
        "interaction.type",
        "interaction.channel",
        "interaction.direction",
        "interaction.outcome",
        "interaction.interaction_time",
        "interaction.duration",
        "interaction.participants[0]",
        "interaction.participants[1]",
        "interaction.participants[2].email_address",
        "interaction.participants[3].contact",
        "interaction.episode",
        "interaction.subject",
        "interaction.body",
        "interaction.amount.currency_code",
        "interaction.amount.nanos",
        "interaction.source",
        "interaction.account",
    ];
    expected.sort();
    assert_eq!(got, expected);

    // References: a contact of nobody, a deleted contact, an unknown episode.
    let nobody = call("contacts/0192f0c1-7b1e-7cc3-9a44-4d2a3f1e9b11", 5);
    let status = try_create(&mut client, &token, nobody).await.unwrap_err();
    assert_eq!(fields(&status), ["interaction.contact"]);
    let ben = contact(&mut client, &token, "Ben", "").await;
    client
        .delete_contact(authed(
            DeleteContactRequest {
                name: ben.name.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap();
    let status = try_create(&mut client, &token, call(&ben.name, 5))
        .await
        .unwrap_err();
    assert_eq!(fields(&status), ["interaction.contact"]);
    let mut with_episode = call(&ana.name, 5);
    with_episode.episode = "episodes/0192f0c1-7b1e-7cc3-9a44-4d2a3f1e9b12".into();
    let status = try_create(&mut client, &token, with_episode)
        .await
        .unwrap_err();
    assert_eq!(fields(&status), ["interaction.episode"]);

    // At most 100 participants; account alone is enough; 30 days is the longest call.
    let mut crowded = call(&ana.name, 5);
    crowded.participants = (0..101)
        .map(|i| InteractionParticipant {
            user: format!("u{i}"),
            ..Default::default()
        })
        .collect();
    let status = try_create(&mut client, &token, crowded).await.unwrap_err();
    assert_eq!(fields(&status), ["interaction.participants"]);
    let mut account_only = call("", 5);
    account_only.account = ACCOUNT_X.to_uppercase().replace("ACCOUNTS", "accounts");
    account_only.duration = Some(Duration {
        seconds: 30 * 24 * 3600,
        nanos: 0,
    });
    let created = create(&mut client, &token, account_only).await;
    assert_eq!(created.account, ACCOUNT_X, "normalised");
    // A note has no channel; a bad update names the field.
    let note = create(
        &mut client,
        &token,
        Interaction {
            r#type: InteractionType::Note as i32,
            contact: ana.name.clone(),
            interaction_time: at(5),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(note.channel, Channel::Unspecified as i32);
    let status = client
        .update_interaction(authed(
            UpdateInteractionRequest {
                interaction: Some(Interaction {
                    name: note.name.clone(),
                    ..Default::default()
                }),
                update_mask: mask(&["interaction_time", "contact"]),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        fields(&status),
        ["interaction.contact", "interaction.interaction_time"]
    );
    server.finish().await;
}
on_both_backends!(interaction_validation);

async fn listing(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    account_x(&mut client, &token).await;
    let ana = contact(&mut client, &token, "Ana", ACCOUNT_X).await;
    let ben = contact(&mut client, &token, "Ben", ACCOUNT_X).await;
    let cleo = contact(&mut client, &token, "Cleo", "").await;

    let t1 = create(&mut client, &token, call(&ana.name, 100)).await;
    let mut with_ana = call(&cleo.name, 200);
    with_ana.r#type = InteractionType::Email as i32;
    with_ana.participants = vec![
        InteractionParticipant {
            contact: ana.name.clone(),
            ..Default::default()
        },
        InteractionParticipant {
            user: "Rep-7".into(),
            ..Default::default()
        },
    ];
    let t2 = create(&mut client, &token, with_ana).await;
    let t3 = create(&mut client, &token, call(&ben.name, 300)).await;
    let mut account_only = call("", 400);
    account_only.account = ACCOUNT_X.into();
    let t4 = create(&mut client, &token, account_only).await;
    let t5 = create(&mut client, &token, call(&cleo.name, 500)).await;

    let list = |contact: &str, account: &str, filter: &str| ListInteractionsRequest {
        contact: contact.into(),
        account: account.into(),
        filter: filter.into(),
        ..Default::default()
    };
    let names = |r: &ListInteractionsResponse| -> Vec<String> {
        r.interactions.iter().map(|i| i.name.clone()).collect()
    };
    let by_ana = client
        .list_interactions(authed(list(&ana.name, "", ""), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&by_ana), [t2.name.clone(), t1.name.clone()]);
    assert_eq!(by_ana.total_size, 2);
    let by_account = client
        .list_interactions(authed(list("", ACCOUNT_X, ""), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        names(&by_account),
        [t4.name.clone(), t3.name.clone(), t1.name.clone()]
    );
    let both = client
        .list_interactions(authed(list(&ana.name, ACCOUNT_X, ""), &token))
        .await
        .unwrap_err();
    assert_eq!(both.code(), Code::InvalidArgument);

    // The whole tenant, newest first, two pages.
    let page1 = client
        .list_interactions(authed(
            ListInteractionsRequest {
                page_size: 3,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        names(&page1),
        [t5.name.clone(), t4.name.clone(), t3.name.clone()]
    );
    assert_eq!(page1.total_size, 5);
    let page2 = client
        .list_interactions(authed(
            ListInteractionsRequest {
                page_size: 3,
                page_token: page1.next_page_token.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&page2), [t2.name.clone(), t1.name.clone()]);
    assert!(page2.next_page_token.is_empty());
    assert_eq!(page2.total_size, 5);
    let misused = client
        .list_interactions(authed(
            ListInteractionsRequest {
                page_size: 3,
                page_token: page1.next_page_token.clone(),
                filter: "type = CALL".into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(fields(&misused), ["page_token"]);

    // Two pages by contact as well, oldest first.
    let by_ana_asc = client
        .list_interactions(authed(
            ListInteractionsRequest {
                contact: ana.name.clone(),
                order_by: "interaction_time asc".into(),
                page_size: 1,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&by_ana_asc), [t1.name.as_str()]);
    let next = client
        .list_interactions(authed(
            ListInteractionsRequest {
                contact: ana.name.clone(),
                order_by: "interaction_time asc".into(),
                page_size: 1,
                page_token: by_ana_asc.next_page_token,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&next), [t2.name.as_str()]);

    // Filters.
    let emails = client
        .list_interactions(authed(list("", "", "type = EMAIL"), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&emails), [t2.name.as_str()]);
    let by_user = client
        .list_interactions(authed(list("", "", "participants.user: \"rep-7\""), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&by_user), [t2.name.as_str()]);
    let calls_late = client
        .list_interactions(authed(
            list(
                "",
                ACCOUNT_X,
                "channel = PHONE AND interaction_time > \"1970-01-01T00:04:00Z\"",
            ),
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&calls_late), [t4.name.clone(), t3.name.clone()]);
    assert_eq!(calls_late.total_size, 2);
    let bad = client
        .list_interactions(authed(list("", "", "body = \"x\""), &token))
        .await
        .unwrap_err();
    assert_eq!(fields(&bad), ["filter"]);
    server.finish().await;
}
on_both_backends!(listing);

async fn tenancy_and_creator(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let rep_a = token("acme", "rep-a", &[Role::SalesRep]);
    let rep_b = token("acme", "rep-b", &[Role::SalesRep]);
    let manager = token("acme", "boss", &[Role::SalesManager]);
    let token = admin("acme");
    account_x(&mut client, &token).await;
    let other = admin("globex");
    let ana = contact(&mut client, &token, "Ana", "").await;

    let mine = create(&mut client, &rep_a, call(&ana.name, 100)).await;
    assert_eq!(mine.creator, "rep-a");

    // Another tenant sees nothing and cannot refer to this tenant's contact.
    let hidden = client
        .get_interaction(authed(
            GetInteractionRequest {
                name: mine.name.clone(),
            },
            &other,
        ))
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound);
    let listed = client
        .list_interactions(authed(ListInteractionsRequest::default(), &other))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total_size, 0);
    let status = try_create(&mut client, &other, call(&ana.name, 1))
        .await
        .unwrap_err();
    assert_eq!(fields(&status), ["interaction.contact"]);
    let status = client
        .delete_interaction(authed(
            DeleteInteractionRequest {
                name: mine.name.clone(),
                ..Default::default()
            },
            &other,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // Only the creator or a manager may change it.
    let subject = |text: &str| UpdateInteractionRequest {
        interaction: Some(Interaction {
            name: mine.name.clone(),
            subject: text.into(),
            ..Default::default()
        }),
        update_mask: mask(&["subject"]),
        ..Default::default()
    };
    let denied = client
        .update_interaction(authed(subject("hijack"), &rep_b))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = client
        .delete_interaction(authed(
            DeleteInteractionRequest {
                name: mine.name.clone(),
                ..Default::default()
            },
            &rep_b,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let own = client
        .update_interaction(authed(subject("mine"), &rep_a))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.subject, "mine");
    let managed = client
        .update_interaction(authed(subject("managed"), &manager))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(managed.subject, "managed");
    assert_eq!(managed.creator, "rep-a");
    server.finish().await;
}
on_both_backends!(tenancy_and_creator);

async fn episodes(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let rep_b = token("acme", "rep-b", &[Role::SalesRep]);
    let token = admin("acme");
    account_x(&mut client, &token).await;
    let ana = contact(&mut client, &token, "Ana", "").await;

    let status = client
        .create_episode(authed(
            CreateEpisodeRequest {
                episode: Some(Episode {
                    display_name: " ".into(),
                    start_time: at(200),
                    end_time: at(100),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        fields(&status),
        [
            "episode.display_name",
            "episode.contact",
            "episode.end_time"
        ]
    );
    let status = client
        .create_episode(authed(
            CreateEpisodeRequest {
                episode: Some(Episode {
                    display_name: "x".repeat(201),
                    contact: ana.name.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        fields(&status),
        ["episode.display_name", "episode.start_time"]
    );

    let new = || CreateEpisodeRequest {
        episode: Some(Episode {
            display_name: "Onboarding 2026".into(),
            contact: ana.name.clone(),
            start_time: at(100),
            ..Default::default()
        }),
        request_id: "ep-1".into(),
        ..Default::default()
    };
    let onboarding = client
        .create_episode(authed(new(), &token))
        .await
        .unwrap()
        .into_inner();
    let again = client
        .create_episode(authed(new(), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(onboarding, again);
    let complaint = client
        .create_episode(authed(
            CreateEpisodeRequest {
                episode: Some(Episode {
                    display_name: "Complaint".into(),
                    account: ACCOUNT_X.into(),
                    start_time: at(300),
                    end_time: at(400),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    for seconds in [110, 120] {
        let mut interaction = call(&ana.name, seconds);
        interaction.episode = onboarding.name.clone();
        create(&mut client, &token, interaction).await;
    }
    let got = client
        .get_episode(authed(
            GetEpisodeRequest {
                name: onboarding.name.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.interaction_count, 2);

    let listed = client
        .list_episodes(authed(ListEpisodesRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    let pairs: Vec<(String, i64)> = listed
        .episodes
        .iter()
        .map(|e| (e.name.clone(), e.interaction_count))
        .collect();
    assert_eq!(
        pairs,
        [(complaint.name.clone(), 0), (onboarding.name.clone(), 2)]
    );
    let closed = client
        .list_episodes(authed(
            ListEpisodesRequest {
                filter: "end_time:*".into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(closed.episodes.len(), 1);
    assert_eq!(closed.episodes[0].name, complaint.name);
    let of_ana = client
        .list_episodes(authed(
            ListEpisodesRequest {
                filter: format!("contact = \"{}\" AND NOT end_time:*", ana.name),
                order_by: "end_time desc".into(),
                page_size: 1,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(of_ana.episodes[0].name, onboarding.name);
    assert_eq!(of_ana.total_size, 1);

    // Paged by end, one at a time: an open episode sorts as ending last, and the
    // cursor carries that through to the next page in either direction.
    for (order_by, expected) in [
        (
            "end_time desc",
            [onboarding.name.as_str(), complaint.name.as_str()],
        ),
        (
            "end_time asc",
            [complaint.name.as_str(), onboarding.name.as_str()],
        ),
    ] {
        let mut seen = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = client
                .list_episodes(authed(
                    ListEpisodesRequest {
                        order_by: order_by.into(),
                        page_size: 1,
                        page_token: page_token.clone(),
                        ..Default::default()
                    },
                    &token,
                ))
                .await
                .unwrap()
                .into_inner();
            seen.extend(page.episodes.into_iter().map(|e| e.name));
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        assert_eq!(seen, expected, "{order_by}");
    }

    // Close the episode: etag checked, the end not before the start, creator rule.
    let close = |end: i64, etag: &str| UpdateEpisodeRequest {
        episode: Some(Episode {
            name: onboarding.name.clone(),
            end_time: at(end),
            ..Default::default()
        }),
        update_mask: mask(&["end_time"]),
        etag: etag.into(),
        ..Default::default()
    };
    let early = client
        .update_episode(authed(close(50, "r1"), &token))
        .await
        .unwrap_err();
    assert_eq!(fields(&early), ["episode.end_time"]);
    let stale = client
        .update_episode(authed(close(500, "r7"), &token))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    let denied = client
        .update_episode(authed(close(500, ""), &rep_b))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let closed = client
        .update_episode(authed(close(500, "r1"), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(closed.end_time, at(500));
    assert_eq!(closed.etag, "r2");
    assert_eq!(closed.interaction_count, 2);
    server.finish().await;
}
on_both_backends!(episodes);

/// The service wired by hand on a database this test also holds a connection to, so
/// that the functions other modules call can be tested directly in its transactions.
struct Direct {
    api: crm_contact::ContactApi,
    db: sea_orm::DatabaseConnection,
    _dir: tempfile::TempDir,
    postgres_db: Option<String>,
}

impl Direct {
    async fn start(backend: Backend) -> Self {
        use sea_orm::ConnectionTrait as _;
        let dir = tempfile::tempdir().unwrap();
        let mut config = crm_platform::config::Config::default();
        config.data_dir = dir.path().to_path_buf();
        let postgres_db = match backend {
            Backend::Sqlite => {
                config.database.url =
                    format!("sqlite://{}/{{service}}.db?mode=rwc", dir.path().display());
                None
            }
            Backend::Postgres => {
                let name = format!("crm_test_{}", uuid::Uuid::now_v7().simple());
                let admin = sea_orm::Database::connect(format!("{}/postgres", postgres_base()))
                    .await
                    .unwrap();
                admin
                    .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                    .await
                    .unwrap();
                admin.close().await.ok();
                config.database.url = format!("{}/{name}", postgres_base());
                Some(name)
            }
        };
        let db = crm_platform::db::open::<crm_contact::migrations::Migrator>(&config, "contact")
            .await
            .unwrap();
        let feed =
            crm_platform::events::EventFeed::new(db.clone(), "contact", config.events.clone());
        let cache = crm_platform::cache::CacheHandle::new(
            Arc::new(crm_platform::cache::NoCache),
            std::time::Duration::from_secs(1),
        );
        let api = crm_contact::ContactApi::new(crm_contact::context::Context {
            contacts: crm_contact::store::ContactStore::new(db.clone(), feed.clone()),
            db: db.clone(),
            feed,
            cache,
            tokens: crm_platform::pagination::PageTokens::new(b"direct-test"),
        });
        Self {
            api,
            db,
            _dir: dir,
            postgres_db,
        }
    }

    fn request<T>(message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.extensions_mut().insert(Caller {
            subject: "admin".into(),
            tenant: "acme".into(),
            roles: vec![Role::Admin],
            token: Arc::from(""),
        });
        request
    }

    async fn contact(&self, given: &str) -> (String, String) {
        let created = self
            .api
            .create_contact(Self::request(CreateContactRequest {
                contact: Some(Contact {
                    given_name: given.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        let id = created.name.trim_start_matches("contacts/").to_owned();
        (created.name, id)
    }

    async fn interaction(&self, interaction: Interaction) -> Interaction {
        self.api
            .create_interaction(Self::request(CreateInteractionRequest {
                interaction: Some(interaction),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
    }

    async fn episode(&self, contact: &str, display_name: &str) -> Episode {
        self.api
            .create_episode(Self::request(CreateEpisodeRequest {
                episode: Some(Episode {
                    display_name: display_name.into(),
                    description: "private notes".into(),
                    contact: contact.into(),
                    start_time: at(10),
                    ..Default::default()
                }),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
    }

    async fn get(&self, name: &str) -> Interaction {
        self.api
            .get_interaction(Self::request(GetInteractionRequest { name: name.into() }))
            .await
            .unwrap()
            .into_inner()
    }

    async fn by_contact(&self, contact: &str) -> Vec<String> {
        self.api
            .list_interactions(Self::request(ListInteractionsRequest {
                contact: contact.into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .interactions
            .into_iter()
            .map(|i| i.name)
            .collect()
    }

    async fn finish(self) {
        use sea_orm::ConnectionTrait as _;
        self.db.close().await.ok();
        if let Some(name) = self.postgres_db {
            let admin = sea_orm::Database::connect(format!("{}/postgres", postgres_base()))
                .await
                .unwrap();
            admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await
                .ok();
            admin.close().await.ok();
        }
    }
}

async fn repoint_erase_and_export(backend: Backend) {
    use crm_contact::timeline;
    use sea_orm::TransactionTrait as _;
    let direct = Direct::start(backend).await;
    let (winner, winner_id) = direct.contact("Ana").await;
    let (loser, loser_id) = direct.contact("Ana2").await;
    let (other, other_id) = direct.contact("Olga").await;

    let mut as_contact = call(&loser, 100);
    as_contact.body = "Ana told us her secret".into();
    as_contact.participants = vec![
        InteractionParticipant {
            contact: winner.clone(),
            ..Default::default()
        },
        InteractionParticipant {
            email_address: "ana.private@example.com".into(),
            display_name: "Ana Private".into(),
            ..Default::default()
        },
    ];
    let first = direct.interaction(as_contact).await;
    let mut as_participant = call(&other, 200);
    as_participant.participants = vec![InteractionParticipant {
        contact: loser.clone(),
        display_name: "Ana2".into(),
        ..Default::default()
    }];
    let second = direct.interaction(as_participant).await;
    let untouched = direct.interaction(call(&other, 300)).await;
    let episode = direct.episode(&loser, "Ana2's onboarding").await;

    // Re-point inside a transaction of the caller's.
    let txn = direct.db.begin().await.unwrap();
    let moved =
        timeline::repoint_contacts(&txn, "acme", std::slice::from_ref(&loser_id), &winner_id)
            .await
            .unwrap();
    txn.commit().await.unwrap();
    assert_eq!(moved, (2, 1));
    let first_now = direct.get(&first.name).await;
    assert_eq!(first_now.contact, winner);
    assert_eq!(
        first_now.participants.len(),
        1,
        "the winner as participant would duplicate the contact"
    );
    assert_ne!(first_now.etag, first.etag);
    let second_now = direct.get(&second.name).await;
    assert_eq!(second_now.participants[0].contact, winner);
    assert_eq!(direct.get(&untouched.name).await, untouched);
    assert_eq!(
        direct.by_contact(&winner).await,
        [second.name.clone(), first.name.clone()]
    );
    assert!(direct.by_contact(&loser).await.is_empty());
    assert_eq!(
        timeline::repoint_contacts(
            &direct.db,
            "other-tenant",
            std::slice::from_ref(&winner_id),
            &other_id
        )
        .await
        .unwrap(),
        (0, 0),
        "tenant-scoped"
    );

    // Export: everything about the winner, newest first.
    let (interactions, episodes) = timeline::for_contact(&direct.db, "acme", &winner_id)
        .await
        .unwrap();
    let names: Vec<&str> = interactions.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, [second.name.as_str(), first.name.as_str()]);
    assert_eq!(episodes.len(), 1);
    assert_eq!(episodes[0].name, episode.name);
    assert_eq!(episodes[0].contact, winner);

    // Erase: personal text gone from the winner's interactions and episodes.
    let txn = direct.db.begin().await.unwrap();
    let erased = timeline::erase_contact(&txn, "acme", &winner_id)
        .await
        .unwrap();
    txn.commit().await.unwrap();
    assert_eq!(erased, (2, 1));
    let first_erased = direct.get(&first.name).await;
    assert!(first_erased.subject.is_empty() && first_erased.body.is_empty());
    assert!(first_erased.participants.is_empty());
    let second_erased = direct.get(&second.name).await;
    assert_eq!(second_erased.participants[0].display_name, "");
    assert_eq!(second_erased.participants[0].contact, winner);
    assert_eq!(direct.get(&untouched.name).await.subject, "Intro call");
    let (_, episodes) = timeline::for_contact(&direct.db, "acme", &winner_id)
        .await
        .unwrap();
    assert_eq!(episodes[0].display_name, "erased");
    assert!(episodes[0].description.is_empty());
    let (nothing, none) = timeline::for_contact(&direct.db, "acme", &loser_id)
        .await
        .unwrap();
    assert!(nothing.is_empty() && none.is_empty());
    direct.finish().await;
}
on_both_backends!(repoint_erase_and_export);
