//! `crm`: the whole suite in one process (`crm serve`), and the operator's commands.

mod bench;
mod certs;
mod seed;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use crm_platform::auth::{KeyMaterial, Role};
use crm_platform::config::Config;
use crm_platform::server::{ServicePlan, ServiceSet};

#[derive(Parser)]
#[command(
    name = "crm",
    version,
    about = "The CRM suite: contact, pipeline, ticket and analytics gRPC services"
)]
struct Cli {
    /// A TOML configuration file (defaults < file < CRM__SECTION__KEY variables).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the services (all four by default) on `server.addr`.
    Serve {
        /// Serve only these services (repeatable).
        #[arg(long, value_enum)]
        only: Vec<Service>,
    },
    /// Run pending database migrations and exit.
    Migrate {
        #[arg(long, value_enum)]
        only: Vec<Service>,
    },
    /// Bearer tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Load the suite and report throughput and latency against floors measured in
    /// the same run (DESIGN.md §10).
    Bench(bench::BenchArgs),
    /// Fill a tenant with generated companies, people and interactions.
    Seed(bench::SeedArgs),
    /// Generate a private CA and a certificate per service for mutual TLS.
    Certs(certs::CertsArgs),
    /// Configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Issue an HS256 token signed with the configured (or generated) secret.
    Issue {
        #[arg(long)]
        tenant: String,
        /// Comma-separated roles: admin, sales_manager, sales_rep, support_manager,
        /// support_agent, marketer, analyst, viewer, system.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// The token's subject (user id).
        #[arg(long, default_value = "admin")]
        subject: String,
        /// Lifetime, e.g. 3600s, 90m, 12h, 30d.
        #[arg(long, default_value = "12h")]
        ttl: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration as JSON, secrets redacted.
    Show,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Service {
    Contact,
    Pipeline,
    Ticket,
    Analytics,
}

fn selected(only: &[Service]) -> Vec<Service> {
    if only.is_empty() {
        vec![
            Service::Contact,
            Service::Pipeline,
            Service::Ticket,
            Service::Analytics,
        ]
    } else {
        only.to_vec()
    }
}

fn parse_ttl(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .with_context(|| format!("--ttl {text:?}: expected e.g. 12h"))?;
    let seconds = match unit {
        "" | "s" => number,
        "m" => number * 60,
        "h" => number * 3600,
        "d" => number * 86_400,
        _ => anyhow::bail!("--ttl {text:?}: unit must be s, m, h or d"),
    };
    anyhow::ensure!(seconds > 0, "--ttl must be positive");
    Ok(Duration::from_secs(seconds))
}

async fn build(
    services: Vec<Service>,
    config: Config,
    keys: std::sync::Arc<KeyMaterial>,
) -> anyhow::Result<ServiceSet> {
    let mut set = ServiceSet::new();
    for service in services {
        match service {
            Service::Contact => crm_contact::add_to(&mut set, &config, &keys).await?,
            Service::Pipeline => crm_pipeline::add_to(&mut set, &config, &keys).await?,
            Service::Ticket => crm_ticket::add_to(&mut set, &config, &keys).await?,
            Service::Analytics => crm_analytics::add_to(&mut set, &config, &keys).await?,
        };
    }
    Ok(set)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve { only } => {
            let services = selected(&only);
            let mut plan = ServicePlan::new();
            for service in &services {
                match service {
                    Service::Contact => plan.add(
                        crm_contact::roles::SERVICE_NAME,
                        crm_contact::roles::role_table(),
                    ),
                    Service::Pipeline => {
                        plan.add(crm_pipeline::SERVICE_NAME, crm_pipeline::role_table())
                    }
                    Service::Ticket => plan.add(crm_ticket::SERVICE_NAME, crm_ticket::role_table()),
                    Service::Analytics => {
                        plan.add(crm_analytics::SERVICE_NAME, crm_analytics::role_table())
                    }
                };
            }
            crm_platform::process::run(config, "crm", plan, move |config, keys| {
                build(services.clone(), config, keys)
            })
            .await
        }
        Command::Migrate { only } => {
            for service in selected(&only) {
                match service {
                    Service::Contact => crm_contact::migrate(&config).await?,
                    Service::Pipeline => crm_pipeline::migrate(&config).await?,
                    Service::Ticket => crm_ticket::migrate(&config).await?,
                    Service::Analytics => crm_analytics::migrate(&config).await?,
                }
            }
            println!("migrations applied");
            Ok(())
        }
        Command::Token {
            command:
                TokenCommand::Issue {
                    tenant,
                    roles,
                    subject,
                    ttl,
                },
        } => {
            anyhow::ensure!(!tenant.trim().is_empty(), "--tenant must not be empty");
            let mut parsed = Vec::new();
            for role in &roles {
                parsed.push(
                    Role::parse(role.trim()).with_context(|| format!("unknown role {role:?}"))?,
                );
            }
            anyhow::ensure!(!parsed.is_empty(), "--roles needs at least one role");
            let keys = KeyMaterial::load(&config)?;
            let issuer = keys.issuer(&config).context(
                "no HS256 secret: tokens for a JWKS setup come from your identity provider",
            )?;
            println!(
                "{}",
                issuer.issue(&subject, tenant.trim(), &parsed, parse_ttl(&ttl)?)?
            );
            Ok(())
        }
        Command::Bench(args) => bench::run_bench(config, cli.config.as_deref(), args).await,
        Command::Seed(args) => bench::run_seed(config, cli.config.as_deref(), args).await,
        Command::Certs(args) => certs::run(args),
        Command::Config {
            command: ConfigCommand::Show,
        } => {
            println!("{}", serde_json::to_string_pretty(&config.redacted())?);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_ttl("30").unwrap(), Duration::from_secs(30));
        assert!(parse_ttl("0h").is_err());
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
    }
}
