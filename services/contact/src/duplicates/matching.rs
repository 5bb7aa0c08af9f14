//! Scoring likely duplicates: exact email, exact phone, and similar names within the
//! same account or email domain.
//!
//! Candidates are the contacts sharing a key of the terms index with a probe (an
//! address, a number, a name word at a domain or in an account), read with what scoring
//! needs of them in one query, so a batch of probes costs one query.

use std::collections::{BTreeSet, HashMap};

use sea_orm::sea_query::{Condition, Expr, ExprTrait, Query, SelectStatement};
use sea_orm::{ConnectionTrait, DbBackend, Statement};

use crm_platform::ApiError;
use crm_platform::errors::from_db;
use crm_platform::lookup::any_text;
use crm_proto::contact::{Contact, DuplicateMatch, DuplicateMatchRule, DuplicateRules};

use crate::index::migration::ContactTerms;
use crate::index::{self, TermField};

/// A stored contact a probe looks like.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// "contacts/{id}".
    pub contact: String,
    /// When the candidate was created (µs since the epoch).
    pub create_time_us: i64,
    pub score: f64,
    pub matches: Vec<DuplicateMatch>,
}

/// Contacts sharing one account (or one name word) beyond this are not compared by
/// name: such groups say little about duplicates and would cost a scan.
const MAX_GROUP: u64 = 2_000;

/// The most (key, contact) rows a duplicate lookup reads.
const HOLDERS_LIMIT: u64 = MAX_GROUP * 50;

/// How much one duplicate lookup reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupLimits {
    /// The most holders of one key compared. A name word held by more people at one
    /// domain or in one account is not compared by name (the group says little); an
    /// address or number held by more yields its first `group` holders.
    pub group: u64,
    /// The most (key, contact) rows of one lookup. A batch that reaches it is looked up
    /// again probe by probe ([`candidates_of_each`]).
    pub holders: u64,
}

impl LookupLimits {
    pub const DEFAULT: Self = Self {
        group: MAX_GROUP,
        holders: HOLDERS_LIMIT,
    };
}

/// What matching needs to know of a contact.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    pub id: String,
    pub create_time_us: i64,
    /// Given and family name, folded.
    pub full_name: String,
    pub name_words: BTreeSet<String>,
    pub emails: BTreeSet<String>,
    pub domains: BTreeSet<String>,
    pub phones: BTreeSet<String>,
    pub account: String,
}

fn full_name(given: &str, family: &str) -> String {
    index::fold(format!("{given} {family}").trim())
}

fn domains_of<'a>(emails: impl Iterator<Item = &'a String>) -> BTreeSet<String> {
    emails
        .filter_map(|e| e.split_once('@').map(|(_, d)| d.to_owned()))
        .collect()
}

/// When a contact was created, µs since the epoch (0 when unset).
pub fn create_time_us(contact: &Contact) -> i64 {
    contact
        .create_time
        .as_ref()
        .map(crm_platform::db::timestamp_to_micros)
        .unwrap_or_default()
}

impl Profile {
    pub fn of_contact(contact: &Contact) -> Self {
        let emails: BTreeSet<String> = contact
            .emails
            .iter()
            .map(|e| e.address.to_lowercase())
            .collect();
        Self {
            id: contact.name.trim_start_matches("contacts/").to_owned(),
            create_time_us: create_time_us(contact),
            full_name: full_name(&contact.given_name, &contact.family_name),
            name_words: index::words(&contact.given_name)
                .chain(index::words(&contact.family_name))
                .collect(),
            domains: domains_of(emails.iter()),
            emails,
            phones: contact
                .phones
                .iter()
                .map(|p| index::phone_digits(&p.number))
                .filter(|d| !d.is_empty())
                .collect(),
            account: contact.account.clone(),
        }
    }

    fn of_row(row: &ProfileRow) -> Self {
        let list = |index: &str| -> BTreeSet<String> {
            index
                .split('|')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let emails = list(&row.emails_index);
        Self {
            id: row.id.clone(),
            create_time_us: row.create_time_us,
            full_name: full_name(&row.given_name, &row.family_name),
            name_words: index::words(&row.given_name)
                .chain(index::words(&row.family_name))
                .collect(),
            domains: domains_of(emails.iter()),
            emails,
            phones: list(&row.phones_index)
                .iter()
                .map(|p| index::phone_digits(p))
                .collect(),
            account: row.account.clone(),
        }
    }
}

/// A holder's columns as the holders query reads them.
struct ProfileRow {
    id: String,
    given_name: String,
    family_name: String,
    emails_index: String,
    phones_index: String,
    account: String,
    create_time_us: i64,
}

fn rule_on(rules: &DuplicateRules, rule: DuplicateMatchRule) -> bool {
    rules.match_rules.is_empty() || rules.match_rules.contains(&(rule as i32))
}

fn min_score(rules: &DuplicateRules) -> f64 {
    if rules.min_score > 0.0 {
        rules.min_score
    } else {
        super::rules::DEFAULT_MIN_SCORE
    }
}

fn name_threshold(rules: &DuplicateRules) -> f64 {
    if rules.name_similarity_threshold > 0.0 {
        rules.name_similarity_threshold
    } else {
        super::rules::DEFAULT_NAME_SIMILARITY
    }
}

/// How much `a` and `b` look like the same person, and why; `None` below the rules'
/// minimum score.
pub fn score(
    a: &Profile,
    b: &Profile,
    rules: &DuplicateRules,
) -> Option<(f64, Vec<DuplicateMatch>)> {
    let mut matches = Vec::new();
    let mut add = |field: &str, rule: DuplicateMatchRule, similarity: f64| {
        matches.push(DuplicateMatch {
            field: field.to_owned(),
            rule: rule as i32,
            similarity,
        });
    };
    if rule_on(rules, DuplicateMatchRule::ExactEmail) && !a.emails.is_disjoint(&b.emails) {
        add("emails", DuplicateMatchRule::ExactEmail, 1.0);
    }
    if rule_on(rules, DuplicateMatchRule::ExactPhone) && !a.phones.is_disjoint(&b.phones) {
        add("phones", DuplicateMatchRule::ExactPhone, 1.0);
    }
    if !a.full_name.is_empty() && !b.full_name.is_empty() {
        let similarity = strsim::jaro_winkler(&a.full_name, &b.full_name);
        if similarity >= name_threshold(rules) {
            let similarity = (similarity * 1000.0).round() / 1000.0;
            if rule_on(rules, DuplicateMatchRule::SimilarNameSameAccount)
                && !a.account.is_empty()
                && a.account == b.account
            {
                add(
                    "display_name",
                    DuplicateMatchRule::SimilarNameSameAccount,
                    similarity,
                );
            }
            if rule_on(rules, DuplicateMatchRule::SimilarNameSameEmailDomain)
                && !a.domains.is_disjoint(&b.domains)
            {
                add(
                    "display_name",
                    DuplicateMatchRule::SimilarNameSameEmailDomain,
                    similarity,
                );
            }
        }
    }
    if matches.is_empty() {
        return None;
    }
    // Independent evidence adds up: 1 - Π(1 - strength).
    let mut doubt = 1.0;
    for m in &matches {
        let strength = match DuplicateMatchRule::try_from(m.rule) {
            Ok(DuplicateMatchRule::ExactEmail) => 1.0,
            Ok(DuplicateMatchRule::ExactPhone) => 0.9,
            Ok(DuplicateMatchRule::SimilarNameSameAccount) => 0.95 * m.similarity,
            Ok(DuplicateMatchRule::SimilarNameSameEmailDomain) => 0.9 * m.similarity,
            _ => 0.0,
        };
        doubt *= 1.0 - strength;
    }
    let score = ((1.0 - doubt) * 1000.0).round() / 1000.0;
    (score >= min_score(rules)).then_some((score, matches))
}

/// The tenant's duplicate rules, or the defaults when none were set.
pub async fn rules<C: ConnectionTrait>(conn: &C, tenant: &str) -> Result<DuplicateRules, ApiError> {
    super::rules::load(conn, tenant)
        .await
        .map(|(rules, _)| rules)
}

/// The terms-index keys under which a contact's likely duplicates are found: its
/// addresses, its numbers, and its name words at its company domains and account.
fn lookup_keys(profile: &Profile, contact: &Contact) -> Vec<(String, TermField)> {
    let mut keys: Vec<(String, TermField)> = Vec::new();
    keys.extend(profile.emails.iter().map(|e| (e.clone(), TermField::Email)));
    keys.extend(profile.phones.iter().map(|p| (p.clone(), TermField::Phone)));
    keys.extend(index::name_keys(contact, &profile.name_words));
    keys
}

/// For each probe of a batch, the earlier probes of the same batch it looks like
/// (their positions), best first: a file that holds one person twice, or a person
/// already in an earlier row, imports them once. Only probes sharing a key are scored.
pub fn candidates_within_batch(probes: &[Contact], rules: &DuplicateRules) -> Vec<Vec<usize>> {
    let profiles: Vec<Profile> = probes.iter().map(Profile::of_contact).collect();
    let mut holders: HashMap<(TermField, String), Vec<usize>> = HashMap::new();
    let mut found = Vec::with_capacity(probes.len());
    for (i, (profile, contact)) in profiles.iter().zip(probes).enumerate() {
        let keys = lookup_keys(profile, contact);
        let mut earlier: BTreeSet<usize> = BTreeSet::new();
        for (term, field) in &keys {
            if let Some(list) = holders.get(&(*field, term.clone())) {
                // Groups beyond MAX_GROUP say little, as for stored contacts.
                earlier.extend(list.iter().rev().take(MAX_GROUP as usize));
            }
        }
        let mut scored: Vec<(f64, usize)> = earlier
            .into_iter()
            .filter_map(|j| score(profile, &profiles[j], rules).map(|(score, _)| (score, j)))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        found.push(scored.into_iter().map(|(_, j)| j).collect());
        for (term, field) in keys {
            holders.entry((field, term)).or_default().push(i);
        }
    }
    found
}

/// For each probe (already validated and normalised), the stored contacts scoring at
/// least the rules' minimum, best first. One round of queries for the whole batch. A
/// probe never matches itself (the same id).
pub async fn candidates_for_batch<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    probes: &[Contact],
    rules: &DuplicateRules,
) -> Result<Vec<Vec<Candidate>>, ApiError> {
    DuplicateLookup::of(probes).find(conn, tenant, rules).await
}

/// [`candidates_for_batch`], with each probe's candidates those it would get alone: a
/// batch whose holders reach the limit may have left some probes short of theirs (the
/// others' holders used the rows up), so its probes are looked up one at a time.
pub async fn candidates_of_each<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    probes: &[Contact],
    rules: &DuplicateRules,
) -> Result<Vec<Vec<Candidate>>, ApiError> {
    candidates_of_each_within(conn, tenant, probes, rules, LookupLimits::DEFAULT).await
}

/// [`candidates_of_each`] within other limits than the default ones.
pub async fn candidates_of_each_within<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    probes: &[Contact],
    rules: &DuplicateRules,
    limits: LookupLimits,
) -> Result<Vec<Vec<Candidate>>, ApiError> {
    let lookup = DuplicateLookup::of(probes).within(limits);
    if lookup.is_empty() {
        return Ok(vec![Vec::new(); probes.len()]);
    }
    let rows = lookup.holders(conn, tenant).await?;
    if (rows.len() as u64) < limits.holders || probes.len() == 1 {
        return lookup.candidates(rules, &rows);
    }
    tracing::debug!(
        probes = probes.len(),
        "duplicate lookup reached its row limit; looking up probe by probe"
    );
    let mut each = Vec::with_capacity(probes.len());
    for probe in probes {
        let alone = DuplicateLookup::of(std::slice::from_ref(probe)).within(limits);
        each.extend(alone.find(conn, tenant, rules).await?);
    }
    Ok(each)
}

/// The keys under which a batch's probes find their likely duplicates, and the scoring
/// of the stored contacts holding them ([`Self::find`]). The two halves are apart so
/// that a create can read the holders in the statement that inserts it
/// ([`Self::holders_query_postgres`]) and score them after ([`Self::candidates`]).
pub struct DuplicateLookup {
    profiles: Vec<Profile>,
    /// Every key a probe can share with a stored contact, and the probes holding it.
    wanted: HashMap<(i16, String), Vec<usize>>,
    limits: LookupLimits,
}

impl DuplicateLookup {
    pub fn of(probes: &[Contact]) -> Self {
        let profiles: Vec<Profile> = probes.iter().map(Profile::of_contact).collect();
        let mut wanted: HashMap<(i16, String), Vec<usize>> = HashMap::new();
        for (i, (probe, contact)) in profiles.iter().zip(probes).enumerate() {
            for (term, field) in lookup_keys(probe, contact) {
                wanted.entry((field.code(), term)).or_default().push(i);
            }
        }
        Self {
            profiles,
            wanted,
            limits: LookupLimits::DEFAULT,
        }
    }

    /// The same lookup within other limits.
    pub fn within(self, limits: LookupLimits) -> Self {
        Self { limits, ..self }
    }

    /// No probe has a key: none can have a duplicate.
    pub fn is_empty(&self) -> bool {
        self.wanted.is_empty()
    }

    /// The Postgres query of the (field, term, contact id) rows holding the keys, as
    /// [`Self::holders`] runs it, for a statement that numbers its parameters.
    pub fn holders_query_postgres(&self, tenant: &str) -> crm_platform::bulk::FinalQuery {
        let (fields, terms): (Vec<i16>, Vec<String>) = self
            .wanted
            .keys()
            .map(|(field, term)| (*field, term.clone()))
            .unzip();
        let tenant = tenant.to_owned();
        let limits = self.limits;
        Box::new(move |first| {
            (
                holders_sql_postgres(first),
                vec![
                    tenant.into(),
                    fields.into(),
                    terms.into(),
                    // One more than a group holds tells a group too large to compare.
                    (limits.group.saturating_add(1) as i64).into(),
                    (limits.holders as i64).into(),
                ],
            )
        })
    }

    /// For each probe, the stored contacts scoring at least the rules' minimum, best
    /// first: the holders of the keys, then their scores.
    pub async fn find<C: ConnectionTrait>(
        &self,
        conn: &C,
        tenant: &str,
        rules: &DuplicateRules,
    ) -> Result<Vec<Vec<Candidate>>, ApiError> {
        if self.is_empty() {
            return Ok(vec![Vec::new(); self.profiles.len()]);
        }
        let rows = self.holders(conn, tenant).await?;
        self.candidates(rules, &rows)
    }

    /// The (field, term, contact id, profile) rows of the stored contacts holding any of
    /// the keys ([`holder`]): at most one more than a group of each key, and
    /// `limits.holders` in all.
    async fn holders<C: ConnectionTrait>(
        &self,
        conn: &C,
        tenant: &str,
    ) -> Result<Vec<sea_orm::QueryResult>, ApiError> {
        let backend = conn.get_database_backend();
        let query = if backend == DbBackend::Postgres {
            let (sql, values) = self.holders_query_postgres(tenant)(1);
            Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
        } else {
            let mut by_field: HashMap<i16, Vec<&str>> = HashMap::new();
            for (field, term) in self.wanted.keys() {
                by_field.entry(*field).or_default().push(term.as_str());
            }
            let mut any = Condition::any();
            for (field, terms) in by_field {
                any = any.add(
                    Condition::all()
                        .add(Expr::col(ContactTerms::Field).eq(field))
                        .add(any_text(backend, Expr::col(ContactTerms::Term), terms)),
                );
            }
            let postings = backend.build(postings_of_tenant(tenant).cond_where(any));
            let mut values = postings.values.map(|values| values.0).unwrap_or_default();
            values.push((self.limits.group.saturating_add(1) as i64).into());
            values.push((self.limits.holders as i64).into());
            values.push(tenant.into());
            // SQLite has no lateral join: number each key's holders instead.
            let sql = format!(
                "SELECT h.field, h.term, h.contact_id, {PROFILE_COLUMNS} \
                 FROM (SELECT field, term, contact_id FROM (SELECT field, term, contact_id, \
                 row_number() OVER (PARTITION BY field, term) AS holder \
                 FROM ({})) WHERE holder <= ? LIMIT ?) AS h \
                 LEFT JOIN contacts p ON p.tenant_id = ? AND p.id = h.contact_id \
                 AND p.delete_time_us IS NULL AND p.merged_into IS NULL",
                postings.sql
            );
            Statement::from_sql_and_values(backend, sql, values)
        };
        conn.query_all_raw(query)
            .await
            .map_err(|e| from_db(e, "contacts"))
    }

    /// Scores the stored contacts of `rows` (from the holders query, which reads each
    /// holder's profile with it) against each probe: for each, those scoring at least
    /// the rules' minimum, best first.
    pub fn candidates(
        &self,
        rules: &DuplicateRules,
        rows: &[sea_orm::QueryResult],
    ) -> Result<Vec<Vec<Candidate>>, ApiError> {
        let mut per_probe: Vec<BTreeSet<String>> = vec![BTreeSet::new(); self.profiles.len()];
        let mut stored: HashMap<String, Profile> = HashMap::new();
        let mut by_key: HashMap<(i16, String), Vec<String>> = HashMap::new();
        for row in rows {
            let holder = holder(row)?;
            if let Some(profile) = holder.profile {
                stored.entry(holder.contact_id.clone()).or_insert(profile);
            }
            by_key
                .entry((holder.field, holder.term))
                .or_default()
                .push(holder.contact_id);
        }
        let group = usize::try_from(self.limits.group).unwrap_or(usize::MAX);
        for (key, mut holders_of_key) in by_key {
            if holders_of_key.len() > group {
                let exact = key.0 == TermField::Email.code() || key.0 == TermField::Phone.code();
                if !exact {
                    continue;
                }
                holders_of_key.truncate(group);
            }
            if let Some(probes) = self.wanted.get(&key) {
                for &i in probes {
                    per_probe[i].extend(holders_of_key.iter().cloned());
                }
            }
        }
        Ok(self
            .profiles
            .iter()
            .zip(per_probe)
            .map(|(probe, candidates)| {
                let mut found: Vec<Candidate> = candidates
                    .iter()
                    .filter(|id| **id != probe.id)
                    .filter_map(|id| stored.get(id))
                    .filter_map(|s| {
                        score(probe, s, rules).map(|(score, matches)| Candidate {
                            contact: format!("contacts/{}", s.id),
                            create_time_us: s.create_time_us,
                            score,
                            matches,
                        })
                    })
                    .collect();
                found.sort_by(|a, b| {
                    b.score
                        .total_cmp(&a.score)
                        .then_with(|| a.contact.cmp(&b.contact))
                });
                found
            })
            .collect())
    }
}

/// The (field, term, contact id) postings of a tenant, for a caller to narrow.
fn postings_of_tenant(tenant: &str) -> SelectStatement {
    Query::select()
        .columns([
            ContactTerms::Field,
            ContactTerms::Term,
            ContactTerms::ContactId,
        ])
        .from(ContactTerms::Table)
        .and_where(Expr::col(ContactTerms::TenantId).eq(tenant))
        .to_owned()
}

/// One (field, term, contact id) row of [`postings_of_tenant`] or the holders query.
fn posting(row: &sea_orm::QueryResult) -> Result<(i16, String, String), ApiError> {
    Ok((
        row.try_get_by_index(0).map_err(ApiError::internal)?,
        row.try_get_by_index(1).map_err(ApiError::internal)?,
        row.try_get_by_index(2).map_err(ApiError::internal)?,
    ))
}

/// The holders query on Postgres, its parameters (tenant, fields, terms, per-key limit,
/// limit) numbered from `$first`. Its text does not depend on the keys, each looked up
/// by the primary key: its plan is made once per connection (or once per shape of the
/// insert statement it ends), not at every call (planning the OR of per-field lists
/// cost more than running it).
fn holders_sql_postgres(first: usize) -> String {
    let [tenant, fields, terms, per_key, limit] =
        [first, first + 1, first + 2, first + 3, first + 4];
    format!(
        "SELECT k.field, k.term, t.contact_id, {PROFILE_COLUMNS} \
         FROM unnest(${fields}::int2[], ${terms}::text[]) AS k(field, term) \
         CROSS JOIN LATERAL (SELECT c.contact_id FROM contact_terms c \
         WHERE c.tenant_id = ${tenant} AND c.term = k.term AND c.field = k.field LIMIT ${per_key}) AS t \
         LEFT JOIN contacts p ON p.tenant_id = ${tenant} AND p.id = t.contact_id \
         AND p.delete_time_us IS NULL AND p.merged_into IS NULL \
         LIMIT ${limit}"
    )
}

/// What matching needs of a holder (`p`), read with its posting; all null when the
/// holder is no longer live.
const PROFILE_COLUMNS: &str =
    "p.given_name, p.family_name, p.emails_index, p.phones_index, p.account, p.create_time_us";

/// One row of the holders query: a key, a contact holding it, and that contact's
/// profile if it is live.
struct Holder {
    field: i16,
    term: String,
    contact_id: String,
    profile: Option<Profile>,
}

fn holder(row: &sea_orm::QueryResult) -> Result<Holder, ApiError> {
    let (field, term, contact_id) = posting(row)?;
    let given_name: Option<String> = row.try_get_by_index(3).map_err(ApiError::internal)?;
    let profile = match given_name {
        None => None,
        Some(given_name) => Some(Profile::of_row(&ProfileRow {
            id: contact_id.clone(),
            given_name,
            family_name: row.try_get_by_index(4).map_err(ApiError::internal)?,
            emails_index: row.try_get_by_index(5).map_err(ApiError::internal)?,
            phones_index: row.try_get_by_index(6).map_err(ApiError::internal)?,
            account: row.try_get_by_index(7).map_err(ApiError::internal)?,
            create_time_us: row.try_get_by_index(8).map_err(ApiError::internal)?,
        })),
    };
    Ok(Holder {
        field,
        term,
        contact_id,
        profile,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crm_proto::contact::{EmailAddress, PhoneNumber};

    fn contact(id: &str, given: &str, family: &str, email: &str, account: &str) -> Contact {
        Contact {
            name: format!("contacts/{id}"),
            given_name: given.into(),
            family_name: family.into(),
            emails: vec![EmailAddress {
                address: email.into(),
                ..Default::default()
            }],
            account: account.into(),
            ..Default::default()
        }
    }

    #[test]
    fn scores_by_rule() {
        let rules = DuplicateRules::default();
        let a = Profile::of_contact(&contact("1", "Anna", "Müller", "anna@acme.ch", ""));
        let same_email = Profile::of_contact(&contact("2", "A.", "M.", "anna@acme.ch", ""));
        let (score_email, matches) = score(&a, &same_email, &rules).expect("email");
        assert_eq!(score_email, 1.0);
        assert_eq!(matches[0].rule, DuplicateMatchRule::ExactEmail as i32);

        let typo_same_domain =
            Profile::of_contact(&contact("3", "Anna", "Muller", "a.mueller@acme.ch", ""));
        let (s, m) = score(&a, &typo_same_domain, &rules).expect("similar name, same domain");
        assert!((0.85..1.0).contains(&s), "{s}");
        assert_eq!(
            m[0].rule,
            DuplicateMatchRule::SimilarNameSameEmailDomain as i32
        );

        let stranger = Profile::of_contact(&contact("4", "Bob", "Brown", "bob@other.ch", ""));
        assert!(score(&a, &stranger, &rules).is_none());

        let mut phone_a = contact("5", "X", "Y", "x@a.ch", "");
        phone_a.phones.push(PhoneNumber {
            number: "+41446681800".into(),
            ..Default::default()
        });
        let mut phone_b = contact("6", "Z", "W", "z@b.ch", "");
        phone_b.phones = phone_a.phones.clone();
        let (s, _) = score(
            &Profile::of_contact(&phone_a),
            &Profile::of_contact(&phone_b),
            &rules,
        )
        .expect("phone");
        assert_eq!(s, 0.9);
        // Only the rules in force count.
        let email_only = DuplicateRules {
            match_rules: vec![DuplicateMatchRule::ExactEmail as i32],
            ..Default::default()
        };
        assert!(
            score(
                &Profile::of_contact(&phone_a),
                &Profile::of_contact(&phone_b),
                &email_only
            )
            .is_none()
        );
    }
}
