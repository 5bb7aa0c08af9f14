//! Running a service process: configuration, telemetry, keys, listener, serve until
//! SIGTERM. Shared by the per-service binaries and `crm serve`.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use crate::auth::{KeyMaterial, Role};
use crate::config::Config;
use crate::server::{self, ServiceSet};

/// `--config FILE` from the command line, if given.
pub fn config_path_from_args(
    args: impl Iterator<Item = String>,
) -> anyhow::Result<Option<PathBuf>> {
    let mut args = args.skip(1);
    let mut path = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" => {
                let value = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--config needs a file"))?;
                path = Some(PathBuf::from(value));
            }
            "-h" | "--help" => {
                println!(
                    "usage: [--config FILE]  (settings also from CRM__SECTION__KEY variables)"
                );
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?}; usage: [--config FILE]"),
        }
    }
    Ok(path)
}

/// Serves what `build` adds, on `config.server.addr`, until SIGTERM or Ctrl-C.
pub async fn run<F, Fut>(config: Config, process_name: &str, build: F) -> anyhow::Result<()>
where
    F: FnOnce(Config, Arc<KeyMaterial>) -> Fut,
    Fut: Future<Output = anyhow::Result<ServiceSet>>,
{
    let _telemetry = crate::telemetry::init(&config.telemetry, process_name)?;
    let keys = Arc::new(KeyMaterial::load(&config)?);
    let authenticator = Arc::new(keys.authenticator(&config)?);
    if keys.generated
        && let Some(issuer) = keys.issuer(&config)
    {
        // Printed once, on the first start of the embedded default, to stdout (not the log).
        let token = issuer.issue(
            "admin",
            "default",
            &[Role::Admin],
            std::time::Duration::from_secs(30 * 24 * 3600),
        )?;
        println!(
            "admin token for tenant \"default\" (valid 30 days; `crm token issue` makes more):\n{token}"
        );
    }
    // Installed before anything is announced, so an early SIGTERM drains instead of killing.
    let shutdown = server::shutdown_signal();
    let services = build(config.clone(), keys.clone()).await?;
    let listener = tokio::net::TcpListener::bind(&config.server.addr).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, services = ?services.names(), "listening");
    // Machine-readable for tests and scripts that start the process on port 0.
    println!("listening on {addr}");
    server::serve(&config.server, listener, services, authenticator, shutdown).await?;
    Ok(())
}
