//! The contact service as a child process of `crm bench`, for runs without `--target`.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A `crm serve --only contact` child, killed when dropped.
pub struct ServiceProcess {
    pub addr: String,
    pub startup: Duration,
    child: tokio::process::Child,
}

impl ServiceProcess {
    /// Starts the contact service with `cache_backend` ("redis" or "none") and waits
    /// until it reports SERVING. `log` receives its output.
    pub async fn start(
        config_file: Option<&Path>,
        secret: &str,
        cache_backend: &str,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port")?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let exe = std::env::current_exe().context("locating the crm binary")?;
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = tokio::process::Command::new(exe);
        if let Some(file) = config_file {
            command.arg("--config").arg(file);
        }
        command
            .args(["serve", "--only", "contact"])
            .env("CRM__SERVER__ADDR", &addr)
            .env("CRM__AUTH__HS256_SECRET", secret)
            .env("CRM__CACHE__BACKEND", cache_backend)
            // An import of a million rows is one long call.
            .env("CRM__SERVER__REQUEST_TIMEOUT_MS", "600000")
            .env("CRM__SERVER__MAX_CONNECTION_AGE_S", "0")
            .env("CRM__SERVER__SHUTDOWN_DRAIN_DELAY_MS", "0")
            .env("CRM__TELEMETRY__LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().context("log file")?)
            .stderr(log_file)
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = command.spawn().context("starting crm serve")?;
        let deadline = started + Duration::from_secs(120);
        loop {
            if let Some(status) = child.try_wait().context("watching crm serve")? {
                anyhow::bail!(
                    "crm serve exited with {status} before serving:\n{}",
                    tail(log)
                );
            }
            if serving(&addr).await {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "crm serve did not report SERVING within 120 s:\n{}",
                tail(log)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(Self {
            addr,
            startup: started.elapsed(),
            child,
        })
    }

    /// The highest resident set size the process reached, in MiB (Linux `VmHWM`).
    pub fn peak_rss_mb(&self) -> Option<f64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// The last lines of a log, for an error message.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

async fn serving(addr: &str) -> bool {
    let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map(|e| e.connect_timeout(Duration::from_millis(200)))
    else {
        return false;
    };
    let Ok(channel) = channel.connect().await else {
        return false;
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "crm.contact.v1.ContactService".into(),
        })
        .await
        .map(|r| r.into_inner().status == ServingStatus::Serving as i32)
        .unwrap_or(false)
}
