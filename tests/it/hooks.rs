//! Hooks with the real daemon: a program and a webhook told of each upload once, with the
//! documented document and a valid signature (checked here with our own HMAC, not Ferry's);
//! a webhook that is down gets every delivery once it is back, even across a kill -9; a
//! permanent failure is told; an `after_upload` that waits for its hook keeps the file until
//! the hook succeeded; a webhook whose address redirects is not "delivered" as a GET.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{KeyInit, Mac};
use serde_json::Value;
use sha2::Digest;

use crate::support::daemon::{Daemon, Setup};
use crate::support::fault_proxy::{Fault, FaultProxy};
use crate::support::{Receiver, wait_until};

const ARRIVAL: Duration = Duration::from_secs(30);
const SECRET: &str = "hook-secret-for-tests";

/// A webhook endpoint on loopback: it checks each delivery's signature and keeps its document;
/// while `down` it answers 503 and keeps nothing. Each answer takes `slow`. A GET of it is
/// answered 200 and counted, as a web page's would be.
struct Webhook {
    url: String,
    state: Arc<Endpoint>,
}

#[derive(Default)]
struct Endpoint {
    received: Mutex<Vec<Value>>,
    refused: AtomicUsize,
    gets: AtomicUsize,
    down: AtomicBool,
    /// How long an answer takes.
    slow: Duration,
    /// Refusals under way, and the most there were at once.
    refusing: AtomicUsize,
    most_refusing: AtomicUsize,
}

impl std::ops::Deref for Webhook {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.state
    }
}

impl Webhook {
    async fn start(down: bool) -> Webhook {
        Self::start_slow(down, Duration::ZERO).await
    }

    async fn start_slow(down: bool, slow: Duration) -> Webhook {
        let state = Arc::new(Endpoint {
            down: AtomicBool::new(down),
            slow,
            ..Endpoint::default()
        });
        let router = axum::Router::new()
            .route("/hook", axum::routing::post(take).get(looked_at))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Webhook { url, state }
    }

    fn documents(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }
}

async fn looked_at(
    axum::extract::State(endpoint): axum::extract::State<Arc<Endpoint>>,
) -> &'static str {
    endpoint.gets.fetch_add(1, Ordering::SeqCst);
    "a page"
}

async fn take(
    axum::extract::State(endpoint): axum::extract::State<Arc<Endpoint>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    if endpoint.down.load(Ordering::SeqCst) {
        let now = endpoint.refusing.fetch_add(1, Ordering::SeqCst) + 1;
        endpoint.most_refusing.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(endpoint.slow).await;
        endpoint.refusing.fetch_sub(1, Ordering::SeqCst);
        endpoint.refused.fetch_add(1, Ordering::SeqCst);
        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
    }
    let signature = headers["x-ferry-signature"].to_str().unwrap();
    let (time, mac) = signature.split_once(",v1=").unwrap();
    let time = time.strip_prefix("t=").unwrap();
    let mut expected = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    expected.update(format!("{time}.").as_bytes());
    expected.update(&body);
    expected
        .verify_slice(&hex::decode(mac).unwrap())
        .expect("a valid signature");
    let age = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .abs_diff(time.parse().unwrap());
    assert!(age < 60, "a fresh timestamp");
    tokio::time::sleep(endpoint.slow).await;
    let mut document: Value = serde_json::from_slice(&body).unwrap();
    document["x_event_header"] = headers["x-ferry-event"].to_str().unwrap().into();
    endpoint.received.lock().unwrap().push(document);
    axum::http::StatusCode::NO_CONTENT
}

/// A daemon uploading to a receiver and telling `on_uploaded` to a webhook that is down (503)
/// for now; the receiver and the folder holding the hook's secret live as long as they do.
async fn daemon_with_a_webhook_down() -> (Receiver, Webhook, tempfile::TempDir, Setup, Daemon) {
    let receiver = Receiver::start().await;
    let webhook = Webhook::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let hook = format!("on_uploaded = {}", webhook_hook(dir.path(), &webhook.url));
    let setup = Setup::new(&receiver.url, &hook, "");
    let daemon = setup.start().await;
    (receiver, webhook, dir, setup, daemon)
}

fn webhook_hook(setup_dir: &std::path::Path, url: &str) -> String {
    let secret = setup_dir.join("hook.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    format!(
        "{{ webhook = {{ url = \"{url}\", secret_file = \"{}\" }} }}",
        secret.display()
    )
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The fields every document carries, for a file uploaded whole.
fn assert_uploaded_document(document: &Value, path: &std::path::Path, content: &[u8]) {
    assert_eq!(document["event"], "uploaded", "{document}");
    assert_eq!(document["path"], path.to_str().unwrap(), "{document}");
    assert_eq!(document["remote"], "main", "{document}");
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(
        document["remote_path"].as_str().unwrap().ends_with(name),
        "{document}"
    );
    assert_eq!(document["size"], content.len(), "{document}");
    assert_eq!(document["sha256"], sha256_hex(content), "{document}");
    assert_eq!(document["metadata"]["project"], "atlas", "{document}");
    assert!(
        document["job_id"].is_u64() && document["attempts"] == 1,
        "{document}"
    );
    let (started, finished) = (&document["started_ms"], &document["finished_ms"]);
    assert!(
        started.as_u64().unwrap() <= finished.as_u64().unwrap(),
        "{document}"
    );
    assert!(document["error"].is_null(), "{document}");
}

/// Two watches: one tells a program, one a webhook; each upload is told once, with the
/// documented document on the program's input and in the webhook's signed body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_uploaded_runs_a_program_and_calls_a_webhook_once_per_upload() {
    let receiver = Receiver::start().await;
    let webhook = Webhook::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    let told = dir.path().join("told");
    std::fs::create_dir_all(&told).unwrap();
    let script = "cat > \"$0\" && echo \"$1 $2\" > \"$0.args\"";
    let exec = format!(
        "on_uploaded = {{ exec = [\"/bin/sh\", \"-c\", {script:?}, \"{}/{{remote_path}}.json\", \"{{size}}\", \"{{sha256}}\"] }}\nmetadata = {{ project = \"atlas\" }}",
        told.display()
    );
    let second = format!(
        "[[watch]]\npath = \"outbox2\"\nremote = \"main\"\nprefix = \"second/\"\nsettle = \"300ms\"\nmetadata = {{ project = \"atlas\" }}\non_uploaded = {}\n",
        webhook_hook(dir.path(), &webhook.url)
    );
    let setup = Setup::new(&receiver.url, &exec, &second);
    let second_box = setup.config.parent().unwrap().join("outbox2");
    std::fs::create_dir_all(&second_box).unwrap();
    let second_box = std::fs::canonicalize(second_box).unwrap();
    let _daemon = setup.start().await;

    let files = [
        (setup.outbox.join("a.txt"), b"first".to_vec()),
        (setup.outbox.join("b.txt"), b"second file".to_vec()),
        (second_box.join("c.txt"), b"third, by webhook".to_vec()),
        (second_box.join("d.txt"), vec![7u8; 300_000]),
    ];
    for (path, content) in &files {
        std::fs::write(path, content).unwrap();
    }
    setup.wait_idle_with_done(4, ARRIVAL).await;
    setup
        .wait_status("every hook delivered", ARRIVAL, |s| {
            s["hooks"]["pending"] == 0
        })
        .await;

    for (path, content) in &files[..2] {
        let name = path.file_name().unwrap().to_str().unwrap();
        let document: Value =
            serde_json::from_slice(&std::fs::read(told.join(format!("{name}.json"))).unwrap())
                .unwrap();
        assert_uploaded_document(&document, path, content);
        let args = std::fs::read_to_string(told.join(format!("{name}.json.args"))).unwrap();
        assert_eq!(
            args.trim(),
            format!("{} {}", content.len(), sha256_hex(content))
        );
    }
    let documents = webhook.documents();
    assert_eq!(documents.len(), 2, "once per upload: {documents:?}");
    for (path, content) in &files[2..] {
        let document = documents
            .iter()
            .find(|d| d["path"] == path.to_str().unwrap());
        let document = document.unwrap_or_else(|| panic!("{path:?}: {documents:?}"));
        assert_uploaded_document(document, path, content);
        assert_eq!(document["x_event_header"], "uploaded");
    }
    assert_eq!(
        std::fs::read_dir(&told).unwrap().count(),
        4,
        "two programs ran, once each"
    );
}

/// A webhook that answers 503 gets nothing until it is back; the daemon, killed with SIGKILL
/// while deliveries wait, delivers every one of them after its restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_was_down_gets_every_delivery_even_across_a_kill_9() {
    let (_receiver, webhook, _dir, setup, daemon) = daemon_with_a_webhook_down().await;
    for name in ["one", "two", "three"] {
        std::fs::write(setup.outbox.join(name), name).unwrap();
    }
    setup.wait_idle_with_done(3, ARRIVAL).await;
    wait_until("refused deliveries", ARRIVAL, || {
        webhook.refused.load(Ordering::SeqCst) >= 3
    })
    .await;
    let status = setup.status();
    assert_eq!(status["hooks"]["pending"], 3, "{status}");
    let listed = String::from_utf8(setup.ferry(&["jobs"]).stdout).unwrap();
    let waiting = listed
        .lines()
        .filter(|line| line.contains(" uploaded ") && line.contains(" pending "));
    assert_eq!(
        waiting.count(),
        3,
        "ferry jobs lists the deliveries: {listed}"
    );
    drop(daemon); // SIGKILL

    webhook.down.store(false, Ordering::SeqCst);
    let _restarted = setup.start().await;
    wait_until("every delivery after the restart", ARRIVAL, || {
        webhook.documents().len() >= 3
    })
    .await;
    let mut told: Vec<String> = webhook
        .documents()
        .iter()
        .map(|d| d["path"].as_str().unwrap().to_string())
        .collect();
    told.sort();
    told.dedup();
    assert_eq!(told.len(), 3, "every file told, at least once: {told:?}");
    setup
        .wait_status("nothing pending", ARRIVAL, |s| s["hooks"]["pending"] == 0)
        .await;
}

/// A backlog of deliveries that the endpoint keeps refusing costs the daemon the attempts, not
/// a read of the whole backlog each time one falls due (which kept a core busy: 2.7 to 2.8 CPU
/// seconds in this test's 3, against 0.5 now). Once the endpoint is back, the waiting
/// ones are delivered as they fall due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_refused_deliveries_does_not_keep_the_daemon_busy() {
    const FILES: usize = 600;
    let (_receiver, webhook, _dir, setup, daemon) = daemon_with_a_webhook_down().await;
    for index in 0..FILES {
        std::fs::write(setup.outbox.join(format!("f{index:04}")), index.to_string()).unwrap();
    }
    setup.wait_idle_with_done(FILES as u64, ARRIVAL).await;
    setup
        .wait_status("the backlog", ARRIVAL, |s| s["hooks"]["pending"] == FILES)
        .await;

    // Once the first retries are behind (the attempts themselves then cost little), the old
    // reading of the whole backlog kept a core busy; half of one is the line.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let pid = daemon.child.id();
    let before = crate::support::proc::cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let busy = crate::support::proc::cpu_seconds(pid) - before;
    assert!(
        busy < 1.5,
        "{busy:.2} CPU seconds in 3 s with the endpoint down"
    );

    // The refused ones were put back for later: they go out as they fall due (all of them
    // within the backoff, up to minutes; the first within seconds).
    webhook.down.store(false, Ordering::SeqCst);
    wait_until("deliveries tried again", ARRIVAL, || {
        webhook.documents().len() >= 20
    })
    .await;
    let status = setup.status();
    let pending = status["hooks"]["pending"].as_u64().unwrap();
    assert!(
        pending < FILES as u64,
        "delivered ones are forgotten: {status}"
    );
}

/// A job that fails for good tells `on_failed`, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failed_is_told_of_a_permanent_failure() {
    let refusing = Receiver::start_with(|config| config.workspaces = vec!["other".into()]).await;
    let dir = tempfile::tempdir().unwrap();
    let told = dir.path().join("failed.json");
    let hook = format!(
        "on_failed = {{ exec = [\"/bin/sh\", \"-c\", \"cat > \\\"$0\\\"\", \"{}\"] }}",
        told.display()
    );
    let setup = Setup::new(&refusing.url, &hook, "");
    let _daemon = setup.start().await;
    let file = setup.outbox.join("refused.txt");
    std::fs::write(&file, b"not wanted there").unwrap();
    wait_until("the on_failed hook", ARRIVAL, || told.exists()).await;
    wait_until("the whole document", ARRIVAL, || {
        serde_json::from_slice::<Value>(&std::fs::read(&told).unwrap()).is_ok()
    })
    .await;
    let document: Value = serde_json::from_slice(&std::fs::read(&told).unwrap()).unwrap();
    assert_eq!(document["event"], "failed", "{document}");
    assert_eq!(document["path"], file.to_str().unwrap(), "{document}");
    let error = document["error"].as_str().unwrap();
    assert!(error.contains("403"), "{error}");
}

/// `after_upload = "delete"` with `after_upload_waits_for_hook`: the file stays while the hook
/// cannot be delivered and goes once it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_that_waits_for_its_hook_keeps_the_file_until_the_hook_succeeded() {
    let receiver = Receiver::start().await;
    let webhook = Webhook::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let hook = format!(
        "after_upload = \"delete\"\nafter_upload_waits_for_hook = true\non_uploaded = {}",
        webhook_hook(dir.path(), &webhook.url)
    );
    let setup = Setup::new(&receiver.url, &hook, "");
    let _daemon = setup.start().await;
    let file = setup.outbox.join("input.csv");
    std::fs::write(&file, b"a,b\n1,2\n").unwrap();
    setup.wait_idle_with_done(1, ARRIVAL).await;
    wait_until("two refused deliveries", ARRIVAL, || {
        webhook.refused.load(Ordering::SeqCst) >= 2
    })
    .await;
    assert!(file.exists(), "kept while its hook is not delivered");
    assert!(receiver.file("input.csv").exists(), "but uploaded");

    webhook.down.store(false, Ordering::SeqCst);
    wait_until("the file deleted after the hook", ARRIVAL, || {
        !file.exists()
    })
    .await;
    assert_eq!(webhook.documents().len(), 1);
}

/// `ferry serve --webhook URL --webhook-secret-file F --metrics`: each completed upload is
/// posted once, signed, also when the endpoint was down at first; `/metrics` counts the
/// completes, the bytes received and a refusal by its code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_posts_each_completed_upload_and_counts_it_in_its_metrics() {
    use crate::support::{ServeProcess, ferry_bin, token_file};
    let webhook = Webhook::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path());
    let secret = dir.path().join("hook.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let flags = ["--webhook", &webhook.url, "--webhook-secret-file"];
    let secret_flag = secret.to_str().unwrap();
    let flags = [&flags[..], &[secret_flag, "--metrics"]].concat();
    let serve =
        ServeProcess::spawn_with(&dir.path().join("storage"), "127.0.0.1:0", &token, &flags);
    let url = format!("http://{}", serve.address);
    let files = [("one.bin", vec![1u8; 1000]), ("two.bin", vec![2u8; 70_000])];
    let push = |name: &str, token: &std::path::Path| {
        let file = dir.path().join(name);
        std::process::Command::new(ferry_bin())
            .arg("push")
            .arg(&file)
            .args(["--url", &url, "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--token-file")
            .arg(token)
            .output()
            .unwrap()
    };
    for (name, content) in &files {
        std::fs::write(dir.path().join(name), content).unwrap();
        assert!(push(name, &token).status.success());
    }
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-token-at-all").unwrap();
    assert!(
        !push("one.bin", &wrong).status.success(),
        "a wrong token is refused"
    );

    wait_until("refused posts", ARRIVAL, || {
        webhook.refused.load(Ordering::SeqCst) >= 2
    })
    .await;
    webhook.down.store(false, Ordering::SeqCst);
    wait_until("two webhook posts", ARRIVAL, || {
        webhook.documents().len() >= 2
    })
    .await;
    let documents = webhook.documents();
    assert_eq!(documents.len(), 2, "{documents:?}");
    for (name, content) in &files {
        let document = documents
            .iter()
            .find(|d| d["remote_path"] == *name)
            .unwrap();
        assert_eq!(document["event"], "uploaded", "{document}");
        assert_eq!(document["workspace_id"], "default", "{document}");
        assert_eq!(document["size"], content.len(), "{document}");
        assert_eq!(document["sha256"], sha256_hex(content), "{document}");
        assert!(
            !document["upload_id"].as_str().unwrap().is_empty(),
            "{document}"
        );
    }

    let metrics = crate::metrics::scrape(&serve.address.to_string()).await;
    assert_eq!(
        metrics["ferry_serve_completed_uploads_total"], 2.0,
        "{metrics:?}"
    );
    assert_eq!(
        metrics["ferry_serve_received_bytes_total"], 71_000.0,
        "{metrics:?}"
    );
    assert!(
        metrics["ferry_serve_refusals_total{code=\"unauthorized\"}"] >= 1.0,
        "{metrics:?}"
    );
    assert_eq!(metrics["ferry_serve_sessions_open"], 0.0, "{metrics:?}");
}

/// `ferry serve --webhook`: a post the endpoint refused is kept in the storage folder, so a
/// receiver killed with SIGKILL posts it when it starts again, once, and then forgets it. The
/// restarted receiver counts it as waiting from the start, and not at all once delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receivers_webhook_post_survives_a_kill_9() {
    use crate::support::{ServeProcess, ferry_bin, token_file};
    let webhook = Webhook::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let (token, storage) = (token_file(dir.path()), dir.path().join("storage"));
    let secret = dir.path().join("hook.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let secret = secret.to_str().unwrap();
    let flags = [
        "--webhook",
        &webhook.url,
        "--webhook-secret-file",
        secret,
        "--metrics",
    ];
    let serve = ServeProcess::spawn_with(&storage, "127.0.0.1:0", &token, &flags);
    let file = dir.path().join("kept.bin");
    std::fs::write(&file, vec![7u8; 5000]).unwrap();
    let pushed = std::process::Command::new(ferry_bin())
        .arg("push")
        .arg(&file)
        .args(["--url", &format!("http://{}", serve.address), "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--token-file")
        .arg(&token)
        .output()
        .unwrap();
    assert!(pushed.status.success());
    wait_until("a refused post", ARRIVAL, || {
        webhook.refused.load(Ordering::SeqCst) >= 1
    })
    .await;
    drop(serve); // SIGKILL

    let serve = ServeProcess::spawn_with(&storage, "127.0.0.1:0", &token, &flags);
    let address = serve.address.to_string();
    let waiting = "ferry_serve_webhook_posts_waiting";
    let metrics = crate::metrics::scrape(&address).await;
    assert_eq!(metrics[waiting], 1.0, "counted from the start: {metrics:?}");
    webhook.down.store(false, Ordering::SeqCst);
    let posted = posted_and_forgotten(&webhook, &storage, 1).await;
    assert_eq!(posted[0]["remote_path"], "kept.bin");
    assert_eq!(posted[0]["sha256"], sha256_hex(&[7u8; 5000]));
    // Counted gone just after it is forgotten; never below none.
    let metrics = crate::metrics::scrape_until(&address, waiting, ARRIVAL, |metrics| {
        metrics[waiting] <= 0.0
    })
    .await;
    assert_eq!(metrics[waiting], 0.0, "{metrics:?}");
}

/// Waits until the receiver over `storage` has posted the `count` posts it kept and forgotten
/// them; returns the documents posted, each once.
async fn posted_and_forgotten(
    webhook: &Webhook,
    storage: &std::path::Path,
    count: usize,
) -> Vec<Value> {
    wait_until("the kept posts", ARRIVAL, || {
        webhook.documents().len() >= count
    })
    .await;
    let kept = storage.join(".ferry/webhooks");
    wait_until("the delivered posts forgotten", ARRIVAL, || {
        std::fs::read_dir(&kept).unwrap().next().is_none()
    })
    .await;
    let documents = webhook.documents();
    assert_eq!(documents.len(), count, "{documents:?}");
    documents
}

/// A receiver whose webhook posts to `webhook` in rounds of two attempts, holds two posts in
/// memory, and sweeps the kept ones every `rest`; with its metrics.
async fn receiver_posting_to(webhook: &Webhook, dir: &std::path::Path, rest: Duration) -> Receiver {
    let secret = dir.join("hook.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let hook = ferry::config::HookSpec::Webhook {
        url: webhook.url.clone(),
        secret_file: Some(secret),
        timeout: Duration::from_secs(5),
    };
    let round = ferry::upload::RetryPolicy {
        max_attempts: 2,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(20),
    };
    Receiver::start_with(|config| {
        config.webhook = Some(ferry::server::WebhookConfig {
            round,
            rest,
            held: 2,
            ..ferry::server::WebhookConfig::new(hook)
        });
        config.metrics = true;
    })
    .await
}

/// Uploads five small files to `receiver`; their remote paths.
async fn upload_five(receiver: &Receiver, dir: &std::path::Path) -> Vec<String> {
    let settings = ferry::upload::UploadSettings::default();
    let engine = crate::support::Engine::new(&receiver.url, settings);
    let names: Vec<String> = (0..5).map(|i| format!("later-{i}.bin")).collect();
    for name in &names {
        let file = dir.join(name);
        std::fs::write(&file, vec![3u8; 4000]).unwrap();
        engine.upload_cleanly(&file, name).await;
    }
    names
}

/// Waits until each of `names` was posted once and every kept post forgotten.
async fn assert_each_posted_once(webhook: &Webhook, receiver: &Receiver, names: &[String]) {
    let posted = posted_and_forgotten(webhook, &receiver.storage, names.len()).await;
    let mut paths: Vec<&str> = posted
        .iter()
        .map(|d| d["remote_path"].as_str().unwrap())
        .collect();
    paths.sort_unstable();
    assert_eq!(paths, names);
}

/// A receiver's post that the endpoint refused through a whole round of attempts is not left
/// for the next start: the sweep takes it up again, and it is delivered once the endpoint is
/// back. So are the posts past those memory may hold (two here), which wait on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receivers_webhook_goes_round_again_and_holds_few_posts_in_memory() {
    // Slow refusals: posts held in memory overlap at the endpoint.
    let webhook = Webhook::start_slow(true, Duration::from_millis(50)).await;
    let dir = tempfile::tempdir().unwrap();
    let receiver = receiver_posting_to(&webhook, dir.path(), Duration::from_millis(200)).await;
    let names = upload_five(&receiver, dir.path()).await;
    // Five posts, two attempts a round: more than 10 refusals are second rounds.
    wait_until("second rounds", ARRIVAL, || {
        webhook.refused.load(Ordering::SeqCst) >= 20
    })
    .await;
    let most = webhook.most_refusing.load(Ordering::SeqCst);
    assert!(
        most <= 2,
        "posts tried at once: {most}, more than memory may hold"
    );
    let address = receiver.address.to_string();
    // The receiver counts a refusal once its reply arrives, after the endpoint counted it.
    let failed = "ferry_serve_webhook_attempts_failed_total";
    let metrics =
        crate::metrics::scrape_until(&address, failed, ARRIVAL, |metrics| metrics[failed] >= 20.0)
            .await;
    assert_eq!(
        metrics["ferry_serve_webhook_posts_waiting"], 5.0,
        "{metrics:?}"
    );
    webhook.down.store(false, Ordering::SeqCst);
    assert_each_posted_once(&webhook, &receiver, &names).await;
    let metrics = crate::metrics::scrape(&address).await;
    assert_eq!(
        metrics["ferry_serve_webhook_posts_waiting"], 0.0,
        "{metrics:?}"
    );
    assert_eq!(metrics["ferry_serve_webhook_posts_delivered_total"], 5.0);
}

/// A burst of posts past what memory holds, to an endpoint that takes them (slowly), does not
/// wait for the next sweep (an hour away here): each delivery wakes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_what_memory_holds_is_posted_without_waiting_for_the_sweep() {
    let webhook = Webhook::start_slow(false, Duration::from_millis(100)).await;
    let dir = tempfile::tempdir().unwrap();
    let receiver = receiver_posting_to(&webhook, dir.path(), Duration::from_secs(3600)).await;
    let names = upload_five(&receiver, dir.path()).await;
    assert_each_posted_once(&webhook, &receiver, &names).await;
}

/// A webhook whose address redirects (301, as an http-to-https front does) is not followed:
/// followed, the POST would arrive as a GET without the document, and a page that answers a
/// GET with 200 would count it delivered. The delivery fails, naming where it points.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_redirects_is_not_delivered_as_a_get() {
    let receiver = Receiver::start().await;
    let webhook = Webhook::start(false).await;
    let address = webhook.url.trim_start_matches("http://");
    let address = address.split('/').next().unwrap().parse().unwrap();
    let front = FaultProxy::start(address).await;
    front.set_plan(|_, _| Some(Fault::Redirect { status: 301 }));
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}/hook", front.url);
    let hook = format!("on_uploaded = {}", webhook_hook(dir.path(), &url));
    let setup = Setup::new(&receiver.url, &hook, "");
    let daemon = setup.start().await;
    std::fs::write(setup.outbox.join("a.txt"), b"told nowhere").unwrap();
    let said = format!(
        "answered 301 Moved Permanently: redirected to {}",
        webhook.url
    );
    wait_until("the redirect named", ARRIVAL, || daemon.logged(&said)).await;
    assert_eq!(webhook.gets.load(Ordering::SeqCst), 0, "no GET followed");
    assert!(webhook.documents().is_empty());
    let hooks = &setup.status()["hooks"];
    assert_eq!(
        hooks["pending"].as_u64(),
        Some(1),
        "still to deliver: {hooks}"
    );
}
