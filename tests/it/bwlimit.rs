//! Bandwidth limits with the real binary: `ferry push --bwlimit` keeps a transfer at the rate
//! asked for, measured by the clock, and what arrives is byte-identical.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Receiver, ferry_bin, random_file, token_file};

const MIB: u64 = 1024 * 1024;

/// 50 MiB at `--bwlimit 5M` (rclone's unit: MiB/s) takes 10 s, within 10%, though the parts
/// go out in parallel and the link itself is loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_limited_to_5_mib_per_second_takes_10_seconds_for_50_mib() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("limited.bin");
    random_file(&file, 50 * MIB, 7);
    let started = Instant::now();
    let output = Command::new(ferry_bin())
        .arg("push")
        .arg(&file)
        .args(["--url", &receiver.url, "--bwlimit", "5M", "--json"])
        .args(["--chunk-size", "8MiB", "--parallel-parts", "4"])
        .arg("--token-file")
        .arg(token_file(dir.path()))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "push failed: {log}");
    assert!(
        (Duration::from_secs(9)..=Duration::from_secs(11)).contains(&elapsed),
        "50 MiB at 5 MiB/s took {elapsed:?}"
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["files"][0]["parts"], 7, "parallel parts: {summary}");
    assert_eq!(
        std::fs::read(receiver.file("limited.bin")).unwrap(),
        std::fs::read(&file).unwrap()
    );
}
