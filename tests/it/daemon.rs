//! `ferry run` end to end: real daemon process, real receiver, real files.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::support::daemon::{Setup, wait_for_copy};
use crate::support::*;

const ARRIVAL: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_files_arrive_and_ignored_ones_do_not() {
    let receiver = Receiver::start().await;
    let setup = Setup::new(&receiver.url, "", "");
    let daemon = setup.start().await;
    let outbox = &setup.outbox;

    std::fs::write(outbox.join("flat.txt"), b"flat").unwrap();
    std::fs::write(outbox.join("empty"), b"").unwrap();
    // A new nested folder with a file written in it.
    std::fs::create_dir_all(outbox.join("a/b/c")).unwrap();
    random_file(&outbox.join("a/b/c/deep.bin"), 3 * MIB, 1);
    // A folder prepared elsewhere and moved in whole.
    let elsewhere = setup.dir.path().join("prepared");
    std::fs::create_dir_all(elsewhere.join("inner")).unwrap();
    std::fs::write(elsewhere.join("inner/moved.txt"), b"moved in").unwrap();
    std::fs::rename(&elsewhere, outbox.join("prepared")).unwrap();
    // The atomic-save pattern: write a temp file, rename it over the real name.
    std::fs::write(outbox.join("doc.txt"), b"version 1").unwrap();
    std::fs::write(outbox.join(".doc.txt.swp"), b"editor state").unwrap();
    std::fs::write(outbox.join("doc.txt.tmp"), b"version 2").unwrap();
    std::fs::rename(outbox.join("doc.txt.tmp"), outbox.join("doc.txt")).unwrap();
    // Renamed before it settled: only the final name is uploaded.
    std::fs::write(outbox.join("draft.txt"), b"renamed").unwrap();
    std::fs::rename(outbox.join("draft.txt"), outbox.join("final.txt")).unwrap();
    // Ignored by default: temp, partial and editor files.
    for ignored in [
        "x.tmp",
        "download.part",
        "~lock.docx",
        ".#emacs",
        ".DS_Store",
    ] {
        std::fs::write(outbox.join(ignored), b"ignored").unwrap();
    }

    for name in [
        "flat.txt",
        "empty",
        "a/b/c/deep.bin",
        "prepared/inner/moved.txt",
        "doc.txt",
        "final.txt",
    ] {
        wait_for_copy(&outbox.join(name), &receiver.file(name), ARRIVAL).await;
    }
    setup.wait_idle_with_done(6, ARRIVAL).await;
    for never in [
        "x.tmp",
        "download.part",
        "~lock.docx",
        ".#emacs",
        ".DS_Store",
        ".doc.txt.swp",
        "draft.txt",
        "doc.txt.tmp",
    ] {
        assert!(
            !receiver.file(never).exists(),
            "{never} must not be uploaded"
        );
    }
    assert_eq!(daemon.terminate().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_writer_is_uploaded_once_with_its_final_content() {
    let receiver = Receiver::start().await;
    let setup = Setup::new(&receiver.url, "", "");
    let _daemon = setup.start().await;
    let path = setup.outbox.join("slow.log");
    let mut file = std::fs::File::create(&path).unwrap();
    for line in 0..12 {
        writeln!(file, "line {line}").unwrap();
        file.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await; // well inside the 300 ms settle
    }
    drop(file);
    wait_for_copy(&path, &receiver.file("slow.log"), ARRIVAL).await;
    setup.wait_idle_with_done(1, ARRIVAL).await;
    assert_eq!(
        session_count(&receiver.storage),
        1,
        "one upload session, for the final content"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_made_while_down_are_found_and_unchanged_files_are_not_sent_again() {
    let receiver = Receiver::start().await;
    let setup = Setup::new(&receiver.url, "", "");
    let daemon = setup.start().await;
    std::fs::write(setup.outbox.join("before.txt"), b"before").unwrap();
    wait_for_copy(
        &setup.outbox.join("before.txt"),
        &receiver.file("before.txt"),
        ARRIVAL,
    )
    .await;
    setup.wait_idle_with_done(1, ARRIVAL).await;
    assert_eq!(daemon.terminate().await, Some(0));

    std::fs::write(
        setup.outbox.join("while-down.txt"),
        b"made while the daemon was down",
    )
    .unwrap();
    let daemon = setup.start().await;
    wait_for_copy(
        &setup.outbox.join("while-down.txt"),
        &receiver.file("while-down.txt"),
        ARRIVAL,
    )
    .await;
    setup.wait_idle_with_done(2, ARRIVAL).await;
    assert_eq!(
        session_count(&receiver.storage),
        2,
        "before.txt was not uploaded again"
    );
    rescan_and_wait(&setup).await; // a rescan that finds nothing new
    setup.wait_idle_with_done(2, ARRIVAL).await;
    assert_eq!(session_count(&receiver.storage), 2);
    assert_eq!(daemon.terminate().await, Some(0));
}

/// Asks for a rescan and waits until it has run and the intake has taken all it found.
async fn rescan_and_wait(setup: &Setup) {
    let scans = setup.status()["intake"]["scans"].as_u64().unwrap();
    assert!(setup.ferry(&["rescan"]).status.success());
    wait_until(
        "the rescan to run and its files to be checked",
        ARRIVAL,
        || {
            let intake = setup.status()["intake"].clone();
            intake["scans"].as_u64() > Some(scans)
                && intake["settling"] == 0
                && intake["found"] == intake["checked"]
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_upload_deletes_or_moves_the_file() {
    let receiver = Receiver::start().await;
    let deleting = Setup::new(
        &receiver.url,
        "after_upload = \"delete\"\nprefix = \"deleted/\"",
        "",
    );
    let moving = Setup::new(
        &receiver.url,
        "after_upload = { move_to = \"sent\" }\nprefix = \"moved/\"",
        "",
    );
    let _one = deleting.start().await;
    let _two = moving.start().await;
    std::fs::write(deleting.outbox.join("gone.txt"), b"delete me").unwrap();
    std::fs::create_dir_all(moving.outbox.join("sub")).unwrap();
    std::fs::write(moving.outbox.join("sub/kept.txt"), b"move me").unwrap();
    wait_until("gone.txt deleted", ARRIVAL, || {
        !deleting.outbox.join("gone.txt").exists()
    })
    .await;
    let sent = moving.dir.path().join("sent/sub/kept.txt");
    wait_until("kept.txt moved", ARRIVAL, || sent.exists()).await;
    assert!(!moving.outbox.join("sub/kept.txt").exists());
    assert_eq!(
        std::fs::read(receiver.file("deleted/gone.txt")).unwrap(),
        b"delete me"
    );
    assert_eq!(
        std::fs::read(receiver.file("moved/sub/kept.txt")).unwrap(),
        b"move me"
    );
    assert_eq!(std::fs::read(sent).unwrap(), b"move me");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_file_shows_in_status_and_retry_fixes_it() {
    // The receiver refuses the workspace at first: a permanent failure.
    let refusing = Receiver::start_with(|config| config.workspaces = vec!["other".into()]).await;
    let (storage, address) = (refusing.storage.clone(), refusing.address);
    let setup = Setup::new(&refusing.url, "", "");
    let _daemon = setup.start().await;
    std::fs::write(setup.outbox.join("refused.txt"), b"try again later").unwrap();
    std::fs::write(
        setup.outbox.join("also.txt"),
        b"one bad file never blocks others",
    )
    .unwrap();
    let mut status = serde_json::Value::Null;
    wait_until("two failures", ARRIVAL, || {
        status = setup.status();
        status["queue"]["failed"] == 2
    })
    .await;
    let error = status["failed"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("403") && error.contains("forbidden"),
        "{error}"
    );
    assert!(!error.contains(TOKEN), "tokens never shown");
    let human = setup.ferry(&["status"]);
    assert_eq!(human.status.code(), Some(1), "degraded while a job failed");
    let stderr = String::from_utf8_lossy(&human.stderr);
    assert!(
        stderr.contains("2 job(s) failed") && stderr.contains("ferry retry --failed"),
        "{stderr}"
    );
    let human = String::from_utf8(human.stdout).unwrap();
    assert!(
        human.contains("2 failed") && human.contains("refused.txt"),
        "{human}"
    );

    // The operator fixes the receiver, then retries.
    let dir = refusing.stop().await;
    let _fixed = Receiver::start_at(&storage, address, |_| {}).await;
    let failed_ids: Vec<String> = setup
        .jobs()
        .iter()
        .filter(|job| job["state"] == "failed")
        .map(|job| job["id"].to_string())
        .collect();
    let retried = setup.ferry(&["retry", &failed_ids[0]]);
    assert!(
        retried.status.success(),
        "{}",
        String::from_utf8_lossy(&retried.stderr)
    );
    let retried_all = setup.ferry(&["retry", "--failed"]);
    assert!(retried_all.status.success());
    setup.wait_idle_with_done(2, ARRIVAL).await;
    let (status, code) = setup.status_and_code();
    assert_eq!(status["queue"]["failed"], 0, "{status}");
    assert_eq!(code, Some(0), "healthy again once nothing has failed");
    assert_eq!(
        std::fs::read(storage.join("default/refused.txt")).unwrap(),
        b"try again later"
    );
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_uploads_and_sigterm_keeps_the_queue() {
    let receiver = Receiver::start().await;
    let setup = Setup::new(&receiver.url, "", "");
    let daemon = setup.start().await;
    assert!(setup.ferry(&["pause"]).status.success());
    for index in 0..3 {
        std::fs::write(
            setup.outbox.join(format!("held-{index}.txt")),
            format!("held {index}"),
        )
        .unwrap();
    }
    let mut status = serde_json::Value::Null;
    wait_until("3 queued", ARRIVAL, || {
        status = setup.status();
        status["queue"]["queued"] == 3
    })
    .await;
    assert_eq!(status["paused"], true);
    // Every batch queued woke the scheduler; a full rescan through the intake since then gave
    // it more than time enough to claim, had it not been paused.
    rescan_and_wait(&setup).await;
    let queue = &setup.status()["queue"];
    assert_eq!(
        (queue["done"].as_u64(), queue["active"].as_u64()),
        (Some(0), Some(0)),
        "nothing starts while paused"
    );

    // Stopped while paused: the queue survives the restart. The very jobs queued before the
    // stop are the ones done after it (a rescan would only have found the files again).
    let ids = |state: &str| {
        let mut ids: Vec<u64> = setup
            .jobs()
            .iter()
            .filter(|j| j["state"] == state)
            .map(|j| j["id"].as_u64().unwrap())
            .collect();
        ids.sort();
        ids
    };
    let queued_before = ids("queued");
    assert_eq!(daemon.terminate().await, Some(0));
    let daemon = setup.start().await;
    setup.wait_idle_with_done(3, ARRIVAL).await;
    assert_eq!(ids("done"), queued_before, "the queue outlived the stop");
    assert!(receiver.file("held-2.txt").exists());

    assert!(setup.ferry(&["pause"]).status.success());
    std::fs::write(setup.outbox.join("later.txt"), b"later").unwrap();
    wait_until("later queued", ARRIVAL, || {
        setup.status()["queue"]["queued"] == 1
    })
    .await;
    assert!(setup.ferry(&["resume"]).status.success());
    wait_for_copy(
        &setup.outbox.join("later.txt"),
        &receiver.file("later.txt"),
        ARRIVAL,
    )
    .await;
    assert_eq!(daemon.terminate().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_socket_is_private_and_survives_malformed_input() {
    let receiver = Receiver::start().await;
    let setup = Setup::new(&receiver.url, "", "");
    let _daemon = setup.start().await;
    let mode = std::fs::metadata(&setup.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    let exchange = |bytes: &[u8]| {
        let mut stream = std::os::unix::net::UnixStream::connect(&setup.socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let _ = stream.write_all(bytes);
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply);
        String::from_utf8_lossy(&reply).to_string()
    };
    let framed = |body: &[u8]| [&(body.len() as u32).to_be_bytes()[..], body].concat();
    assert!(exchange(&framed(b"{not json")).contains("bad_request"));
    assert!(
        exchange(&framed(br#"{"version":1,"command":"launch_rockets"}"#)).contains("bad_request")
    );
    assert!(
        exchange(&framed(br#"{"version":99,"command":"status"}"#)).contains("unsupported_version")
    );
    assert!(
        exchange(&u32::MAX.to_be_bytes()).contains("bad_request"),
        "a huge length is refused, not allocated"
    );
    exchange(b""); // a client that connects and hangs up
    // The daemon still answers properly after all of that.
    assert_eq!(setup.status()["queue"]["failed"], 0);
}

/// `ferry jobs | head -1`: a reader that goes away ends every printing command quietly with
/// exit code 0, as ripgrep does, instead of a "failed printing to stdout" panic. The pipe's
/// reading end is closed before the command starts, so every write finds it gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_whose_reader_went_away_exit_0_without_a_panic() {
    let receiver = Receiver::start().await;
    let setup = Setup::new(&receiver.url, "", "");
    let _daemon = setup.start().await;
    std::fs::write(setup.outbox.join("one.txt"), b"one job to list").unwrap();
    setup.wait_idle_with_done(1, ARRIVAL).await;
    for args in [
        &["jobs"][..],
        &["jobs", "--json"],
        &["status"],
        &["status", "--json"],
        &["status", "--watch"],
        &["config", "check"],
        &["completions", "bash"],
        &["manpage"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let output = std::process::Command::new(ferry_bin())
            .arg("--config")
            .arg(&setup.config)
            .args(args)
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn client_commands_exit_3_when_no_daemon_runs() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody.sock");
    for args in [
        &["status"][..],
        &["jobs"],
        &["pause"],
        &["retry", "--failed"],
    ] {
        let output = std::process::Command::new(ferry_bin())
            .args(args)
            .arg("--socket")
            .arg(&socket)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(3), "{args:?}");
        assert!(String::from_utf8_lossy(&output.stderr).contains("not running"));
    }
}

#[test]
fn config_check_reports_every_problem_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[daemon]\ntransfers = 0\nmystery = 1\n[[watch]]\npath = \"/x\"\nremote = \"none\"\n",
    )
    .unwrap();
    let output = std::process::Command::new(ferry_bin())
        .args(["config", "check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    for expected in [
        "line 2: daemon.transfers",
        "line 3: daemon.mystery",
        "line 6: watch[0].remote",
    ] {
        assert!(stderr.contains(expected), "{expected} not in {stderr}");
    }
    let good = std::process::Command::new(ferry_bin())
        .args(["config", "check", "--config"])
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(
        good.status.code(),
        Some(2),
        "a missing file named by --config is an error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_config_it_uploads_an_outbox_to_the_embedded_receiver_and_keeps_it_private() {
    let home = tempfile::tempdir().unwrap();
    // A home others may list, as many are: what Ferry keeps in it must still be private.
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let runtime = home.path().join("run");
    std::fs::create_dir_all(&runtime).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut child = std::process::Command::new(ferry_bin())
        .arg("run")
        .env("HOME", home.path())
        .env("XDG_RUNTIME_DIR", &runtime)
        .env_remove("XDG_DATA_HOME")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("FERRY_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    for _ in 0..3 {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        lines.push(line);
    }
    let outbox = lines[0]
        .trim()
        .strip_prefix("watching ")
        .unwrap()
        .to_string();
    let storage = lines[1]
        .trim()
        .rsplit("storing in ")
        .next()
        .unwrap()
        .to_string();
    assert!(
        outbox.starts_with(&*home.path().to_string_lossy()),
        "{lines:?}"
    );
    std::fs::write(format!("{outbox}/hello.txt"), b"hello").unwrap();
    let arrived = std::path::PathBuf::from(format!("{storage}/default/hello.txt"));
    wait_until("hello.txt in the embedded receiver", ARRIVAL, || {
        arrived.exists()
    })
    .await;
    let data_dir = home.path().join(".local/share/ferry");
    for private in [
        data_dir.clone(),
        data_dir.join("store"),
        data_dir.join("store/db"),
        std::path::PathBuf::from(&storage),
        arrived.clone(),
    ] {
        let mode = std::fs::metadata(&private).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", private.display());
    }
    // SAFETY: kill with a pid we own and a valid signal number.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_watches_without_losing_the_queue() {
    let receiver = Receiver::start().await;
    let setup = Setup::new(&receiver.url, "", "");
    let daemon = setup.start().await;
    assert!(setup.ferry(&["pause"]).status.success());
    std::fs::write(setup.outbox.join("queued.txt"), b"queued before the reload").unwrap();
    wait_until("queued", ARRIVAL, || setup.status()["queue"]["queued"] == 1).await;

    // The new configuration watches a second folder instead of the first.
    let second = setup.dir.path().join("second");
    std::fs::create_dir_all(&second).unwrap();
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let text = text.replace("path = \"outbox\"", "path = \"second\"");
    std::fs::write(&setup.config, text).unwrap();
    // SAFETY: kill with a pid we own and a valid signal number.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
    let second = std::fs::canonicalize(&second).unwrap();
    wait_until("the new watch list", ARRIVAL, || {
        setup.status()["watches"] == serde_json::json!([second.display().to_string()])
    })
    .await;
    assert_eq!(setup.status()["paused"], true, "a reload keeps the pause");
    assert!(setup.ferry(&["resume"]).status.success());

    std::fs::write(setup.outbox.join("unwatched.txt"), b"no longer watched").unwrap();
    std::fs::write(second.join("new.txt"), b"newly watched").unwrap();
    wait_for_copy(&second.join("new.txt"), &receiver.file("new.txt"), ARRIVAL).await;
    setup.wait_idle_with_done(2, ARRIVAL).await;
    assert!(
        receiver.file("queued.txt").exists(),
        "the job queued before the reload was kept"
    );
    // unwatched.txt was written before new.txt: a watcher of its folder would have settled it
    // first. With the intake drained, it was not taken.
    rescan_and_wait(&setup).await;
    setup.wait_idle_with_done(2, ARRIVAL).await;
    assert!(!receiver.file("unwatched.txt").exists());
    assert_eq!(daemon.terminate().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_watches_upload_under_their_own_prefixes() {
    let receiver = Receiver::start().await;
    let second_watch =
        "[[watch]]\npath = \"two\"\nremote = \"main\"\nprefix = \"two/\"\nsettle = \"300ms\"\n";
    let setup = Setup::new(&receiver.url, "prefix = \"one/\"", second_watch);
    let two = setup.dir.path().join("two");
    std::fs::create_dir_all(&two).unwrap();
    let _daemon = setup.start().await;
    std::fs::write(setup.outbox.join("a.txt"), b"first watch").unwrap();
    std::fs::write(two.join("b.txt"), b"second watch").unwrap();
    wait_for_copy(
        &setup.outbox.join("a.txt"),
        &receiver.file("one/a.txt"),
        ARRIVAL,
    )
    .await;
    wait_for_copy(&two.join("b.txt"), &receiver.file("two/b.txt"), ARRIVAL).await;
    assert_eq!(setup.status()["watches"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_vanishes_before_its_upload_is_dropped_not_failed() {
    let receiver = Receiver::start().await;
    let setup = Setup::new(&receiver.url, "", "");
    let _daemon = setup.start().await;
    assert!(setup.ferry(&["pause"]).status.success());
    std::fs::write(setup.outbox.join("fleeting.txt"), b"here for a moment").unwrap();
    wait_until("queued", ARRIVAL, || setup.status()["queue"]["queued"] == 1).await;
    std::fs::remove_file(setup.outbox.join("fleeting.txt")).unwrap();
    assert!(setup.ferry(&["resume"]).status.success());
    wait_until("the job to be dropped", ARRIVAL, || setup.jobs().is_empty()).await;
    let queue = &setup.status()["queue"];
    assert_eq!(
        (queue["failed"].as_u64(), queue["done"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(!receiver.file("fleeting.txt").exists());
}

/// The daemon run as an unprivileged user (as the system service runs): a file it may not read
/// fails with the reason and uploads after `ferry retry` once it is readable; root may control
/// it; another user is refused by the peer check even when the socket's mode would let it in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_an_unprivileged_user_unreadable_files_fail_with_the_reason_and_strangers_are_refused() {
    use crate::support::daemon::NOBODY;
    let receiver = Receiver::start().await;
    let setup = Setup::new(&receiver.url, "", "");
    let daemon = setup.start_as_nobody().await;

    // Written by root, readable by root alone.
    let secret = setup.outbox.join("secret.txt");
    std::fs::write(&secret, b"for root only").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut status = serde_json::Value::Null;
    wait_until("the unreadable file to fail", ARRIVAL, || {
        status = setup.status(); // root is let in
        status["queue"]["failed"] == 1
    })
    .await;
    let failure = &status["failed"][0];
    assert_eq!(failure["path"], secret.to_str().unwrap(), "{status}");
    let reason = failure["error"].as_str().unwrap();
    assert!(
        reason.contains("secret.txt") && reason.contains("Permission denied"),
        "the reason names the file and the cause: {reason}"
    );

    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(setup.ferry(&["retry", "--failed"]).status.success());
    wait_for_copy(&secret, &receiver.file("secret.txt"), ARRIVAL).await;

    // A third user who may not reach the socket is told so, not that the daemon is down.
    let stranger_status = || {
        std::process::Command::new("setpriv")
            .arg(format!("--reuid={}", NOBODY - 1))
            .arg(format!("--regid={}", NOBODY - 1))
            .args(["--clear-groups", "--"])
            .arg(ferry_bin())
            .arg("--socket")
            .arg(&setup.socket)
            .arg("status")
            .output()
            .unwrap()
    };
    let barred = stranger_status();
    assert_eq!(barred.status.code(), Some(4), "{barred:?}");
    assert!(String::from_utf8_lossy(&barred.stderr).contains("permission denied"));

    // Open the socket to everyone: the peer check still refuses a third user.
    for path in [
        setup.dir.path(),
        setup.socket.parent().unwrap(),
        &setup.socket,
    ] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let stranger = stranger_status();
    assert_eq!(stranger.status.code(), Some(4), "{stranger:?}");
    let said = String::from_utf8_lossy(&stranger.stderr);
    assert!(
        said.contains("only the user running the daemon (or root) may control it"),
        "{said}"
    );
    assert_eq!(daemon.terminate().await, Some(0));
}

/// `log_format = "json"`: every line the daemon logs is one JSON object with a level and a
/// message, and the upload of a file shows up in them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let receiver = Receiver::start().await;
    let setup = Setup::new(&receiver.url, "", "");
    let text = std::fs::read_to_string(&setup.config).unwrap().replacen(
        "transfers = 4\n",
        "transfers = 4\nlog_format = \"json\"\n",
        1,
    );
    std::fs::write(&setup.config, text).unwrap();
    let daemon = setup.start().await;
    std::fs::write(setup.outbox.join("logged.txt"), b"logged").unwrap();
    wait_for_copy(
        &setup.outbox.join("logged.txt"),
        &receiver.file("logged.txt"),
        ARRIVAL,
    )
    .await;
    let logs = daemon.logs.clone();
    assert_eq!(daemon.terminate().await, Some(0));
    let lines = logs.lock().unwrap().clone();
    assert!(lines.len() >= 3, "{lines:?}");
    for line in &lines {
        let record: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}"));
        assert!(record["level"].is_string(), "{line}");
        assert!(record["fields"]["message"].is_string(), "{line}");
    }
    assert!(
        lines.iter().any(|line| line.contains("logged.txt")),
        "the upload is logged: {lines:?}"
    );
}

/// `ferry status --watch` keeps printing the status, once a second, until stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_refreshes_until_stopped() {
    let receiver = Receiver::start().await;
    let setup = Setup::new(&receiver.url, "", "");
    let daemon = setup.start().await;
    let mut watcher = std::process::Command::new(ferry_bin())
        .arg("--config")
        .arg(&setup.config)
        .args(["status", "--watch"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(watcher.stdout.take().unwrap());
    let (headers_sender, headers) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in stdout.lines().map_while(Result::ok) {
            if line.starts_with("ferry ") && line.contains(" running: ") {
                let _ = headers_sender.send(line);
            }
        }
    });
    for refresh in 0..3 {
        let header = headers
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("refresh {refresh} did not come"));
        assert!(header.contains("queued"), "{header}");
    }
    watcher.kill().unwrap();
    watcher.wait().unwrap();
    assert_eq!(daemon.terminate().await, Some(0));
}

/// Hitting the inotify watch limit is reported with the sysctl to raise, and the daemon keeps
/// going: a file in a folder it could not watch still arrives, found by the periodic rescan. The
/// limit is lowered in a user namespace of the test's own, not for the machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_inotify_watch_limit_files_still_arrive_by_rescans() {
    let receiver = Receiver::start().await;
    let setup = Setup::new(&receiver.url, "", "");
    for index in 0..10 {
        std::fs::create_dir(setup.outbox.join(format!("d{index}"))).unwrap();
    }
    let mut child = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "sh", "-c"])
        .arg(r#"echo 5 > /proc/sys/user/max_inotify_watches && exec "$0" run --config "$1""#)
        .arg(ferry_bin())
        .arg(&setup.config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let logs = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = logs.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in stderr.lines().map_while(Result::ok) {
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    let mut status = serde_json::Value::Null;
    // The socket answers before the watches are placed: wait for the status to tell.
    wait_until("the status to report the watch limit", ARRIVAL, || {
        let output = setup.ferry(&["status", "--json"]);
        status = serde_json::from_slice(&output.stdout).unwrap_or_default();
        status["intake"]["watch_limited"] == true
    })
    .await;
    let said = logs.lock().unwrap().clone();
    assert!(
        said.contains("the inotify watch limit is reached")
            && said.contains("sysctl fs.inotify.max_user_watches="),
        "{said}"
    );
    assert_eq!(status["watch_health"][0]["state"], "limited", "{status}");
    let human = setup.ferry(&["status"]);
    assert_eq!(
        human.status.code(),
        Some(1),
        "status exits 1 while a watch is limited"
    );
    let human = String::from_utf8(human.stdout).unwrap();
    assert!(human.contains("rescanned every 30s"), "{human}");

    // The first folders take the five watches; the last is left to the rescans.
    let late = setup.outbox.join("d9/late.txt");
    std::fs::write(&late, b"found by a rescan").unwrap();
    wait_for_copy(
        &late,
        &receiver.file("d9/late.txt"),
        Duration::from_secs(60),
    )
    .await;
    // SAFETY: kill with a pid we own and a valid signal number.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

/// `ferry events --json` follows the daemon: three dropped files each show queued, started and
/// uploaded in that order, and the ids run one after another with no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_events_shows_each_files_events_in_order_with_ids_without_gaps() {
    use std::io::BufRead;
    let receiver = Receiver::start().await;
    let setup = Setup::new(&receiver.url, "", "");
    let _daemon = setup.start().await;
    let mut follower = std::process::Command::new(ferry_bin())
        .arg("--config")
        .arg(&setup.config)
        .args(["events", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    let stdout = std::io::BufReader::new(follower.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let names = ["one.txt", "two.txt", "three.txt"];
    for name in names {
        std::fs::write(setup.outbox.join(name), name.as_bytes()).unwrap();
    }
    let deadline = std::time::Instant::now() + ARRIVAL;
    let mut events: Vec<serde_json::Value> = Vec::new();
    while events.iter().filter(|e| e["type"] == "uploaded").count() < names.len() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = received
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("three uploads within {ARRIVAL:?}: {events:?}"));
        events.push(serde_json::from_str(&line).unwrap());
    }
    let _ = follower.kill();
    let _ = follower.wait();

    let ids: Vec<u64> = events.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    let first = ids[0];
    assert_eq!(
        ids,
        (first..first + ids.len() as u64).collect::<Vec<_>>(),
        "no gaps"
    );
    for name in names {
        let path = setup.outbox.join(name);
        let kinds: Vec<&str> = events
            .iter()
            .filter(|e| e["path"] == path.to_str().unwrap())
            .map(|e| e["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            ["queued", "started", "uploaded"],
            "{name}: {events:?}"
        );
        let uploaded = events
            .iter()
            .find(|e| e["path"] == path.to_str().unwrap() && e["type"] == "uploaded");
        assert_eq!(uploaded.unwrap()["detail"], name, "the remote path");
    }
}

/// Jobs that are due but cannot start (paused here; or every transfer slot held by an upload
/// that keeps retrying a remote that is down) leave the scheduler asleep until something
/// changes: it used to wake at once, again and again, burning CPU for nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_jobs_that_cannot_start_leave_the_daemon_idle() {
    let receiver = Receiver::start().await;
    let setup = Setup::new(&receiver.url, "", "");
    let daemon = setup.start().await;
    assert!(setup.ferry(&["pause"]).status.success());
    for index in 0..8 {
        std::fs::write(setup.outbox.join(format!("wait-{index}")), "x").unwrap();
    }
    setup
        .wait_status("8 waiting", ARRIVAL, |s| s["queue"]["queued"] == 8)
        .await;
    let pid = daemon.child.id();
    let before = proc::cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let busy = proc::cpu_seconds(pid) - before;
    assert!(busy < 0.15, "{busy:.2} CPU seconds in 3 s");

    assert!(setup.ferry(&["resume"]).status.success());
    setup.wait_idle_with_done(8, ARRIVAL).await;
}
