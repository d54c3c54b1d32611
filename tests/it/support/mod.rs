//! Helpers shared by the integration tests: a real receiver started in-process on
//! `127.0.0.1:0` or as a real `ferry serve` process, the real engine, deadline waits, data files
//! and content checks.

pub use files::random_file;
pub use ports::free_port;

pub mod api;
pub mod ceph;
pub mod daemon;
pub mod endless;
pub mod fault_proxy;
#[path = "../../../benches/support/files.rs"]
mod files;
pub mod garage;
#[path = "../../../benches/support/netem.rs"]
#[allow(dead_code)] // shared with the benches: not every user uses all of it
pub mod netem;
#[path = "../../../benches/support/ports.rs"]
mod ports;
#[path = "../../../benches/support/proc.rs"]
pub mod proc;
pub mod s3;
pub mod tls;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry::queue::Store;
use ferry::server::ServeConfig;
use ferry::upload::{
    Backend, NativeBackend, NativeConfig, Progress, UploadError, UploadJob, UploadReport,
    UploadSettings, Uploader,
};
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "test-token-0123456789";
pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;

/// The real `ferry` binary cargo built for these tests.
pub fn ferry_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ferry")
}

/// An HTTP client for the test's own requests (reading objects back, say).
pub fn client() -> reqwest::Client {
    ferry::upload::native::install_crypto_provider();
    reqwest::Client::new()
}

/// Polls `condition` until it holds or `timeout` passes; panics naming `what` on timeout.
pub async fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `ferry serve` running inside the test process.
pub struct Receiver {
    pub url: String,
    pub address: SocketAddr,
    pub storage: PathBuf,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dir: Option<tempfile::TempDir>,
}

impl Receiver {
    /// Starts a receiver with default limits in a fresh temp folder.
    pub async fn start() -> Receiver {
        Self::start_with(|_| {}).await
    }

    /// Starts a receiver, letting the test adjust its configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut ServeConfig)) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("storage");
        let mut receiver = Self::start_at(&storage, "127.0.0.1:0".parse().unwrap(), adjust).await;
        receiver._dir = Some(dir);
        receiver
    }

    /// Starts a receiver over an existing storage folder on a given address.
    pub async fn start_at(
        storage: &Path,
        address: SocketAddr,
        adjust: impl FnOnce(&mut ServeConfig),
    ) -> Receiver {
        let mut config = ServeConfig::new(storage.to_path_buf(), TOKEN.into());
        adjust(&mut config);
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        let address = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(ferry::server::serve(listener, config, shutdown.clone()));
        let task = tokio::spawn(async move {
            task.await
                .unwrap()
                .expect("the receiver runs until shut down");
        });
        // Ready once it answers: `serve` opens the storage folder before it routes requests.
        ferry::upload::native::install_crypto_provider();
        let health = format!("http://{address}/v1/health");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !reqwest::get(&health)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(Instant::now() < deadline, "the receiver did not come up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Receiver {
            url: format!("http://{address}"),
            address,
            storage: storage.to_path_buf(),
            shutdown,
            task,
            _dir: None,
        }
    }

    /// Stops the receiver and waits until it no longer listens.
    pub async fn stop(self) -> Option<tempfile::TempDir> {
        self.shutdown.cancel();
        self.task.await.unwrap();
        self._dir
    }

    /// Where a completed file of the `default` workspace lands.
    pub fn file(&self, remote_path: &str) -> PathBuf {
        self.storage.join("default").join(remote_path)
    }

    /// Parts currently stored across all sessions.
    pub fn stored_parts(&self) -> usize {
        stored_parts(&self.storage)
    }
}

/// Runs `command` (its output discarded) and returns its exit code, or `None` if it still ran
/// after `limit` (it is then killed): for a command that must refuse to start.
pub fn exit_within(mut command: Command, limit: Duration) -> Option<i32> {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Parts stored under a receiver's storage folder, across all sessions.
pub fn stored_parts(storage: &Path) -> usize {
    let Ok(sessions) = std::fs::read_dir(storage.join(".ferry/sessions")) else {
        return 0;
    };
    sessions
        .filter_map(Result::ok)
        .filter_map(|session| std::fs::read_dir(session.path().join("parts")).ok())
        .map(|parts| parts.count())
        .sum()
}

/// Upload sessions known to a receiver's storage folder.
pub fn session_count(storage: &Path) -> usize {
    std::fs::read_dir(storage.join(".ferry/sessions"))
        .map(|entries| entries.count())
        .unwrap_or(0)
}

/// The real engine with its own store, aimed at `url`.
pub struct Engine {
    pub uploader: Uploader,
    _store_dir: tempfile::TempDir,
}

impl Engine {
    pub fn new(url: &str, settings: UploadSettings) -> Engine {
        Self::with_token(url, TOKEN, settings)
    }

    pub fn with_token(url: &str, token: &str, settings: UploadSettings) -> Engine {
        let backend = NativeBackend::new(NativeConfig {
            url: url.into(),
            workspace_id: "default".into(),
            token: token.into(),
            ca_cert: None,
        })
        .unwrap();
        Self::with_backend(Arc::new(backend), settings)
    }

    /// The engine over any backend (S3, say).
    pub fn with_backend(backend: Arc<dyn Backend>, settings: UploadSettings) -> Engine {
        let store_dir = tempfile::tempdir().unwrap();
        let store = Store::open(store_dir.path()).unwrap();
        Engine {
            uploader: Uploader::new(backend, store.sessions(), settings),
            _store_dir: store_dir,
        }
    }

    pub async fn upload(&self, local: &Path, remote: &str) -> Result<UploadReport, UploadError> {
        self.upload_counting(local, remote).await.0
    }

    /// Uploads `local` and asserts that no part attempt failed on the way: the servers the
    /// tests start are on loopback and refuse nothing a correct client sends, so a retry there
    /// is a bug that retrying would hide (a wrong checksum, say).
    pub async fn upload_cleanly(&self, local: &Path, remote: &str) -> UploadReport {
        let (report, failed) = self.upload_counting(local, remote).await;
        assert_eq!(failed, 0, "{}: part attempts failed", local.display());
        report.unwrap()
    }

    /// The upload's outcome, and how many part attempts failed on the way.
    async fn upload_counting(
        &self,
        local: &Path,
        remote: &str,
    ) -> (Result<UploadReport, UploadError>, u64) {
        let job = UploadJob {
            local_path: local.to_path_buf(),
            remote_path: remote.into(),
            mime_type: None,
            metadata: Default::default(),
            reach: ferry::upload::Reach::AsGiven,
            expected: None,
        };
        let progress = Arc::new(Progress::default());
        let outcome = self.uploader.upload(&job, progress.clone()).await;
        (outcome, progress.failed_attempts())
    }
}

/// Settings that retry quickly, for tests that inject faults.
pub fn fast_retry_settings() -> UploadSettings {
    UploadSettings {
        retry: ferry::upload::RetryPolicy {
            max_attempts: 8,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_millis(500),
        },
        stall_timeout: Duration::from_secs(1),
        ..UploadSettings::default()
    }
}

/// Asserts two files hold the same bytes, comparing in chunks (never whole files in memory).
pub fn assert_same_content(expected: &Path, actual: &Path) {
    let open = |path: &Path| {
        std::fs::File::open(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
    };
    let (mut a, mut b) = (open(expected), open(actual));
    assert_eq!(
        a.metadata().unwrap().len(),
        b.metadata().unwrap().len(),
        "sizes of {} and {} differ",
        expected.display(),
        actual.display()
    );
    let (mut left, mut right) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    let mut offset = 0u64;
    loop {
        let read = read_full(&mut a, &mut left);
        assert_eq!(
            read,
            read_full(&mut b, &mut right),
            "short read at {offset}"
        );
        if read == 0 {
            return;
        }
        assert!(
            left[..read] == right[..read],
            "{} differs from {} within bytes {offset}..{}",
            actual.display(),
            expected.display(),
            offset + read as u64
        );
        offset += read as u64;
    }
}

fn read_full(reader: &mut impl Read, buffer: &mut [u8]) -> usize {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]).unwrap() {
            0 => break,
            n => filled += n,
        }
    }
    filled
}

/// A `ferry serve` child process; killed when dropped.
pub struct ServeProcess {
    pub child: Child,
    pub address: SocketAddr,
}

impl ServeProcess {
    /// Spawns `ferry serve` and waits for its "listening" line.
    pub fn spawn(storage: &Path, listen: &str, token_file: &Path) -> ServeProcess {
        Self::spawn_with(storage, listen, token_file, &[])
    }

    /// `spawn`, with more flags.
    pub fn spawn_with(
        storage: &Path,
        listen: &str,
        token_file: &Path,
        flags: &[&str],
    ) -> ServeProcess {
        let mut child = Command::new(ferry_bin())
            .args(["serve", "--listen", listen, "--storage"])
            .arg(storage)
            .arg("--token-file")
            .arg(token_file)
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .rsplit(' ')
            .next()
            .filter(|url| url.starts_with("http://"))
            .unwrap_or_else(|| panic!("unexpected first line from ferry serve: {line:?}"))
            .to_string();
        let address = url.trim_start_matches("http://").parse().unwrap();
        ServeProcess { child, address }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes the test token to a file and returns its path.
pub fn token_file(dir: &Path) -> PathBuf {
    let path = dir.join("token");
    std::fs::write(&path, TOKEN).unwrap();
    path
}

/// A tmpfs of `size` mounted at `path` for the test's life (the tests run as root).
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs (the tests run as root)");
        Tmpfs(path.to_path_buf())
    }

    pub fn free(&self) -> u64 {
        let name = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
        let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: a valid path and a buffer of the right type.
        assert_eq!(
            unsafe { libc::statvfs(name.as_ptr(), stat.as_mut_ptr()) },
            0
        );
        // SAFETY: statvfs returned 0 and filled it.
        let stat = unsafe { stat.assume_init() };
        stat.f_bavail * stat.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
