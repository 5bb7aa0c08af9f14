//! Segments: CRUD and its rules, static membership, ListSegmentMembers (dynamic and
//! static, paged), role and owner rules, tenant isolation.

use crm_platform::auth::Role;
use crm_proto::contact::contact_service_client::ContactServiceClient;
use crm_proto::contact::*;
use prost_types::FieldMask;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

use crate::harness::{Backend, TestServer, admin, authed, token};
use crate::on_both_backends;

type Client = ContactServiceClient<Channel>;

fn violated_fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .expect("BadRequest")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

async fn contact(client: &mut Client, token: &str, given: &str, stage: LifecycleStage) -> Contact {
    client
        .create_contact(authed(
            CreateContactRequest {
                contact: Some(Contact {
                    given_name: given.into(),
                    family_name: "Test".into(),
                    lifecycle_stage: stage as i32,
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

fn dynamic(display_name: &str, filter: &str) -> Segment {
    Segment {
        display_name: display_name.into(),
        r#type: SegmentType::Dynamic as i32,
        filter: filter.into(),
        ..Default::default()
    }
}

fn static_list(display_name: &str) -> Segment {
    Segment {
        display_name: display_name.into(),
        r#type: SegmentType::Static as i32,
        ..Default::default()
    }
}

async fn create(
    client: &mut Client,
    token: &str,
    segment: Segment,
) -> Result<Segment, tonic::Status> {
    client
        .create_segment(authed(
            CreateSegmentRequest {
                segment: Some(segment),
                ..Default::default()
            },
            token,
        ))
        .await
        .map(|r| r.into_inner())
}

async fn members(
    client: &mut Client,
    token: &str,
    request: ListSegmentMembersRequest,
) -> ListSegmentMembersResponse {
    client
        .list_segment_members(authed(request, token))
        .await
        .expect("members")
        .into_inner()
}

async fn crud_and_rules(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    contact(&mut client, &token, "Cu", LifecycleStage::Customer).await;
    contact(&mut client, &token, "Le", LifecycleStage::Lead).await;

    // Validation names every bad field at once.
    let status = create(
        &mut client,
        &token,
        Segment {
            display_name: " ".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        ["segment.display_name", "segment.type"]
    );
    let status = create(&mut client, &token, dynamic(&"x".repeat(201), ""))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        ["segment.display_name", "segment.filter"]
    );
    let status = create(&mut client, &token, dynamic("Bad", "nope = 1"))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["segment.filter"]);
    let mut with_filter = static_list("List");
    with_filter.filter = "lifecycle_stage = CUSTOMER".into();
    let status = create(&mut client, &token, with_filter).await.unwrap_err();
    assert_eq!(violated_fields(&status), ["segment.filter"]);
    let status = client
        .create_segment(authed(
            CreateSegmentRequest {
                segment: Some(static_list("List")),
                segment_id: "not-a-uuid".into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["segment_id"]);

    // validate_only stores nothing.
    let preview = client
        .create_segment(authed(
            CreateSegmentRequest {
                segment: Some(dynamic("Customers", "lifecycle_stage = CUSTOMER")),
                validate_only: true,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(preview.member_count, 1);

    // Create with a request id, twice: one segment.
    let request = CreateSegmentRequest {
        segment: Some(dynamic("Customers", "lifecycle_stage = CUSTOMER")),
        request_id: "seg-req-1".into(),
        ..Default::default()
    };
    let customers = client
        .create_segment(authed(request.clone(), &token))
        .await
        .unwrap()
        .into_inner();
    let again = client
        .create_segment(authed(request, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.name, customers.name);
    assert!(customers.name.starts_with("segments/"));
    assert_eq!(customers.etag, "r1");
    assert_eq!(customers.member_count, 1);
    assert!(customers.member_count_time.is_some());
    let list = create(&mut client, &token, static_list("Expo 2026"))
        .await
        .unwrap();
    assert_eq!(list.member_count, 0);

    let got = client
        .get_segment(authed(
            GetSegmentRequest {
                name: customers.name.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.display_name, "Customers");
    assert_eq!(got.member_count, 1);

    let listed = client
        .list_segments(authed(
            ListSegmentsRequest {
                filter: "type = STATIC".into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total_size, 1);
    assert_eq!(listed.segments[0].name, list.name);
    let paged = client
        .list_segments(authed(
            ListSegmentsRequest {
                page_size: 1,
                order_by: "display_name desc".into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paged.total_size, 2);
    assert_eq!(paged.segments[0].display_name, "Expo 2026");
    let page_two = client
        .list_segments(authed(
            ListSegmentsRequest {
                page_size: 1,
                order_by: "display_name desc".into(),
                page_token: paged.next_page_token.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page_two.segments[0].display_name, "Customers");
    assert!(page_two.next_page_token.is_empty());
    let bad_order = client
        .list_segments(authed(
            ListSegmentsRequest {
                order_by: "filter".into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&bad_order), ["order_by"]);

    // Update: the filter follows, the type is immutable, the etag guards.
    let update = |segment: Segment, paths: &[&str], etag: &str| UpdateSegmentRequest {
        segment: Some(segment),
        update_mask: Some(FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }),
        etag: etag.into(),
        ..Default::default()
    };
    let mut patch = dynamic(
        "Customers and leads",
        "lifecycle_stage = CUSTOMER OR lifecycle_stage = LEAD",
    );
    patch.name = customers.name.clone();
    let updated = client
        .update_segment(authed(
            update(patch.clone(), &["display_name", "filter"], "r1"),
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.etag, "r2");
    assert_eq!(updated.member_count, 2);
    let stale = client
        .update_segment(authed(
            update(patch.clone(), &["display_name"], "r1"),
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    let immutable = client
        .update_segment(authed(update(patch.clone(), &["type"], ""), &token))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&immutable), ["update_mask"]);
    let mut bad = patch.clone();
    bad.filter = "lifecycle_stage = PROSPECT".into();
    let bad_filter = client
        .update_segment(authed(update(bad, &["filter"], ""), &token))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&bad_filter), ["segment.filter"]);
    let no_mask = client
        .update_segment(authed(
            UpdateSegmentRequest {
                segment: Some(patch),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&no_mask), ["update_mask"]);

    // Delete: etag checked, then gone.
    let stale = client
        .delete_segment(authed(
            DeleteSegmentRequest {
                name: customers.name.clone(),
                etag: "r1".into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    client
        .delete_segment(authed(
            DeleteSegmentRequest {
                name: customers.name.clone(),
                etag: "r2".into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap();
    let gone = client
        .get_segment(authed(
            GetSegmentRequest {
                name: customers.name.clone(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let bad_name = client
        .get_segment(authed(
            GetSegmentRequest {
                name: "segments/x".into(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&bad_name), ["name"]);
}
on_both_backends!(crud_and_rules);

async fn static_members_and_paging(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let token = admin("acme");
    let mut people = Vec::new();
    for name in ["A1", "A2", "A3", "A4"] {
        people.push(contact(&mut client, &token, name, LifecycleStage::Lead).await);
    }
    let list = create(&mut client, &token, static_list("Expo"))
        .await
        .unwrap();
    let add = |contacts: Vec<String>, request_id: &str| AddSegmentMembersRequest {
        segment: list.name.clone(),
        contacts,
        request_id: request_id.into(),
    };

    // All must exist: nothing is added when one is missing.
    let missing = "contacts/0192f0c1-7b1e-7cc3-9a44-4d2a3f1e9b10".to_owned();
    let status = client
        .add_segment_members(authed(
            add(vec![people[0].name.clone(), missing.clone()], ""),
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains(&missing), "{}", status.message());
    let status = client
        .add_segment_members(authed(add(vec![], ""), &token))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["contacts"]);
    let status = client
        .add_segment_members(authed(
            add(vec!["people/1".into(), "contacts/x".into()], ""),
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["contacts[0]", "contacts[1]"]);

    let names: Vec<String> = people.iter().take(3).map(|c| c.name.clone()).collect();
    let added = client
        .add_segment_members(authed(add(names.clone(), "add-1"), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((added.added_count, added.member_count), (3, 3));
    // A retry answers the same; already-members are left as they are.
    let retried = client
        .add_segment_members(authed(add(names.clone(), "add-1"), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((retried.added_count, retried.member_count), (3, 3));
    let more = client
        .add_segment_members(authed(
            add(vec![people[2].name.clone(), people[3].name.clone()], ""),
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((more.added_count, more.member_count), (1, 4));

    // Two pages of two, total 4, in the order asked.
    let first = members(
        &mut client,
        &token,
        ListSegmentMembersRequest {
            segment: list.name.clone(),
            page_size: 2,
            order_by: "given_name desc".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(first.total_size, 4);
    let given: Vec<&str> = first
        .contacts
        .iter()
        .map(|c| c.given_name.as_str())
        .collect();
    assert_eq!(given, ["A4", "A3"]);
    let second = members(
        &mut client,
        &token,
        ListSegmentMembersRequest {
            segment: list.name.clone(),
            page_size: 2,
            order_by: "given_name desc".into(),
            page_token: first.next_page_token.clone(),
            ..Default::default()
        },
    )
    .await;
    let given: Vec<&str> = second
        .contacts
        .iter()
        .map(|c| c.given_name.as_str())
        .collect();
    assert_eq!(given, ["A2", "A1"]);
    assert!(second.next_page_token.is_empty());
    // The token is bound to its query.
    let misused = client
        .list_segment_members(authed(
            ListSegmentMembersRequest {
                segment: list.name.clone(),
                page_size: 2,
                page_token: first.next_page_token.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&misused), ["page_token"]);

    // The request's filter narrows the members; deleted contacts drop out.
    let narrowed = members(
        &mut client,
        &token,
        ListSegmentMembersRequest {
            segment: list.name.clone(),
            filter: "given_name = \"A2\"".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(narrowed.total_size, 1);
    client
        .delete_contact(authed(
            DeleteContactRequest {
                name: people[0].name.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap();
    let after_delete = members(
        &mut client,
        &token,
        ListSegmentMembersRequest {
            segment: list.name.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(after_delete.total_size, 3);

    // Remove ignores non-members.
    let removed = client
        .remove_segment_members(authed(
            RemoveSegmentMembersRequest {
                segment: list.name.clone(),
                contacts: vec![people[1].name.clone(), missing],
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((removed.removed_count, removed.member_count), (1, 2));

    // Dynamic segments follow their filter and refuse hand-kept members.
    let leads = create(
        &mut client,
        &token,
        dynamic("Leads", "lifecycle_stage = LEAD"),
    )
    .await
    .unwrap();
    assert_eq!(leads.member_count, 3);
    let refused = client
        .add_segment_members(authed(
            AddSegmentMembersRequest {
                segment: leads.name.clone(),
                contacts: vec![people[1].name.clone()],
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let dynamic_members = members(
        &mut client,
        &token,
        ListSegmentMembersRequest {
            segment: leads.name.clone(),
            filter: "given_name = \"A4\"".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(dynamic_members.contacts.len(), 1);
    assert_eq!(dynamic_members.contacts[0].name, people[3].name);
}
on_both_backends!(static_members_and_paging);

async fn roles_owners_and_tenants(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let admin_token = admin("acme");
    let marketer = token("acme", "mia", &[Role::Marketer]);
    let other_marketer = token("acme", "max", &[Role::Marketer]);
    let rep = token("acme", "rex", &[Role::SalesRep]);

    let mut mine = static_list("Mia's list");
    mine.owner = "mia".into();
    let mine = create(&mut client, &marketer, mine).await.unwrap();
    // A marketer may not hand a segment to someone else.
    let mut theirs = static_list("For Max");
    theirs.owner = "max".into();
    let denied = create(&mut client, &marketer, theirs).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    // Reps may read segments but not create them.
    let denied = create(&mut client, &rep, static_list("Rep list"))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    client
        .get_segment(authed(
            GetSegmentRequest {
                name: mine.name.clone(),
            },
            &rep,
        ))
        .await
        .unwrap();
    // Only the owner (or a manager) changes it.
    let mut patch = mine.clone();
    patch.display_name = "Renamed".into();
    let update = UpdateSegmentRequest {
        segment: Some(patch),
        update_mask: Some(FieldMask {
            paths: vec!["display_name".into()],
        }),
        ..Default::default()
    };
    let denied = client
        .update_segment(authed(update.clone(), &other_marketer))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let person = contact(&mut client, &admin_token, "P", LifecycleStage::Lead).await;
    let denied = client
        .add_segment_members(authed(
            AddSegmentMembersRequest {
                segment: mine.name.clone(),
                contacts: vec![person.name.clone()],
                ..Default::default()
            },
            &other_marketer,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    client
        .update_segment(authed(update.clone(), &admin_token))
        .await
        .unwrap();

    // Another tenant sees nothing of it, and cannot add its contacts.
    let other = admin("globex");
    let hidden = client
        .get_segment(authed(
            GetSegmentRequest {
                name: mine.name.clone(),
            },
            &other,
        ))
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound);
    let none = client
        .list_segments(authed(ListSegmentsRequest::default(), &other))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(none.total_size, 0);
    let their_list = create(&mut client, &other, static_list("Globex list"))
        .await
        .unwrap();
    let foreign = client
        .add_segment_members(authed(
            AddSegmentMembersRequest {
                segment: their_list.name.clone(),
                contacts: vec![person.name.clone()],
                ..Default::default()
            },
            &other,
        ))
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Code::NotFound);
}
on_both_backends!(roles_owners_and_tenants);

async fn merges_repoint_static_memberships(backend: Backend) {
    use crm_contact::segments::store::member_row;
    use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

    let db = crate::audit::Db::open(backend).await;
    let id = |n: u8| format!("0192f0c1-7b1e-7cc3-9a44-4d2a3f1e9b{n:02}");
    let (winner, loser_a, loser_b) = (id(1), id(2), id(3));
    let (seg_1, seg_2, seg_3) = (id(11), id(12), id(13));
    // seg_1 holds the winner and loser_a; seg_2 holds both losers; seg_3 only loser_b.
    // Another tenant's membership of the same ids must not move.
    let rows = [
        ("acme", &seg_1, &winner),
        ("acme", &seg_1, &loser_a),
        ("acme", &seg_2, &loser_a),
        ("acme", &seg_2, &loser_b),
        ("acme", &seg_3, &loser_b),
        ("globex", &seg_1, &loser_a),
    ];
    member_row::Entity::insert_many(rows.iter().enumerate().map(
        |(i, (tenant, segment, contact))| member_row::ActiveModel {
            tenant_id: Set((*tenant).to_owned()),
            segment_id: Set((*segment).clone()),
            contact_id: Set((*contact).clone()),
            add_time_us: Set(i as i64),
        },
    ))
    .exec_without_returning(&db.conn)
    .await
    .unwrap();

    let before = crm_contact::segments::static_segments_for(&db.conn, "acme", &loser_b)
        .await
        .unwrap();
    assert_eq!(before.len(), 2);
    assert!(before.contains(&format!("segments/{seg_3}")));

    let moved = crm_contact::segments::repoint_contacts(
        &db.conn,
        "acme",
        &[loser_a.clone(), loser_b.clone()],
        &winner,
    )
    .await
    .unwrap();
    assert_eq!(
        moved, 2,
        "seg_2 and seg_3 gain the winner; seg_1 had it already"
    );

    let acme: Vec<(String, String)> = member_row::Entity::find()
        .filter(member_row::Column::TenantId.eq("acme"))
        .order_by_asc(member_row::Column::SegmentId)
        .all(&db.conn)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.segment_id, m.contact_id))
        .collect();
    assert_eq!(
        acme,
        [
            (seg_1.clone(), winner.clone()),
            (seg_2.clone(), winner.clone()),
            (seg_3.clone(), winner.clone()),
        ]
    );
    let mut winner_segments = crm_contact::segments::static_segments_for(&db.conn, "acme", &winner)
        .await
        .unwrap();
    winner_segments.sort();
    assert_eq!(
        winner_segments,
        [seg_1, seg_2, seg_3.clone()].map(|s| format!("segments/{s}"))
    );
    assert!(
        crm_contact::segments::static_segments_for(&db.conn, "acme", &loser_a)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        crm_contact::segments::static_segments_for(&db.conn, "globex", &loser_a)
            .await
            .unwrap()
            .len(),
        1
    );
    // Again: nothing left to move.
    let again = crm_contact::segments::repoint_contacts(&db.conn, "acme", &[loser_a], &winner)
        .await
        .unwrap();
    assert_eq!(again, 0);
    db.close().await;
}
on_both_backends!(merges_repoint_static_memberships);
