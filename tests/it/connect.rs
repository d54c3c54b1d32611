//! `ferry config check --connect`: an upload opened and aborted at each remote, against real
//! servers (moto, s3s-fs, `ferry serve`); what cannot be used is named, and nothing is left.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ferry::upload::S3Backend;

use crate::s3::{creates, proxy_before};
use crate::support::s3::{Flavor, S3Server};
use crate::support::{ServeProcess, ferry_bin, token_file};

/// Five remotes: moto behind a recording proxy, s3s-fs (which ignores CRC32C), s3s-fs with a
/// wrong secret, moto without the bucket, and a native receiver. The good ones are each
/// reached by one upload opened and aborted, the bad ones named with the server's refusal,
/// within seconds; none keeps an open upload or session; `--remote` picks one. A remote whose
/// uploads orphan cleanup could not list (s3s-fs has no ListMultipartUploads) is said so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_connect_opens_and_aborts_an_upload_at_each_remote_and_names_what_fails() {
    let dir = tempfile::tempdir().unwrap();
    let moto = S3Server::start(Flavor::Moto).await;
    let proxy = proxy_before(&moto).await;
    let fs = S3Server::start(Flavor::S3sFs).await;
    let storage = dir.path().join("received");
    let receiver = ServeProcess::spawn(&storage, "127.0.0.1:0", &token_file(dir.path()));
    let config = write_config(dir.path(), &moto, &proxy.url, &fs, &receiver);

    let started = Instant::now();
    let output = check(&config, &["--connect"]);
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20), "fails fast");
    reached_with_notices(&stdout);
    assert!(
        stderr.contains("2 remote(s) cannot take uploads"),
        "{stderr}"
    );
    let denied = line_of(&stderr, "remotes.denied: ");
    assert!(denied.contains("403 SignatureDoesNotMatch"), "{stderr}");
    let missing = line_of(&stderr, "remotes.nobucket: ");
    assert!(missing.contains("404 NoSuchBucket"), "{stderr}");

    let log = proxy.log();
    assert_eq!(creates(&log), 1, "one upload opened at moto: {log:?}");
    let aborts = log.iter().filter(|seen| seen.method == "DELETE").count();
    assert_eq!(aborts, 1, "and aborted: {log:?}");
    let direct = S3Backend::new(&moto.config("")).unwrap();
    assert!(direct.open_uploads().await.unwrap().is_empty());
    assert!(moto.list("").await.is_empty(), "no object stored");
    assert_eq!(
        session_states(&storage),
        ["aborted"],
        "the receiver's one session"
    );

    let only = check(&config, &["--connect", "--remote", "native"]);
    let (stdout, stderr) = texts(&only);
    assert!(only.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("# remotes.native: opened and aborted"));
    assert!(!stdout.contains("remotes.moto: opened"), "{stdout}");
    let unknown = check(&config, &["--connect", "--remote", "nosuch"]);
    let (_, stderr) = texts(&unknown);
    assert_eq!(unknown.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--remote nosuch: no such remote"),
        "{stderr}"
    );
}

/// The built-in default's one remote is the daemon's embedded receiver: nothing to connect to,
/// which is said, and no failure.
#[test]
fn config_check_connect_says_the_embedded_receiver_has_nothing_to_connect_to() {
    let home = tempfile::tempdir().unwrap();
    let output = Command::new(ferry_bin())
        .args(["config", "check", "--connect"])
        .env("HOME", home.path())
        .env_remove("XDG_DATA_HOME")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("FERRY_CONFIG")
        .output()
        .unwrap();
    let (stdout, stderr) = texts(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let said = "# remotes.embedded: the daemon's embedded receiver, started with it: nothing to \
                connect to";
    assert!(stdout.contains(said), "{stdout}");
}

/// Each good remote is said to be reached, with what s3s-fs was seen to ignore and lack: it
/// alone checks no CRC32C and has no ListMultipartUploads.
fn reached_with_notices(stdout: &str) {
    for name in ["moto", "fs", "native"] {
        let said = format!("# remotes.{name}: opened and aborted an upload of \".ferry-check-");
        assert!(stdout.contains(&said), "{name} reached: {stdout}");
    }
    assert!(
        stdout.contains("#   the server ignores CRC32C checksums"),
        "s3s-fs's notice: {stdout}"
    );
    let unlisted = "#   orphan cleanup cannot list the open uploads: ListMultipartUploads \
                    refused by";
    let notices: Vec<&str> = stdout.lines().filter(|l| l.starts_with(unlisted)).collect();
    assert_eq!(notices.len(), 1, "{stdout}");
    assert!(notices[0].contains("501 NotImplemented"), "{stdout}");
}

/// The configuration of the five remotes (moto reached through `moto_url`) and a watch.
fn write_config(
    dir: &Path,
    moto: &S3Server,
    moto_url: &str,
    fs: &S3Server,
    receiver: &ServeProcess,
) -> std::path::PathBuf {
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let wrong = dir.join("wrong-secret");
    std::fs::write(&wrong, "not-the-secret\n").unwrap();
    std::fs::create_dir_all(dir.join("outbox")).unwrap();
    let remotes = [
        moto.remote_toml_in("moto", "probe/", &secrets)
            .replace(&moto.endpoint, moto_url),
        fs.remote_toml_in("fs", "", &secrets),
        fs.remote_toml("denied", "", &wrong),
        moto.remote_toml_in("nobucket", "", &secrets)
            .replace("ferry-test", "no-such-bucket"),
        format!(
            "[remotes.native]\nkind = \"native\"\nurl = \"http://{}\"\nworkspace_id = \"default\"\ntoken_file = \"token\"\n",
            receiver.address
        ),
    ];
    let text = format!(
        "[daemon]\ndata_dir = \"data\"\nsocket = \"run/ferry.sock\"\n\n[[watch]]\npath = \"outbox\"\nremote = \"moto\"\n\n{}",
        remotes.join("\n")
    );
    let config = dir.join("config.toml");
    std::fs::write(&config, text).unwrap();
    config
}

fn check(config: &Path, flags: &[&str]) -> Output {
    Command::new(ferry_bin())
        .arg("--config")
        .arg(config)
        .args(["config", "check"])
        .args(flags)
        .output()
        .unwrap()
}

fn texts(output: &Output) -> (String, String) {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (text(&output.stdout), text(&output.stderr))
}

/// The line of `text` that holds `marker`.
fn line_of<'a>(text: &'a str, marker: &str) -> &'a str {
    let line = text.lines().find(|line| line.contains(marker));
    line.unwrap_or_else(|| panic!("no line with {marker:?} in {text}"))
}

/// The state of each session record `ferry serve` keeps in `storage` (an aborted one stays
/// until it expires).
fn session_states(storage: &Path) -> Vec<String> {
    let sessions = std::fs::read_dir(storage.join(".ferry/sessions")).unwrap();
    let record = |entry: std::fs::DirEntry| {
        let text = std::fs::read(entry.path().join("session.json")).unwrap();
        let record: serde_json::Value = serde_json::from_slice(&text).unwrap();
        record["state"].as_str().unwrap().to_string()
    };
    sessions.map(|entry| record(entry.unwrap())).collect()
}
