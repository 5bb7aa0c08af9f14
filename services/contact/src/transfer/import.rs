//! One import: rows are taken in batches; each batch is checked against the stored
//! contacts with a few queries for the whole batch, then written in one transaction
//! (one bulk insert, the updates, the outbox rows) or, on a dry run, only checked.

use std::collections::{HashMap, HashSet};

use prost::Message as _;
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend};

use crm_platform::ApiError;
use crm_platform::auth::Caller;
use crm_platform::db::{micros_to_timestamp, now_micros};
use crm_platform::errors::from_db;
use crm_proto::common::FieldChange;
use crm_proto::contact::{
    Contact, DuplicateAction, DuplicateRules, ImportMode, ImportRow, ImportRowOutcome,
    ImportRowResult, ImportSummary, StageChange,
};

use super::digests::{DigestMap, DigestSet, digest};
use super::rows::{self, Plan, Rejection};
use super::store::{self as transfer_store, PendingEvent};
use crate::consent::suppression;
use crate::context::Context;
use crate::domain::{mask, names, validate};
use crate::duplicates::matching;
use crate::grpc::SERVICE;
use crate::store;

const CREATED: &str = "crm.contact.v1.ContactCreated";
const UPDATED: &str = "crm.contact.v1.ContactUpdated";

/// A contact the batch works on: loaded from the store, or created by a row.
struct Entry {
    contact: Contact,
    /// The stored revision; `None` for a contact this batch creates.
    stored_revision: Option<i64>,
    revision: i64,
    dirty: bool,
    /// Exists neither in the store nor in this import's writes: a contact an earlier
    /// batch of a dry run would have created. It has no name to show.
    virtual_only: bool,
}

/// What one batch works on: the contacts its rows touch, and their emails.
#[derive(Default)]
struct Working {
    entries: HashMap<String, Entry>,
    /// New contacts, in row order.
    created: Vec<String>,
    /// Email → ids of the live (not deleted, not merged) contacts having it.
    by_email: HashMap<String, Vec<String>>,
    events: Vec<PendingEvent>,
}

impl Working {
    fn index_emails(&mut self, id: &str, contact: &Contact) {
        for email in &contact.emails {
            let ids = self.by_email.entry(email.address.clone()).or_default();
            if !ids.iter().any(|known| known == id) {
                ids.push(id.to_owned());
            }
        }
    }

    fn unindex_emails(&mut self, id: &str, contact: &Contact) {
        for email in &contact.emails {
            if let Some(ids) = self.by_email.get_mut(&email.address) {
                ids.retain(|known| known != id);
            }
        }
    }

    /// The contacts having any of the emails, first seen first.
    fn matches(&self, contact: &Contact) -> Vec<String> {
        let mut found: Vec<String> = Vec::new();
        for email in &contact.emails {
            for id in self.by_email.get(&email.address).into_iter().flatten() {
                if !found.contains(id) {
                    found.push(id.clone());
                }
            }
        }
        found
    }
}

/// A row that passed validation, waiting for its batch's lookups.
struct Checked {
    row_id: String,
    contact: Contact,
}

enum Slot {
    Done(ImportRowResult),
    // Boxed: a contact is large next to a result.
    Pending(Box<Checked>),
}

/// The state of one ImportContacts call.
pub struct Importer {
    ctx: Context,
    caller: Caller,
    plan: Plan,
    rules: DuplicateRules,
    /// Digests of the row ids seen so far.
    row_ids: DigestSet,
    /// On a dry run only: digest of an email → the id of the contact an earlier batch
    /// would have created or updated with it (nothing was stored to look up).
    dry_emails: DigestMap<uuid::Uuid>,
    pub summary: ImportSummary,
}

impl Importer {
    pub fn new(ctx: Context, caller: Caller, plan: Plan, rules: DuplicateRules) -> Self {
        let summary = ImportSummary {
            dry_run: plan.dry_run,
            start_time: Some(micros_to_timestamp(now_micros())),
            ..Default::default()
        };
        Self {
            ctx,
            caller,
            plan,
            rules,
            row_ids: DigestSet::default(),
            dry_emails: DigestMap::default(),
            summary,
        }
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The summary as the last message carries it.
    pub fn finish(&mut self) -> ImportSummary {
        self.summary.end_time = Some(micros_to_timestamp(now_micros()));
        self.summary
    }

    fn on_import(&self) -> DuplicateAction {
        match DuplicateAction::try_from(self.rules.on_import) {
            Ok(DuplicateAction::Allow) => DuplicateAction::Allow,
            Ok(DuplicateAction::Warn) => DuplicateAction::Warn,
            // The default for imports is to block.
            _ => DuplicateAction::Block,
        }
    }

    /// Checks and (unless a dry run) stores one batch in one transaction; returns its
    /// rows' results in row order. `still_wanted` is asked just before the commit: a
    /// batch whose results nobody will receive is rolled back.
    pub async fn batch(
        &mut self,
        batch: Vec<ImportRow>,
        still_wanted: impl Fn() -> bool,
    ) -> Result<Vec<ImportRowResult>, ApiError> {
        let slots = self.check_rows(batch);
        let emails: Vec<String> = {
            let mut seen = HashSet::new();
            slots
                .iter()
                .filter_map(|slot| match slot {
                    Slot::Pending(checked) => Some(&checked.contact.emails),
                    Slot::Done(_) => None,
                })
                .flatten()
                .filter(|e| seen.insert(e.address.as_str()))
                .map(|e| e.address.clone())
                .collect()
        };
        let suppressed = if emails.is_empty() {
            HashSet::new()
        } else {
            suppression::suppressed(&self.ctx.db, &self.caller.tenant, &emails).await?
        };
        let results = if self.plan.dry_run {
            let db = self.ctx.db.clone();
            self.resolve(&db, slots, &emails, &suppressed).await?.0
        } else {
            let txn = crm_platform::events::begin_write(&self.ctx.db)
                .await
                .map_err(|e| from_db(e, "contacts"))?;
            let (results, working) = self.resolve(&txn, slots, &emails, &suppressed).await?;
            let refreshed = self.write(&txn, &working).await?;
            if !still_wanted() {
                // The client is gone: it would never learn this batch was stored.
                txn.rollback().await.map_err(|e| from_db(e, "contacts"))?;
                return Err(ApiError::Aborted {
                    reason: "IMPORT_CANCELLED",
                    message: "the client cancelled the import".into(),
                });
            }
            txn.commit().await.map_err(|e| from_db(e, "contacts"))?;
            self.ctx.feed.committed();
            for (id, revision, contact) in refreshed {
                let key = crm_platform::cache::key(&self.caller.tenant, SERVICE, "contact", &id);
                self.ctx
                    .cache
                    .written(&key, revision, &contact.encode_to_vec())
                    .await;
            }
            results
        };
        for result in &results {
            match ImportRowOutcome::try_from(result.outcome) {
                Ok(ImportRowOutcome::Created) => self.summary.created += 1,
                Ok(ImportRowOutcome::Updated) => self.summary.updated += 1,
                Ok(ImportRowOutcome::SkippedDuplicate) => self.summary.skipped_duplicate += 1,
                _ => self.summary.rejected += 1,
            }
        }
        Ok(results)
    }

    /// Row ids and the contact rules: everything that needs no lookup.
    fn check_rows(&mut self, batch: Vec<ImportRow>) -> Vec<Slot> {
        self.summary.rows_received += batch.len() as i64;
        let mode = self.plan.mode;
        batch
            .into_iter()
            .map(|row| {
                if let Err(rejection) = rows::check_row_id(&row.row_id) {
                    return Slot::Done(rejection.into_result(rows::echoed_row_id(row.row_id)));
                }
                if !self.row_ids.add(digest(&row.row_id)) {
                    return Slot::Done(
                        Rejection::new(
                            "DUPLICATE_ROW_ID",
                            "row_id",
                            "an earlier row of this import has the same row id",
                        )
                        .into_result(row.row_id),
                    );
                }
                match rows::check_contact(row.contact, mode, self.plan.phone_region.as_deref()) {
                    Ok(contact) => Slot::Pending(Box::new(Checked {
                        row_id: row.row_id,
                        contact,
                    })),
                    Err(rejection) => Slot::Done(rejection.into_result(row.row_id)),
                }
            })
            .collect()
    }

    /// Looks up what the batch's rows refer to, and decides each row's fate.
    async fn resolve<C: ConnectionTrait>(
        &mut self,
        conn: &C,
        slots: Vec<Slot>,
        emails: &[String],
        suppressed: &HashSet<String>,
    ) -> Result<(Vec<ImportRowResult>, Working), ApiError> {
        let tenant = self.caller.tenant.clone();
        let ids: Vec<String> = slots
            .iter()
            .filter_map(|slot| match slot {
                Slot::Pending(c) if !c.contact.name.is_empty() => {
                    Some(c.contact.name.trim_start_matches("contacts/").to_owned())
                }
                _ => None,
            })
            .collect();
        let lock = conn.get_database_backend() == DbBackend::Postgres && !self.plan.dry_run;
        let loaded = transfer_store::load(conn, &tenant, emails, &ids, lock).await?;
        let mut working = Working::default();
        for stored in loaded {
            let id = stored
                .contact
                .name
                .trim_start_matches("contacts/")
                .to_owned();
            let live =
                stored.contact.delete_time.is_none() && stored.contact.merged_into.is_empty();
            if live {
                working.index_emails(&id, &stored.contact);
            }
            working.entries.insert(
                id,
                Entry {
                    contact: stored.contact,
                    stored_revision: Some(stored.revision),
                    revision: stored.revision,
                    dirty: false,
                    virtual_only: false,
                },
            );
        }
        if self.plan.dry_run {
            self.add_dry_entries(&mut working, emails);
        }

        // Duplicate candidates of the rows that may create, in one round for the batch
        // (probe by probe if the batch's keys have more holders than one lookup reads).
        let action = self.on_import();
        let mode = self.plan.mode;
        let mut candidates: HashMap<usize, Vec<String>> = HashMap::new();
        // Per row, the earlier rows of this batch it looks like (positions).
        let mut like_earlier_rows: HashMap<usize, Vec<usize>> = HashMap::new();
        if action != DuplicateAction::Allow && mode != ImportMode::UpdateOnly {
            let (positions, probes): (Vec<usize>, Vec<Contact>) = slots
                .iter()
                .enumerate()
                .filter_map(|(i, slot)| match slot {
                    Slot::Pending(c)
                        if mode == ImportMode::CreateOnly
                            || working.matches(&c.contact).is_empty() =>
                    {
                        Some((i, c.contact.clone()))
                    }
                    _ => None,
                })
                .unzip();
            if !probes.is_empty() {
                let within = matching::candidates_within_batch(&probes, &self.rules);
                for (position, earlier) in positions.iter().zip(within) {
                    like_earlier_rows
                        .insert(*position, earlier.iter().map(|k| positions[*k]).collect());
                }
                let found =
                    matching::candidates_of_each(conn, &tenant, &probes, &self.rules).await?;
                for (position, list) in positions.into_iter().zip(found) {
                    candidates.insert(
                        position,
                        list.into_iter()
                            .map(|candidate| candidate.contact)
                            .collect(),
                    );
                }
            }
        }

        let mut results = Vec::with_capacity(slots.len());
        // The contacts rows of this batch created, by position.
        let mut created_by_row: HashMap<usize, String> = HashMap::new();
        for (i, slot) in slots.into_iter().enumerate() {
            let checked = match slot {
                Slot::Done(result) => {
                    results.push(result);
                    continue;
                }
                Slot::Pending(checked) => *checked,
            };
            if let Some((j, _)) = checked
                .contact
                .emails
                .iter()
                .enumerate()
                .find(|(_, e)| suppressed.contains(&e.address))
            {
                results.push(
                    Rejection::new(
                        "ERASED_PERSON",
                        format!("contact.emails[{j}].address"),
                        "this person's data was erased; they may not be imported again",
                    )
                    .into_result(checked.row_id),
                );
                continue;
            }
            let mut scored_dups = candidates.remove(&i).unwrap_or_default();
            for earlier in like_earlier_rows.remove(&i).unwrap_or_default() {
                if let Some(name) = created_by_row.get(&earlier)
                    && !scored_dups.contains(name)
                {
                    scored_dups.push(name.clone());
                }
            }
            let created_before = working.created.len();
            let result = match mode {
                ImportMode::CreateOnly => self.create_only(&mut working, checked, scored_dups),
                ImportMode::UpsertByEmail => {
                    let matched = working.matches(&checked.contact);
                    match matched.as_slice() {
                        [] => self.create(&mut working, checked, scored_dups),
                        [id] => {
                            let id = id.clone();
                            self.update(&mut working, checked, &id)
                        }
                        _ => Rejection::new(
                            "AMBIGUOUS_MATCH",
                            "contact.emails",
                            format!("the row's email addresses match {} contacts", matched.len()),
                        )
                        .into_result(checked.row_id),
                    }
                }
                _ => self.update_only(&mut working, checked),
            };
            if working.created.len() > created_before
                && let Some(id) = working.created.last()
            {
                created_by_row.insert(i, names::contact_name(id));
            }
            results.push(result);
        }
        if self.plan.dry_run {
            self.remember_dry_emails(&working);
        }
        Ok((results, working))
    }

    /// Dry runs store nothing, so contacts earlier batches would have written are
    /// stood in for by entries with just their emails.
    fn add_dry_entries(&self, working: &mut Working, emails: &[String]) {
        for email in emails {
            if working.by_email.contains_key(email) {
                continue;
            }
            let Some(uuid) = self.dry_emails.get(digest(email)) else {
                continue;
            };
            let id = uuid.hyphenated().to_string();
            if !working.entries.contains_key(&id) {
                let contact = Contact {
                    name: names::contact_name(&id),
                    ..Default::default()
                };
                working.entries.insert(
                    id.clone(),
                    Entry {
                        contact,
                        stored_revision: None,
                        revision: 1,
                        dirty: false,
                        virtual_only: true,
                    },
                );
            }
            working.by_email.entry(email.clone()).or_default().push(id);
        }
    }

    fn remember_dry_emails(&mut self, working: &Working) {
        for (id, entry) in &working.entries {
            if entry.dirty || entry.virtual_only {
                // Every contact id is a UUID in this form (`names::parse_id`), so
                // the id written back from it is the same text.
                let Ok(uuid) = uuid::Uuid::try_parse(id) else {
                    continue;
                };
                for email in &entry.contact.emails {
                    self.dry_emails.insert(digest(&email.address), uuid);
                }
            }
        }
    }

    /// The name to show for a contact: empty for one that exists only in a dry run.
    fn shown(&self, working: &Working, id: &str) -> String {
        match working.entries.get(id) {
            Some(entry) if entry.virtual_only => String::new(),
            Some(entry) if entry.stored_revision.is_none() && self.plan.dry_run => String::new(),
            _ => names::contact_name(id),
        }
    }

    fn create_only(
        &self,
        working: &mut Working,
        checked: Checked,
        scored_dups: Vec<String>,
    ) -> ImportRowResult {
        // Contacts with the same email (stored, or created by an earlier row of this
        // import) are duplicates whatever the tenant's scoring finds.
        let mut dups: Vec<String> = working
            .matches(&checked.contact)
            .iter()
            .map(|id| names::contact_name(id))
            .collect();
        for dup in scored_dups {
            if !dups.contains(&dup) {
                dups.push(dup);
            }
        }
        self.create(working, checked, dups)
    }

    fn create(
        &self,
        working: &mut Working,
        checked: Checked,
        dups: Vec<String>,
    ) -> ImportRowResult {
        let Checked {
            row_id,
            mut contact,
        } = checked;
        let action = self.on_import();
        let shown_dups: Vec<String> = dups
            .iter()
            .map(|name| self.shown(working, name.trim_start_matches("contacts/")))
            .filter(|name| !name.is_empty())
            .collect();
        if !dups.is_empty() && action == DuplicateAction::Block {
            return ImportRowResult {
                row_id,
                outcome: ImportRowOutcome::SkippedDuplicate as i32,
                contact: shown_dups.first().cloned().unwrap_or_default(),
                message: "looks like an existing contact; the duplicate rules block it".into(),
                duplicates: shown_dups,
                ..Default::default()
            };
        }
        if !contact.owner.is_empty() && !self.caller.may_change_owned_by(&contact.owner) {
            return Rejection::new(
                "PERMISSION_DENIED",
                "contact.owner",
                "only a manager may assign a contact to someone else",
            )
            .into_result(row_id);
        }
        if contact.source.is_empty() {
            contact.source.clone_from(&self.plan.source);
        }
        let id = uuid::Uuid::now_v7().to_string();
        store::prepare_new(&mut contact, &id);
        working.index_emails(&id, &contact);
        working.events.push(PendingEvent {
            event_type: CREATED,
            resource_name: contact.name.clone(),
            changes: Vec::new(),
            contact: contact.clone(),
        });
        working.created.push(id.clone());
        working.entries.insert(
            id.clone(),
            Entry {
                contact,
                stored_revision: None,
                revision: 1,
                dirty: true,
                virtual_only: false,
            },
        );
        ImportRowResult {
            row_id,
            outcome: ImportRowOutcome::Created as i32,
            contact: self.shown(working, &id),
            duplicates: if action == DuplicateAction::Warn {
                shown_dups
            } else {
                Vec::new()
            },
            ..Default::default()
        }
    }

    fn update_only(&self, working: &mut Working, checked: Checked) -> ImportRowResult {
        if !checked.contact.name.is_empty() {
            let id = checked
                .contact
                .name
                .trim_start_matches("contacts/")
                .to_owned();
            if !working.entries.contains_key(&id) {
                return Rejection::new("NOT_FOUND", "contact.name", "no such contact")
                    .into_result(checked.row_id);
            }
            return self.update(working, checked, &id);
        }
        let matched = working.matches(&checked.contact);
        match matched.as_slice() {
            [] => Rejection::new(
                "NOT_FOUND",
                "contact.emails",
                "no contact has these email addresses",
            )
            .into_result(checked.row_id),
            [id] => {
                let id = id.clone();
                self.update(working, checked, &id)
            }
            _ => Rejection::new(
                "AMBIGUOUS_MATCH",
                "contact.emails",
                format!("the row's email addresses match {} contacts", matched.len()),
            )
            .into_result(checked.row_id),
        }
    }

    fn update(&self, working: &mut Working, checked: Checked, id: &str) -> ImportRowResult {
        let Checked {
            row_id,
            contact: patch,
        } = checked;
        let shown = self.shown(working, id);
        let Some(entry) = working.entries.get(id) else {
            return Rejection::new("NOT_FOUND", "contact.name", "no such contact")
                .into_result(row_id);
        };
        if entry.virtual_only {
            // A dry run cannot apply a row to a contact it only imagined; that row
            // would update it.
            return ImportRowResult {
                row_id,
                outcome: ImportRowOutcome::Updated as i32,
                ..Default::default()
            };
        }
        let current = entry.contact.clone();
        if current.delete_time.is_some() {
            return Rejection::new(
                "CONTACT_DELETED",
                "contact.name",
                "the contact is deleted; undelete it first",
            )
            .into_result(row_id);
        }
        if !current.merged_into.is_empty() {
            return Rejection::new(
                "CONTACT_MERGED",
                "contact.name",
                "the contact was merged into another one",
            )
            .into_result(row_id);
        }
        if !self.caller.may_change_owned_by(&current.owner) {
            return Rejection::new(
                "PERMISSION_DENIED",
                "contact.owner",
                "only the owner or a manager may change this contact",
            )
            .into_result(row_id);
        }
        let paths = self
            .plan
            .update_paths
            .clone()
            .unwrap_or_else(|| rows::row_paths(&patch));
        let mut next = current.clone();
        mask::apply(&mut next, &patch, &paths);
        if next.owner != current.owner && !self.caller.may_change_owned_by(&next.owner) {
            return Rejection::new(
                "PERMISSION_DENIED",
                "contact.owner",
                "only a manager may assign a contact to someone else",
            )
            .into_result(row_id);
        }
        let mut violations = crm_platform::Violations::new();
        validate::identifiable(&mut violations, "contact", &next);
        if violations.into_result().is_err() {
            return Rejection::new(
                "MISSING_FIELD",
                "contact.given_name",
                "a contact needs a name, an email address or a phone number",
            )
            .into_result(row_id);
        }
        let now = now_micros();
        if next.lifecycle_stage != current.lifecycle_stage && next.lifecycle_stage != 0 {
            next.stage_history.push(StageChange {
                stage: next.lifecycle_stage,
                enter_time: Some(micros_to_timestamp(now)),
            });
        }
        next.display_name = validate::display_name(&next);
        let changes: Vec<FieldChange> = store::changes(&current, &next, &paths);
        if !changes.is_empty() {
            let revision = entry.revision + 1;
            next.update_time = Some(micros_to_timestamp(now));
            next.etag = names::etag(revision);
            working.unindex_emails(id, &current);
            working.index_emails(id, &next);
            working.events.push(PendingEvent {
                event_type: UPDATED,
                resource_name: next.name.clone(),
                changes,
                contact: next.clone(),
            });
            if let Some(entry) = working.entries.get_mut(id) {
                entry.contact = next;
                entry.revision = revision;
                entry.dirty = true;
            }
        }
        ImportRowResult {
            row_id,
            outcome: ImportRowOutcome::Updated as i32,
            contact: shown,
            ..Default::default()
        }
    }

    /// Writes the batch's contacts and events in `txn`; returns the updated stored
    /// contacts, to refresh in the cache after the commit.
    async fn write(
        &self,
        txn: &DatabaseTransaction,
        working: &Working,
    ) -> Result<Vec<(String, i64, Contact)>, ApiError> {
        let tenant = self.caller.tenant.as_str();
        let created: Vec<(&str, i64, &Contact)> = working
            .created
            .iter()
            .filter_map(|id| {
                working
                    .entries
                    .get(id)
                    .map(|e| (id.as_str(), e.revision, &e.contact))
            })
            .collect();
        transfer_store::insert_contacts(txn, tenant, &created).await?;
        let mut refreshed = Vec::new();
        for (id, entry) in &working.entries {
            if let (true, Some(stored_revision)) = (entry.dirty, entry.stored_revision) {
                transfer_store::update_contact(
                    txn,
                    tenant,
                    id,
                    stored_revision,
                    entry.revision,
                    &entry.contact,
                )
                .await?;
                refreshed.push((id.clone(), entry.revision, entry.contact.clone()));
            }
        }
        // Contacts this batch inserted have no derived rows yet; updated ones do.
        let (inserted, updated): (Vec<&Entry>, Vec<&Entry>) = working
            .entries
            .values()
            .filter(|e| e.dirty)
            .partition(|e| e.stored_revision.is_none());
        let inserted: Vec<&Contact> = inserted.into_iter().map(|e| &e.contact).collect();
        let updated: Vec<&Contact> = updated.into_iter().map(|e| &e.contact).collect();
        store::after_insert(txn, tenant, &inserted).await?;
        store::after_write(txn, tenant, &updated).await?;
        transfer_store::append_events(txn, &self.caller, &working.events).await?;
        Ok(refreshed)
    }
}
