//! `crm seed`: realistic generated data (companies, people, interactions) loaded through
//! the public API, so that a benchmark or a demo starts from a tenant that looks used.
//!
//! Generation is deterministic in the row number: person `i` is the same person in every
//! run, so a tenant seeded to 100,000 can be topped up to 1,000,000 without duplicates.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tonic::transport::Channel;

use crm_proto::common::{Address, Channel as ContactChannel, Money};
use crm_proto::contact::{
    self, Account, AccountTier, Contact, CreateAccountRequest, CreateInteractionRequest,
    EmailAddress, EmailType, ImportContactsRequest, ImportMode, ImportOptions, ImportRow,
    Interaction, InteractionDirection, InteractionOutcome, InteractionType, LifecycleStage,
    ListAccountsRequest, ListContactsRequest, PhoneNumber, PhoneType,
    contact_service_client::ContactServiceClient,
};

use crate::bench::client::{Authorised, authorised};

const GIVEN: &[&str] = &[
    "Anna", "Ben", "Clara", "David", "Elena", "Felix", "Greta", "Hugo", "Ines", "Jonas", "Katrin",
    "Lukas", "Mia", "Noah", "Olivia", "Paul", "Quentin", "Rosa", "Simon", "Tina", "Ueli", "Vera",
    "Walter", "Xenia", "Yann", "Zoe", "Léa", "Jürg", "Amara", "Kenji", "Priya", "Omar", "Sofia",
    "Mateo", "Aisha", "Liam", "Chloé", "Nikolai", "Fatima", "Hiroshi", "Isabella", "Jamal",
    "Ingrid", "Tomás", "Mei", "Rafael", "Astrid", "Kwame", "Leila", "Sven", "Camille", "Diego",
    "Hana", "Arjun", "Elif", "Björn", "Lucía", "Tariq", "Nora", "Pavel", "Yuki", "Marta",
    "Ibrahim", "Sanne", "Emeka", "Giulia", "Oskar", "Zainab",
];

const FAMILY: &[&str] = &[
    "Müller",
    "Meier",
    "Schmid",
    "Keller",
    "Weber",
    "Huber",
    "Schneider",
    "Meyer",
    "Steiner",
    "Fischer",
    "Gerber",
    "Brunner",
    "Baumann",
    "Frei",
    "Zimmermann",
    "Moser",
    "Widmer",
    "Wyss",
    "Graf",
    "Roth",
    "Suter",
    "Baumgartner",
    "Bachmann",
    "Studer",
    "Bernasconi",
    "Rossi",
    "Dubois",
    "Favre",
    "Lopez",
    "Nguyen",
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Garcia",
    "Martinez",
    "Kowalski",
    "Nowak",
    "Novák",
    "Horvat",
    "Jensen",
    "Hansen",
    "Nielsen",
    "Andersson",
    "Johansson",
    "Virtanen",
    "Korhonen",
    "Papadopoulos",
    "Yilmaz",
    "Kaya",
    "Tanaka",
    "Suzuki",
    "Takahashi",
    "Kim",
    "Lee",
    "Park",
    "Chen",
    "Wang",
    "Li",
    "Zhang",
    "Patel",
    "Sharma",
    "Singh",
    "Kumar",
    "Okafor",
    "Mensah",
    "Diallo",
    "Haddad",
    "Cohen",
    "Silva",
    "Santos",
    "Oliveira",
    "Costa",
    "Fernández",
    "González",
    "Rodríguez",
    "Ivanov",
    "Petrov",
    "O'Brien",
    "Murphy",
    "Kelly",
    "MacDonald",
    "Janssen",
    "De Vries",
    "Bakker",
    "Visser",
    "Dupont",
    "Lefebvre",
    "Moreau",
    "Laurent",
    "Bianchi",
    "Romano",
    "Ricci",
];

const COMPANY_WORDS: &[&str] = &[
    "Alpine",
    "Nordic",
    "Harbor",
    "Summit",
    "Quantum",
    "Cedar",
    "Atlas",
    "Beacon",
    "Cobalt",
    "Delta",
    "Ember",
    "Falcon",
    "Granite",
    "Horizon",
    "Iris",
    "Juniper",
    "Keystone",
    "Lumen",
    "Meridian",
    "Nimbus",
    "Orchid",
    "Pioneer",
    "Quarry",
    "Riverside",
    "Sierra",
    "Tundra",
    "Unity",
    "Vertex",
    "Willow",
    "Zenith",
    "Aurora",
    "Bluebird",
    "Crescent",
    "Drift",
];

const COMPANY_KINDS: &[(&str, &str)] = &[
    ("Logistics", "Transportation"),
    ("Analytics", "Software"),
    ("Foods", "Food & Beverage"),
    ("Health", "Healthcare"),
    ("Capital", "Financial Services"),
    ("Energy", "Energy"),
    ("Robotics", "Manufacturing"),
    ("Media", "Media"),
    ("Insurance", "Insurance"),
    ("Retail", "Retail"),
    ("Labs", "Biotechnology"),
    ("Consulting", "Professional Services"),
];

const JOB_TITLES: &[&str] = &[
    "Head of Procurement",
    "CFO",
    "CTO",
    "Operations Manager",
    "Sales Director",
    "Marketing Lead",
    "Software Engineer",
    "Office Manager",
    "Buyer",
    "CEO",
    "Customer Success Manager",
    "Data Analyst",
    "HR Business Partner",
    "Project Manager",
];

const TAGS: &[&str] = &[
    "vip",
    "press",
    "partner",
    "newsletter",
    "event-2026",
    "webinar",
];

const CITIES: &[(&str, &str, &str)] = &[
    ("Zürich", "ZH", "CH"),
    ("Basel", "BS", "CH"),
    ("Berlin", "BE", "DE"),
    ("München", "BY", "DE"),
    ("Paris", "IDF", "FR"),
    ("Lyon", "ARA", "FR"),
    ("Milano", "MI", "IT"),
    ("Wien", "W", "AT"),
    ("Amsterdam", "NH", "NL"),
    ("Stockholm", "AB", "SE"),
];

/// A small, fast, seedable generator, so that row `i` is the same in every run.
struct Mix(u64);

impl Mix {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }

    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Lower-case ASCII for an email local part or a domain label.
fn ascii_label(text: &str) -> String {
    text.chars()
        .filter_map(|c| match c {
            'ä' | 'á' | 'à' => Some('a'),
            'ö' | 'ó' => Some('o'),
            'ü' | 'ú' => Some('u'),
            'é' | 'è' => Some('e'),
            'í' => Some('i'),
            c if c.is_ascii_alphanumeric() => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// Company `i`: name, domain, industry, size.
pub fn company(i: u64) -> Account {
    let mut mix = Mix::new(i ^ 0xC0FF_EE00);
    let word = mix.pick(COMPANY_WORDS);
    let (kind, industry) = mix.pick(COMPANY_KINDS);
    let (city, region, country) = mix.pick(CITIES);
    let display_name = format!("{word} {kind} {i}");
    let employees = [5, 20, 80, 250, 1200, 8000][mix.below(6)];
    Account {
        display_name,
        domain: format!("{}-{}{i}.example", ascii_label(word), ascii_label(kind)),
        industry: (*industry).into(),
        employee_count: employees,
        annual_revenue: Some(Money {
            currency_code: "EUR".into(),
            units: i64::from(employees) * 180_000,
            nanos: 0,
        }),
        tier: match employees {
            e if e >= 8000 => AccountTier::Strategic,
            e if e >= 1200 => AccountTier::Key,
            _ => AccountTier::Standard,
        } as i32,
        address: Some(Address {
            lines: vec![format!("{} Street {}", word, 1 + mix.below(200))],
            locality: (*city).into(),
            region: (*region).into(),
            postal_code: format!("{}", 1000 + mix.below(8999)),
            country_code: (*country).into(),
        }),
        ..Default::default()
    }
}

/// Person `i`, working at `company` (its resource name and domain) when given.
pub fn person(i: u64, company: Option<(&str, &str)>) -> Contact {
    let mut mix = Mix::new(i);
    let given = *mix.pick(GIVEN);
    let family = if mix.chance(8) {
        format!("{}-{}", mix.pick(FAMILY), mix.pick(FAMILY))
    } else {
        (*mix.pick(FAMILY)).to_owned()
    };
    let local = format!("{}.{}.{i}", ascii_label(given), ascii_label(&family));
    let mut emails = Vec::new();
    let mut account = String::new();
    if let Some((name, domain)) = company {
        account = name.to_owned();
        emails.push(EmailAddress {
            address: format!("{local}@{domain}"),
            r#type: EmailType::Work as i32,
            primary: true,
        });
    }
    if emails.is_empty() || mix.chance(30) {
        // Fictional people at real public providers, which duplicate finding treats
        // as such (a name there is no hint).
        let provider = ["gmail.com", "outlook.com", "gmx.ch"][mix.below(3)];
        emails.push(EmailAddress {
            address: format!("{local}@{provider}"),
            r#type: EmailType::Personal as i32,
            primary: emails.is_empty(),
        });
    }
    let (city, region, country) = mix.pick(CITIES);
    let stage = [
        LifecycleStage::Subscriber,
        LifecycleStage::Lead,
        LifecycleStage::MarketingQualified,
        LifecycleStage::SalesQualified,
        LifecycleStage::Opportunity,
        LifecycleStage::Customer,
    ][mix.below(6)];
    let mut tags = Vec::new();
    if mix.chance(40) {
        tags.push((*mix.pick(TAGS)).to_owned());
    }
    Contact {
        given_name: given.into(),
        family_name: family,
        emails,
        // A Swiss mobile number (075 … 079) unique for every person below 5 × 10^7.
        phones: vec![PhoneNumber {
            number: format!("+417{}{:07}", 5 + (i / 10_000_000) % 5, i % 10_000_000),
            r#type: PhoneType::Mobile as i32,
            primary: true,
        }],
        job_title: (*mix.pick(JOB_TITLES)).into(),
        account,
        lifecycle_stage: stage as i32,
        tags,
        address: Some(Address {
            locality: (*city).into(),
            region: (*region).into(),
            country_code: (*country).into(),
            ..Default::default()
        }),
        language: ["de", "fr", "it", "en"][mix.below(4)].into(),
        preferred_channel: ContactChannel::Email as i32,
        ..Default::default()
    }
}

/// A search query a user would type for person `i`: a prefix of the family name, the
/// full name, a typo, or an email prefix.
pub fn search_query(i: u64) -> String {
    let person = person(i, None);
    let mut mix = Mix::new(i ^ 0x5EA7_C400);
    match mix.below(4) {
        0 => person.family_name.chars().take(4).collect(),
        1 => format!("{} {}", person.given_name, person.family_name),
        2 => {
            // one substitution in the family name: a typo
            let mut chars: Vec<char> = person.family_name.chars().collect();
            if chars.len() > 3 {
                let at = 1 + mix.below(chars.len() - 2);
                chars[at] = if chars[at] == 'e' { 'a' } else { 'e' };
            }
            chars.into_iter().collect()
        }
        _ => person
            .emails
            .first()
            .map(|e| e.address.chars().take(8).collect())
            .unwrap_or_default(),
    }
}

/// How many contacts and accounts the tenant holds now.
pub async fn counts(client: &mut ContactServiceClient<Authorised>) -> anyhow::Result<(u64, u64)> {
    let contacts = contacts_about(client).await?;
    // Past this the service reports an estimate; topping up needs the exact number.
    let contacts = if contacts > crm_platform::db::EXACT_COUNT_LIMIT {
        count_by_paging(client).await?
    } else {
        contacts
    };
    let accounts = client
        .list_accounts(ListAccountsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .context("counting accounts")?
        .into_inner()
        .total_size;
    Ok((contacts, accounts.max(0) as u64))
}

/// How many contacts the tenant holds: exact up to `db::EXACT_COUNT_LIMIT`, the
/// planner's estimate past it (reading a million contacts page by page takes minutes).
pub async fn contacts_about(client: &mut ContactServiceClient<Authorised>) -> anyhow::Result<u64> {
    Ok(client
        .list_contacts(ListContactsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .context("counting contacts")?
        .into_inner()
        .total_size
        .max(0) as u64)
}

/// The tenant's contacts, counted by reading every page.
async fn count_by_paging(client: &mut ContactServiceClient<Authorised>) -> anyhow::Result<u64> {
    let mut token = String::new();
    let mut count = 0u64;
    loop {
        let page = contacts_page(client, token).await?;
        count += page.contacts.len() as u64;
        if page.next_page_token.is_empty() {
            return Ok(count);
        }
        token = page.next_page_token;
    }
}

/// One page of 1000 of the tenant's contacts, oldest first.
pub async fn contacts_page(
    client: &mut ContactServiceClient<Authorised>,
    page_token: String,
) -> anyhow::Result<contact::ListContactsResponse> {
    Ok(client
        .list_contacts(ListContactsRequest {
            page_size: 1000,
            page_token,
            ..Default::default()
        })
        .await
        .context("listing contacts")?
        .into_inner())
}

/// What one seeding run did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SeedReport {
    pub accounts_created: u64,
    pub contacts_created: u64,
    pub contacts_skipped_duplicate: u64,
    pub contacts_rejected: u64,
    pub interactions_created: u64,
    pub import_rows_per_s: f64,
    pub seconds: f64,
}

/// Seeding plan.
#[derive(Debug, Clone)]
pub struct SeedPlan {
    pub contacts: u64,
    /// People per company; every `people_per_account`-th person starts a new company.
    pub people_per_account: u64,
    pub interactions_per_contact: u64,
    /// Parallel import streams.
    pub streams: usize,
}

/// Tops the tenant up to `plan.contacts` contacts (and their companies), through
/// CreateAccount and ImportContacts (CREATE_ONLY, duplicate detection on).
pub async fn seed(channel: Channel, token: &str, plan: &SeedPlan) -> anyhow::Result<SeedReport> {
    let started = Instant::now();
    let mut client = ContactServiceClient::new(authorised(channel.clone(), token)?)
        .max_decoding_message_size(64 * 1024 * 1024);
    let mut report = SeedReport::default();
    // A tenant already well past the target (by the estimate) is not counted exactly:
    // that reads every page.
    let about = contacts_about(&mut client).await?;
    let have_contacts = if about > crm_platform::db::EXACT_COUNT_LIMIT
        && about as f64 >= plan.contacts as f64 * 1.02
    {
        about
    } else {
        counts(&mut client).await?.0
    };
    if have_contacts >= plan.contacts {
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    let per_account = plan.people_per_account.max(1);
    let need_accounts = plan.contacts.div_ceil(per_account);

    // Companies first: people link to them. Existing ones are looked up by position.
    let mut accounts: Vec<(String, String)> = Vec::with_capacity(need_accounts as usize);
    {
        let mut token = String::new();
        loop {
            let page = client
                .list_accounts(ListAccountsRequest {
                    page_size: 1000,
                    page_token: token,
                    order_by: "create_time".into(),
                    ..Default::default()
                })
                .await
                .context("listing accounts")?
                .into_inner();
            accounts.extend(page.accounts.into_iter().map(|a| (a.name, a.domain)));
            if page.next_page_token.is_empty() || accounts.len() as u64 >= need_accounts {
                break;
            }
            token = page.next_page_token;
        }
    }
    let mut creators = tokio::task::JoinSet::new();
    let missing: Vec<u64> = (accounts.len() as u64..need_accounts).collect();
    for chunk in missing.chunks(missing.len().div_ceil(plan.streams.max(1)).max(1)) {
        let mut client = client.clone();
        let chunk = chunk.to_vec();
        creators.spawn(async move {
            let mut made = Vec::with_capacity(chunk.len());
            for i in chunk {
                let account = client
                    .create_account(CreateAccountRequest {
                        account: Some(company(i)),
                        request_id: format!("seed-account-{i}"),
                        ..Default::default()
                    })
                    .await
                    .with_context(|| format!("creating account {i}"))?
                    .into_inner();
                made.push((i, account.name, account.domain));
            }
            anyhow::Ok(made)
        });
    }
    let mut made = Vec::new();
    while let Some(result) = creators.join_next().await {
        made.extend(result.context("account task")??);
    }
    made.sort_by_key(|(i, _, _)| *i);
    report.accounts_created = made.len() as u64;
    accounts.extend(made.into_iter().map(|(_, name, domain)| (name, domain)));

    // People, in parallel import streams of 1000-row messages.
    let import_started = Instant::now();
    let rows: Vec<u64> = (have_contacts..plan.contacts).collect();
    let accounts = std::sync::Arc::new(accounts);
    let mut importers = tokio::task::JoinSet::new();
    for chunk in rows.chunks(rows.len().div_ceil(plan.streams.max(1)).max(1)) {
        let (first, last) = (chunk[0], chunk[chunk.len() - 1] + 1);
        let client = client.clone();
        let accounts = accounts.clone();
        importers
            .spawn(async move { import_range(client, first..last, accounts, per_account).await });
    }
    while let Some(result) = importers.join_next().await {
        let summary = result.context("import task")??;
        report.contacts_created += summary.created.max(0) as u64;
        report.contacts_skipped_duplicate += summary.skipped_duplicate.max(0) as u64;
        report.contacts_rejected += summary.rejected.max(0) as u64;
    }
    let import_seconds = import_started.elapsed().as_secs_f64();
    report.import_rows_per_s = rows.len() as f64 / import_seconds.max(1e-9);

    if plan.interactions_per_contact > 0 {
        report.interactions_created =
            seed_interactions(&mut client, plan.interactions_per_contact, plan.streams).await?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Imports persons `range` in one ImportContacts stream and returns its summary. Each
/// 1000-row message is generated when the stream takes it (HTTP/2 flow control paces
/// it), so a range of any size holds a few messages in memory, not all of them: a
/// 1 M seeding whose streams were built up front peaked at 1.37 GB in this client.
pub async fn import_range(
    mut client: ContactServiceClient<Authorised>,
    range: std::ops::Range<u64>,
    accounts: std::sync::Arc<Vec<(String, String)>>,
    per_account: u64,
) -> anyhow::Result<contact::ImportSummary> {
    const ROWS_PER_MESSAGE: u64 = 1000;
    let end = range.end;
    let messages = range
        .step_by(ROWS_PER_MESSAGE as usize)
        .enumerate()
        .map(move |(n, first)| {
            let rows = (first..(first + ROWS_PER_MESSAGE).min(end))
                .map(|i| {
                    let company = accounts
                        .get((i / per_account.max(1)) as usize)
                        .filter(|_| i % 10 != 0) // one in ten is a private person
                        .map(|(name, domain)| (name.as_str(), domain.as_str()));
                    ImportRow {
                        row_id: i.to_string(),
                        contact: Some(person(i, company)),
                    }
                })
                .collect();
            ImportContactsRequest {
                options: (n == 0).then(|| ImportOptions {
                    mode: ImportMode::CreateOnly as i32,
                    summary_only: true,
                    source: "seed".into(),
                    ..Default::default()
                }),
                rows,
            }
        });
    let mut responses = client
        .import_contacts(tokio_stream::iter(messages))
        .await
        .context("starting an import")?
        .into_inner();
    let mut summary = None;
    while let Some(message) = responses.message().await.context("import stream")? {
        if message.summary.is_some() {
            summary = message.summary;
        }
    }
    summary.context("the import ended without a summary")
}

async fn seed_interactions(
    client: &mut ContactServiceClient<Authorised>,
    per_contact: u64,
    streams: usize,
) -> anyhow::Result<u64> {
    // Interactions go to the first contacts of the tenant, one page at a time.
    let mut token = String::new();
    let mut created = 0u64;
    let started = Instant::now();
    loop {
        let page = contacts_page(client, token).await?;
        let mut tasks = tokio::task::JoinSet::new();
        let contacts: Vec<(String, String)> = page
            .contacts
            .iter()
            .map(|c| (c.name.clone(), c.account.clone()))
            .collect();
        for chunk in contacts.chunks(contacts.len().div_ceil(streams.max(1)).max(1)) {
            let mut client = client.clone();
            let chunk = chunk.to_vec();
            tasks.spawn(async move {
                let mut n = 0u64;
                for (contact, account) in chunk {
                    for k in 0..per_contact {
                        let mut mix = Mix::new(contact.len() as u64 * 31 + k);
                        let kind = [
                            InteractionType::Call,
                            InteractionType::Email,
                            InteractionType::Meeting,
                            InteractionType::Note,
                        ][mix.below(4)];
                        let when = std::time::SystemTime::now()
                            - Duration::from_secs(3600 * (1 + mix.below(24 * 365)) as u64);
                        let seconds = when
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_secs() as i64)
                            .unwrap_or_default();
                        client
                            .create_interaction(CreateInteractionRequest {
                                interaction: Some(Interaction {
                                    r#type: kind as i32,
                                    channel: ContactChannel::Email as i32,
                                    direction: InteractionDirection::Outbound as i32,
                                    contact: contact.clone(),
                                    account: account.clone(),
                                    interaction_time: Some(prost_types::Timestamp {
                                        seconds,
                                        nanos: 0,
                                    }),
                                    outcome: InteractionOutcome::Completed as i32,
                                    subject: "Follow-up on the proposal".into(),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            })
                            .await
                            .context("creating an interaction")?;
                        n += 1;
                    }
                }
                anyhow::Ok(n)
            });
        }
        while let Some(result) = tasks.join_next().await {
            created += result.context("interaction task")??;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        tracing::info!(
            created,
            seconds = started.elapsed().as_secs(),
            "seeding interactions"
        );
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn people_are_stable_and_distinct() {
        assert_eq!(person(7, None), person(7, None));
        assert_ne!(person(7, None).emails, person(8, None).emails);
        assert_ne!(person(7, None).phones, person(8, None).phones);
        let at_work = person(3, Some(("accounts/x", "acme.example")));
        assert_eq!(at_work.account, "accounts/x");
        assert!(at_work.emails[0].address.ends_with("@acme.example"));
        assert!(at_work.emails[0].primary);
    }

    #[test]
    fn queries_are_never_empty() {
        for i in 0..1000 {
            assert!(!search_query(i).trim().is_empty(), "query of person {i}");
        }
    }

    #[test]
    fn companies_have_distinct_domains() {
        assert_ne!(company(1).domain, company(2).domain);
        assert!(company(1).domain.ends_with(".example"));
    }
}
