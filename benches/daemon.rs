//! The daemon under load, on loopback, with the real release binary and a receiver in this
//! process.
//!
//! (a) `small`: FERRY_BENCH_FILES (10,000) files of 4 KiB dropped at once: seconds until all are
//!     done, files/s, and p50/p99 latency from a file's close to its publication on the receiver
//!     (the rename that publishes it sets its ctime). Baseline in the same run: `ferry push` of
//!     the same count of files, one process per 100 files.
//! (b) `large`: peak RSS of the daemon (VmHWM, sampled every 10 ms) while it uploads one file of
//!     FERRY_BENCH_LARGE bytes (4 GiB), against the RSS of the same daemon idle.
//! (c) `reconcile`: start-up of a daemon over a tree of FERRY_BENCH_TREE (100,000) files that
//!     are all in its upload index already: seconds until the scan is done and nothing was
//!     queued, and peak RSS; baseline: the same daemon over an empty tree.
//!
//! Run: `cargo bench --bench daemon`; FERRY_BENCH_SCENARIOS=small,large,reconcile picks some;
//! FERRY_BENCH_TRANSFERS sets the daemon's `transfers` (default: the daemon's own default);
//! FERRY_BENCH_RECEIVER_DIR puts the receiver's storage in that folder (e.g. /dev/shm), so that
//! the stand-in remote's own disk work does not weigh on the daemon under test (on a 2-core
//! machine, the receiver's ext4 inode churn for 10,000 small files costs more CPU than the daemon).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry::control::{self, Command as ControlCommand, Reply};
use ferry::queue::{Candidate, Fingerprint, Finish, Store};
use ferry::server::ServeConfig;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "bench-token";

fn main() {
    let scenarios =
        std::env::var("FERRY_BENCH_SCENARIOS").unwrap_or_else(|_| "small,large,reconcile".into());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut results = serde_json::Map::new();
    let mut table = Vec::new();
    for scenario in scenarios.split(',') {
        let dir = tempfile::tempdir().unwrap();
        let (result, rows) = match scenario {
            "small" => runtime.block_on(small(dir.path())),
            "large" => runtime.block_on(large(dir.path())),
            "reconcile" => runtime.block_on(reconcile(dir.path())),
            other => panic!("unknown scenario {other}"),
        };
        if let Some(storage) = storage_dir(dir.path()).parent()
            && !storage.starts_with(dir.path())
        {
            let _ = std::fs::remove_dir_all(storage);
        }
        results.insert(scenario.into(), result);
        table.extend(rows);
    }
    println!("{}", serde_json::Value::Object(results));
    println!();
    println!("| scenario  | figure                              | value        |");
    println!("|-----------|-------------------------------------|--------------|");
    for (scenario, figure, value) in table {
        println!("| {scenario:<9} | {figure:<35} | {value:>12} |");
    }
}

type Rows = Vec<(&'static str, &'static str, String)>;

/// Where the receiver stores: `dir/storage`, or under FERRY_BENCH_RECEIVER_DIR.
fn storage_dir(dir: &Path) -> PathBuf {
    match std::env::var_os("FERRY_BENCH_RECEIVER_DIR") {
        Some(root) => {
            let name = dir.file_name().expect("temp dirs have a name");
            PathBuf::from(root).join(name).join("storage")
        }
        None => dir.join("storage"),
    }
}

/// A receiver in this process, storing in `storage_dir(dir)`.
async fn receiver(dir: &Path) -> (String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let config = ServeConfig::new(storage_dir(dir), TOKEN.into());
    tokio::spawn(ferry::server::serve(listener, config, shutdown.clone()));
    (url, shutdown)
}

/// Writes a daemon config for `dir/outbox` → `url` with default upload settings.
fn config(dir: &Path, url: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("outbox")).unwrap();
    std::fs::write(dir.join("token"), TOKEN).unwrap();
    let path = dir.join("ferry.toml");
    let transfers: usize = env_or("FERRY_BENCH_TRANSFERS", ferry::config::DEFAULT_TRANSFERS);
    let text = format!(
        "[daemon]\ndata_dir = \"data\"\nsocket = \"ferry.sock\"\ntransfers = {transfers}\n\n[remotes.main]\nkind = \"native\"\nurl = \"{url}\"\n\
         workspace_id = \"default\"\ntoken_file = \"token\"\n\n[[watch]]\npath = \"outbox\"\nremote = \"main\"\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

struct Daemon {
    child: Child,
    socket: PathBuf,
    peak_rss_kib: u64,
}

impl Daemon {
    async fn start(dir: &Path, config: &Path) -> Daemon {
        let child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut daemon = Daemon {
            child,
            socket: dir.join("ferry.sock"),
            peak_rss_kib: 0,
        };
        while daemon.status().await.is_none() {
            daemon.sample();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        daemon
    }

    async fn status(&self) -> Option<control::StatusReply> {
        match control::call(&self.socket, ControlCommand::Status).await {
            Ok(Reply::Status(status)) => Some(*status),
            _ => None,
        }
    }

    /// Reads the daemon's VmHWM (its own high-water mark since exec).
    fn sample(&mut self) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let kib = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        self.peak_rss_kib = self.peak_rss_kib.max(kib);
    }

    /// Polls until `done` jobs are done and none queued or active; samples RSS meanwhile.
    async fn wait_done(&mut self, done: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            self.sample();
            if let Some(status) = self.status().await
                && status.queue.done >= done
                && status.queue.queued == 0
                && status.queue.active == 0
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not finish within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn stop(mut self) {
        // SAFETY: kill with a pid we own and a valid signal number.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// (a) many small files.
async fn small(dir: &Path) -> (serde_json::Value, Rows) {
    let files: usize = env_or("FERRY_BENCH_FILES", 10_000);
    let (url, shutdown) = receiver(dir).await;
    let config = config(dir, &url);
    let mut daemon = Daemon::start(dir, &config).await;
    let outbox = std::fs::canonicalize(dir.join("outbox")).unwrap();
    let content = vec![7u8; 4096];
    let started = Instant::now();
    let mut closed = Vec::with_capacity(files);
    for index in 0..files {
        let path = outbox.join(format!("f{index:06}.bin"));
        std::fs::write(&path, &content).unwrap();
        closed.push(SystemTime::now());
    }
    daemon
        .wait_done(files as u64, Duration::from_secs(1800))
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let storage = storage_dir(dir).join("default");
    let mut latencies: Vec<f64> = (0..files)
        .map(|index| {
            let meta = std::fs::metadata(storage.join(format!("f{index:06}.bin"))).unwrap();
            let published =
                UNIX_EPOCH + Duration::new(meta.ctime() as u64, meta.ctime_nsec() as u32);
            published
                .duration_since(closed[index])
                .unwrap_or_default()
                .as_secs_f64()
                * 1000.0
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    let peak_rss_mib = daemon.peak_rss_kib as f64 / 1024.0;
    daemon.stop();

    // Baseline: the same files pushed with `ferry push`, 100 per process, one process at a time.
    let baseline_started = Instant::now();
    let names: Vec<PathBuf> = (0..files)
        .map(|i| outbox.join(format!("f{i:06}.bin")))
        .collect();
    for chunk in names.chunks(100) {
        let status = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("push")
            .args(chunk)
            .args(["--url", &url, "--workspace", "baseline", "--token-file"])
            .arg(dir.join("token"))
            .arg("--data-dir")
            .arg(dir.join("push-data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }
    let baseline_seconds = baseline_started.elapsed().as_secs_f64();
    shutdown.cancel();
    let rate = files as f64 / seconds;
    let baseline_rate = files as f64 / baseline_seconds;
    let result = json!({
        "files": files, "seconds": seconds, "files_per_s": rate, "latency_ms_p50": p50, "latency_ms_p99": p99,
        "baseline_push_files_per_s": baseline_rate, "ratio_to_push": rate / baseline_rate,
        "daemon_peak_rss_mib": peak_rss_mib,
    });
    let rows = vec![
        ("small", "files", files.to_string()),
        ("small", "seconds until all done", format!("{seconds:.2}")),
        ("small", "files/s", format!("{rate:.0}")),
        (
            "small",
            "latency p50 close→published (ms)",
            format!("{p50:.0}"),
        ),
        (
            "small",
            "latency p99 close→published (ms)",
            format!("{p99:.0}"),
        ),
        (
            "small",
            "baseline ferry push files/s",
            format!("{baseline_rate:.0}"),
        ),
        (
            "small",
            "ratio daemon / push",
            format!("{:.2}", rate / baseline_rate),
        ),
    ];
    (result, rows)
}

/// (b) one large file.
async fn large(dir: &Path) -> (serde_json::Value, Rows) {
    let size: u64 = env_or("FERRY_BENCH_LARGE", 4 << 30);
    let (url, shutdown) = receiver(dir).await;
    let config = config(dir, &url);
    let mut daemon = Daemon::start(dir, &config).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    daemon.sample();
    let idle_kib = daemon.peak_rss_kib;
    // Written beside the outbox, then moved in whole.
    let staged = dir.join("large.bin");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&staged).unwrap());
    let block: Vec<u8> = (0..1 << 20).map(|i| (i * 31 % 251) as u8).collect();
    for index in 0..size.div_ceil(1 << 20) {
        let length = (size - index * (1 << 20)).min(1 << 20) as usize;
        std::io::Write::write_all(&mut file, &block[..length]).unwrap();
    }
    drop(file);
    let started = Instant::now();
    std::fs::rename(&staged, dir.join("outbox/large.bin")).unwrap();
    daemon.wait_done(1, Duration::from_secs(1800)).await;
    let seconds = started.elapsed().as_secs_f64();
    let peak = daemon.peak_rss_kib as f64 / 1024.0;
    let idle = idle_kib as f64 / 1024.0;
    daemon.stop();
    shutdown.cancel();
    let rate = size as f64 / (1 << 20) as f64 / seconds;
    let result = json!({"size_bytes": size, "seconds": seconds, "mib_per_s": rate, "peak_rss_mib": peak, "idle_rss_mib": idle, "ratio_peak_to_idle": peak / idle});
    let rows = vec![
        ("large", "size (MiB)", format!("{}", size >> 20)),
        ("large", "seconds until done", format!("{seconds:.2}")),
        ("large", "MiB/s", format!("{rate:.0}")),
        ("large", "daemon peak RSS (MiB)", format!("{peak:.1}")),
        (
            "large",
            "daemon idle RSS (MiB), baseline",
            format!("{idle:.1}"),
        ),
    ];
    (result, rows)
}

/// (c) start-up reconcile of an uploaded tree.
async fn reconcile(dir: &Path) -> (serde_json::Value, Rows) {
    let files: usize = env_or("FERRY_BENCH_TREE", 100_000);
    let (url, shutdown) = receiver(dir).await;
    let config = config(dir, &url);
    let outbox = std::fs::canonicalize(dir.join("outbox")).unwrap();

    // Baseline: the daemon starting over an empty tree.
    let started = Instant::now();
    let mut empty = Daemon::start(dir, &config).await;
    let baseline_seconds = started.elapsed().as_secs_f64();
    empty.sample();
    let baseline_rss = empty.peak_rss_kib as f64 / 1024.0;
    empty.stop();

    // A tree of small files in folders of 1,000, recorded in the upload index as uploaded.
    let prepared = Instant::now();
    let mut candidates = Vec::with_capacity(files);
    for index in 0..files {
        let folder = outbox.join(format!("d{:03}", index / 1000));
        if index % 1000 == 0 {
            std::fs::create_dir_all(&folder).unwrap();
        }
        let path = folder.join(format!("f{index:06}"));
        std::fs::write(&path, index.to_le_bytes()).unwrap();
        let remote_path = path
            .strip_prefix(&outbox)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let fingerprint = Fingerprint::of(&std::fs::metadata(&path).unwrap());
        candidates.push(Candidate {
            path,
            watch_root: outbox.clone(),
            remote: "main".into(),
            remote_path,
            fingerprint,
        });
    }
    let store = Store::open(&dir.join("data/store")).unwrap().jobs();
    for chunk in candidates.chunks(10_000) {
        store.enqueue(chunk, ferry::queue::jobs::now_ms()).unwrap();
        let jobs = store.claim(u64::MAX, chunk.len()).unwrap();
        let fingerprints: std::collections::HashMap<&Path, Fingerprint> = chunk
            .iter()
            .map(|c| (c.path.as_path(), c.fingerprint))
            .collect();
        // Recorded as the daemon records outcomes: written together, then one flush.
        let done: Vec<_> = jobs
            .iter()
            .map(|job| {
                let fingerprint = fingerprints[job.path.as_path()];
                let sha256 = "00";
                (
                    job.id,
                    Finish::Done {
                        fingerprint,
                        sha256,
                    },
                )
            })
            .collect();
        store
            .write_outcomes(&done, ferry::queue::jobs::now_ms())
            .unwrap();
        store.flush().unwrap();
    }
    drop(store);
    let prepare_seconds = prepared.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut daemon = Daemon::start(dir, &config).await;
    // Reconciled: the start-up scan is over, nothing waits to settle, and every file the scan
    // found has been checked against the upload index (and none queued).
    loop {
        daemon.sample();
        let status = daemon.status().await.unwrap();
        assert_eq!(
            status.queue.queued + status.queue.active,
            0,
            "an uploaded file was queued again"
        );
        let intake = status.intake;
        if intake.scans >= 1 && intake.settling == 0 && intake.checked == files as u64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "not reconciled: {intake:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let peak = daemon.peak_rss_kib as f64 / 1024.0;
    daemon.stop();
    shutdown.cancel();
    let result = json!({
        "files": files, "seconds": seconds, "peak_rss_mib": peak, "prepare_seconds": prepare_seconds,
        "baseline_empty_tree_seconds": baseline_seconds, "baseline_empty_tree_rss_mib": baseline_rss,
    });
    let rows = vec![
        ("reconcile", "files in the tree", files.to_string()),
        (
            "reconcile",
            "seconds until reconciled",
            format!("{seconds:.2}"),
        ),
        ("reconcile", "peak RSS (MiB)", format!("{peak:.1}")),
        (
            "reconcile",
            "baseline: empty tree, seconds",
            format!("{baseline_seconds:.2}"),
        ),
        (
            "reconcile",
            "baseline: empty tree, RSS (MiB)",
            format!("{baseline_rss:.1}"),
        ),
    ];
    (result, rows)
}
