//! Running a service process: configuration, telemetry, keys, listener, serve until
//! SIGTERM. Shared by the per-service binaries and `crm serve`.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::{KeyMaterial, Role};
use crate::config::Config;
use crate::server::{self, ServicePlan, ServiceSet};

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

/// Serves the services of `plan` on `config.server.addr` until SIGTERM or Ctrl-C. The
/// port opens at once with health NOT_SERVING; `build` (connect, migrate, assemble) is
/// retried until it succeeds, e.g. while the database does not answer, and health turns
/// SERVING as soon as it does. The process never crash-loops on a missing dependency.
pub async fn run<F, Fut>(
    config: Config,
    process_name: &str,
    plan: ServicePlan,
    build: F,
) -> anyhow::Result<()>
where
    F: Fn(Config, Arc<KeyMaterial>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<ServiceSet>> + Send,
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
    let listener = tokio::net::TcpListener::bind(&config.server.addr).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, services = ?plan.names(), "listening");
    // Machine-readable for tests and scripts that start the process on port 0.
    println!("listening on {addr}");
    let build_config = config.clone();
    let ready = async move {
        let mut delay = Duration::from_millis(100);
        loop {
            match build(build_config.clone(), keys.clone()).await {
                Ok(services) => return services,
                Err(err) => {
                    tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "not ready; retrying");
                    tokio::time::sleep(delay).await;
                    // Short, so that SERVING follows within a fraction of a second once the
                    // database answers.
                    delay = (delay * 2).min(Duration::from_millis(250));
                }
            }
        }
    };
    server::serve(
        &config.server,
        listener,
        plan,
        authenticator,
        ready,
        shutdown,
    )
    .await?;
    Ok(())
}
