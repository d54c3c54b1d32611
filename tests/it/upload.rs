//! The upload engine and `ferry push` against a real receiver on loopback.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry::upload::{ChunkSize, PartsInFlight, UploadError, UploadSettings};

use crate::support::fault_proxy::{Fault, FaultProxy};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_edge_sizes_arrive_byte_identical_with_their_mtime() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let min_part = 256 * KIB;
    // Fixed sizes: this is about how a file is cut, not about learning sizes.
    let default = UploadSettings {
        chunk_size: ChunkSize::Fixed(8 * MIB),
        ..UploadSettings::default()
    };
    let at_min_part = UploadSettings {
        chunk_size: ChunkSize::Fixed(min_part),
        ..UploadSettings::default()
    };
    // (size, settings, expected parts)
    let cases = [
        (0, default, 1),
        (1, default, 1),
        (min_part - 1, default, 1),
        (min_part - 1, at_min_part, 1),
        (min_part, at_min_part, 1),
        (min_part + 1, at_min_part, 2),
        (8 * MIB, default, 1),
        (8 * MIB + 1, default, 2),
        (200 * MIB, default, 25),
    ];
    for (index, (size, settings, parts)) in cases.into_iter().enumerate() {
        let name = format!("size-{index}-{size}.bin");
        let local = dir.path().join(&name);
        random_file(&local, size, index as u64);
        let mtime =
            std::time::UNIX_EPOCH + Duration::new(1_600_000_000 + index as u64, 123_456_789);
        std::fs::File::open(&local)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let report = Engine::new(&receiver.url, settings)
            .upload(&local, &name)
            .await
            .unwrap_or_else(|error| panic!("{size} bytes: {error:?}"));
        assert_eq!(report.size, size);
        assert_eq!(
            report.parts, parts,
            "{size} bytes in {:?} chunks",
            settings.chunk_size
        );
        assert_eq!(report.bytes_sent, size);
        assert_same_content(&local, &receiver.file(&name));
        let received = std::fs::metadata(receiver.file(&name)).unwrap();
        assert_eq!(
            received.modified().unwrap(),
            mtime,
            "{size} bytes keep their mtime"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_parts_arrive_out_of_order_and_assemble_in_order() {
    let receiver = Receiver::start().await;
    let proxy = FaultProxy::start(receiver.address).await;
    // Hold part 1 back so that later parts are stored before it.
    proxy.set_plan(|head, _| {
        (head.is_part() && head.part_number == Some(1))
            .then_some(Fault::Delay(Duration::from_millis(700)))
    });
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("ordered.bin");
    random_file(&local, 4 * MIB, 7);
    let settings = UploadSettings {
        chunk_size: ChunkSize::Fixed(256 * KIB),
        parallel_parts: PartsInFlight::Fixed(4),
        ..UploadSettings::default()
    };
    let report = Engine::new(&proxy.url, settings)
        .upload(&local, "ordered.bin")
        .await
        .unwrap();
    assert_eq!(report.parts, 16);
    let log = proxy.log();
    let finished = |number| {
        log.iter()
            .find(|seen| seen.part_number == Some(number))
            .and_then(|seen| seen.finished)
            .unwrap()
    };
    let overtaking: Vec<u32> = (2..=16).filter(|n| finished(*n) < finished(1)).collect();
    assert!(
        overtaking.len() >= 2,
        "parts stored before part 1: {overtaking:?}"
    );
    assert_same_content(&local, &receiver.file("ordered.bin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_are_retried_and_retry_after_is_honoured() {
    let receiver = Receiver::start().await;
    let proxy = FaultProxy::start(receiver.address).await;
    let seen_parts = std::sync::Mutex::new(BTreeSet::new());
    proxy.set_plan(move |head, index| {
        if head.method == "POST" && head.path.ends_with("/init") && index == 0 {
            return Some(Fault::Unavailable {
                retry_after_secs: 1,
            });
        }
        if !head.is_part() {
            return None;
        }
        // Fault the first attempt of parts 2, 3 and 4 (later attempts pass).
        let number = head.part_number?;
        if !seen_parts.lock().unwrap().insert(number) {
            return None;
        }
        match number {
            2 => Some(Fault::CutMidBody),
            3 => Some(Fault::Unavailable {
                retry_after_secs: 1,
            }),
            4 => Some(Fault::Stall(Duration::from_secs(4))),
            _ => None,
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("faults.bin");
    random_file(&local, 6 * MIB, 11);
    let settings = UploadSettings {
        chunk_size: ChunkSize::Fixed(MIB),
        ..fast_retry_settings()
    };
    let started = Instant::now();
    let report = Engine::new(&proxy.url, settings)
        .upload(&local, "faults.bin")
        .await
        .unwrap();
    assert_eq!(report.parts, 6);
    assert_same_content(&local, &receiver.file("faults.bin"));

    let log = proxy.log();
    let faulted: Vec<_> = log.iter().filter(|seen| seen.fault.is_some()).collect();
    assert_eq!(
        faulted.len(),
        4,
        "every planned fault was injected: {log:#?}"
    );
    // Retry-After: 1 on init and on part 3 means their retries came at least 1 s later.
    let init: Vec<_> = log
        .iter()
        .filter(|seen| seen.path.ends_with("/init"))
        .collect();
    let part_3: Vec<_> = log
        .iter()
        .filter(|seen| seen.part_number == Some(3))
        .collect();
    for (label, attempts) in [("init", init), ("part 3", part_3)] {
        assert!(attempts.len() >= 2, "{label} was retried");
        let gap = attempts[1].arrived - attempts[0].arrived;
        assert!(
            gap >= Duration::from_millis(950),
            "{label} retried after only {gap:?}"
        );
    }
    // The stalled part was abandoned after the 1 s stall timeout, not after the 4 s stall.
    let part_4: Vec<_> = log
        .iter()
        .filter(|seen| seen.part_number == Some(4))
        .collect();
    assert!(part_4.len() >= 2);
    assert!(part_4[1].arrived - part_4[0].arrived < Duration::from_secs(3));
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_fail_fast_with_a_clear_message() {
    let receiver = Receiver::start_with(|config| {
        config.workspaces = vec!["default".into()];
        config.limits.max_file_size = MIB;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small.bin");
    let large = dir.path().join("large.bin");
    random_file(&small, 10, 1);
    random_file(&large, 2 * MIB, 2);
    let token = token_file(dir.path());
    let wrong_token = dir.path().join("wrong");
    std::fs::write(&wrong_token, "not-the-token").unwrap();

    let cases = [
        (&small, &wrong_token, "default", "401 unauthorized"),
        (&small, &token, "elsewhere", "403 forbidden"),
        (&large, &token, "default", "413 too_large"),
    ];
    for (file, token, workspace, expected) in cases {
        let started = Instant::now();
        let output = Command::new(ferry_bin())
            .arg("push")
            .arg(file)
            .args(["--url", &receiver.url, "--workspace", workspace])
            .arg("--token-file")
            .arg(token)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{expected}: {stderr}");
        assert!(stderr.contains(expected), "{expected} not in: {stderr}");
        assert!(
            stderr.contains(&file.display().to_string()),
            "the message names the file: {stderr}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{expected} took {:?}: permanent errors are not retried",
            started.elapsed()
        );
    }
    assert_eq!(session_count(&receiver.storage), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_killed_mid_way_resumes_without_resending_acknowledged_parts() {
    let receiver = Receiver::start().await;
    let proxy = FaultProxy::start(receiver.address).await;
    // 4 parts in flight at 4 MiB/s each: 48 one-MiB parts take about 3 s.
    proxy.set_throttle(4 * MIB);
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("resume.bin");
    let size = 48 * MIB;
    random_file(&local, size, 5);
    let token = token_file(dir.path());
    let push = |json: bool| {
        let mut command = Command::new(ferry_bin());
        command
            .arg("push")
            .arg(&local)
            .args(["--url", &proxy.url, "--chunk-size", "1MiB"])
            .arg("--token-file")
            .arg(&token)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .stderr(Stdio::null());
        if json {
            command.arg("--json");
        }
        command
    };
    // Kill once the push has durably recorded a few acknowledged parts (its debug log says so
    // right after each record is flushed).
    let mut first = push(false)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("RUST_LOG", "ferry=debug")
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(first.stderr.take().unwrap());
    let recorded = tokio::task::spawn_blocking(move || {
        let mut recorded = 0;
        for line in std::io::BufRead::lines(stderr).map_while(Result::ok) {
            if line.contains("part recorded") {
                recorded += 1;
                if recorded == 4 {
                    break;
                }
            }
        }
        recorded
    });
    let recorded = tokio::time::timeout(Duration::from_secs(60), recorded)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(recorded, 4, "the first push recorded parts");
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let stored_before = receiver.stored_parts();
    assert!(stored_before < 48, "the kill came before the end");

    // Bytes the dead push had already handed over still reach the receiver through the
    // throttled proxy; let them land so they cannot replace parts of the second run.
    wait_until(
        "the killed push's requests to drain",
        Duration::from_secs(30),
        || proxy.in_flight() == 0,
    )
    .await;
    let mark = proxy.mark();
    proxy.set_throttle(0);
    let output = push(true)
        .env("RUST_LOG", "ferry=debug")
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let file = &summary["files"][0];
    let (parts, resumed) = (
        file["parts"].as_u64().unwrap(),
        file["parts_resumed"].as_u64().unwrap(),
    );
    assert_eq!(parts, 48);
    assert!(
        resumed >= 4,
        "every part recorded before the kill is resumed: {summary}\n{log}"
    );
    assert!(file["bytes_sent"].as_u64().unwrap() < size, "{summary}");
    assert_eq!(
        file["bytes_sent"].as_u64().unwrap(),
        (parts - resumed) * MIB
    );

    // The second run sent each missing part once and nothing else.
    let sent = proxy.parts_sent_once_since(mark);
    assert_eq!(
        sent.len() as u64,
        parts - resumed,
        "only missing parts were sent: {sent:?}"
    );
    assert_eq!(
        session_count(&receiver.storage),
        1,
        "the same session was resumed"
    );
    assert_same_content(&local, &receiver.file("resume.bin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_survives_a_receiver_restart() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let token = token_file(dir.path());
    let mut serve = ServeProcess::spawn(&storage, "127.0.0.1:0", &token);
    let address = serve.address;
    let proxy = FaultProxy::start(address).await;
    proxy.set_throttle(4 * MIB);
    let local = dir.path().join("restart.bin");
    random_file(&local, 32 * MIB, 9);
    let mut push = Command::new(ferry_bin())
        .arg("push")
        .arg(&local)
        .args([
            "--url",
            &proxy.url,
            "--chunk-size",
            "1MiB",
            "--retry-base",
            "100ms",
            "--retry-max",
            "1s",
        ])
        .arg("--token-file")
        .arg(&token)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("4 parts stored", Duration::from_secs(30), || {
        stored_parts(&storage) >= 4
    })
    .await;
    serve.child.kill().unwrap(); // SIGKILL the receiver mid-upload
    serve.child.wait().unwrap();
    // The client tries again while the receiver is down, and finds it gone.
    let mark = proxy.mark();
    wait_until(
        "a request to the stopped receiver",
        Duration::from_secs(20),
        || proxy.mark() > mark,
    )
    .await;
    let _restarted = ServeProcess::spawn(&storage, &address.to_string(), &token);
    proxy.set_throttle(0);
    let status = tokio::task::spawn_blocking(move || push.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
    assert_eq!(
        session_count(&storage),
        1,
        "the session outlived the restart"
    );
    assert_same_content(&local, &storage.join("default/restart.bin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_changes_during_upload_is_not_completed_from_mixed_content() {
    let receiver = Receiver::start().await;
    let proxy = FaultProxy::start(receiver.address).await;
    proxy.set_throttle(2 * MIB);
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("changing.bin");
    random_file(&local, 8 * MIB, 1);
    let settings = UploadSettings {
        chunk_size: ChunkSize::Fixed(MIB),
        ..fast_retry_settings()
    };
    let engine = Engine::new(&proxy.url, settings);
    let rewrite = {
        let local = local.clone();
        let storage = receiver.storage.clone();
        async move {
            wait_until("2 parts stored", Duration::from_secs(20), || {
                stored_parts(&storage) >= 2
            })
            .await;
            // Rewrite in place: same inode, new content and mtime.
            let new = local.with_extension("new");
            random_file(&new, 8 * MIB, 2);
            std::fs::write(&local, std::fs::read(&new).unwrap()).unwrap();
        }
    };
    let (report, ()) = tokio::join!(engine.upload(&local, "changing.bin"), rewrite);
    let report = report.unwrap();
    assert_eq!(report.size, 8 * MIB);
    // What arrived is exactly the new content, not a mix.
    assert_same_content(&local.with_extension("new"), &receiver.file("changing.bin"));
    assert!(
        session_count(&receiver.storage) >= 2,
        "the first session was abandoned"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_file_is_reported_by_path() {
    let receiver = Receiver::start().await;
    let missing = std::path::Path::new("/nonexistent/ferry-test/file.bin");
    let error = Engine::new(&receiver.url, UploadSettings::default())
        .upload(missing, "file.bin")
        .await
        .unwrap_err();
    assert!(matches!(error, UploadError::Vanished { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("/nonexistent/ferry-test/file.bin")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_damaged_in_transit_is_sent_again() {
    let receiver = Receiver::start().await;
    let proxy = FaultProxy::start(receiver.address).await;
    let damaged = std::sync::Mutex::new(false);
    proxy.set_plan(move |head, _| {
        let first_part_2 =
            head.part_number == Some(2) && !std::mem::replace(&mut *damaged.lock().unwrap(), true);
        first_part_2.then_some(Fault::Corrupt)
    });
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("damaged.bin");
    random_file(&local, 3 * MIB, 3);
    let settings = UploadSettings {
        chunk_size: ChunkSize::Fixed(MIB),
        ..fast_retry_settings()
    };
    let report = Engine::new(&proxy.url, settings)
        .upload(&local, "damaged.bin")
        .await
        .unwrap();
    assert_eq!(report.parts, 3);
    let part_2 = proxy
        .log()
        .iter()
        .filter(|seen| seen.part_number == Some(2))
        .count();
    assert_eq!(part_2, 2, "the damaged part was sent twice");
    assert_same_content(&local, &receiver.file("damaged.bin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_starts_over_when_the_file_changed_or_the_session_is_gone() {
    let receiver = Receiver::start().await;
    let proxy = FaultProxy::start(receiver.address).await;
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("again.bin");
    let token = token_file(dir.path());
    let push = || {
        let mut command = Command::new(ferry_bin());
        command
            .arg("push")
            .arg(&local)
            .args(["--url", &proxy.url, "--chunk-size", "1MiB", "--json"])
            .arg("--token-file")
            .arg(&token)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        command
    };
    let interrupted_push = |seed| {
        random_file(&local, 16 * MIB, seed);
        proxy.set_throttle(2 * MIB);
        let mut child = push().spawn().unwrap();
        let storage = receiver.storage.clone();
        async move {
            wait_until("2 parts stored", Duration::from_secs(30), || {
                stored_parts(&storage) >= 2
            })
            .await;
            child.kill().unwrap();
            child.wait().unwrap();
        }
    };
    let finish = || {
        proxy.set_throttle(0);
        let output = push().output().unwrap();
        assert!(output.status.success());
        let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        summary["files"][0]["parts_resumed"].as_u64().unwrap()
    };

    // The file changes between the runs: the old session is aborted, the new content sent.
    interrupted_push(1).await;
    random_file(&local, 16 * MIB, 2);
    assert_eq!(finish(), 0, "nothing of the old content is reused");
    assert_same_content(&local, &receiver.file("again.bin"));
    let aborted = std::fs::read_dir(receiver.storage.join(".ferry/sessions"))
        .unwrap()
        .filter(|entry| {
            let record =
                std::fs::read_to_string(entry.as_ref().unwrap().path().join("session.json"))
                    .unwrap();
            record.contains("\"aborted\"")
        })
        .count();
    assert_eq!(aborted, 1, "the outdated session was aborted");

    // The receiver lost the session (expired, swept): a new one is opened. The killed push's
    // requests still in the proxy land first, so that none writes into a folder being removed.
    interrupted_push(3).await;
    wait_until(
        "the killed push's requests to drain",
        Duration::from_secs(30),
        || proxy.in_flight() == 0,
    )
    .await;
    for session in std::fs::read_dir(receiver.storage.join(".ferry/sessions")).unwrap() {
        std::fs::remove_dir_all(session.unwrap().path()).unwrap();
    }
    assert_eq!(finish(), 0);
    assert_same_content(&local, &receiver.file("again.bin"));
}

#[test]
fn usage_errors_exit_with_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    let run = |args: &[&str], token: Option<&str>| {
        let mut command = Command::new(ferry_bin());
        command.arg("push").args(args).env_remove("FERRY_TOKEN");
        if let Some(token) = token {
            command.env("FERRY_TOKEN", token);
        }
        let output = command.output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    let file = file.to_str().unwrap();
    let (code, stderr) = run(&[file, "--url", "http://127.0.0.1:9"], None);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("FERRY_TOKEN"), "{stderr}");
    let (code, stderr) = run(
        &[file, file, "--url", "http://127.0.0.1:9", "--name", "x"],
        Some("t"),
    );
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--name"), "{stderr}");
    let (code, _) = run(
        &[file, "--url", "http://127.0.0.1:9", "--chunk-size", "lots"],
        Some("t"),
    );
    assert_eq!(code, Some(2), "clap's own usage errors");
    let (code, stderr) = run(&[file, "--url", "ftp://host"], Some("t"));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--url ftp://host"), "{stderr}");
    // Refused as the configuration refuses max_attempts = 0, not quietly made 1.
    let (code, stderr) = run(
        &[file, "--url", "http://127.0.0.1:9", "--retry-attempts", "0"],
        Some("t"),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--retry-attempts"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_replaced_behind_our_back_is_sent_again_not_the_whole_file() {
    let receiver = Receiver::start().await;
    let proxy = FaultProxy::start(receiver.address).await;
    // Hold the first complete back while another version of part 2 lands on the receiver, as a
    // late duplicate of an earlier attempt would.
    let held = std::sync::Mutex::new(false);
    proxy.set_plan(move |head, _| {
        let first = head.path.ends_with("/complete")
            && !std::mem::replace(&mut *held.lock().unwrap(), true);
        first.then_some(Fault::Delay(Duration::from_millis(1500)))
    });
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("repaired.bin");
    random_file(&local, 4 * MIB, 21);
    let settings = UploadSettings {
        chunk_size: ChunkSize::Fixed(MIB),
        ..fast_retry_settings()
    };
    let engine = Engine::new(&proxy.url, settings);
    let replace = async {
        let complete_path = || {
            proxy
                .log()
                .iter()
                .find(|s| s.path.ends_with("/complete"))
                .map(|s| s.path.clone())
        };
        wait_until("complete to be sent", Duration::from_secs(20), || {
            complete_path().is_some()
        })
        .await;
        let path = complete_path().unwrap();
        let upload_id = path.split('/').nth(4).unwrap().to_string();
        let reply = reqwest::Client::new()
            .put(format!(
                "{}/v1/uploads/chunked/{upload_id}/parts",
                receiver.url
            ))
            .bearer_auth(TOKEN)
            .header(ferry::protocol::PART_NUMBER_HEADER, "2")
            .body(vec![0u8; MIB as usize])
            .send()
            .await
            .unwrap();
        assert!(reply.status().is_success());
    };
    let (report, ()) = tokio::join!(engine.upload(&local, "repaired.bin"), replace);
    let report = report.unwrap();
    assert_eq!((report.parts, report.bytes_sent), (4, 4 * MIB));
    let sends = |number| {
        proxy
            .log()
            .iter()
            .filter(|seen| seen.part_number == Some(number))
            .count()
    };
    assert_eq!(
        (sends(1), sends(2), sends(3), sends(4)),
        (1, 2, 1, 1),
        "only the replaced part went again"
    );
    assert_eq!(session_count(&receiver.storage), 1, "no fresh session");
    assert_same_content(&local, &receiver.file("repaired.bin"));
}
