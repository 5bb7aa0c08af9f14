//! Which roles may call each ContactService RPC. Ownership (reps change only their own
//! or unassigned contacts) is checked in the handlers.

use crm_platform::auth::{Role, RoleTable};

pub const SERVICE_NAME: &str = "crm.contact.v1.ContactService";

use Role::*;

const HUMANS: &[Role] = &[
    Admin,
    SalesManager,
    SalesRep,
    SupportManager,
    SupportAgent,
    Marketer,
    Analyst,
    Viewer,
];
const HUMANS_AND_SYSTEM: &[Role] = &[
    Admin,
    SalesManager,
    SalesRep,
    SupportManager,
    SupportAgent,
    Marketer,
    Analyst,
    Viewer,
    System,
];
const WRITERS: &[Role] = &[
    Admin,
    SalesManager,
    SalesRep,
    SupportManager,
    SupportAgent,
    Marketer,
];
const MANAGERS: &[Role] = &[Admin, SalesManager, SupportManager];
const LIST_OWNERS: &[Role] = &[Admin, SalesManager, Marketer];
const EXPORTERS: &[Role] = &[Admin, SalesManager, Marketer, Analyst];
const AUDITORS: &[Role] = &[Admin, SalesManager, SupportManager, Analyst];
const ADMIN: &[Role] = &[Admin];

/// Every RPC of the service and the roles that may call it.
pub const TABLE: &[(&str, &[Role])] = &[
    ("CreateContact", WRITERS),
    ("GetContact", HUMANS_AND_SYSTEM),
    ("BatchGetContacts", HUMANS_AND_SYSTEM),
    ("ListContacts", HUMANS),
    ("UpdateContact", WRITERS),
    ("DeleteContact", WRITERS),
    ("UndeleteContact", WRITERS),
    ("SearchContacts", HUMANS),
    ("CreateAccount", WRITERS),
    ("GetAccount", HUMANS_AND_SYSTEM),
    ("BatchGetAccounts", HUMANS_AND_SYSTEM),
    ("ListAccounts", HUMANS),
    ("UpdateAccount", WRITERS),
    ("DeleteAccount", WRITERS),
    ("UndeleteAccount", WRITERS),
    ("CreateInteraction", WRITERS),
    ("GetInteraction", HUMANS),
    ("ListInteractions", HUMANS),
    ("UpdateInteraction", WRITERS),
    ("DeleteInteraction", WRITERS),
    ("CreateEpisode", WRITERS),
    ("GetEpisode", HUMANS),
    ("ListEpisodes", HUMANS),
    ("UpdateEpisode", WRITERS),
    ("RecordConsent", WRITERS),
    ("GetConsent", HUMANS_AND_SYSTEM),
    ("ListConsentHistory", HUMANS),
    ("ExportPersonalData", ADMIN),
    ("ErasePersonalData", ADMIN),
    ("FindDuplicates", WRITERS),
    ("MergeContacts", MANAGERS),
    ("GetDuplicateRules", HUMANS),
    ("UpdateDuplicateRules", ADMIN),
    ("CreateSegment", LIST_OWNERS),
    ("GetSegment", HUMANS),
    ("ListSegments", HUMANS),
    ("UpdateSegment", LIST_OWNERS),
    ("DeleteSegment", LIST_OWNERS),
    ("ListSegmentMembers", HUMANS),
    ("AddSegmentMembers", LIST_OWNERS),
    ("RemoveSegmentMembers", LIST_OWNERS),
    ("ImportContacts", LIST_OWNERS),
    ("ExportContacts", EXPORTERS),
    ("GetRecordHistory", AUDITORS),
    ("ListAuditEvents", AUDITORS),
    ("GetContactSettings", HUMANS),
    ("UpdateContactSettings", ADMIN),
    ("WatchEvents", HUMANS_AND_SYSTEM),
];

pub fn role_table() -> RoleTable {
    let mut table = RoleTable::new();
    for (method, roles) in TABLE {
        table.allow(SERVICE_NAME, method, roles);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_covers_exactly_the_contract() {
        let mut declared = crm_platform::auth::service_methods(SERVICE_NAME);
        let mut tabled: Vec<String> = TABLE.iter().map(|(m, _)| (*m).to_owned()).collect();
        declared.sort();
        tabled.sort();
        assert!(!declared.is_empty());
        assert_eq!(declared, tabled);
    }
}
