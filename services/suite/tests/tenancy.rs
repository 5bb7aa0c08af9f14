//! Tenant isolation over every RPC: tenant A creates one record of every kind, then
//! tenant B (an admin of its own tenant) calls every method of every service with A's
//! names, A's data and A's page tokens. B must get NOT_FOUND (or a refusal, or an answer
//! with nothing of A's in it), and A's records must be byte-for-byte unchanged after.
//!
//! The table is driven by the descriptor set: every method of the contact service must
//! have a case below, or be in `EXEMPT` with the reason why it names nothing of another
//! tenant. For the scaffold services (pipeline, ticket, analytics), a method without a
//! case must still answer UNIMPLEMENTED: the day it is implemented, this test fails
//! until a case is added for it.
//!
//! How a leak is seen: everything of A's carries a canary (the word `zebulonqx` in its
//! text, A's tenant id and A's user id, or A's record ids); every answer B receives
//! (messages, error message and error details) is searched for them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use prost_types::{FieldMask, Timestamp};
use tonic::Code;

use crm_platform::auth::{Role, service_methods};
use crm_proto::common::{Channel, WatchEventsRequest};
use crm_proto::contact::*;

use common::{Backend, Suite};

const CONTACT_SERVICE: &str = "crm.contact.v1.ContactService";
/// The canary in all of tenant A's text.
const CANARY: &str = "zebulonqx";
const TENANT_A: &str = "tenant-zebulonqx";
const USER_A: &str = "user-zebulonqx";
const TENANT_B: &str = "tenant-b";
/// A tenant that has done nothing: what B sees of a tenant-wide singleton must be what
/// a fresh tenant sees.
const TENANT_FRESH: &str = "tenant-fresh";
const EMAIL_A: &str = "zebulonqx@zebulonqx.example";
const PHONE_A: &str = "+49 30 901820";
/// How long a stream that stays open (WatchEvents) is read.
const STREAM_WINDOW: Duration = Duration::from_millis(1500);

/// Methods of the contact service with no isolation case, and why none is needed.
const EXEMPT: &[(&str, &str)] = &[];

/// The names of what tenant A owns, and what B already owns of its own.
struct World {
    contact: String,
    twin: String,
    account: String,
    interaction: String,
    episode: String,
    consent: String,
    static_segment: String,
    dynamic_segment: String,
    /// A's next-page token of ListContacts.
    contacts_page_token: String,
    /// A's next-page token of the tenant scan of FindDuplicates.
    scan_page_token: String,
    b_contact: String,
    b_static_segment: String,
}

fn id(name: &str) -> String {
    name.rsplit_once('/').map_or(name, |(_, id)| id).to_owned()
}

/// When a probe runs: B's reads before any of B's writes, and last the writes by which
/// B may create records of its own under A's ids.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Phase {
    Read,
    Write,
    Own,
}

enum Expect {
    /// Exactly this code.
    Code(Code),
    /// Any error but INTERNAL or UNKNOWN.
    Refused,
    /// Any answer with nothing of A's in it (a list, search, export or stream).
    NoLeak,
    /// The same answer as a fresh tenant's (tenant-wide singletons).
    SameAsFresh,
    /// B's write on its own records under one of A's ids: it may succeed; the answer
    /// carries none of A's text, and A's records are unchanged (checked at the end).
    Own,
    /// A check of the answer's messages, besides the leak check.
    Check(fn(&[Bytes]) -> Result<(), String>),
}

struct Probe {
    what: &'static str,
    phase: Phase,
    requests: Vec<Bytes>,
    expect: Expect,
}

fn probe(what: &'static str, phase: Phase, request: impl Message, expect: Expect) -> Probe {
    Probe {
        what,
        phase,
        requests: vec![Bytes::from(request.encode_to_vec())],
        expect,
    }
}

fn read(what: &'static str, request: impl Message, expect: Expect) -> Probe {
    probe(what, Phase::Read, request, expect)
}

fn write(what: &'static str, request: impl Message, expect: Expect) -> Probe {
    probe(what, Phase::Write, request, expect)
}

fn own(what: &'static str, request: impl Message) -> Probe {
    probe(what, Phase::Own, request, Expect::Own)
}

use Code::{InvalidArgument, NotFound};
use Expect::{NoLeak, Refused, SameAsFresh};

const fn code(code: Code) -> Expect {
    Expect::Code(code)
}

type Cases = fn(&World) -> Vec<Probe>;

fn case(method: &'static str, cases: Cases) -> (&'static str, Cases) {
    (method, cases)
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

fn hijacked_contact(name: &str) -> Contact {
    Contact {
        name: name.to_owned(),
        given_name: "Hijacked".into(),
        job_title: "hijacked".into(),
        ..Default::default()
    }
}

/// Import answers must not say a row updated anything: B has nothing to update.
fn no_row_updated(messages: &[Bytes]) -> Result<(), String> {
    let mut rows = 0;
    for message in messages {
        let answer = ImportContactsResponse::decode(message.as_ref()).map_err(|e| e.to_string())?;
        for row in &answer.results {
            rows += 1;
            if row.outcome == ImportRowOutcome::Updated as i32 {
                return Err(format!("row {} updated {}", row.row_id, row.contact));
            }
        }
        if answer.summary.as_ref().is_some_and(|s| s.updated > 0) {
            return Err(format!("summary: {:?}", answer.summary));
        }
    }
    if rows == 0 {
        return Err("no row result came back".into());
    }
    Ok(())
}

fn import(mode: ImportMode, contact: Contact) -> Vec<Bytes> {
    vec![
        Bytes::from(
            ImportContactsRequest {
                options: Some(ImportOptions {
                    mode: mode as i32,
                    ..Default::default()
                }),
                rows: Vec::new(),
            }
            .encode_to_vec(),
        ),
        Bytes::from(
            ImportContactsRequest {
                options: None,
                rows: vec![ImportRow {
                    row_id: "1".into(),
                    contact: Some(contact),
                }],
            }
            .encode_to_vec(),
        ),
    ]
}

/// Every contact-service method and what B's calls with A's names must get.
fn contact_cases() -> Vec<(&'static str, Cases)> {
    vec![
        // Contacts.
        case("CreateContact", |w| {
            vec![
                write(
                    "linked to A's account",
                    CreateContactRequest {
                        contact: Some(Contact {
                            given_name: "Bea".into(),
                            account: w.account.clone(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    Refused,
                ),
                own(
                    "under A's contact id",
                    CreateContactRequest {
                        contact: Some(Contact {
                            given_name: "Bea".into(),
                            ..Default::default()
                        }),
                        contact_id: id(&w.contact),
                        ..Default::default()
                    },
                ),
            ]
        }),
        case("GetContact", |w| {
            vec![read(
                "A's contact",
                GetContactRequest {
                    name: w.contact.clone(),
                },
                code(NotFound),
            )]
        }),
        case("BatchGetContacts", |w| {
            vec![
                read(
                    "A's contacts",
                    BatchGetContactsRequest {
                        names: vec![w.contact.clone(), w.twin.clone()],
                    },
                    code(NotFound),
                ),
                read(
                    "B's and A's",
                    BatchGetContactsRequest {
                        names: vec![w.b_contact.clone(), w.contact.clone()],
                    },
                    code(NotFound),
                ),
            ]
        }),
        case("ListContacts", |w| {
            vec![
                read(
                    "all, deleted too",
                    ListContactsRequest {
                        show_deleted: true,
                        ..Default::default()
                    },
                    NoLeak,
                ),
                read(
                    "filtered on A's data",
                    ListContactsRequest {
                        filter: format!("given_name = \"Zebulonqx\" OR email: \"{EMAIL_A}\""),
                        ..Default::default()
                    },
                    NoLeak,
                ),
                read(
                    "A's page token",
                    ListContactsRequest {
                        page_size: 1,
                        page_token: w.contacts_page_token.clone(),
                        ..Default::default()
                    },
                    code(InvalidArgument),
                ),
            ]
        }),
        case("UpdateContact", |w| {
            vec![
                write(
                    "A's contact",
                    UpdateContactRequest {
                        contact: Some(hijacked_contact(&w.contact)),
                        update_mask: mask(&["given_name", "job_title"]),
                        ..Default::default()
                    },
                    code(NotFound),
                ),
                own(
                    "A's contact, allow_missing",
                    UpdateContactRequest {
                        contact: Some(hijacked_contact(&w.twin)),
                        update_mask: mask(&["given_name", "job_title"]),
                        allow_missing: true,
                        ..Default::default()
                    },
                ),
            ]
        }),
        case("DeleteContact", |w| {
            vec![write(
                "A's contact",
                DeleteContactRequest {
                    name: w.contact.clone(),
                    ..Default::default()
                },
                code(NotFound),
            )]
        }),
        case("UndeleteContact", |w| {
            vec![write(
                "A's contact",
                UndeleteContactRequest {
                    name: w.contact.clone(),
                    ..Default::default()
                },
                code(NotFound),
            )]
        }),
        case("SearchContacts", |_| {
            vec![
                read(
                    "A's name",
                    SearchContactsRequest {
                        query: "Zebulonqx".into(),
                        ..Default::default()
                    },
                    NoLeak,
                ),
                read(
                    "A's email and phone",
                    SearchContactsRequest {
                        query: format!("{EMAIL_A} {PHONE_A}"),
                        ..Default::default()
                    },
                    NoLeak,
                ),
            ]
        }),
        // Accounts.
        case("CreateAccount", |w| {
            vec![
                write(
                    "under A's account",
                    CreateAccountRequest {
                        account: Some(Account {
                            display_name: "Bee Corp".into(),
                            parent_account: w.account.clone(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    Refused,
                ),
                own(
                    "under A's account id",
                    CreateAccountRequest {
                        account: Some(Account {
                            display_name: "Bee Corp".into(),
                            ..Default::default()
                        }),
                        account_id: id(&w.account),
                        ..Default::default()
                    },
                ),
            ]
        }),
        case("GetAccount", |w| {
            vec![read(
                "A's account",
                GetAccountRequest {
                    name: w.account.clone(),
                },
                code(NotFound),
            )]
        }),
        case("BatchGetAccounts", |w| {
            vec![read(
                "A's account",
                BatchGetAccountsRequest {
                    names: vec![w.account.clone()],
                },
                code(NotFound),
            )]
        }),
        case("ListAccounts", |_| {
            vec![
                read(
                    "all, deleted too",
                    ListAccountsRequest {
                        show_deleted: true,
                        ..Default::default()
                    },
                    NoLeak,
                ),
                read(
                    "filtered on A's domain",
                    ListAccountsRequest {
                        filter: "domain = \"zebulonqx.example\"".into(),
                        ..Default::default()
                    },
                    NoLeak,
                ),
            ]
        }),
        case("UpdateAccount", |w| {
            vec![write(
                "A's account",
                UpdateAccountRequest {
                    account: Some(Account {
                        name: w.account.clone(),
                        display_name: "Hijacked".into(),
                        ..Default::default()
                    }),
                    update_mask: mask(&["display_name"]),
                    ..Default::default()
                },
                code(NotFound),
            )]
        }),
        case("DeleteAccount", |w| {
            vec![write(
                "A's account",
                DeleteAccountRequest {
                    name: w.account.clone(),
                    ..Default::default()
                },
                code(NotFound),
            )]
        }),
        case("UndeleteAccount", |w| {
            vec![write(
                "A's account",
                UndeleteAccountRequest {
                    name: w.account.clone(),
                    ..Default::default()
                },
                code(NotFound),
            )]
        }),
        // Timeline.
        case("CreateInteraction", |w| {
            let interaction = |contact: &str, account: &str, episode: &str| Interaction {
                r#type: InteractionType::Note as i32,
                contact: contact.to_owned(),
                account: account.to_owned(),
                episode: episode.to_owned(),
                interaction_time: Some(Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                }),
                subject: "B's note".into(),
                ..Default::default()
            };
            let request = |i: Interaction| CreateInteractionRequest {
                interaction: Some(i),
                ..Default::default()
            };
            vec![
                write(
                    "on A's contact",
                    request(interaction(&w.contact, "", "")),
                    Refused,
                ),
                write(
                    "on A's account",
                    request(interaction("", &w.account, "")),
                    Refused,
                ),
                write(
                    "in A's episode",
                    request(interaction(&w.b_contact, "", &w.episode)),
                    Refused,
                ),
            ]
        }),
        case("GetInteraction", |w| {
            vec![read(
                "A's interaction",
                GetInteractionRequest {
                    name: w.interaction.clone(),
                },
                code(NotFound),
            )]
        }),
        case("ListInteractions", |w| {
            vec![
                read("all", ListInteractionsRequest::default(), NoLeak),
                read(
                    "of A's contact",
                    ListInteractionsRequest {
                        contact: w.contact.clone(),
                        ..Default::default()
                    },
                    NoLeak,
                ),
                read(
                    "of A's account",
                    ListInteractionsRequest {
                        account: w.account.clone(),
                        ..Default::default()
                    },
                    NoLeak,
                ),
            ]
        }),
        case("UpdateInteraction", |w| {
            vec![write(
                "A's interaction",
                UpdateInteractionRequest {
                    interaction: Some(Interaction {
                        name: w.interaction.clone(),
                        subject: "hijacked".into(),
                        ..Default::default()
                    }),
                    update_mask: mask(&["subject"]),
                    ..Default::default()
                },
                code(NotFound),
            )]
        }),
        case("DeleteInteraction", |w| {
            vec![write(
                "A's interaction",
                DeleteInteractionRequest {
                    name: w.interaction.clone(),
                    ..Default::default()
                },
                code(NotFound),
            )]
        }),
        case("CreateEpisode", |w| {
            vec![write(
                "on A's contact",
                CreateEpisodeRequest {
                    episode: Some(Episode {
                        display_name: "B's episode".into(),
                        contact: w.contact.clone(),
                        start_time: Some(Timestamp {
                            seconds: 1_700_000_000,
                            nanos: 0,
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Refused,
            )]
        }),
        case("GetEpisode", |w| {
            vec![read(
                "A's episode",
                GetEpisodeRequest {
                    name: w.episode.clone(),
                },
                code(NotFound),
            )]
        }),
        case("ListEpisodes", |_| {
            vec![read("all", ListEpisodesRequest::default(), NoLeak)]
        }),
        case("UpdateEpisode", |w| {
            vec![write(
                "A's episode",
                UpdateEpisodeRequest {
                    episode: Some(Episode {
                        name: w.episode.clone(),
                        display_name: "hijacked".into(),
                        ..Default::default()
                    }),
                    update_mask: mask(&["display_name"]),
                    ..Default::default()
                },
                code(NotFound),
            )]
        }),
        // Consent and privacy.
        case("RecordConsent", |w| {
            vec![write(
                "for A's contact",
                RecordConsentRequest {
                    consent_record: Some(ConsentRecord {
                        contact: w.contact.clone(),
                        channel: Channel::Email as i32,
                        purpose: ConsentPurpose::Marketing as i32,
                        status: ConsentStatus::OptedOut as i32,
                        legal_basis: LegalBasis::Consent as i32,
                        source: "b".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Refused,
            )]
        }),
        case("GetConsent", |w| {
            let by = |person: get_consent_request::Person| GetConsentRequest {
                person: Some(person),
                ..Default::default()
            };
            vec![
                read(
                    "of A's contact",
                    by(get_consent_request::Person::Contact(w.contact.clone())),
                    code(NotFound),
                ),
                read(
                    "of A's email address",
                    by(get_consent_request::Person::EmailAddress(EMAIL_A.into())),
                    NoLeak,
                ),
                read(
                    "of A's phone number",
                    by(get_consent_request::Person::PhoneNumber(PHONE_A.into())),
                    NoLeak,
                ),
            ]
        }),
        case("ListConsentHistory", |w| {
            vec![read(
                "of A's contact",
                ListConsentHistoryRequest {
                    contact: w.contact.clone(),
                    ..Default::default()
                },
                code(NotFound),
            )]
        }),
        case("ExportPersonalData", |w| {
            vec![read(
                "of A's contact",
                ExportPersonalDataRequest {
                    contact: w.contact.clone(),
                },
                code(NotFound),
            )]
        }),
        case("ErasePersonalData", |w| {
            vec![write(
                "of A's contact",
                ErasePersonalDataRequest {
                    contact: w.contact.clone(),
                    reason: "tenancy test".into(),
                    ..Default::default()
                },
                code(NotFound),
            )]
        }),
        // Duplicates.
        case("FindDuplicates", |w| {
            vec![
                read(
                    "of A's contact",
                    FindDuplicatesRequest {
                        target: Some(find_duplicates_request::Target::Contact(w.contact.clone())),
                        ..Default::default()
                    },
                    code(NotFound),
                ),
                read(
                    "of a probe with A's name, email and phone",
                    FindDuplicatesRequest {
                        target: Some(find_duplicates_request::Target::Probe(Contact {
                            given_name: "Zebulonqx".into(),
                            family_name: "Canary".into(),
                            emails: vec![EmailAddress {
                                address: EMAIL_A.into(),
                                ..Default::default()
                            }],
                            phones: vec![PhoneNumber {
                                number: PHONE_A.into(),
                                ..Default::default()
                            }],
                            ..Default::default()
                        })),
                        ..Default::default()
                    },
                    NoLeak,
                ),
                read(
                    "the tenant scan (A holds a pair)",
                    FindDuplicatesRequest::default(),
                    NoLeak,
                ),
                read(
                    "A's scan token",
                    FindDuplicatesRequest {
                        page_size: 1,
                        page_token: w.scan_page_token.clone(),
                        ..Default::default()
                    },
                    code(InvalidArgument),
                ),
            ]
        }),
        case("MergeContacts", |w| {
            let merge = |winner: &str, loser: &str, dry_run: bool| MergeContactsRequest {
                winner: winner.to_owned(),
                losers: vec![loser.to_owned()],
                dry_run,
                ..Default::default()
            };
            vec![
                read(
                    "dry run, A's into A's",
                    merge(&w.contact, &w.twin, true),
                    code(NotFound),
                ),
                write(
                    "A's into A's",
                    merge(&w.contact, &w.twin, false),
                    code(NotFound),
                ),
                write(
                    "A's into B's",
                    merge(&w.b_contact, &w.twin, false),
                    code(NotFound),
                ),
                write(
                    "B's into A's",
                    merge(&w.contact, &w.b_contact, false),
                    code(NotFound),
                ),
            ]
        }),
        case("GetDuplicateRules", |_| {
            vec![read(
                "the tenant's rules",
                GetDuplicateRulesRequest {
                    name: "duplicateRules".into(),
                },
                SameAsFresh,
            )]
        }),
        case("UpdateDuplicateRules", |_| {
            vec![own(
                "B's own rules",
                UpdateDuplicateRulesRequest {
                    duplicate_rules: Some(DuplicateRules {
                        name: "duplicateRules".into(),
                        on_create: DuplicateAction::Allow as i32,
                        ..Default::default()
                    }),
                    update_mask: mask(&["on_create"]),
                    ..Default::default()
                },
            )]
        }),
        // Segments.
        case("CreateSegment", |w| {
            vec![own(
                "under A's segment id",
                CreateSegmentRequest {
                    segment: Some(Segment {
                        display_name: "B's segment".into(),
                        r#type: SegmentType::Static as i32,
                        ..Default::default()
                    }),
                    segment_id: id(&w.static_segment),
                    ..Default::default()
                },
            )]
        }),
        case("GetSegment", |w| {
            vec![
                read(
                    "A's static segment",
                    GetSegmentRequest {
                        name: w.static_segment.clone(),
                    },
                    code(NotFound),
                ),
                read(
                    "A's dynamic segment",
                    GetSegmentRequest {
                        name: w.dynamic_segment.clone(),
                    },
                    code(NotFound),
                ),
            ]
        }),
        case("ListSegments", |_| {
            vec![read("all", ListSegmentsRequest::default(), NoLeak)]
        }),
        case("UpdateSegment", |w| {
            vec![write(
                "A's segment",
                UpdateSegmentRequest {
                    segment: Some(Segment {
                        name: w.dynamic_segment.clone(),
                        filter: "given_name = \"Hijacked\"".into(),
                        ..Default::default()
                    }),
                    update_mask: mask(&["filter"]),
                    ..Default::default()
                },
                code(NotFound),
            )]
        }),
        case("DeleteSegment", |w| {
            vec![write(
                "A's segment",
                DeleteSegmentRequest {
                    name: w.static_segment.clone(),
                    ..Default::default()
                },
                code(NotFound),
            )]
        }),
        case("ListSegmentMembers", |w| {
            vec![
                read(
                    "of A's static segment",
                    ListSegmentMembersRequest {
                        segment: w.static_segment.clone(),
                        ..Default::default()
                    },
                    code(NotFound),
                ),
                read(
                    "of A's dynamic segment",
                    ListSegmentMembersRequest {
                        segment: w.dynamic_segment.clone(),
                        ..Default::default()
                    },
                    code(NotFound),
                ),
            ]
        }),
        case("AddSegmentMembers", |w| {
            vec![
                write(
                    "B's contact to A's segment",
                    AddSegmentMembersRequest {
                        segment: w.static_segment.clone(),
                        contacts: vec![w.b_contact.clone()],
                        ..Default::default()
                    },
                    code(NotFound),
                ),
                write(
                    "A's contact to B's segment",
                    AddSegmentMembersRequest {
                        segment: w.b_static_segment.clone(),
                        contacts: vec![w.contact.clone()],
                        ..Default::default()
                    },
                    Refused,
                ),
            ]
        }),
        case("RemoveSegmentMembers", |w| {
            vec![write(
                "A's contact from A's segment",
                RemoveSegmentMembersRequest {
                    segment: w.static_segment.clone(),
                    contacts: vec![w.contact.clone()],
                    ..Default::default()
                },
                code(NotFound),
            )]
        }),
        // Bulk transfer: ImportContacts is a client stream (options, then rows).
        case("ImportContacts", |w| {
            vec![
                Probe {
                    what: "update-only rows naming A's contact",
                    phase: Phase::Write,
                    requests: import(ImportMode::UpdateOnly, hijacked_contact(&w.contact)),
                    expect: Expect::Check(no_row_updated),
                },
                Probe {
                    what: "upsert by A's email address",
                    phase: Phase::Own,
                    requests: import(
                        ImportMode::UpsertByEmail,
                        Contact {
                            given_name: "Hijacked".into(),
                            emails: vec![EmailAddress {
                                address: EMAIL_A.into(),
                                ..Default::default()
                            }],
                            ..Default::default()
                        },
                    ),
                    expect: Expect::Check(no_row_updated),
                },
            ]
        }),
        case("ExportContacts", |_| {
            vec![
                read(
                    "everything, deleted too",
                    ExportContactsRequest {
                        show_deleted: true,
                        ..Default::default()
                    },
                    NoLeak,
                ),
                read(
                    "filtered on A's data",
                    ExportContactsRequest {
                        filter: "given_name = \"Zebulonqx\"".into(),
                        ..Default::default()
                    },
                    NoLeak,
                ),
            ]
        }),
        // Audit.
        case("GetRecordHistory", |w| {
            let history = |name: &str| GetRecordHistoryRequest {
                name: name.to_owned(),
                ..Default::default()
            };
            // History comes from the feed and outlives its record (a deleted or erased
            // record still has one), so an unknown name has an empty history, not
            // NOT_FOUND: B gets an empty answer.
            vec![
                read("of A's contact", history(&w.contact), NoLeak),
                read("of A's account", history(&w.account), NoLeak),
                read("of A's segment", history(&w.static_segment), NoLeak),
                read("of A's consent record", history(&w.consent), NoLeak),
                read(
                    "of the duplicate rules",
                    history("duplicateRules"),
                    SameAsFresh,
                ),
                read("of the settings", history("contactSettings"), SameAsFresh),
            ]
        }),
        case("ListAuditEvents", |w| {
            vec![
                read("all", ListAuditEventsRequest::default(), NoLeak),
                read(
                    "of A's contact",
                    ListAuditEventsRequest {
                        filter: format!("resource_name = \"{}\"", w.contact),
                        ..Default::default()
                    },
                    NoLeak,
                ),
                read(
                    "of the tenant singletons",
                    ListAuditEventsRequest {
                        filter: "resource_name = \"duplicateRules\" OR resource_name = \"contactSettings\"".into(),
                        ..Default::default()
                    },
                    SameAsFresh,
                ),
            ]
        }),
        // Settings.
        case("GetContactSettings", |_| {
            vec![read(
                "the tenant's settings",
                GetContactSettingsRequest {
                    name: "contactSettings".into(),
                },
                SameAsFresh,
            )]
        }),
        case("UpdateContactSettings", |_| {
            vec![own(
                "B's own settings",
                UpdateContactSettingsRequest {
                    contact_settings: Some(ContactSettings {
                        name: "contactSettings".into(),
                        default_phone_region: "FR".into(),
                        ..Default::default()
                    }),
                    update_mask: mask(&["default_phone_region"]),
                    ..Default::default()
                },
            )]
        }),
        // The feed: from the very start, B sees none of A's events.
        case("WatchEvents", |_| {
            vec![read(
                "from position 0",
                WatchEventsRequest {
                    after_position: 0,
                    heartbeat_seconds: 1,
                    ..Default::default()
                },
                NoLeak,
            )]
        }),
    ]
}

/// The scaffold services' cases: only their feed is implemented.
fn scaffold_cases() -> Vec<(&'static str, Cases)> {
    vec![case("WatchEvents", |_| {
        vec![read(
            "from position 0",
            WatchEventsRequest {
                after_position: 0,
                heartbeat_seconds: 1,
                ..Default::default()
            },
            NoLeak,
        )]
    })]
}

struct Actor<'a> {
    suite: &'a Suite,
    token: String,
}

impl Actor<'_> {
    async fn call(&self, service: &str, method: &str, request: impl Message) -> Bytes {
        let path = format!("/{service}/{method}");
        let answer = self
            .suite
            .call_collect(
                &path,
                vec![Bytes::from(request.encode_to_vec())],
                &self.token,
                STREAM_WINDOW,
            )
            .await
            .unwrap_or_else(|status| panic!("{path}: {status:?}"));
        answer.into_iter().next().expect("an answer")
    }

    async fn contact<T: Message + Default>(&self, method: &str, request: impl Message) -> T {
        T::decode(self.call(CONTACT_SERVICE, method, request).await.as_ref()).unwrap()
    }
}

/// Tenant A's world, and B's own contact and segment.
async fn build_world(a: &Actor<'_>, b: &Actor<'_>) -> World {
    let account: Account = a
        .contact(
            "CreateAccount",
            CreateAccountRequest {
                account: Some(Account {
                    display_name: "Zebulonqx Holdings".into(),
                    domain: "zebulonqx.example".into(),
                    tags: vec![CANARY.into()],
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await;
    let person = |email: &str| Contact {
        given_name: "Zebulonqx".into(),
        family_name: "Canary".into(),
        emails: vec![EmailAddress {
            address: email.to_owned(),
            ..Default::default()
        }],
        phones: vec![PhoneNumber {
            number: PHONE_A.into(),
            ..Default::default()
        }],
        job_title: "zebulonqx officer".into(),
        account: account.name.clone(),
        tags: vec![CANARY.into()],
        ..Default::default()
    };
    let create = |contact: Contact| CreateContactRequest {
        contact: Some(contact),
        ..Default::default()
    };
    let contact: Contact = a.contact("CreateContact", create(person(EMAIL_A))).await;
    let twin: Contact = a
        .contact(
            "CreateContact",
            create(person("zebulonqx.twin@zebulonqx.example")),
        )
        .await;
    let episode: Episode = a
        .contact(
            "CreateEpisode",
            CreateEpisodeRequest {
                episode: Some(Episode {
                    display_name: "zebulonqx onboarding".into(),
                    contact: contact.name.clone(),
                    start_time: Some(Timestamp {
                        seconds: 1_700_000_000,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await;
    let interaction: Interaction = a
        .contact(
            "CreateInteraction",
            CreateInteractionRequest {
                interaction: Some(Interaction {
                    r#type: InteractionType::Call as i32,
                    contact: contact.name.clone(),
                    episode: episode.name.clone(),
                    interaction_time: Some(Timestamp {
                        seconds: 1_700_000_000,
                        nanos: 0,
                    }),
                    subject: "zebulonqx intro call".into(),
                    body: "zebulonqx notes".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await;
    let consent: ConsentRecord = a
        .contact(
            "RecordConsent",
            RecordConsentRequest {
                consent_record: Some(ConsentRecord {
                    contact: contact.name.clone(),
                    channel: Channel::Email as i32,
                    purpose: ConsentPurpose::Marketing as i32,
                    status: ConsentStatus::OptedIn as i32,
                    address: EMAIL_A.into(),
                    source: "zebulonqx web form".into(),
                    legal_basis: LegalBasis::Consent as i32,
                    evidence: "zebulonqx evidence".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await;
    let segment = |display_name: &str, r#type: SegmentType, filter: &str| CreateSegmentRequest {
        segment: Some(Segment {
            display_name: display_name.to_owned(),
            r#type: r#type as i32,
            filter: filter.to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let static_segment: Segment = a
        .contact(
            "CreateSegment",
            segment("zebulonqx static", SegmentType::Static, ""),
        )
        .await;
    let _: AddSegmentMembersResponse = a
        .contact(
            "AddSegmentMembers",
            AddSegmentMembersRequest {
                segment: static_segment.name.clone(),
                contacts: vec![contact.name.clone()],
                ..Default::default()
            },
        )
        .await;
    let dynamic_segment: Segment = a
        .contact(
            "CreateSegment",
            segment(
                "zebulonqx dynamic",
                SegmentType::Dynamic,
                "given_name = \"Zebulonqx\"",
            ),
        )
        .await;
    let _: DuplicateRules = a
        .contact(
            "UpdateDuplicateRules",
            UpdateDuplicateRulesRequest {
                duplicate_rules: Some(DuplicateRules {
                    name: "duplicateRules".into(),
                    on_create: DuplicateAction::Warn as i32,
                    min_score: 0.93,
                    ..Default::default()
                }),
                update_mask: mask(&["on_create", "min_score"]),
                ..Default::default()
            },
        )
        .await;
    let _: ContactSettings = a
        .contact(
            "UpdateContactSettings",
            UpdateContactSettingsRequest {
                contact_settings: Some(ContactSettings {
                    name: "contactSettings".into(),
                    default_phone_region: "DE".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["default_phone_region"]),
                ..Default::default()
            },
        )
        .await;
    let page: ListContactsResponse = a
        .contact(
            "ListContacts",
            ListContactsRequest {
                page_size: 1,
                ..Default::default()
            },
        )
        .await;
    assert!(!page.next_page_token.is_empty());
    let scan: FindDuplicatesResponse = a
        .contact(
            "FindDuplicates",
            FindDuplicatesRequest {
                page_size: 1,
                ..Default::default()
            },
        )
        .await;
    assert!(
        !scan.next_page_token.is_empty(),
        "A's pair fills a page of one"
    );

    let b_contact: Contact = b
        .contact(
            "CreateContact",
            create(Contact {
                given_name: "Bea".into(),
                family_name: "Other".into(),
                ..Default::default()
            }),
        )
        .await;
    let b_static_segment: Segment = b
        .contact(
            "CreateSegment",
            segment("B's list", SegmentType::Static, ""),
        )
        .await;
    World {
        contact: contact.name,
        twin: twin.name,
        account: account.name,
        interaction: interaction.name,
        episode: episode.name,
        consent: consent.name,
        static_segment: static_segment.name,
        dynamic_segment: dynamic_segment.name,
        contacts_page_token: page.next_page_token,
        scan_page_token: scan.next_page_token,
        b_contact: b_contact.name,
        b_static_segment: b_static_segment.name,
    }
}

/// What A reads of its own world: compared byte for byte before and after B's calls.
/// An answer that is an error is kept as its code.
async fn snapshot(a: &Actor<'_>, w: &World) -> Vec<(String, Result<Bytes, Code>)> {
    let mut reads: Vec<(&str, Vec<u8>)> = vec![
        (
            "GetContact",
            GetContactRequest {
                name: w.contact.clone(),
            }
            .encode_to_vec(),
        ),
        (
            "GetContact",
            GetContactRequest {
                name: w.twin.clone(),
            }
            .encode_to_vec(),
        ),
        (
            "GetAccount",
            GetAccountRequest {
                name: w.account.clone(),
            }
            .encode_to_vec(),
        ),
        (
            "GetInteraction",
            GetInteractionRequest {
                name: w.interaction.clone(),
            }
            .encode_to_vec(),
        ),
        (
            "GetEpisode",
            GetEpisodeRequest {
                name: w.episode.clone(),
            }
            .encode_to_vec(),
        ),
        (
            "ListConsentHistory",
            ListConsentHistoryRequest {
                contact: w.contact.clone(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "ListSegmentMembers",
            ListSegmentMembersRequest {
                segment: w.static_segment.clone(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "ListSegmentMembers",
            ListSegmentMembersRequest {
                segment: w.dynamic_segment.clone(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "GetDuplicateRules",
            GetDuplicateRulesRequest {
                name: "duplicateRules".into(),
            }
            .encode_to_vec(),
        ),
        (
            "GetContactSettings",
            GetContactSettingsRequest {
                name: "contactSettings".into(),
            }
            .encode_to_vec(),
        ),
    ];
    for list in [
        "ListContacts",
        "ListAccounts",
        "ListInteractions",
        "ListEpisodes",
        "ListSegments",
        "ListAuditEvents",
    ] {
        // All these requests are "everything, first page" when empty.
        reads.push((list, Vec::new()));
    }
    let mut out = Vec::new();
    for (method, request) in reads {
        let path = format!("/{CONTACT_SERVICE}/{method}");
        let answer = a
            .suite
            .call_collect(&path, vec![Bytes::from(request)], &a.token, STREAM_WINDOW)
            .await
            .map(|answer| without_read_time(method, answer.concat()))
            .map_err(|status| status.code());
        out.push((method.to_owned(), answer));
    }
    out
}

/// An answer without what changes with the time of reading: a segment's member count
/// is counted when it is read, and says when.
fn without_read_time(method: &str, answer: Vec<u8>) -> Bytes {
    if method != "ListSegments" {
        return answer.into();
    }
    let mut list = ListSegmentsResponse::decode(answer.as_slice()).unwrap();
    for segment in &mut list.segments {
        segment.member_count_time = None;
    }
    list.encode_to_vec().into()
}

/// The first needle found in `haystack`, case-insensitively.
fn find_needle<'n>(haystack: &[u8], needles: &'n [String]) -> Option<&'n str> {
    let haystack = haystack.to_ascii_lowercase();
    needles
        .iter()
        .find(|needle| {
            let needle = needle.to_ascii_lowercase();
            haystack
                .windows(needle.len())
                .any(|window| window == needle.as_bytes())
        })
        .map(String::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_b_never_sees_or_changes_tenant_a_data_on_sqlite() {
    tenant_b_never_sees_or_changes_tenant_a_data(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_b_never_sees_or_changes_tenant_a_data_on_postgres() {
    tenant_b_never_sees_or_changes_tenant_a_data(Backend::Postgres).await;
}

async fn tenant_b_never_sees_or_changes_tenant_a_data(backend: Backend) {
    let suite = Suite::start_on(backend).await;
    let a = Actor {
        suite: &suite,
        token: suite.token_for(USER_A, TENANT_A, &[Role::Admin]),
    };
    let b = Actor {
        suite: &suite,
        token: suite.token(TENANT_B, &[Role::Admin]),
    };
    let fresh = suite.token(TENANT_FRESH, &[Role::Admin]);
    let world = build_world(&a, &b).await;
    // Let the relay publish A's events, so that the feed has something to leak.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = snapshot(&a, &world).await;

    // Text that only A's records carry, and the ids of A's records.
    let text_needles: Vec<String> = vec![CANARY.into(), "901820".into()];
    let mut all_needles = text_needles.clone();
    all_needles.extend(
        [
            &world.contact,
            &world.twin,
            &world.account,
            &world.interaction,
            &world.episode,
            &world.consent,
            &world.static_segment,
            &world.dynamic_segment,
        ]
        .into_iter()
        .map(|name| id(name)),
    );

    // Every method of every service has a case, an exemption, or is not implemented.
    let mut plan = Vec::new();
    let mut unimplemented = Vec::new();
    let mut failures = Vec::new();
    for (service, _) in &suite.tables {
        let cases = if *service == CONTACT_SERVICE {
            contact_cases()
        } else {
            scaffold_cases()
        };
        let methods = service_methods(service);
        assert!(!methods.is_empty(), "{service}: no methods");
        let known: BTreeSet<&str> = methods.iter().map(String::as_str).collect();
        for (method, _) in &cases {
            assert!(
                known.contains(method),
                "{service}: a case for {method}, which the contract does not have"
            );
        }
        for (method, _) in EXEMPT {
            assert!(known.contains(method), "exempt {method} is not a method");
        }
        for method in &methods {
            let path = format!("/{service}/{method}");
            let found: Vec<_> = cases.iter().filter(|(m, _)| m == method).collect();
            match found.as_slice() {
                [(_, probes)] => {
                    let probes = probes(&world);
                    assert!(!probes.is_empty(), "{path}: a case without probes");
                    plan.extend(probes.into_iter().map(|p| (path.clone(), p)));
                }
                [] if *service == CONTACT_SERVICE && EXEMPT.iter().any(|(m, _)| m == method) => {}
                [] if *service == CONTACT_SERVICE => {
                    failures.push(format!("{path}: no isolation case and no exemption"));
                }
                [] => {
                    // A scaffold method: fine while it is not implemented.
                    let code = match suite.call(&path, Bytes::new(), &b.token).await {
                        Ok(()) => Code::Ok,
                        Err(status) => status.code(),
                    };
                    if code == Code::Unimplemented {
                        unimplemented.push(path);
                    } else {
                        failures.push(format!(
                            "{path} is implemented ({code:?}) but has no isolation case"
                        ));
                    }
                }
                _ => failures.push(format!("{path}: more than one case")),
            }
        }
    }

    // B's calls: reads first, then writes on A's names, then writes that may create
    // B's own records under A's ids.
    plan.sort_by_key(|(_, p)| p.phase);
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for (path, probe) in &plan {
        let label = format!("{path} ({}, {:?})", probe.what, probe.phase);
        let answer = suite
            .call_collect(path, probe.requests.clone(), &b.token, STREAM_WINDOW)
            .await;
        let code = answer.as_ref().err().map_or(Code::Ok, tonic::Status::code);
        *counts.entry(format!("{code:?}")).or_default() += 1;
        let needles = match probe.expect {
            Expect::Own => &text_needles,
            _ => &all_needles,
        };
        // Nothing of A's in the answer, whatever it is.
        let leaked = match &answer {
            Ok(messages) => find_needle(&messages.concat(), needles),
            Err(status) => find_needle(status.message().as_bytes(), &text_needles)
                .or_else(|| find_needle(status.details(), &text_needles)),
        };
        if let Some(needle) = leaked {
            failures.push(format!("{label}: B's answer carries A's {needle:?}"));
            continue;
        }
        if matches!(code, Code::Internal | Code::Unknown) {
            failures.push(format!("{label}: {answer:?}"));
            continue;
        }
        match &probe.expect {
            Expect::Code(expected) if code != *expected => {
                failures.push(format!("{label}: expected {expected:?}, got {answer:?}"));
            }
            Expect::Refused if code == Code::Ok => {
                failures.push(format!("{label}: expected a refusal, got OK"));
            }
            Expect::SameAsFresh => {
                let theirs = suite
                    .call_collect(path, probe.requests.clone(), &fresh, STREAM_WINDOW)
                    .await;
                let same = match (&answer, &theirs) {
                    (Ok(ours), Ok(theirs)) => ours == theirs,
                    (Err(ours), Err(theirs)) => ours.code() == theirs.code(),
                    _ => false,
                };
                if !same {
                    failures.push(format!(
                        "{label}: B got {answer:?}, a fresh tenant {theirs:?}"
                    ));
                }
            }
            Expect::Check(check) => match &answer {
                Ok(messages) => {
                    if let Err(why) = check(messages) {
                        failures.push(format!("{label}: {why}"));
                    }
                }
                Err(status) => failures.push(format!("{label}: {status:?}")),
            },
            _ => {}
        }
    }

    // A's world is exactly as it was.
    let after = snapshot(&a, &world).await;
    for ((method, was), (_, is)) in before.iter().zip(&after) {
        if was != is {
            let code = |r: &Result<Bytes, Code>| r.as_ref().err().copied().unwrap_or(Code::Ok);
            failures.push(format!(
                "A's {method} changed after B's calls ({:?} before, {:?} after)",
                code(was),
                code(is)
            ));
        }
    }
    // And A still sees its own records (the snapshot is not of empty answers).
    for (method, answer) in &before {
        let singleton = matches!(method.as_str(), "GetDuplicateRules" | "GetContactSettings");
        let Ok(answer) = answer else {
            failures.push(format!("A's own {method} failed: {answer:?}"));
            continue;
        };
        if !singleton && find_needle(answer, &all_needles).is_none() {
            failures.push(format!("A's own {method} shows nothing of A's"));
        }
    }

    assert!(
        failures.is_empty(),
        "{} isolation failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    println!(
        "{} probes by tenant B over {} methods, none saw or changed tenant A's data: {counts:?}; \
         not implemented yet: {}",
        plan.len(),
        plan.iter()
            .map(|(path, _)| path.as_str())
            .collect::<BTreeSet<_>>()
            .len(),
        unimplemented.len()
    );
    suite.stop().await;
}
