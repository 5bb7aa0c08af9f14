//! What Kubernetes relies on, tested on real processes: a service whose database does
//! not answer stays up and NOT_SERVING, and turns SERVING once it answers; SIGTERM
//! drains and exits 0; `crm migrate` is idempotent and safe from several pods at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const CRM: &str = env!("CARGO_BIN_EXE_crm");

fn psql(sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-tAc",
            sql,
        ])
        .output()
        .expect("psql must be installed; PostgreSQL must answer on 127.0.0.1:5432");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A fresh Postgres database, dropped at the end.
struct Database(String);

impl Database {
    fn create() -> Self {
        let name = format!("crm_proc_{}", std::process::id()) + &format!("_{}", rand_suffix());
        psql(&format!("CREATE DATABASE {name}"));
        Self(name)
    }

    fn url(&self, port: u16) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/{}", self.0)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-tAc",
            ])
            .arg(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0))
            .output();
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn crm(args: &[&str], database_url: &str, data_dir: &std::path::Path) -> Command {
    let mut command = Command::new(CRM);
    command
        .args(args)
        .env("CRM__DATABASE__URL", database_url)
        .env("CRM__DATA_DIR", data_dir)
        .env(
            "CRM__AUTH__HS256_SECRET",
            "process-test-secret-0123456789abcdef",
        )
        .env("CRM__SERVER__ADDR", "127.0.0.1:0")
        .env("CRM__SERVER__SHUTDOWN_DRAIN_DELAY_MS", "200")
        .env("CRM__DATABASE__CONNECT_TIMEOUT_MS", "500")
        .env("CRM__TELEMETRY__LOG_LEVEL", "warn");
    command
}

/// Starts `crm serve`, returns the child and its address once it listens.
fn serve(command: &mut Command) -> (Child, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start crm");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(addr) = line.strip_prefix("listening on ") {
            // Keep draining stdout so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return (child, addr.to_owned());
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("crm serve did not announce its address");
}

async fn health(addr: &str, service: &str) -> Option<i32> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .ok()?;
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .ok()
        .map(|r| r.into_inner().status)
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("no exit within 30 s of SIGTERM");
}

/// Forwards `listen` to Postgres, from when it is started: the database "comes back".
async fn proxy_to_postgres(listener: tokio::net::TcpListener) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:5432").await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_waits_for_its_database_without_crashing() {
    let database = Database::create();
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let (mut child, addr) = serve(&mut crm(
        &["serve", "--only", "contact"],
        &database.url(port),
        data.path(),
    ));

    // Nothing listens on the database port: the process stays up and NOT_SERVING.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            child.try_wait().unwrap().is_none(),
            "the process must not exit"
        );
        assert_eq!(
            health(&addr, "crm.contact.v1.ContactService").await,
            Some(ServingStatus::NotServing as i32),
            "not ready without its database"
        );
        assert_eq!(
            health(&addr, "liveness").await,
            Some(ServingStatus::Serving as i32),
            "alive all the same, so Kubernetes does not restart it"
        );
    }

    // The database answers: SERVING follows. The time is reported, not asserted tightly
    // (speed belongs to benchmarks); the generous bound only catches a hang.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let back = Instant::now();
    tokio::spawn(proxy_to_postgres(listener));
    loop {
        if health(&addr, "crm.contact.v1.ContactService").await
            == Some(ServingStatus::Serving as i32)
        {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "not SERVING 15 s after the database answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "SERVING {} ms after the database answered",
        back.elapsed().as_millis()
    );

    let status = terminate(&mut child);
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");
}

#[test]
fn migrations_are_idempotent_and_safe_in_parallel() {
    let database = Database::create();
    let data = tempfile::tempdir().unwrap();
    let url = database.url(5432);
    let runs: Vec<Child> = (0..3)
        .map(|_| {
            crm(&["migrate"], &url, data.path())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for run in runs {
        let out = run.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "parallel migrate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let again = crm(&["migrate"], &url, data.path()).output().unwrap();
    assert!(
        again.status.success(),
        "second migrate: {}",
        String::from_utf8_lossy(&again.stderr)
    );
    for schema in ["crm_contact", "crm_pipeline", "crm_ticket", "crm_analytics"] {
        let applied = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                &database.0,
                "-tAc",
            ])
            .arg(format!("SELECT count(*) FROM {schema}.seaql_migrations"))
            .output()
            .unwrap();
        let count: u32 = String::from_utf8_lossy(&applied.stdout)
            .trim()
            .parse()
            .unwrap();
        assert!(count >= 2, "{schema}: {count} migrations recorded");
        let duplicates = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                &database.0,
                "-tAc",
            ])
            .arg(format!(
                "SELECT count(*) - count(DISTINCT version) FROM {schema}.seaql_migrations"
            ))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&duplicates.stdout).trim(),
            "0",
            "{schema}: a migration ran twice"
        );
    }
}
