//! A redis-server of the test's own on an ephemeral port, killed and restarted at will.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start() -> Self {
        let mut redis = Self {
            port: free_port(),
            child: None,
        };
        redis.start_again();
        redis
    }

    /// Starts redis-server (empty: nothing is saved) on its port; waits until it answers.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the fault tests need redis-server on the PATH");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.ping().as_deref() != Some("PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("the fault tests need redis-cli on the PATH");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn ping(&self) -> Option<String> {
        self.cli(&["ping"])
    }

    /// How many keys the CRM has cached.
    pub fn keys(&self) -> usize {
        self.cli(&["--scan", "--pattern", "crm:*"])
            .map(|out| out.lines().filter(|line| !line.is_empty()).count())
            .unwrap_or(0)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
