//! The contact service as a real `crm serve --only contact` process, configured through
//! `CRM__…` variables, that a test can SIGKILL, SIGTERM and start again on the same
//! database. Dropping it kills it.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crm_proto::contact::contact_service_client::ContactServiceClient;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

pub const CONTACT_SERVICE: &str = "crm.contact.v1.ContactService";
pub const LIVENESS: &str = "liveness";
pub const SECRET: &str = "faults-test-secret-0123456789abcdef-xyz";
const CRM: &str = env!("CARGO_BIN_EXE_crm");

/// The environment of a service process; kept so that it can start again the same way.
#[derive(Clone)]
pub struct ServiceEnv {
    vars: Vec<(String, String)>,
    /// The data folder and the process's log (its stderr, appended across restarts).
    dir: PathBuf,
}

impl ServiceEnv {
    /// The contact service on `database_url`, caching in memory, on an ephemeral port.
    pub fn new(dir: &std::path::Path, database_url: &str) -> Self {
        let env = Self {
            vars: Vec::new(),
            dir: dir.to_path_buf(),
        };
        env.set("CRM__DATA_DIR", &dir.display().to_string())
            .set("CRM__DATABASE__URL", database_url)
            .set("CRM__AUTH__HS256_SECRET", SECRET)
            .set("CRM__SERVER__ADDR", "127.0.0.1:0")
            .set("CRM__SERVER__SHUTDOWN_DRAIN_DELAY_MS", "200")
            .set("CRM__DATABASE__CONNECT_TIMEOUT_MS", "1000")
            .set("CRM__DATABASE__HEALTH_CHECK_INTERVAL_MS", "200")
            .set("CRM__EVENTS__RELAY_INTERVAL_MS", "50")
            .set("CRM__CACHE__BACKEND", "memory")
            .set("CRM__TELEMETRY__LOG_LEVEL", "info")
    }

    /// Sets (or replaces) one `CRM__…` variable.
    pub fn set(mut self, key: &str, value: &str) -> Self {
        self.vars.retain(|(k, _)| k != key);
        self.vars.push((key.to_owned(), value.to_owned()));
        self
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("service.log")
    }
}

pub struct Service {
    child: Child,
    pub addr: String,
    env: ServiceEnv,
}

impl Service {
    /// Starts the process and waits until it announces its address.
    pub fn start(env: &ServiceEnv) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(env.log_path())
            .expect("service log");
        let mut command = Command::new(CRM);
        command
            .args(["serve", "--only", "contact"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        for (key, value) in &env.vars {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start crm serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.to_owned());
                    break;
                }
            }
            // Keep draining, so that the child never blocks on a full pipe.
            for _ in lines {}
        });
        let mut service = Self {
            child,
            addr: String::new(),
            env: env.clone(),
        };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => service.addr = addr,
            Err(_) => panic!(
                "crm serve did not announce its address\n{}",
                service.log_tail()
            ),
        }
        service
    }

    /// The same configuration, started again (after a kill).
    pub fn restart(&self) -> Self {
        Self::start(&self.env)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// The last lines of the process's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.env.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(40);
        format!("--- service log (tail) ---\n{}", lines[from..].join("\n"))
    }

    /// SIGKILL: no drain, no last relay pass, nothing flushed.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM without waiting.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit within {within:?}\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A new connection (HTTP/2) to the service.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect to the service")
    }

    pub async fn client(&self) -> ContactServiceClient<Channel> {
        ContactServiceClient::new(self.channel().await)
    }

    /// The health status of `service` ("" for the whole process); None when no answer.
    pub async fn health(&self, service: &str) -> Option<ServingStatus> {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .ok()?
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .ok()?;
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: service.into(),
        });
        request.set_timeout(Duration::from_secs(2));
        let status = HealthClient::new(channel)
            .check(request)
            .await
            .ok()?
            .into_inner()
            .status;
        ServingStatus::try_from(status).ok()
    }

    /// Polls health of the contact service until it is `wanted`; panics after `within`.
    /// Returns how long it took.
    pub async fn wait_health(&self, wanted: ServingStatus, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if self.health(CONTACT_SERVICE).await == Some(wanted) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "contact health not {wanted:?} within {within:?}\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Resident memory of process `pid`, from /proc/<pid>/status (VmRSS), in KiB; None
/// once it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}
