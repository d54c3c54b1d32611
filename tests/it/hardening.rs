//! What hostile or unlucky folders and configurations do to the daemon (issue #9): only what
//! the user put in a watched folder leaves the machine, nothing blocks a worker, and what would
//! loop, overflow or fail at run time is refused by `ferry config check`. And what a hostile
//! remote's replies do: no more than a few MiB of one is ever held.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::daemon::{Setup, wait_for_copy};
use crate::support::endless;
use crate::support::*;

const ARRIVAL: Duration = Duration::from_secs(20);

fn mkfifo(path: &Path) {
    let name = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o644) }, 0);
}

fn queued(status: &serde_json::Value) -> u64 {
    status["queue"]["queued"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_out_of_a_watched_folder_are_neither_walked_nor_uploaded() {
    let receiver = Receiver::start().await;
    let setup = Setup::new(&receiver.url, "", "");
    let outside = setup.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("before.txt"), b"outside, before the start").unwrap();
    symlink(&outside, setup.outbox.join("linked-folder")).unwrap();
    symlink(outside.join("before.txt"), setup.outbox.join("linked-file")).unwrap();
    let daemon = setup.start().await;

    // Written through the link after the start, then a file of the folder's own: a watcher
    // that followed the link would settle the first before the second.
    std::fs::write(outside.join("later.txt"), b"outside, after the start").unwrap();
    std::fs::write(setup.outbox.join("plain.txt"), b"mine").unwrap();
    wait_for_copy(
        &setup.outbox.join("plain.txt"),
        &receiver.file("plain.txt"),
        ARRIVAL,
    )
    .await;
    setup.wait_idle_with_done(1, ARRIVAL).await;
    for never in [
        "linked-file",
        "linked-folder/before.txt",
        "linked-folder/later.txt",
    ] {
        assert!(
            !receiver.file(never).exists(),
            "{never} must not be uploaded"
        );
    }
    assert_eq!(daemon.terminate().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_follows_links_uploads_through_them_and_ends_loops() {
    let receiver = Receiver::start().await;
    let setup = Setup::new(&receiver.url, "symlinks = \"follow\"", "");
    let outside = setup.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("inner.txt"), b"reached through a link").unwrap();
    symlink(&outside, setup.outbox.join("linked")).unwrap();
    // A loop: outbox/linked/back is the outbox again.
    symlink(&setup.outbox, outside.join("back")).unwrap();
    let _daemon = setup.start().await;
    wait_for_copy(
        &outside.join("inner.txt"),
        &receiver.file("linked/inner.txt"),
        ARRIVAL,
    )
    .await;
    setup.wait_idle_with_done(1, ARRIVAL).await;
    assert!(!receiver.file("linked/back/linked/inner.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_file_swapped_for_a_link_to_a_secret_is_never_read() {
    let receiver = Receiver::start().await;
    let setup = Setup::new(&receiver.url, "", "");
    let daemon = setup.start().await;
    assert!(setup.ferry(&["pause"]).status.success());
    std::fs::write(setup.outbox.join("report.txt"), b"report").unwrap();
    std::fs::create_dir_all(setup.outbox.join("sub")).unwrap();
    std::fs::write(setup.outbox.join("sub/notes.txt"), b"notes").unwrap();
    setup
        .wait_status("two files queued", ARRIVAL, |s| queued(s) == 2)
        .await;

    // The queued file becomes a link to a secret; the queued file's folder a link to a folder
    // of secrets holding the same name.
    let secrets = setup.dir.path().join("etc");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("shadow"), b"SECRET").unwrap();
    std::fs::write(secrets.join("notes.txt"), b"SECRET NOTES").unwrap();
    std::fs::remove_file(setup.outbox.join("report.txt")).unwrap();
    symlink(secrets.join("shadow"), setup.outbox.join("report.txt")).unwrap();
    std::fs::rename(setup.outbox.join("sub"), setup.dir.path().join("sub-away")).unwrap();
    symlink(&secrets, setup.outbox.join("sub")).unwrap();
    std::fs::write(setup.outbox.join("after.txt"), b"after").unwrap();
    setup
        .wait_status("the later file queued too", ARRIVAL, |s| queued(s) == 3)
        .await;
    assert!(setup.ferry(&["resume"]).status.success());

    wait_for_copy(
        &setup.outbox.join("after.txt"),
        &receiver.file("after.txt"),
        ARRIVAL,
    )
    .await;
    setup
        .wait_status("both swapped jobs dropped", ARRIVAL, |s| {
            let queue = &s["queue"];
            queue["queued"] == 0 && queue["active"] == 0 && queue["done"] == 1
        })
        .await;
    assert!(!receiver.file("report.txt").exists());
    assert!(!receiver.file("sub/notes.txt").exists());
    assert!(
        daemon.logged("it is a symbolic link"),
        "the reason is logged"
    );
    assert!(daemon.logged("a folder on its path is a symbolic link"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifos_swapped_in_for_queued_files_hold_no_worker() {
    let receiver = Receiver::start().await;
    let setup = Setup::new(&receiver.url, "", "");
    let text = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(
        &setup.config,
        text.replace("transfers = 4", "transfers = 2"),
    )
    .unwrap();
    let daemon = setup.start().await;
    assert!(setup.ferry(&["pause"]).status.success());
    for name in ["a.txt", "b.txt"] {
        std::fs::write(setup.outbox.join(name), name).unwrap();
    }
    setup
        .wait_status("two files queued", ARRIVAL, |s| queued(s) == 2)
        .await;
    for name in ["a.txt", "b.txt"] {
        std::fs::remove_file(setup.outbox.join(name)).unwrap();
        mkfifo(&setup.outbox.join(name));
    }
    std::fs::write(setup.outbox.join("c.txt"), b"behind the fifos").unwrap();
    setup
        .wait_status("the third file queued", ARRIVAL, |s| queued(s) == 3)
        .await;
    assert!(setup.ferry(&["resume"]).status.success());

    // Both transfers go to the FIFOs first (queued earlier): the third file arrives only if
    // neither holds its worker.
    wait_for_copy(
        &setup.outbox.join("c.txt"),
        &receiver.file("c.txt"),
        ARRIVAL,
    )
    .await;
    setup.wait_idle_with_done(1, ARRIVAL).await;
    assert!(daemon.logged("it is a FIFO, not a regular file"));
    let stopping = Instant::now();
    assert_eq!(daemon.terminate().await, Some(0));
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "SIGTERM ends the daemon within its grace period"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_is_not_utf8_fails_visibly() {
    let receiver = Receiver::start().await;
    let setup = Setup::new(&receiver.url, "", "");
    let daemon = setup.start().await;
    let bad = setup.outbox.join(OsStr::from_bytes(b"caf\xe9.txt"));
    std::fs::write(&bad, b"latin-1 name").unwrap();
    std::fs::write(setup.outbox.join("good.txt"), b"good").unwrap();
    wait_for_copy(
        &setup.outbox.join("good.txt"),
        &receiver.file("good.txt"),
        ARRIVAL,
    )
    .await;
    setup
        .wait_status("the badly named file failed", ARRIVAL, |s| {
            s["queue"]["failed"] == 1
        })
        .await;
    let failed = setup.ferry(&["jobs", "--state", "failed"]);
    let listing = String::from_utf8_lossy(&failed.stdout);
    assert!(
        listing.contains("not valid UTF-8"),
        "ferry jobs says why: {listing}"
    );
    assert!(daemon.logged("not valid UTF-8"));
}

/// A config edit for `config_check_refuses_…`: what to change, and what the refusal must say.
struct Refused {
    what: &'static str,
    edit: fn(&Path, String) -> String,
    says: &'static [&'static str],
}

#[test]
fn config_check_refuses_what_would_loop_overflow_or_fail_at_run_time() {
    let cases = [
        Refused {
            what: "move_to inside its own watch",
            edit: |_, t| {
                t.replace(
                    "settle = \"300ms\"",
                    "after_upload = { move_to = \"outbox/sent\" }",
                )
            },
            says: &["watch[0].after_upload", "forever"],
        },
        Refused {
            what: "a settle window that overflows",
            edit: |_, t| t.replace("\"300ms\"", "\"500000000000y\""),
            says: &["watch[0].settle", "at most 1day"],
        },
        Refused {
            what: "a backoff that overflows",
            edit: |_, t| t.replace("backoff_max = \"500ms\"", "backoff_max = \"9000000000y\""),
            says: &["upload.retry", "backoff_max"],
        },
        Refused {
            what: "a watch of a folder that does not exist",
            edit: |_, t| t.replace("path = \"outbox\"", "path = \"missing\""),
            says: &["watch[0].path", "missing"],
        },
        Refused {
            what: "a watch of a file",
            edit: |dir, t| {
                std::fs::write(dir.join("a-file"), b"").unwrap();
                t.replace("path = \"outbox\"", "path = \"a-file\"")
            },
            says: &["watch[0].path", "not a folder"],
        },
        Refused {
            what: "a data_dir that is a file",
            edit: |dir, t| {
                std::fs::write(dir.join("data"), b"").unwrap();
                t
            },
            says: &["daemon.data_dir", "not a folder"],
        },
        Refused {
            what: "a socket path longer than sun_path",
            edit: |_, t| t.replace("run/ferry.sock", &format!("run/{}.sock", "s".repeat(120))),
            says: &["daemon.socket", "at most"],
        },
        Refused {
            what: "the data folder inside a watch",
            edit: |_, t| t.replace("data_dir = \"data\"", "data_dir = \"outbox/state\""),
            says: &["watch[0].path", "data folder"],
        },
        Refused {
            what: "the same folder watched twice",
            edit: |_, t| t + "\n[[watch]]\npath = \"outbox\"\nremote = \"main\"\n",
            says: &["watch[1].path", "same folder"],
        },
        Refused {
            what: "a watch of the whole system",
            edit: |_, t| t.replace("path = \"outbox\"", "path = \"/\""),
            says: &["watch[0].path", "system folder"],
        },
    ];
    let baseline = Setup::new("http://127.0.0.1:9", "", "");
    let output = baseline.ferry(&["config", "check"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for case in cases {
        let setup = Setup::new("http://127.0.0.1:9", "", "");
        let text = std::fs::read_to_string(&setup.config).unwrap();
        std::fs::write(&setup.config, (case.edit)(setup.dir.path(), text)).unwrap();
        let output = setup.ferry(&["config", "check"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{}: {stderr}", case.what);
        for fragment in case.says.iter().chain(&["line "]) {
            assert!(
                stderr.contains(fragment),
                "{}: {fragment:?} not in {stderr}",
                case.what
            );
        }
        // `ferry run` refuses the same file before it starts anything.
        assert_eq!(
            run_exit_within(&setup, Duration::from_secs(10)),
            Some(2),
            "{}: ferry run",
            case.what
        );
    }
}

/// `ferry run` on the setup's config: its exit code, or `None` if it ran `limit`.
fn run_exit_within(setup: &Setup, limit: Duration) -> Option<i32> {
    let mut command = std::process::Command::new(ferry_bin());
    command.arg("--config").arg(&setup.config).arg("run");
    exit_within(command, limit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_a_remote_url_are_never_shown_or_logged() {
    // Nothing listens there: every attempt fails, and each failure is logged with the remote.
    let setup = Setup::new("http://ferry:hunter2@127.0.0.1:9/?token=s3cr3t", "", "");
    let check = setup.ferry(&["config", "check"]);
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{check:?}");
    assert!(
        shown.contains("http://REDACTED@127.0.0.1:9/?token=REDACTED"),
        "{shown}"
    );

    let daemon = setup.start().await;
    std::fs::write(setup.outbox.join("a.txt"), b"a").unwrap();
    wait_until("a failed attempt recorded on the job", ARRIVAL, || {
        setup.jobs().iter().any(|job| job["last_error"].is_string())
    })
    .await;
    let jobs = serde_json::to_string(&setup.jobs()).unwrap();
    assert!(
        jobs.contains("REDACTED"),
        "the remote is still named: {jobs}"
    );
    let logs = daemon.logs.lock().unwrap().join("\n");
    assert!(logs.contains("127.0.0.1:9"), "{logs}");
    for secret in ["hunter2", "s3cr3t"] {
        assert!(!logs.contains(secret), "{secret} logged: {logs}");
        assert!(!jobs.contains(secret), "{secret} in ferry jobs: {jobs}");
    }
}

/// Waits until watch 0 is in `state`, as `ferry status` reports (and exits with `code`).
async fn wait_watch_state(setup: &Setup, state: &str, code: i32) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, exit) = setup.status_and_code();
        if status["watch_health"][0]["state"] == state {
            assert_eq!(exit, Some(code), "{status}");
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "watch never became {state}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_folder_deleted_and_recreated_is_watched_again() {
    let receiver = Receiver::start().await;
    let setup = Setup::new(&receiver.url, "", "");
    let daemon = setup.start().await;
    wait_watch_state(&setup, "watching", 0).await;
    std::fs::remove_dir_all(&setup.outbox).unwrap();
    let status = wait_watch_state(&setup, "missing", 1).await;
    assert!(
        status["watch_health"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("missing")
    );
    let human = String::from_utf8(setup.ferry(&["status"]).stdout).unwrap();
    assert!(human.contains("missing"), "{human}");

    // Back, with a file made at once (found by the scan) and one made later (by events).
    std::fs::create_dir(&setup.outbox).unwrap();
    std::fs::write(setup.outbox.join("first.txt"), b"first").unwrap();
    wait_for_copy(
        &setup.outbox.join("first.txt"),
        &receiver.file("first.txt"),
        ARRIVAL,
    )
    .await;
    wait_watch_state(&setup, "watching", 0).await;
    std::fs::create_dir(setup.outbox.join("sub")).unwrap();
    std::fs::write(setup.outbox.join("sub/later.txt"), b"later").unwrap();
    wait_for_copy(
        &setup.outbox.join("sub/later.txt"),
        &receiver.file("sub/later.txt"),
        ARRIVAL,
    )
    .await;
    assert!(daemon.logged("watch degraded"), "the loss is logged");
    assert_eq!(daemon.terminate().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_subfolder_is_skipped_and_the_rest_is_watched() {
    use std::os::unix::fs::PermissionsExt;
    let receiver = Receiver::start().await;
    let setup = Setup::new(&receiver.url, "", "");
    for folder in ["a", "locked", "z"] {
        std::fs::create_dir(setup.outbox.join(folder)).unwrap();
    }
    std::fs::write(setup.outbox.join("locked/inside.txt"), b"inside").unwrap();
    // As nobody, who will own `locked` with no permission at all: it can neither be listed
    // nor watched. (Root could read it anyway.)
    let locked = setup.outbox.join("locked");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    let daemon = setup.start_as_nobody().await;
    let status = wait_watch_state(&setup, "unreadable", 1).await;
    let detail = status["watch_health"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("locked"), "{detail}");

    for name in ["a/new.txt", "z/new.txt"] {
        let path = setup.outbox.join(name);
        std::fs::write(&path, name).unwrap();
        std::os::unix::fs::lchown(&path, Some(crate::support::daemon::NOBODY), None).unwrap();
        wait_for_copy(&path, &receiver.file(name), ARRIVAL).await;
    }
    // A reload keeps watching the rest too.
    // SAFETY: kill with a pid we own and a valid signal number.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
    let path = setup.outbox.join("z/after-reload.txt");
    std::fs::write(&path, b"after the reload").unwrap();
    wait_for_copy(&path, &receiver.file("z/after-reload.txt"), ARRIVAL).await;

    // Mended, it is watched again by the next periodic rescan, with its file.
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    wait_watch_state(&setup, "watching", 0).await;
    wait_for_copy(
        &locked.join("inside.txt"),
        &receiver.file("locked/inside.txt"),
        ARRIVAL,
    )
    .await;
}

/// Writes `path` until its disk is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 64 * 1024];
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) if error.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(error) => panic!("filling {}: {error}", path.display()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_data_folder_is_reported_and_the_daemon_recovers_when_space_returns() {
    let receiver = Receiver::start().await;
    let setup = Setup::new(&receiver.url, "", "");
    let _disk = Tmpfs::mount(&setup.dir.path().join("data"), "8m");
    let daemon = setup.start().await;
    let filler = setup.dir.path().join("data/filler");
    fill(&filler);
    for index in 0..10 {
        std::fs::write(
            setup.outbox.join(format!("f{index}.txt")),
            b"waits for space",
        )
        .unwrap();
    }
    let deadline = Instant::now() + ARRIVAL;
    let status = loop {
        let (status, code) = setup.status_and_code();
        if status["store_problem"].is_string() {
            assert_eq!(code, Some(1), "{status}");
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the full store was never reported: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status["store_problem"]
            .as_str()
            .unwrap()
            .contains("no space left on"),
        "{status}"
    );

    // Failing, it neither spins nor floods the log (it did: 100% CPU, 73,000 lines in 15 s).
    let pid = daemon.child.id();
    let (lines, cpu) = (
        daemon.logs.lock().unwrap().len(),
        crate::support::proc::cpu_seconds(pid),
    );
    tokio::time::sleep(Duration::from_secs(2)).await; // the window measured
    let added = daemon.logs.lock().unwrap().len() - lines;
    let used = crate::support::proc::cpu_seconds(pid) - cpu;
    assert!(added < 20, "{added} log lines in 2 s");
    assert!(used < 0.5, "{used:.2} s of CPU in 2 s");

    std::fs::remove_file(&filler).unwrap();
    for index in 0..10 {
        let name = format!("f{index}.txt");
        wait_for_copy(
            &setup.outbox.join(&name),
            &receiver.file(&name),
            Duration::from_secs(40),
        )
        .await;
    }
    setup.wait_idle_with_done(10, ARRIVAL).await;
    assert!(daemon.logged("store: writable again"));
    assert_eq!(daemon.terminate().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_damaged_while_stopped_is_reported_not_silently_reset() {
    let receiver = Receiver::start().await;
    let setup = Setup::new(&receiver.url, "", "");
    let daemon = setup.start().await;
    for index in 0..40 {
        std::fs::write(
            setup.outbox.join(format!("f{index}.txt")),
            index.to_string(),
        )
        .unwrap();
    }
    setup.wait_idle_with_done(40, ARRIVAL).await;
    assert_eq!(daemon.terminate().await, Some(0));

    // Damaged while stopped: the store's file cut short.
    let db = setup.dir.path().join("data/store/db");
    let size = std::fs::metadata(&db).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    file.set_len(size * 3 / 5).unwrap();
    drop(file);
    let daemon = setup.start().await;
    let (status, code) = setup.status_and_code();
    let problem = status["store_problem"].as_str().unwrap_or_default();
    assert!(problem.contains("damaged"), "{status}");
    assert_eq!(code, Some(1));
    assert!(daemon.logged("store damaged"), "the damage is logged");

    // A second daemon on the same store is told the real cause.

    let second = std::process::Command::new(ferry_bin())
        .arg("--config")
        .arg(&setup.config)
        .arg("--socket")
        .arg(setup.dir.path().join("other.sock"))
        .arg("run")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{said}");
    assert!(said.contains("another ferry process is using it"), "{said}");
}

/// A remote that answers with a body that never ends (an S3 remote and a native one): each
/// reply is read chunk by chunk and refused once it is over 8 MiB, so the push fails at once,
/// saying why, and never holds more than that (peak RSS about 28 MiB). Read whole, such a
/// reply grew until the 60 s request timeout: past 3.7 GB in 11 s on loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_that_answers_an_endless_body_is_refused_in_bounded_memory() {
    let server = endless::server().await;
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("six.bin");
    random_file(&local, 6 * MIB, 3);
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "secret\n").unwrap();
    let config = dir.path().join("config.toml");
    let remote = format!(
        "[remotes.s3]\nkind = \"s3\"\nendpoint = \"{server}\"\nregion = \"us-east-1\"\nbucket = \"hostile\"\naccess_key_id = \"AK\"\nsecret_access_key_file = \"{}\"\n",
        secret.display()
    );
    std::fs::write(&config, remote).unwrap();
    let token = token_file(dir.path());
    let s3 = [
        "--config",
        path(&config),
        "push",
        "--remote",
        "s3",
        "--chunk-size",
        "5MiB",
    ];
    let native = ["push", "--url", &server, "--token-file", path(&token)];
    for (kind, args) in [("s3", &s3[..]), ("native", &native[..])] {
        let started = Instant::now();
        let (code, peak_kib, stderr) = measured_push(args, &dir.path().join(kind), &local).await;
        assert_eq!(code, Some(1), "{kind}: {stderr}");
        let said = "sent an invalid reply: the reply's body is over 8 MiB";
        assert!(stderr.contains(said), "{kind}: {stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{kind}: no retries"
        );
        assert!(
            peak_kib <= endless::PEAK_LIMIT_KIB,
            "{kind}: peak RSS {peak_kib} KiB"
        );
    }
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `ferry <args>` pushing `local` with its data in `data`: its exit code, its peak resident
/// memory in KiB, and what it printed to stderr.
async fn measured_push(args: &[&str], data: &Path, local: &Path) -> (Option<i32>, u64, String) {
    std::fs::create_dir_all(data).unwrap();
    let stderr = data.join("stderr");
    let mut push = std::process::Command::new(ferry_bin());
    push.args(args).arg("--data-dir").arg(data).arg(local);
    push.stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap());
    let (code, peak_kib) = endless::run_measured(push).await;
    (code, peak_kib, std::fs::read_to_string(&stderr).unwrap())
}
