//! `/metrics` with the real daemon: scraped over HTTP on loopback, every line checked against
//! the exposition format, and the counters seen to move as files upload.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::daemon::Setup;
use crate::support::fault_proxy::{Fault, FaultProxy};
use crate::support::{Receiver, client, free_port, random_file};

const ARRIVAL: Duration = Duration::from_secs(30);

/// Samples of an exposition by name and labels (`name{a="b"}`), each line checked: a comment
/// (`# HELP`, `# TYPE`, `# UNIT`), the closing `# EOF`, or a sample with a number.
pub fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.last(),
        Some(&"# EOF"),
        "the exposition ends with # EOF"
    );
    for line in &lines[..lines.len() - 1] {
        if let Some(comment) = line.strip_prefix("# ") {
            let kind = comment.split(' ').next().unwrap();
            assert!(
                ["HELP", "TYPE", "UNIT"].contains(&kind),
                "bad comment: {line}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name: {line}"
        );
        if name_end < series.len() {
            let labels = &series[name_end..];
            assert!(
                labels.starts_with('{') && labels.ends_with('}'),
                "bad labels: {line}"
            );
            for pair in labels[1..labels.len() - 1].split(',') {
                let (key, quoted) = pair.split_once('=').unwrap_or_else(|| panic!("{line}"));
                assert!(
                    key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line}"
                );
                assert!(quoted.starts_with('"') && quoted.ends_with('"'), "{line}");
            }
        }
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        samples.insert(series.to_string(), value);
    }
    samples
}

/// Scrapes until `condition` holds of the samples, for at most `timeout`; the samples that
/// met it. For counters a client moves only after the server it talks to has counted.
pub async fn scrape_until(
    address: &str,
    what: &str,
    timeout: std::time::Duration,
    condition: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let samples = scrape(address).await;
        if condition(&samples) {
            return samples;
        }
        let now = std::time::Instant::now();
        assert!(now < deadline, "timed out waiting for {what}: {samples:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

pub async fn scrape(address: &str) -> BTreeMap<String, f64> {
    let response = client()
        .get(format!("http://{address}/metrics"))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    parse(&response.text().await.unwrap())
}

/// Makes the daemon of `setup` serve `/metrics`; the address it will listen on.
pub fn serve_metrics(setup: &Setup) -> String {
    let address = format!("127.0.0.1:{}", free_port());
    let config = std::fs::read_to_string(&setup.config).unwrap();
    let config = config.replace(
        "[daemon]\n",
        &format!("[daemon]\nmetrics_listen = \"{address}\"\n"),
    );
    std::fs::write(&setup.config, config).unwrap();
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_valid_exposition_and_counters_move_as_files_upload() {
    let receiver = Receiver::start().await;
    let setup = Setup::new(&receiver.url, "", "");
    let address = serve_metrics(&setup);
    let _daemon = setup.start().await;

    let before = scrape(&address).await;
    assert_eq!(before["ferry_jobs{state=\"done\"}"], 0.0, "{before:?}");
    assert_eq!(before["ferry_part_size_bytes{remote=\"main\"}"], 1048576.0);
    assert!(!before.contains_key("ferry_uploaded_files_total{remote=\"main\"}"));

    std::fs::write(setup.outbox.join("a.txt"), vec![b'a'; 1000]).unwrap();
    std::fs::write(setup.outbox.join("b.txt"), vec![b'b'; 2345]).unwrap();
    setup.wait_idle_with_done(2, ARRIVAL).await;
    let after = scrape(&address).await;
    assert_eq!(after["ferry_jobs{state=\"done\"}"], 2.0, "{after:?}");
    assert_eq!(after["ferry_jobs{state=\"queued\"}"], 0.0);
    assert_eq!(after["ferry_uploaded_files_total{remote=\"main\"}"], 2.0);
    assert_eq!(after["ferry_uploaded_bytes_total{remote=\"main\"}"], 3345.0);
    assert_eq!(after["ferry_oldest_pending_age_seconds"], 0.0);
    assert_eq!(after["ferry_watches_unhealthy"], 0.0);
    assert!(after["ferry_watch_scans_total"] >= 1.0, "the scan at start");
    assert_eq!(after["ferry_watch_event_overflows_total"], 0.0);
    assert_eq!(after["ferry_hook_deliveries{state=\"pending\"}"], 0.0);
    let retried = "ferry_part_attempts_failed_total{remote=\"main\"}";
    assert_eq!(
        after[retried], 0.0,
        "a clean loopback upload retries nothing"
    );
    assert!(
        after["ferry_store_flushes_total"] > before["ferry_store_flushes_total"],
        "queueing and recording the uploads flushed the store"
    );
}

/// One part attempt cut mid-body by the proxy: the daemon retries it, `ferry status` shows it
/// while the upload goes on, and the file arrives, with exactly that attempt counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_attempt_that_failed_is_counted() {
    let receiver = Receiver::start().await;
    let proxy = FaultProxy::start(receiver.address).await;
    let cut = AtomicBool::new(false);
    proxy.set_plan(move |head, _| {
        let first_of_part_2 = head.part_number == Some(2) && !cut.swap(true, Ordering::SeqCst);
        first_of_part_2.then_some(Fault::CutMidBody)
    });
    let setup = Setup::new(&proxy.url, "", "");
    let address = serve_metrics(&setup);
    let _daemon = setup.start().await;

    // Slow enough that the upload is still going when the cut attempt has failed.
    proxy.set_throttle(1024 * 1024);
    let local = setup.outbox.join("cut.bin");
    random_file(&local, 8 * 1024 * 1024, 5);
    let retried = |status: &serde_json::Value| status["active"][0]["part_attempts_failed"] == 1;
    setup
        .wait_status("the retried attempt in status", ARRIVAL, retried)
        .await;
    let text = String::from_utf8(setup.ferry(&["status"]).stdout).unwrap();
    assert!(text.contains("1 part attempts retried"), "{text}");
    proxy.set_throttle(0);
    setup.wait_idle_with_done(1, ARRIVAL).await;
    let after = scrape(&address).await;
    let failed = after["ferry_part_attempts_failed_total{remote=\"main\"}"];
    assert_eq!(failed, 1.0, "the cut attempt, and only it: {after:?}");
    crate::support::assert_same_content(&local, &receiver.file("cut.bin"));
}
