//! Running the real `ferry run` against a real receiver, in a temp folder of its own.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{TOKEN, ferry_bin, wait_until};

/// The uid and gid of `nobody` on Debian.
pub const NOBODY: u32 = 65534;

/// `dir` and everything under it.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = vec![dir.to_path_buf()];
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        if entry.file_type().unwrap().is_dir() {
            found.extend(walk(&entry.path()));
        } else {
            found.push(entry.path());
        }
    }
    found
}

/// Folders and config of one daemon under test.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub outbox: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
}

impl Setup {
    /// A config with one watch of `outbox` uploading to `url`; `extra_watch` is appended to the
    /// `[[watch]]` table (e.g. `after_upload = "delete"`), `extra` to the file.
    pub fn new(url: &str, extra_watch: &str, extra: &str) -> Setup {
        let remote = format!(
            "[remotes.main]\nkind = \"native\"\nurl = \"{url}\"\nworkspace_id = \"default\"\ntoken_file = \"token\"\n"
        );
        Self::with_remote(&remote, extra_watch, extra)
    }

    /// `new`, uploading to the remote `main` that `remote` (its whole table) defines.
    pub fn with_remote(remote: &str, extra_watch: &str, extra: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let outbox = dir.path().join("outbox");
        std::fs::create_dir_all(&outbox).unwrap();
        std::fs::write(dir.path().join("token"), TOKEN).unwrap();
        let socket = dir.path().join("run/ferry.sock");
        let config = dir.path().join("ferry.toml");
        let text = format!(
            r#"
[daemon]
data_dir = "data"
socket = "run/ferry.sock"
transfers = 4
shutdown_grace = "5s"

{remote}
[upload]
chunk_size = "1MiB"
retry = {{ max_attempts = 3, backoff_base = "100ms", backoff_max = "500ms" }}

[[watch]]
path = "outbox"
remote = "main"
settle = "300ms"
{extra_watch}
{extra}
"#
        );
        std::fs::write(&config, text).unwrap();
        Setup {
            outbox: std::fs::canonicalize(outbox).unwrap(),
            config,
            socket,
            dir,
        }
    }

    /// Starts `ferry run` and waits until its control socket answers.
    pub async fn start(&self) -> Daemon {
        self.start_with_env(&[]).await
    }

    /// `start`, with these environment variables set for the daemon.
    pub async fn start_with_env(&self, env: &[(&str, &str)]) -> Daemon {
        self.spawn(Command::new(ferry_bin()), env).await
    }

    /// `start`, as the unprivileged user `nobody` (the tests run as root): its folder is handed
    /// over to that user first.
    pub async fn start_as_nobody(&self) -> Daemon {
        for entry in walk(self.dir.path()) {
            std::os::unix::fs::lchown(&entry, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        let mut command = Command::new("setpriv");
        command
            .arg(format!("--reuid={NOBODY}"))
            .arg(format!("--regid={NOBODY}"))
            .args(["--clear-groups", "--"])
            .arg(ferry_bin());
        self.spawn(command, &[]).await
    }

    async fn spawn(&self, mut command: Command, env: &[(&str, &str)]) -> Daemon {
        let mut child = command
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Keep stdout and stderr drained, so the daemon never blocks writing logs.
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let (ready_sender, ready) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if line.starts_with("control socket") {
                    let _ = ready_sender.send(());
                }
            }
        });
        let started =
            tokio::task::spawn_blocking(move || ready.recv_timeout(Duration::from_secs(20)))
                .await
                .unwrap();
        assert!(started.is_ok(), "ferry run did not start");
        Daemon { child, logs }
    }

    /// Runs a client command against this setup's daemon.
    pub fn ferry(&self, args: &[&str]) -> Output {
        Command::new(ferry_bin())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }

    /// `ferry status --json` of a running daemon, healthy (exit code 0) or degraded (1).
    pub fn status(&self) -> Value {
        let output = self.ferry(&["status", "--json"]);
        assert!(
            matches!(output.status.code(), Some(0 | 1)),
            "status failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// `ferry status --json` and its exit code, which is 1 while a watch is unhealthy or a job
    /// has failed.
    pub fn status_and_code(&self) -> (Value, Option<i32>) {
        let output = self.ferry(&["status", "--json"]);
        let status = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
            panic!(
                "status printed no JSON: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        (status, output.status.code())
    }

    /// Waits until `done` jobs are done and nothing is queued or active.
    pub async fn wait_idle_with_done(&self, done: u64, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let last = self.status();
            let queue = &last["queue"];
            if queue["done"] == done && queue["queued"] == 0 && queue["active"] == 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not idle with {done} done after {timeout:?}: {last}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the daemon's status satisfies `condition`; returns that status.
    pub async fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        condition: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let status = self.status();
            if condition(&status) {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}: {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn jobs(&self) -> Vec<Value> {
        let output = self.ferry(&["jobs", "--json"]);
        assert!(
            output.status.success(),
            "jobs failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }
}

/// A running daemon; killed if still running when dropped.
pub struct Daemon {
    pub child: Child,
    /// What it logged so far (stderr), a line each.
    pub logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Daemon {
    /// True when a log line so far contains `needle`.
    /// The last `lines` lines the daemon logged.
    pub fn tail(&self, lines: usize) -> String {
        let logs = self.logs.lock().unwrap();
        logs[logs.len().saturating_sub(lines)..].join("\n")
    }

    pub fn logged(&self, needle: &str) -> bool {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.contains(needle))
    }

    /// Sends SIGTERM and waits for the exit code.
    pub async fn terminate(mut self) -> Option<i32> {
        // SAFETY: kill with a pid we own and a valid signal number.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let mut child = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap());
        tokio::task::spawn_blocking(move || child.wait().unwrap().code())
            .await
            .unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `path` exists with the same bytes as `expected`.
pub async fn wait_for_copy(expected: &Path, path: &Path, timeout: Duration) {
    let wanted = std::fs::read(expected).unwrap();
    let what = format!("{} to arrive as {}", expected.display(), path.display());
    wait_until(&what, timeout, || {
        std::fs::read(path).is_ok_and(|bytes| bytes == wanted)
    })
    .await;
}
