//! How clients reach remotes. Over TLS: a real TLS terminator (`support::tls`) with a CA made
//! for the test, in front of s3s-fs and of a receiver. A remote trusts the CA through
//! `ca_cert` (`--ca-cert`), refuses an unknown one at once with a message that says what to
//! do, and a machine without any CA certificates still uploads over plain HTTP. Through a
//! proxy: `HTTP_PROXY` is used for remotes elsewhere, never for one on loopback.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ferry::upload::S3Backend;

use crate::s3::{assert_stored, config_file, proxy_before, push};
use crate::support::fault_proxy::{Fault, FaultProxy};
use crate::support::s3::{Flavor, S3Server};
use crate::support::tls::TlsFront;
use crate::support::{MIB, Receiver, assert_same_content, ferry_bin, random_file, token_file};

/// Asserts `output` is a failure that came at once (no retries) and whose message says each
/// of `words`.
fn refused_at_once(output: &Output, started: Instant, words: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    for word in words {
        assert!(stderr.contains(word), "the message says {word:?}: {stderr}");
    }
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(10), "no retries: {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_remote_over_tls_trusts_its_ca_cert_or_aws_ca_bundle_and_refuses_an_unknown_ca_at_once()
 {
    let dir = tempfile::tempdir().unwrap();
    let server = S3Server::start(Flavor::S3sFs).await;
    let target = server
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let front = TlsFront::start(target, dir.path()).await;
    // Two parts at --chunk-size 5MiB: the multipart calls go over TLS too.
    let local = dir.path().join("secure.bin");
    random_file(&local, 6 * MIB + 1, 41);
    let config = config_file(dir.path(), &server, &front.url());

    let started = Instant::now();
    let output = push(&config, &dir.path().join("data"), &local)
        .output()
        .unwrap();
    let address = front.url().replace("https://", "");
    refused_at_once(&output, started, &["certificate", "ca_cert", &address]);
    assert_eq!(front.handshakes(), 0, "the certificate was refused");
    assert_eq!(server.get("pushed/secure.bin").await, None);

    // Without ca_cert, the AWS CLI's AWS_CA_BUNDLE names the CA.
    let mut push_named = push(&config, &dir.path().join("data"), &local);
    let output = push_named
        .env("AWS_CA_BUNDLE", &front.ca_pem)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_stored(&server, "pushed/secure.bin", &local, "with AWS_CA_BUNDLE").await;

    // The file holds the remote's table alone: a key appended is the remote's.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\nca_cert = {:?}\n", front.ca_pem)).unwrap();
    let output = push(&config, &dir.path().join("data"), &local)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(front.handshakes() >= 1, "the push went through TLS");
    assert_stored(&server, "pushed/secure.bin", &local, "over TLS").await;
}

/// `ferry push --url URL` of `local` as `name`, with `extra` flags, on a machine whose CA
/// certificates are missing (`SSL_CERT_FILE` and `SSL_CERT_DIR` name nothing).
fn push_without_system_cas(dir: &Path, url: &str, local: &Path, extra: &[&str]) -> Output {
    let name = local.file_name().unwrap().to_str().unwrap();
    Command::new(ferry_bin())
        .args(["push", "--url", url, "--name", name])
        .args(extra)
        .arg("--token-file")
        .arg(token_file(dir))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg(local)
        .env("SSL_CERT_FILE", dir.join("no-such-bundle.pem"))
        .env("SSL_CERT_DIR", dir.join("no-such-dir"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_without_ca_certificates_uploads_over_http_and_to_a_receiver_with_a_ca_cert() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let front = TlsFront::start(receiver.address, dir.path()).await;
    let plain = dir.path().join("plain.bin");
    random_file(&plain, MIB, 42);
    let output = push_without_system_cas(dir.path(), &receiver.url, &plain, &[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_same_content(&plain, &receiver.file("plain.bin"));

    let secure = dir.path().join("secure.bin");
    random_file(&secure, 3 * MIB, 43);
    let started = Instant::now();
    let output = push_without_system_cas(dir.path(), &front.url(), &secure, &[]);
    refused_at_once(&output, started, &["no CA certificates", "ca-certificates"]);

    let ca = front.ca_pem.to_str().unwrap();
    let output = push_without_system_cas(dir.path(), &front.url(), &secure, &["--ca-cert", ca]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(front.handshakes() >= 1, "the push went through TLS");
    assert_same_content(&secure, &receiver.file("secure.bin"));
}

/// `ferry push --url URL` of `local` with `proxy` as every proxy variable names it.
fn push_with_proxy(dir: &Path, url: &str, local: &Path, proxy: &str) -> Output {
    let mut command = Command::new(ferry_bin());
    command
        .args(["push", "--url", url, "--token-file"])
        .arg(token_file(dir))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg(local);
    for name in ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"] {
        command.env(name, proxy);
    }
    command.env_remove("NO_PROXY").env_remove("no_proxy");
    command.output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_carries_uploads_to_remotes_elsewhere_but_never_to_one_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    // A forwarding proxy: what reaches it goes on to the receiver, whatever host it names.
    let proxy = FaultProxy::start(receiver.address).await;
    let far = dir.path().join("far.bin");
    random_file(&far, MIB, 44);
    let output = push_with_proxy(
        dir.path(),
        "http://files.example.test:7373",
        &far,
        &proxy.url,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let through = proxy.log().len();
    assert!(
        through >= 2,
        "init, parts and complete went through the proxy"
    );
    assert_same_content(&far, &receiver.file("far.bin"));

    let near = dir.path().join("near.bin");
    random_file(&near, MIB, 45);
    let output = push_with_proxy(dir.path(), &receiver.url, &near, &proxy.url);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        proxy.log().len(),
        through,
        "nothing to loopback went through the proxy"
    );
    assert_same_content(&near, &receiver.file("near.bin"));
}

/// An address that redirects (a front sending http to https, a host that moved) fails the
/// file at once, naming where it points, and nothing reaches the server behind it. Followed,
/// a 301 turns S3's CreateMultipartUpload into a GetObject, and a 307 or 308 opens an upload
/// (S3's or a receiver's session) whose streamed parts then cannot follow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_redirects_fails_at_once_naming_where_it_points() {
    let dir = tempfile::tempdir().unwrap();
    let [large, small] = ["large.bin", "small.bin"].map(|name| dir.path().join(name));
    random_file(&large, 6 * MIB, 95);
    random_file(&small, 100, 96);
    let moto = S3Server::start(Flavor::Moto).await;
    let front = proxy_before(&moto).await;
    let config = config_file(dir.path(), &moto, &front.url);
    let direct = S3Backend::new(&moto.config("")).unwrap();
    for status in [301, 307, 308] {
        front.set_plan(move |_, _| Some(Fault::Redirect { status }));
        let started = Instant::now();
        let mut command = push(&config, &dir.path().join("data"), &large);
        let output = command.arg(&small).output().unwrap();
        let pointed = format!("redirected to {}/ferry-test/pushed/", moto.endpoint);
        let said = ["CreateMultipartUpload refused by", "PutObject refused by"];
        refused_at_once(&output, started, &[said[0], said[1], &pointed]);
        let uploads = direct.open_uploads().await.unwrap();
        assert!(
            uploads.is_empty(),
            "{status}: none opened at moto: {uploads:?}"
        );
        assert!(moto.list("").await.is_empty(), "{status}: nothing stored");
    }

    let receiver = Receiver::start().await;
    let front = FaultProxy::start(receiver.address).await;
    front.set_plan(|_, _| Some(Fault::Redirect { status: 308 }));
    let started = Instant::now();
    let output = Command::new(ferry_bin())
        .args(["push", "--url", &front.url, "--token-file"])
        .arg(token_file(dir.path()))
        .arg("--data-dir")
        .arg(dir.path().join("native"))
        .arg(&large)
        .output()
        .unwrap();
    let pointed = format!("308 redirect: redirected to {}/v1/", receiver.url);
    refused_at_once(&output, started, &["init refused by", &pointed]);
    let held: Vec<_> = walkdir(&receiver.storage);
    assert!(held.is_empty(), "no session at the receiver: {held:?}");
}

/// The files under `dir`, at any depth.
fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|entry| match entry.path().is_dir() {
            true => walkdir(&entry.path()),
            false => vec![entry.path()],
        })
        .collect()
}
