//! Ferry as a service: the sd_notify conversation with a (stand-in) service manager, and
//! `ferry service install` writing units that systemd accepts.

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::daemon::Setup;
use crate::support::*;

/// What systemd would receive on `NOTIFY_SOCKET`: one datagram per call, one `KEY=value` a line.
struct NotifySocket {
    path: std::path::PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
}

impl NotifySocket {
    fn bind(dir: &std::path::Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(length) = socket.recv(&mut buffer) {
                let text = String::from_utf8_lossy(&buffer[..length]).into_owned();
                sink.lock().unwrap().extend(text.lines().map(str::to_owned));
            }
        });
        NotifySocket { path, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn count(&self, line: &str) -> usize {
        self.lines().iter().filter(|l| *l == line).count()
    }

    fn statuses(&self) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter_map(|l| l.strip_prefix("STATUS=").map(str::to_owned))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_the_daemon_reports_ready_status_watchdog_and_stopping() {
    let receiver = Receiver::start().await;
    let setup = Setup::new(&receiver.url, "", "");
    let notify = NotifySocket::bind(setup.dir.path());
    let daemon = setup
        .start_with_env(&[
            ("NOTIFY_SOCKET", notify.path.to_str().unwrap()),
            // Half of it, 200 ms, between pings.
            ("WATCHDOG_USEC", "400000"),
        ])
        .await;
    wait_until("READY=1", Duration::from_secs(10), || {
        notify.count("READY=1") == 1
    })
    .await;
    assert!(
        notify.statuses().iter().all(|s| !s.contains("3 done")),
        "nothing is done yet: {:?}",
        notify.lines()
    );

    for index in 0..3 {
        random_file(&setup.outbox.join(format!("s{index}.bin")), 2 * MIB, index);
    }
    wait_until(
        "a STATUS line with the 3 files done",
        Duration::from_secs(30),
        || {
            notify
                .statuses()
                .iter()
                .any(|s| s.starts_with("0 queued, 0 active, 0 failed, 3 done"))
        },
    )
    .await;
    assert!(
        notify.statuses().len() >= 2,
        "the status line follows the queue: {:?}",
        notify.statuses()
    );
    let pings = notify.count("WATCHDOG=1");
    wait_until("three more watchdog pings", Duration::from_secs(10), || {
        notify.count("WATCHDOG=1") >= pings + 3
    })
    .await;

    assert_eq!(daemon.terminate().await, Some(0));
    assert_eq!(notify.count("STOPPING=1"), 1, "{:?}", notify.lines());
    let lines = notify.lines();
    let ready = lines.iter().position(|l| l == "READY=1").unwrap();
    let first_ping = lines.iter().position(|l| l == "WATCHDOG=1").unwrap();
    assert!(
        ready < first_ping,
        "the watchdog starts once ready: {lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_is_reported_as_reloading_then_ready() {
    let receiver = Receiver::start().await;
    let setup = Setup::new(&receiver.url, "", "");
    let notify = NotifySocket::bind(setup.dir.path());
    let daemon = setup
        .start_with_env(&[("NOTIFY_SOCKET", notify.path.to_str().unwrap())])
        .await;
    wait_until("READY=1", Duration::from_secs(10), || {
        notify.count("READY=1") == 1
    })
    .await;
    assert_eq!(notify.count("WATCHDOG=1"), 0, "no watchdog was asked for");
    // SAFETY: kill with a pid we own and a valid signal number.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
    wait_until("READY=1 after the reload", Duration::from_secs(10), || {
        notify.count("READY=1") == 2
    })
    .await;
    let lines = notify.lines();
    let reloading = lines.iter().position(|l| l == "RELOADING=1").unwrap();
    assert!(
        lines[reloading + 1].starts_with("MONOTONIC_USEC="),
        "{lines:?}"
    );
    let ready_again = lines.iter().rposition(|l| l == "READY=1").unwrap();
    assert!(reloading < ready_again, "{lines:?}");
    assert_eq!(daemon.terminate().await, Some(0));
}

/// `ferry service install --user` where no systemd runs: it writes the unit under `HOME`, prints
/// the commands to run, writes a unit systemd accepts, and a second run changes nothing.
#[test]
fn service_install_writes_a_valid_user_unit_once_and_prints_the_commands() {
    let home = tempfile::tempdir().unwrap();
    let install = || {
        let output = std::process::Command::new(ferry_bin())
            .args(["service", "install", "--user"])
            .env("HOME", home.path())
            .env_remove("XDG_CONFIG_HOME")
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let unit = home.path().join(".config/systemd/user/ferry.service");
    let first = install();
    assert!(
        first.contains(&format!("wrote {}", unit.display())),
        "{first}"
    );
    assert!(
        first.contains("\n  systemctl --user daemon-reload\n")
            && first.contains("\n  systemctl --user enable ferry.service\n"),
        "{first}"
    );
    let text = std::fs::read_to_string(&unit).unwrap();
    let binary = std::fs::canonicalize(ferry_bin()).unwrap();
    assert!(
        text.contains(&format!("\nExecStart={} run\n", binary.display())),
        "{text}"
    );
    assert!(text.contains("\nType=notify\n") && text.contains("\nWatchdogSec="));
    // The man page is not installed here, so systemd-analyze is told not to look for it.
    let verify = std::process::Command::new("systemd-analyze")
        .args(["--user", "verify", "--man=no"])
        .arg(&unit)
        .env("XDG_RUNTIME_DIR", home.path())
        .output()
        .expect("systemd-analyze (Debian's systemd package) is installed");
    assert!(verify.status.success(), "{verify:?}");
    assert!(
        verify.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    let modified = std::fs::metadata(&unit).unwrap().modified().unwrap();
    let second = install();
    assert!(second.contains("is up to date"), "{second}");
    assert!(!second.contains("wrote"), "{second}");
    assert_eq!(std::fs::read_to_string(&unit).unwrap(), text);
    assert_eq!(
        std::fs::metadata(&unit).unwrap().modified().unwrap(),
        modified
    );
}

/// The launchd agent in packaging/ is a property list with what launchd needs to keep Ferry
/// running, read by Python's plistlib (what macOS's own tools accept, without a Mac).
#[test]
fn the_launchd_agent_is_a_property_list_with_the_expected_keys() {
    let plist = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/launchd/io.ferry.daemon.plist"
    );
    let script = r#"
import plistlib, sys
agent = plistlib.load(open(sys.argv[1], "rb"))
assert agent["Label"] == "io.ferry.daemon", agent
assert agent["ProgramArguments"][-1] == "run", agent
assert agent["ProgramArguments"][0].endswith("/ferry"), agent
assert agent["RunAtLoad"] is True, agent
assert agent["KeepAlive"] == {"SuccessfulExit": False}, agent
assert agent["StandardOutPath"] and agent["StandardErrorPath"], agent
print("ok")
"#;
    let output = std::process::Command::new("python3")
        .args(["-c", script, plist])
        .output()
        .expect("python3 is installed");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
