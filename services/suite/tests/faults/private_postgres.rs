//! A PostgreSQL server of the test's own, in a temporary folder on an ephemeral port,
//! that the test may stop (as a crash would: `pg_ctl stop -m immediate`) and start again
//! on the same port and data. Dropping it stops it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::free_port;

pub struct PrivatePostgres {
    pub port: u16,
    bin: PathBuf,
    /// Holds the data folder (`data`), the socket and the server log (`log`).
    dir: tempfile::TempDir,
    /// We run as root: initdb and postgres refuse root, so they run as `postgres`.
    as_postgres: bool,
}

/// The folder with initdb and pg_ctl: `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/*/bin`. Panics (the test fails, never skips) when there is none.
fn bin_dir() -> PathBuf {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_tools(&dir) {
            return dir;
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|dir| has_tools(dir))
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "the fault tests need PostgreSQL's initdb and pg_ctl (pg_config --bindir or \
             /usr/lib/postgresql/*/bin); install the postgresql server package"
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

impl PrivatePostgres {
    /// initdb in a fresh temporary folder, then start on a free port.
    pub fn start() -> Self {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("crm-faults-pg")
            .tempdir()
            .expect("temporary folder");
        let as_postgres = is_root();
        if as_postgres {
            let chown = Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(chown.success(), "chown postgres {}", dir.path().display());
        }
        let postgres = Self {
            port: free_port(),
            bin,
            dir,
            as_postgres,
        };
        let data = postgres.data();
        let out = postgres.run(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        postgres.start_again();
        postgres
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) -> Output {
        let tool = self.bin.join(tool);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&tool);
            command
        } else {
            Command::new(&tool)
        };
        command
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()))
    }

    /// Starts the server on its port and waits until it accepts connections.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        let data = self.data();
        let out = self.run(
            "pg_ctl",
            &[
                "-D", &data, "-o", &options, "-l", &log, "-t", "60", "-w", "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
        );
        // pg_ctl -w has waited for "ready"; the port answers from here on.
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "postgres does not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server at once, as a crash would (no checkpoint, clients cut off).
    pub fn stop_immediately(&self) {
        let data = self.data();
        let out = self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The URL of the `postgres` database; the services put their schemas in it.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }
}
