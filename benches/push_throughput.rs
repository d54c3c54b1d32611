//! Push throughput against its ceiling, on loopback.
//!
//! Pushes one file (2 GiB by default) with `ferry push` at default settings to a receiver
//! running in this process, and, as the ceiling, sends the same file as a single part with
//! `curl -T` to the same receiver. Alternates the two for a few rounds and reports the best
//! round of each: MiB/s, their ratio, and the push's peak RSS (its VmHWM, sampled every 10 ms).
//!
//! Run: `cargo bench --bench push_throughput` (needs `curl`). Environment knobs:
//! `FERRY_BENCH_SIZE` (bytes, default 2 GiB), `FERRY_BENCH_ROUNDS` (default 2),
//! `FERRY_BENCH_DIR` (scratch folder, default the system temp dir).

#[path = "support/files.rs"]
mod files;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry::protocol::{InitRequest, InitResponse};
use ferry::server::ServeConfig;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "bench-token";
const MIB: f64 = 1024.0 * 1024.0;

struct Run {
    seconds: f64,
    peak_rss_kib: Option<u64>,
}

fn main() {
    // The in-process receiver's log (one line per completed upload, with its assembly time).
    ferry::telemetry::init("info", ferry::config::LogFormat::Text);
    let size: u64 = env_or("FERRY_BENCH_SIZE", 2 * 1024 * 1024 * 1024);
    let rounds: u32 = env_or("FERRY_BENCH_ROUNDS", 2);
    let scratch = std::env::var_os("FERRY_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(scratch).expect("scratch folder");
    let file = dir.path().join("bench.bin");
    eprintln!(
        "writing {} MiB of random data to {}",
        size as f64 / MIB,
        file.display()
    );
    files::random_file(&file, size, 42);
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let storage = dir.path().join("storage");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let config = ServeConfig::new(storage.clone(), TOKEN.into());
    let server = runtime.spawn(ferry::server::serve(listener, config, shutdown.clone()));

    let mut ferry_runs = Vec::new();
    let mut curl_runs = Vec::new();
    for round in 1..=rounds {
        let ferry = push(
            &file,
            &url,
            &token_file,
            &dir.path().join(format!("data-{round}")),
        );
        eprintln!("round {round}: ferry push {:.2}s", ferry.seconds);
        clear_storage(&storage);
        let curl = runtime.block_on(curl_single_part(&file, &url, size));
        eprintln!("round {round}: curl -T {:.2}s", curl.seconds);
        clear_storage(&storage);
        ferry_runs.push(ferry);
        curl_runs.push(curl);
    }
    shutdown.cancel();
    runtime.block_on(server).unwrap().unwrap();

    let best = |runs: &[Run]| runs.iter().map(|r| r.seconds).fold(f64::INFINITY, f64::min);
    let (ferry_seconds, curl_seconds) = (best(&ferry_runs), best(&curl_runs));
    let ferry_mbps = size as f64 / MIB / ferry_seconds;
    let curl_mbps = size as f64 / MIB / curl_seconds;
    let peak_rss_mib = ferry_runs
        .iter()
        .filter_map(|r| r.peak_rss_kib)
        .max()
        .unwrap_or(0) as f64
        / 1024.0;
    let ratio = ferry_mbps / curl_mbps;
    let report = json!({
        "benchmark": "push_throughput",
        "size_bytes": size,
        "rounds": rounds,
        "ferry_push_mib_per_s": round2(ferry_mbps),
        "curl_single_part_mib_per_s": round2(curl_mbps),
        "ratio": round2(ratio),
        "ferry_peak_rss_mib": round2(peak_rss_mib),
        "ferry_seconds": ferry_runs.iter().map(|r| round2(r.seconds)).collect::<Vec<_>>(),
        "curl_seconds": curl_runs.iter().map(|r| round2(r.seconds)).collect::<Vec<_>>(),
        "ferry_peak_rss_mib_per_round": ferry_runs
            .iter()
            .map(|r| round2(r.peak_rss_kib.unwrap_or(0) as f64 / 1024.0))
            .collect::<Vec<_>>(),
    });
    println!("{report}");
    println!();
    println!("| what (best of {rounds})              | MiB/s   | seconds |");
    println!("|-------------------------------|---------|---------|");
    println!("| ferry push, defaults          | {ferry_mbps:7.1} | {ferry_seconds:7.2} |");
    println!("| curl -T, one part (ceiling)   | {curl_mbps:7.1} | {curl_seconds:7.2} |");
    println!("| ratio ferry / curl            | {ratio:7.2} |         |");
    println!("| ferry peak RSS (MiB)          | {peak_rss_mib:7.1} |         |");
}

/// Runs `ferry push` at defaults and measures wall time and peak RSS.
fn push(file: &Path, url: &str, token_file: &Path, data_dir: &Path) -> Run {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("push")
        .arg(file)
        .args(["--url", url])
        .arg("--token-file")
        .arg(token_file)
        .arg("--data-dir")
        .arg(data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ferry push");
    // The child's own high-water mark (VmHWM belongs to the memory map made at exec). The
    // rusage of wait4 would not do: Linux folds the parent's peak, from before the exec, into
    // the child's ru_maxrss.
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_rss_kib = 0;
    let status = loop {
        if let Some(kib) = std::fs::read_to_string(&status_path)
            .ok()
            .as_deref()
            .and_then(vm_hwm_kib)
        {
            peak_rss_kib = peak_rss_kib.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let seconds = started.elapsed().as_secs_f64();
    assert!(status.success(), "ferry push failed: {status}");
    Run {
        seconds,
        peak_rss_kib: Some(peak_rss_kib),
    }
}

/// The `VmHWM:` line of a /proc status file, in KiB.
fn vm_hwm_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Opens a session and PUTs the whole file as part 1 with curl.
async fn curl_single_part(file: &Path, url: &str, size: u64) -> Run {
    ferry::upload::native::install_crypto_provider();
    let client = reqwest::Client::new();
    let init: InitResponse = client
        .post(format!("{url}/v1/uploads/chunked/init"))
        .bearer_auth(TOKEN)
        .json(&InitRequest {
            filename: "curl.bin".into(),
            total_size: size,
            workspace_id: "default".into(),
            mime_type: None,
            metadata: Default::default(),
            sha256: None,
            mtime: None,
        })
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut curl = Command::new("curl");
    curl.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-T"])
        .arg(file)
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .args([
            "-H",
            "Fastio-Part-Number: 1",
            "-H",
            "Content-Type: application/octet-stream",
        ])
        .arg(format!("{url}/v1/uploads/chunked/{}/parts", init.upload_id));
    let started = Instant::now();
    // curl runs on a blocking thread so the receiver keeps both runtime workers.
    let output = tokio::task::spawn_blocking(move || curl.output())
        .await
        .unwrap()
        .expect("curl must be installed to run this benchmark");
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "200",
        "curl upload failed"
    );
    Run {
        seconds,
        peak_rss_kib: None,
    }
}

fn clear_storage(storage: &Path) {
    for entry in std::fs::read_dir(storage).into_iter().flatten().flatten() {
        if entry.file_name() != ".ferry" {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let sessions = storage.join(".ferry/sessions");
    let _ = std::fs::remove_dir_all(&sessions);
    let _ = std::fs::create_dir_all(&sessions);
    // Let the kernel settle writeback between runs, so one run's dirty pages do not slow the
    // next.
    unsafe { libc::sync() };
    std::thread::sleep(Duration::from_millis(500));
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}
