//! S3 remotes against real S3 servers started by each test (`support::s3`): moto and s3s-fs.
//! Objects are read back through the server. A behaviour only one server shows is tested there:
//! signatures on s3s-fs (moto accepts any), missing buckets and ListMultipartUploads on moto
//! (s3s-fs creates buckets on demand and has no listing).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry::upload::backend::{Backend, CreateRequest, PartBody, PartSpec, PartSums, SessionRef};
use ferry::upload::s3::{Checksum, CustomerKey, Encryption};
use ferry::upload::{ChunkSize, Progress, S3Backend, UploadJob, UploadSettings};

use crate::support::daemon::Setup;
use crate::support::fault_proxy::{Fault, FaultProxy, RequestHead, Seen, query_param};
use crate::support::garage::{self, Garage};
use crate::support::s3::{Flavor, S3Server, SECRET_KEY};
use crate::support::{
    Engine, MIB, exit_within, fast_retry_settings, ferry_bin, random_file, wait_until,
};

const BOTH: [Flavor; 2] = [Flavor::Moto, Flavor::S3sFs];
/// The two and Ceph's gateway, for what a test can check on all three: the gateway's remotes
/// send Content-MD5 (`S3Server::config`), so its first PutObject is not sent twice.
const WITH_CEPH: [Flavor; 3] = [Flavor::Moto, Flavor::S3sFs, Flavor::CephRgw];

/// The engine on `server`, with parts of S3's minimum size so that part counts are known.
fn engine(server: &S3Server, prefix: &str) -> Engine {
    let backend = S3Backend::new(&server.config(prefix)).unwrap();
    let settings = UploadSettings {
        chunk_size: ChunkSize::Fixed(5 * MIB),
        ..UploadSettings::default()
    };
    Engine::with_backend(Arc::new(backend), settings)
}

/// The engine on `server` through `proxy`.
fn engine_through(
    server: &S3Server,
    proxy: &FaultProxy,
    prefix: &str,
    settings: UploadSettings,
) -> Engine {
    let mut config = server.config(prefix);
    config.endpoint = Some(proxy.url.clone());
    Engine::with_backend(Arc::new(S3Backend::new(&config).unwrap()), settings)
}

/// Has `proxy` meet the first CompleteMultipartUpload with `fault`.
fn fault_first_complete(proxy: &FaultProxy, fault: Fault) {
    let met = std::sync::atomic::AtomicBool::new(false);
    proxy.set_plan(move |head, _| {
        let first = is_complete(&head.method, &head.path) && !met.swap(true, SeqCst);
        first.then_some(fault)
    });
}

/// Sizes around S3's 5 MiB part minimum and a 200 MiB file, each read back byte-identical; a
/// file of at most one part goes in one PutObject, a larger one in parts.
async fn edge_sizes(flavor: Flavor) {
    let server = S3Server::start(flavor).await;
    let engine = engine(&server, "edge/");
    let dir = tempfile::tempdir().unwrap();
    let sizes = [0, 1, 5 * MIB - 1, 5 * MIB, 5 * MIB + 1, 200 * MIB];
    for (seed, size) in sizes.into_iter().enumerate() {
        let name = format!("size-{size}.bin");
        let local = dir.path().join(&name);
        random_file(&local, size, seed as u64);
        let report = engine.upload_cleanly(&local, &name).await;
        let expected_parts = match size {
            s if s <= 5 * MIB => 1,
            s if s == 5 * MIB + 1 => 2,
            s => s.div_ceil(5 * MIB),
        };
        assert_eq!(
            u64::from(report.parts),
            expected_parts,
            "{name}: {report:?}"
        );
        let (key, what) = (format!("edge/{name}"), format!("{flavor:?} {name}"));
        assert_stored(&server, &key, &local, &what).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_sizes_arrive_byte_identical_in_moto() {
    edge_sizes(Flavor::Moto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_sizes_arrive_byte_identical_in_s3s_fs() {
    edge_sizes(Flavor::S3sFs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_sizes_arrive_byte_identical_in_ceph() {
    edge_sizes(Flavor::CephRgw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_content_type_and_mtime_are_stored_for_single_and_multipart_objects() {
    for flavor in WITH_CEPH {
        let server = S3Server::start(flavor).await;
        let engine = engine(&server, "");
        let dir = tempfile::tempdir().unwrap();
        for (name, size) in [("small.jpg", 1000), ("large.json", 6 * MIB)] {
            let local = dir.path().join(name);
            random_file(&local, size, 9);
            // 2021-05-06T07:08:09.123456789Z, kept as rclone keeps it.
            let mtime = std::time::UNIX_EPOCH + Duration::new(1_620_284_889, 123_456_789);
            std::fs::File::options()
                .write(true)
                .open(&local)
                .unwrap()
                .set_modified(mtime)
                .unwrap();
            let job = UploadJob {
                local_path: local.clone(),
                remote_path: format!("meta/{name}"),
                mime_type: None,
                metadata: [("camera", "north-gate"), ("note", "café au lait")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                reach: ferry::upload::Reach::AsGiven,
                expected: None,
            };
            let progress = Arc::new(Progress::default());
            engine.uploader.upload(&job, progress).await.unwrap();
            let headers = server.head(&format!("meta/{name}")).await;
            let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_string());
            let expected_type = match name.ends_with(".jpg") {
                true => "image/jpeg",
                false => "application/json",
            };
            assert_eq!(
                header("content-type").as_deref(),
                Some(expected_type),
                "{flavor:?} {name}"
            );
            assert_eq!(
                header("x-amz-meta-camera").as_deref(),
                Some("north-gate"),
                "{flavor:?} {name}"
            );
            assert_eq!(
                header("x-amz-meta-mtime").as_deref(),
                Some("1620284889.123456789"),
                "{flavor:?} {name}"
            );
            let note = header("x-amz-meta-note").unwrap();
            assert_eq!(
                decode_rfc2047(&note),
                "café au lait",
                "{flavor:?} {name}: {note}"
            );
        }
    }
}

/// Names that S3 requests must encode (spaces, `+`, `%`, `#`, `?`, `&`, `=`, brackets, accents,
/// CJK), sent whole and in parts, are stored under exactly those keys, as the server lists them,
/// on servers that check signatures (s3s-fs, Ceph's gateway) and on moto.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_names_are_stored_under_exactly_those_keys() {
    let names = [
        "with space/and+plus.txt",
        "100% sure & x=y.txt",
        "hash#question?mark.txt",
        "brackets [1] (2) {3} 'q' !$,;@~.txt",
        "unicode/café 日本.txt",
        "multi part/ü + é=.bin",
    ];
    let dir = tempfile::tempdir().unwrap();
    let locals: Vec<PathBuf> = (0..names.len())
        .map(|i| dir.path().join(format!("{i}.bin")))
        .collect();
    for (i, local) in locals.iter().enumerate() {
        let size = if i + 1 == names.len() { 6 * MIB } else { 100 };
        random_file(local, size, 80 + i as u64);
    }
    for flavor in WITH_CEPH {
        let server = S3Server::start(flavor).await;
        let engine = engine(&server, "names/");
        for (name, local) in names.iter().zip(&locals) {
            engine.upload_cleanly(local, name).await;
            let what = format!("{flavor:?} {name:?}");
            assert_stored(&server, &format!("names/{name}"), local, &what).await;
        }
        let mut listed = server.list("names/").await;
        listed.sort();
        let mut expected: Vec<String> = names.iter().map(|name| format!("names/{name}")).collect();
        expected.sort();
        assert_eq!(listed, expected, "{flavor:?}");
    }
}

/// `server_side_encryption` (with `sse_kms_key_id`) is asked for on PutObject and on
/// CreateMultipartUpload, and the object is stored so, with `checksum = "md5"` as well. moto
/// keeps and reports both kinds; Ceph's gateway encrypts under its KMS key (its ETags stay the
/// MD5s of the bytes, unlike AWS's under KMS: `Encryption::etag_is_md5`). s3s-fs ignores them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_encryption_is_asked_for_on_single_and_multipart_objects() {
    let kms = |key_id: &str| Encryption::Kms {
        dsse: false,
        key_id: Some(key_id.into()),
    };
    let asked = [
        (Flavor::Moto, vec![Encryption::Aes256, kms("alias/ferry")]),
        (Flavor::CephRgw, vec![kms(crate::support::ceph::KMS_KEY_ID)]),
    ];
    for (flavor, encryptions) in asked {
        let server = S3Server::start(flavor).await;
        for encryption in encryptions {
            stored_encrypted(&server, flavor, encryption).await;
        }
    }
}

/// A small and a multipart file uploaded with `encryption` land whole and say so on HEAD.
async fn stored_encrypted(server: &S3Server, flavor: Flavor, encryption: Encryption) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = server.config("sse/");
    config.checksum = Checksum::Md5;
    config.encryption = Some(encryption.clone());
    let settings = UploadSettings {
        chunk_size: ChunkSize::Fixed(5 * MIB),
        ..UploadSettings::default()
    };
    let engine = Engine::with_backend(Arc::new(S3Backend::new(&config).unwrap()), settings);
    let algorithm = encryption.algorithm();
    let key_id = match &encryption {
        Encryption::Kms { key_id, .. } => key_id.as_deref(),
        Encryption::Aes256 | Encryption::Customer(_) => None,
    };
    for (name, size) in [("small.bin", 1000), ("large.bin", 6 * MIB)] {
        let local = dir.path().join(name);
        random_file(&local, size, 10);
        let remote = format!("{algorithm}/{name}");
        engine.upload_cleanly(&local, &remote).await;
        let headers = server.head(&format!("sse/{remote}")).await;
        let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_string());
        let what = format!("{flavor:?} {algorithm} {name}");
        let stored = header("x-amz-server-side-encryption");
        assert_eq!(stored.as_deref(), Some(algorithm), "{what}");
        let key = header("x-amz-server-side-encryption-aws-kms-key-id");
        assert_eq!(key.as_deref(), key_id, "{what}");
        assert_stored(server, &format!("sse/{remote}"), &local, &what).await;
    }
}

/// Ceph's gateway 16.2 takes `server_side_encryption = "AES256"` (SSE-S3, which it does not
/// support) and stores the bytes unencrypted, saying nothing. Ferry reads that from the reply
/// and fails the file at once: a multipart upload is aborted before its first part, a small
/// file is said to be stored unencrypted, and nothing more is sent to that server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encryption_the_server_does_not_confirm_fails_the_file_at_once() {
    let server = S3Server::start(Flavor::CephRgw).await;
    let proxy = proxy_before(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &server, &proxy.url);
    let toml = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, toml + "server_side_encryption = \"AES256\"\n").unwrap();
    let files = ["large.bin", "small.txt", "later.txt"].map(|name| dir.path().join(name));
    for (seed, (file, size)) in files.iter().zip([6 * MIB, 100, 100]).enumerate() {
        random_file(file, size, 71 + seed as u64);
    }
    let asked = "did not confirm the server-side encryption asked for (AES256)";
    refused_fast(
        &config,
        dir.path(),
        &files[0],
        asked,
        "the upload is aborted",
    );
    let log = proxy.log();
    assert!(
        !log.iter().any(|seen| seen.part_number.is_some()),
        "{log:#?}"
    );
    let aborts = log.iter().filter(|seen| seen.method == "DELETE").count();
    assert_eq!(aborts, 1, "the upload aborted: {log:#?}");
    let direct = S3Backend::new(&server.config("")).unwrap();
    assert_eq!(open_ids(&direct).await, Vec::<String>::new());

    let stderr = failed_fast(&config, dir.path(), &[&files[1], &files[2]]);
    let stored = format!("pushed/small.txt: the server {asked}");
    assert!(stderr.contains(&stored), "{stderr}");
    assert!(
        stderr.contains("the object stays as the server stored it"),
        "{stderr}"
    );
    assert!(stderr.contains("pushed/later.txt not sent"), "{stderr}");
    let log = proxy.log();
    let puts: Vec<_> = log.iter().filter(|seen| seen.method == "PUT").collect();
    assert_eq!(puts.len(), 1, "only small.txt was sent: {puts:#?}");
}

/// `sse_customer_key_file` (SSE-C): the key goes with the PutObject, the CreateMultipartUpload,
/// every UploadPart, the Complete and the HEAD after it, and Garage and Ceph's gateway store
/// the objects under it: read with the key they are the files; without it, or with another
/// key, they are refused. Garage's ETags under SSE-C are random, not MD5s, and Ferry does not
/// take them for damage (`Encryption::etag_is_md5`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_sent_with_a_customer_key_are_readable_only_with_that_key() {
    let dir = tempfile::tempdir().unwrap();
    let (keyed, ours) = customer_key_in(dir.path());
    let other = Encryption::Customer(CustomerKey::from_file(&[1; 32]).unwrap());
    let locals = [("small.bin", 1000), ("large.bin", 12 * MIB)].map(|(name, size)| {
        let local = dir.path().join(name);
        random_file(&local, size, 90 + size);
        local
    });

    // With Content-MD5 too, which Ferry checks ETags against where they are MD5s.
    let garage = Garage::start(1).await;
    let read = async |key: &str, headers: &[(&'static str, String)]| {
        garage.get_with(0, key, headers).await
    };
    for checksum in ["crc32c", "md5"] {
        let remote = garage.remote_toml_in("s3", 0, dir.path()) + &keyed;
        let remote = format!("{remote}prefix = \"{checksum}/\"\nchecksum = \"{checksum}\"\n");
        push_keyed(dir.path(), checksum, &remote, &locals);
        let what = format!("garage {checksum}");
        readable_only_with(
            &read,
            &format!("{checksum}/"),
            &locals,
            [&ours, &other],
            &what,
        )
        .await;
    }

    let server = S3Server::start(Flavor::CephRgw).await;
    let remote = server.remote_toml_in("s3", "", dir.path()) + &keyed;
    let read =
        async |key: &str, headers: &[(&'static str, String)]| server.get_with(key, headers).await;
    push_keyed(dir.path(), "ceph", &remote, &locals);
    readable_only_with(&read, "", &locals, [&ours, &other], "ceph").await;
}

/// A server that ignores SSE-C (moto, s3s-fs) stores the bytes unencrypted and says nothing:
/// Ferry reads that from the reply and fails the file at once, naming the customer key; the
/// multipart upload is aborted before its first part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_key_the_server_ignores_fails_the_file_at_once() {
    for flavor in BOTH {
        let server = S3Server::start(flavor).await;
        let proxy = proxy_before(&server).await;
        let dir = tempfile::tempdir().unwrap();
        let config = config_file(dir.path(), &server, &proxy.url);
        let key_file = dir.path().join("ssec.key");
        std::fs::write(&key_file, [5u8; 32]).unwrap();
        let keyed = format!("sse_customer_key_file = \"{}\"\n", key_file.display());
        let toml = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, toml + &keyed).unwrap();
        let [large, small] = ["large.bin", "small.txt"].map(|name| dir.path().join(name));
        random_file(&large, 6 * MIB, 75);
        random_file(&small, 100, 76);
        let asked = "did not confirm the customer-key encryption asked for (SSE-C)";
        refused_fast(&config, dir.path(), &large, asked, "the upload is aborted");
        let log = proxy.log();
        let parts = log.iter().filter(|seen| seen.part_number.is_some()).count();
        let aborts = log.iter().filter(|seen| seen.method == "DELETE").count();
        assert_eq!((parts, aborts), (0, 1), "{flavor:?}: {log:#?}");
        let stays = "the object stays as the server stored it";
        refused_fast(&config, dir.path(), &small, asked, stays);
    }
}

/// A random customer key written to `dir` (base64, as `openssl rand -base64 32` writes it):
/// the line of a remote that names it, and the encryption it is.
fn customer_key_in(dir: &Path) -> (String, Encryption) {
    let key_file = dir.join("ssec.key");
    let key: [u8; 32] = rand::random();
    let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key);
    std::fs::write(&key_file, format!("{encoded}\n")).unwrap();
    let line = format!("sse_customer_key_file = \"{}\"\n", key_file.display());
    (
        line,
        Encryption::Customer(CustomerKey::from_file(&key).unwrap()),
    )
}

/// A one-node Garage behind a proxy, and `config.toml` in `dir` with a remote `s3` on it through
/// the proxy under a new customer key, the encryption that is.
async fn keyed_garage(dir: &Path) -> (Garage, FaultProxy, PathBuf, Encryption) {
    let garage = Garage::start(1).await;
    let node = garage.endpoint(0);
    let proxy = FaultProxy::start(node.trim_start_matches("http://").parse().unwrap()).await;
    let (keyed, key) = customer_key_in(dir);
    let remote = garage.remote_toml_in("s3", 0, dir) + &keyed;
    let config = dir.join("config.toml");
    std::fs::write(&config, remote.replace(&node, &proxy.url)).unwrap();
    (garage, proxy, config, key)
}

/// A session made under one customer key cannot take parts under another (Garage refuses them
/// `400 InvalidRequest`, and the file used to fail at every push for good): after the key is
/// changed, a push starts a new upload under the new key. The old one is left to `ferry
/// cleanup` as an orphan (Garage drops it itself once the new object is complete).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_customer_key_starts_the_upload_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let (garage, proxy, config, old) = keyed_garage(dir.path()).await;
    proxy.set_throttle(4 * MIB);
    let (data, local) = (dir.path().join("data"), dir.path().join("rekeyed.bin"));
    random_file(&local, 30 * MIB, 24);
    killed_push(&config, &data, &local, 3, &proxy).await;
    proxy.set_throttle(0);

    let (_, new) = customer_key_in(dir.path());
    let mark = proxy.mark();
    let output = push(&config, &data, &local).output().unwrap();
    let summary = summary(&output);
    assert_eq!(summary["files"][0]["parts_resumed"], 0, "{summary}");
    assert_eq!(creates(&proxy.log()[mark..]), 1, "a new upload");

    let (status, body) = garage.get_with(0, "rekeyed.bin", &new.key_headers()).await;
    assert_eq!(status, 200);
    assert!(
        body == std::fs::read(&local).unwrap(),
        "the object is the file"
    );
    let (status, _) = garage.get_with(0, "rekeyed.bin", &old.key_headers()).await;
    assert!(status >= 400, "not readable with the old key: {status}");
}

/// `ferry push` of `locals` to `remote`, which must succeed.
fn push_keyed(dir: &Path, name: &str, remote: &str, locals: &[PathBuf]) {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, remote).unwrap();
    let data = dir.join(format!("data-{name}"));
    let output = push(&config, &data, &locals[0])
        .args(&locals[1..])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{name}: {stderr}");
}

/// Each of `locals`, read back under `prefix` with `read`, is the file with `ours`, and is
/// refused without a key or with `other`.
async fn readable_only_with(
    read: &impl AsyncFn(&str, &[(&'static str, String)]) -> (u16, Vec<u8>),
    prefix: &str,
    locals: &[PathBuf],
    [ours, other]: [&Encryption; 2],
    what: &str,
) {
    for local in locals {
        let name = local.file_name().unwrap().to_str().unwrap();
        let key = &format!("{prefix}{name}");
        let (status, body) = read(key, &ours.key_headers()).await;
        assert_eq!(status, 200, "{what} {key} with the key");
        assert!(
            body == std::fs::read(local).unwrap(),
            "{what} {key} is the file"
        );
        let (status, _) = read(key, &[]).await;
        assert_eq!(status, 400, "{what} {key} without the key");
        let (status, _) = read(key, &other.key_headers()).await;
        assert!(status >= 400, "{what} {key} with another key: {status}");
    }
}

/// `acl` is sent as `x-amz-acl` on PutObject and CreateMultipartUpload, and the object gets
/// that ACL (moto and Ceph's gateway keep and report it; s3s-fs has no ACLs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canned_acl_is_given_to_single_and_multipart_objects() {
    for flavor in [Flavor::Moto, Flavor::CephRgw] {
        a_canned_acl_is_given_in(flavor).await;
    }
}

async fn a_canned_acl_is_given_in(flavor: Flavor) {
    let server = S3Server::start(flavor).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = server.config("acl/");
    config.acl = Some("public-read".into());
    let settings = UploadSettings {
        chunk_size: ChunkSize::Fixed(5 * MIB),
        ..UploadSettings::default()
    };
    let engine = Engine::with_backend(Arc::new(S3Backend::new(&config).unwrap()), settings);
    let everyone = "http://acs.amazonaws.com/groups/global/AllUsers";
    for (name, size) in [("small.bin", 1000), ("large.bin", 6 * MIB)] {
        let local = dir.path().join(name);
        random_file(&local, size, 11);
        engine.upload_cleanly(&local, name).await;
        let acl = server.acl(&format!("acl/{name}")).await;
        assert!(
            acl.contains(everyone),
            "{flavor:?} {name}: everyone may read: {acl}"
        );
    }
    // Without `acl`, the bucket's default: private.
    let private = Engine::with_backend(
        Arc::new(S3Backend::new(&server.config("acl/")).unwrap()),
        UploadSettings::default(),
    );
    let local = dir.path().join("private.bin");
    random_file(&local, 1000, 12);
    private.upload_cleanly(&local, "private.bin").await;
    let acl = server.acl("acl/private.bin").await;
    assert!(
        !acl.contains(everyone),
        "{flavor:?}: private by default: {acl}"
    );
}

/// `storage_class` and `acl` are asked for on PutObject and CreateMultipartUpload. moto keeps
/// both: its HEAD names the class, its grants give everyone read, and nothing is said. Garage
/// takes any class and stores every object in its one class, and has no ACLs: Ferry says each
/// once, from the first object stored, and the uploads go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_class_and_an_acl_the_server_ignores_are_said_once() {
    let dir = tempfile::tempdir().unwrap();
    let (small, large) = (dir.path().join("small.bin"), dir.path().join("large.bin"));
    random_file(&small, 1000, 41);
    random_file(&large, 12 * MIB, 42);
    let pushed = |config: &Path, data: &str| {
        let output = push(config, &dir.path().join(data), &small)
            .arg(&large)
            .output()
            .unwrap();
        summary(&output);
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let class = "storage_class = \"STANDARD_IA\"\nacl = \"public-read\"\n";
    let said = "the server ignores storage_class = \"STANDARD_IA\"";
    let said_acl = "the server ignores acl = \"public-read\"";

    let moto = S3Server::start(Flavor::Moto).await;
    let moto_dir = tempfile::tempdir().unwrap();
    let config = config_file(moto_dir.path(), &moto, &moto.endpoint);
    let remote = std::fs::read_to_string(&config).unwrap() + class;
    std::fs::write(&config, remote).unwrap();
    let log = pushed(&config, "moto-data");
    assert!(!log.contains(said) && !log.contains(said_acl), "{log}");
    for name in ["small.bin", "large.bin"] {
        let headers = moto.head(&format!("pushed/{name}")).await;
        let stored = headers
            .get("x-amz-storage-class")
            .map(|v| v.to_str().unwrap());
        assert_eq!(stored, Some("STANDARD_IA"), "moto {name}");
        let acl = moto.acl(&format!("pushed/{name}")).await;
        assert!(acl.contains("global/AllUsers"), "moto {name}: {acl}");
    }

    let garage = Garage::start(1).await;
    let garage_dir = tempfile::tempdir().unwrap();
    let config = garage_dir.path().join("config.toml");
    let remote = garage.remote_toml_in("s3", 0, garage_dir.path()) + class;
    std::fs::write(&config, remote).unwrap();
    let log = pushed(&config, "garage-data");
    assert_eq!(log.matches(said).count(), 1, "said once: {log}");
    assert_eq!(log.matches(said_acl).count(), 1, "said once: {log}");
    for (name, local) in [("small.bin", &small), ("large.bin", &large)] {
        let stored = garage.get(0, name).await;
        let expected = std::fs::read(local).unwrap();
        assert!(
            stored == Some(expected),
            "garage {name}: the object is the file"
        );
    }
}

/// A header value as RFC 2047 `=?UTF-8?B?…?=` or as is.
fn decode_rfc2047(value: &str) -> String {
    use base64::Engine as _;
    match value
        .strip_prefix("=?UTF-8?B?")
        .and_then(|v| v.strip_suffix("?="))
    {
        Some(encoded) => String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap(),
        )
        .unwrap(),
        None => value.to_string(),
    }
}

/// A request for the object `remote_path` of `size` bytes, without metadata.
pub(crate) fn request(remote_path: &str, size: u64) -> CreateRequest {
    CreateRequest {
        remote_path: remote_path.into(),
        size,
        mime_type: None,
        metadata: Default::default(),
        sha256: None,
        mtime_ns: None,
    }
}

/// `bytes` as a body, with the checksums given for it.
pub(crate) fn body(bytes: Vec<u8>, sums: PartSums) -> PartBody {
    let len = bytes.len() as u64;
    let stream = futures_util::stream::iter([Ok(bytes::Bytes::from(bytes))]);
    PartBody {
        stream: Box::pin(stream),
        len,
        sums,
    }
}

/// A fault proxy before `server`.
pub(crate) async fn proxy_before(server: &S3Server) -> FaultProxy {
    let address = server
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    FaultProxy::start(address).await
}

/// Asserts the object `key` holds exactly the bytes of `local`.
pub(crate) async fn assert_stored(server: &S3Server, key: &str, local: &Path, what: &str) {
    let stored = server.get(key).await;
    let expected = std::fs::read(local).unwrap();
    assert!(
        stored.as_deref() == Some(&expected[..]),
        "{what}: the object differs"
    );
}

/// A configuration with one S3 remote `s3` on `endpoint` (the server, or a proxy before it).
pub(crate) fn config_file(dir: &Path, server: &S3Server, endpoint: &str) -> PathBuf {
    let secret = dir.join("secret");
    std::fs::write(&secret, format!("{SECRET_KEY}\n")).unwrap();
    let remote = server
        .remote_toml("s3", "pushed/", &secret)
        .replace(&server.endpoint, endpoint);
    // The remote alone: `push` needs no watch.
    let config = dir.join("config.toml");
    std::fs::write(&config, remote).unwrap();
    config
}

/// A configuration of remotes without a watch serves `ferry push --remote`; the daemon, which
/// would watch nothing, refuses it, and `ferry config check` says why. `--connect` still
/// checks its remotes, saying the daemon would not run it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remotes_without_a_watch_serve_push_but_not_the_daemon() {
    let server = S3Server::start(Flavor::S3sFs).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &server, &server.endpoint);
    let local = dir.path().join("alone.bin");
    random_file(&local, 1000, 31);
    let output = push(&config, &dir.path().join("data"), &local)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_stored(&server, "pushed/alone.bin", &local, "push").await;
    let ferry = |command: &str| {
        let mut ferry = Command::new(ferry_bin());
        ferry.arg("--config").arg(&config).args(command.split(' '));
        ferry
    };
    let output = ferry("config check").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("at least one [[watch]] is required to run the daemon"),
        "{stderr}"
    );
    let run = exit_within(ferry("run"), Duration::from_secs(10));
    assert_eq!(run, Some(2), "ferry run refuses it");
    let connected = ferry("config check --connect").output().unwrap();
    let stdout = String::from_utf8_lossy(&connected.stdout);
    assert!(connected.status.success(), "{stdout}\n{connected:?}");
    assert!(
        stdout.contains("# remotes.s3: opened and aborted"),
        "{stdout}"
    );
    assert!(
        stdout.contains("# no [[watch]]: `ferry run` refuses"),
        "{stdout}"
    );
}

/// `ferry push --remote s3` of `file`, trusting no CA bundle the environment may name and asking
/// for EC2 instance metadata on loopback only.
pub(crate) fn push(config: &Path, data: &Path, file: &Path) -> Command {
    let mut command = Command::new(ferry_bin());
    command
        .env_remove("AWS_CA_BUNDLE")
        // A chain that finds no keys asks no EC2 metadata service off this machine.
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")
        .arg("--config")
        .arg(config)
        .args(["push", "--remote", "s3", "--chunk-size", "5MiB", "--json"])
        .arg("--data-dir")
        .arg(data)
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Starts a push through a throttled proxy and SIGKILLs it once it has durably recorded
/// `recorded` parts; returns the proxy (drained of the dead push's requests).
pub(crate) async fn killed_push(
    config: &Path,
    data: &Path,
    file: &Path,
    recorded: usize,
    proxy: &FaultProxy,
) {
    let mut first = push(config, data, file)
        .stdout(Stdio::null())
        .env("RUST_LOG", "ferry=debug")
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(first.stderr.take().unwrap());
    let counted = tokio::task::spawn_blocking(move || {
        std::io::BufRead::lines(stderr)
            .map_while(Result::ok)
            .filter(|line| line.contains("part recorded"))
            .take(recorded)
            .count()
    });
    let counted = tokio::time::timeout(Duration::from_secs(60), counted)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(counted, recorded, "the first push recorded parts");
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    wait_until(
        "the killed push's requests to drain",
        Duration::from_secs(30),
        || proxy.in_flight() == 0,
    )
    .await;
}

pub(crate) fn summary(output: &std::process::Output) -> serde_json::Value {
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    serde_json::from_slice(&output.stdout).unwrap()
}

async fn resumes_after_a_kill(flavor: Flavor) {
    let server = S3Server::start(flavor).await;
    let proxy = proxy_before(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &server, &proxy.url);
    let local = resumed_after_a_kill(&config, &proxy).await;
    assert_stored(&server, "pushed/resume.bin", &local, &format!("{flavor:?}")).await;
}

/// `resume.bin` (60 MiB, beside `config`) pushed through `proxy` and SIGKILLed after 3 parts,
/// then pushed again: only the parts ListParts did not confirm are sent.
async fn resumed_after_a_kill(config: &Path, proxy: &FaultProxy) -> PathBuf {
    proxy.set_throttle(4 * MIB);
    let dir = config.parent().unwrap();
    let (data, local) = (dir.join("data"), dir.join("resume.bin"));
    random_file(&local, 60 * MIB, 21);
    killed_push(config, &data, &local, 3, proxy).await;

    let mark = proxy.mark();
    proxy.set_throttle(0);
    let output = push(config, &data, &local).output().unwrap();
    let summary = summary(&output);
    let file = &summary["files"][0];
    let (parts, resumed) = (
        file["parts"].as_u64().unwrap(),
        file["parts_resumed"].as_u64().unwrap(),
    );
    assert_eq!(parts, 12, "{summary}");
    assert!(
        resumed >= 3,
        "the parts ListParts confirmed are not sent again: {summary}"
    );
    assert_eq!(
        file["bytes_sent"].as_u64().unwrap(),
        (parts - resumed) * 5 * MIB
    );
    let sent = proxy.parts_sent_once_since(mark);
    assert_eq!(
        sent.len() as u64,
        parts - resumed,
        "only missing parts were sent: {sent:?}"
    );
    local
}

/// ListParts read page by page: the proxy asks moto for 2 parts a page where Ferry asks for
/// 1,000 (moto checks no signature; s3s-fs and Garage do, and 1,001 real parts would be 5 GB).
/// A push killed after 3 parts resumes from every page and sends none of the listed parts
/// again; the object is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_reads_every_page_of_list_parts() {
    let server = S3Server::start(Flavor::Moto).await;
    let proxy = proxy_before(&server).await;
    let (from, to) = ("max-parts=1000", "max-parts=2");
    proxy.set_plan(move |head, _| {
        let listing = head.method == "GET" && head.path.contains(from);
        listing.then_some(Fault::Rewrite { from, to })
    });
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &server, &proxy.url);
    let local = resumed_after_a_kill(&config, &proxy).await;
    assert_stored(&server, "pushed/resume.bin", &local, "resumed from pages").await;
    let log = proxy.log();
    let pages: Vec<&Seen> = log.iter().filter(|seen| seen.fault.is_some()).collect();
    let later = pages
        .iter()
        .filter(|seen| query_param(&seen.path, "part-number-marker").is_some())
        .count();
    assert!(
        pages.len() >= 2 && later >= 1,
        "ListParts read past its first page: {pages:#?}"
    );
}

/// With a customer key (SSE-C), on Garage: every request for the object's bytes or its parts'
/// checksums carries the key (AWS wants it on the ListParts of an upload made with a checksum
/// algorithm; Garage lists no CRC32C without it), and the object reads back whole with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_with_a_customer_key_killed_mid_way_resumes_without_resending_listed_parts() {
    let dir = tempfile::tempdir().unwrap();
    let (garage, proxy, config, ours) = keyed_garage(dir.path()).await;
    let local = resumed_after_a_kill(&config, &proxy).await;
    let log = proxy.log();
    let keyed = |seen: &&Seen| {
        let signed = query_param(&seen.path, "X-Amz-SignedHeaders").unwrap_or_default();
        signed.contains("x-amz-server-side-encryption-customer-key")
    };
    let kinds = ["GET", "PUT", "POST", "HEAD"];
    let for_bytes: Vec<&Seen> = log.iter().filter(|s| kinds.contains(&&*s.method)).collect();
    let lists = for_bytes.iter().filter(|s| s.method == "GET").count();
    let unkeyed: Vec<&&Seen> = for_bytes.iter().filter(|s| !keyed(s)).collect();
    assert!(lists >= 1 && unkeyed.is_empty(), "{unkeyed:#?}");
    let (status, body) = garage.get_with(0, "resume.bin", &ours.key_headers()).await;
    assert_eq!(status, 200);
    assert!(
        body == std::fs::read(&local).unwrap(),
        "the object is the file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_killed_mid_way_resumes_without_resending_listed_parts_in_moto() {
    resumes_after_a_kill(Flavor::Moto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_killed_mid_way_resumes_without_resending_listed_parts_in_s3s_fs() {
    resumes_after_a_kill(Flavor::S3sFs).await;
}

/// Ceph's gateway lists the parts with their ETags as AWS does; its remotes here send
/// `Content-MD5`, which it checks (it has no flexible checksums), and every byte is read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_killed_mid_way_resumes_without_resending_listed_parts_in_ceph() {
    resumes_after_a_kill(Flavor::CephRgw).await;
}

/// The key and UploadId the killed push recorded, from its session store (the remote as it
/// saw it: through `endpoint`).
fn recorded_upload(data: &Path, server: &S3Server, endpoint: &str) -> (String, String) {
    let store = ferry::queue::Store::open(&data.join("push-sessions")).unwrap();
    let mut config = server.config("pushed/");
    config.endpoint = Some(endpoint.to_string());
    let identity = S3Backend::new(&config).unwrap().identity();
    let records = store.sessions().of_remote(&identity).unwrap();
    let record = records.first().expect("a recorded session").clone();
    let upload_id = ferry::upload::s3::SessionId::parse(&record.upload_id)
        .unwrap()
        .upload_id;
    (
        format!("pushed/{}", record.remote_path),
        upload_id.to_string(),
    )
}

/// moto and Ceph answer ListParts with NoSuchUpload; s3s-fs lists an aborted upload as empty
/// (and refuses its parts with AccessDenied): all start over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_aborted_behind_our_back_starts_over() {
    for flavor in WITH_CEPH {
        let server = S3Server::start(flavor).await;
        let proxy = proxy_before(&server).await;
        proxy.set_throttle(4 * MIB);
        let dir = tempfile::tempdir().unwrap();
        let config = config_file(dir.path(), &server, &proxy.url);
        let (data, local) = (dir.path().join("data"), dir.path().join("aborted.bin"));
        random_file(&local, 40 * MIB, 22);
        killed_push(&config, &data, &local, 2, &proxy).await;
        let (key, upload_id) = recorded_upload(&data, &server, &proxy.url);
        server.abort(&key, &upload_id).await;

        proxy.set_throttle(0);
        let output = push(&config, &data, &local).output().unwrap();
        let summary = summary(&output);
        let file = &summary["files"][0];
        assert_eq!(
            file["parts_resumed"], 0,
            "{flavor:?}: started over: {summary}"
        );
        assert_eq!(file["bytes_sent"].as_u64().unwrap(), 40 * MIB);
        assert_stored(
            &server,
            "pushed/aborted.bin",
            &local,
            &format!("{flavor:?}"),
        )
        .await;
    }
}

/// An upload aborted between its last part and its CompleteMultipartUpload (by a lifecycle
/// rule, or a `ferry cleanup` elsewhere) starts over and lands whole. The test aborts it while
/// the proxy holds the first Complete back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_aborted_just_before_its_complete_starts_over() {
    for flavor in WITH_CEPH {
        let server = S3Server::start(flavor).await;
        let proxy = proxy_before(&server).await;
        fault_first_complete(&proxy, Fault::Delay(Duration::from_secs(2)));
        let engine = engine_through(&server, &proxy, "late/", UploadSettings::default());
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("late.bin");
        random_file(&local, 12 * MIB, 24);
        let upload = tokio::spawn(async move { engine.upload(&local, "late.bin").await });
        let completes = || completes_seen(&proxy);
        wait_until("the first complete", Duration::from_secs(30), || {
            !completes().is_empty()
        })
        .await;
        server.abort("late/late.bin", &completes()[0]).await;

        let started = Instant::now();
        let report = upload.await.unwrap().unwrap();
        assert!(
            report.parts > 1,
            "{flavor:?}: sent in parts again: {report:?}"
        );
        let log = proxy.log();
        // s3s-fs does not name the CRC32C algorithm back: its first upload is opened again
        // without it (`checksum.rs`).
        let reopened = usize::from(flavor == Flavor::S3sFs);
        let started_over = creates(&log) - reopened;
        assert_eq!(started_over, 2, "{flavor:?}: started over once: {log:#?}");
        assert!(started.elapsed() < Duration::from_secs(30), "{flavor:?}");
        let local = dir.path().join("late.bin");
        assert_stored(&server, "late/late.bin", &local, &format!("{flavor:?}")).await;
    }
}

/// A file rewritten while its parts are on their way is not completed from mixed content: the
/// first upload is aborted (no open upload is left to cost money) and the new content lands in
/// a second one. On the servers that list uploads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_mid_upload_lands_as_its_new_content_and_leaves_no_open_upload() {
    for flavor in [Flavor::Moto, Flavor::CephRgw] {
        let server = S3Server::start(flavor).await;
        let proxy = proxy_before(&server).await;
        proxy.set_throttle(4 * MIB);
        let settings = UploadSettings {
            chunk_size: ChunkSize::Fixed(5 * MIB),
            ..fast_retry_settings()
        };
        let engine = engine_through(&server, &proxy, "changed/", settings);
        let dir = tempfile::tempdir().unwrap();
        let (local, new) = (dir.path().join("changed.bin"), dir.path().join("new.bin"));
        random_file(&local, 30 * MIB, 25);
        random_file(&new, 30 * MIB, 26);
        let upload = tokio::spawn({
            let local = local.clone();
            async move { engine.upload(&local, "changed.bin").await }
        });
        wait_until("2 parts sent", Duration::from_secs(30), || {
            let log = proxy.log();
            let sent = log.iter().filter(|seen| seen.part_number.is_some());
            sent.filter(|seen| seen.finished.is_some()).count() >= 2
        })
        .await;
        // Rewritten in place: the same inode and size (no truncation, which an upload could
        // catch as an empty file), new content and mtime. The mtime is set once more after the
        // write, so an upload that began while the write went on sees a change at its end.
        let mut file = std::fs::File::options().write(true).open(&local).unwrap();
        std::io::Write::write_all(&mut file, &std::fs::read(&new).unwrap()).unwrap();
        let later = std::time::SystemTime::now() + Duration::from_secs(1);
        file.set_modified(later).unwrap();
        drop(file);
        proxy.set_throttle(0);

        let report = upload.await.unwrap().unwrap();
        assert_eq!(report.size, 30 * MIB, "{flavor:?}");
        assert_stored(&server, "changed/changed.bin", &new, &format!("{flavor:?}")).await;
        // Started over, more than once if the rewrite (not atomic) was still going on when the
        // next upload began; every upload but the last aborted.
        let log = proxy.log();
        let creates = creates(&log);
        assert!(creates >= 2, "{flavor:?}: started over: {log:#?}");
        let aborted = log.iter().filter(|seen| seen.method == "DELETE").count();
        assert_eq!(
            aborted,
            creates - 1,
            "{flavor:?}: the others aborted: {log:#?}"
        );
        let direct = S3Backend::new(&server.config("")).unwrap();
        assert_eq!(open_ids(&direct).await, Vec::<String>::new(), "{flavor:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_whose_reply_was_lost_is_recognised_as_done() {
    for flavor in WITH_CEPH {
        let server = S3Server::start(flavor).await;
        let proxy = proxy_before(&server).await;
        // The first CompleteMultipartUpload reaches the server; its reply does not come back.
        fault_first_complete(&proxy, Fault::DropReply);
        let engine = engine_through(&server, &proxy, "lost/", UploadSettings::default());
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("lost.bin");
        random_file(&local, 12 * MIB, 23);
        let started = Instant::now();
        let report = engine.upload(&local, "lost.bin").await.unwrap();
        assert_eq!(report.parts, 3);
        // The complete whose reply was lost, then the one that found the upload done.
        let completes = completes_seen(&proxy).len();
        assert_eq!(completes, 2, "{flavor:?}: the complete was sent again");
        assert!(started.elapsed() < Duration::from_secs(30));
        assert_stored(&server, "lost/lost.bin", &local, &format!("{flavor:?}")).await;
    }
}

/// S3's transient refusals, each of the first attempt of a request, are retried until the
/// objects land whole: 503 SlowDown of a PutObject and of a part, 500 InternalError of the
/// CreateMultipartUpload, 400 RequestTimeout of a part, and a 200 from the
/// CompleteMultipartUpload whose body is an `<Error>` (taken as a success, it would leave no
/// object: the proxy answered it in the server's place).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_refusals_are_retried_until_the_objects_land() {
    let server = S3Server::start(Flavor::S3sFs).await;
    let proxy = proxy_before(&server).await;
    let refused = Mutex::new(BTreeSet::new());
    proxy.set_plan(move |head, _| {
        let (kind, fault) = first_refusal(head)?;
        refused.lock().unwrap().insert(kind).then_some(fault)
    });
    let settings = UploadSettings {
        chunk_size: ChunkSize::Fixed(5 * MIB),
        ..fast_retry_settings()
    };
    let engine = engine_through(&server, &proxy, "refused/", settings);
    let dir = tempfile::tempdir().unwrap();
    let (small, large) = (dir.path().join("small.bin"), dir.path().join("large.bin"));
    random_file(&small, 100 * 1024, 71);
    random_file(&large, 12 * MIB, 72);
    engine.upload(&small, "small.bin").await.unwrap();
    let report = engine.upload(&large, "large.bin").await.unwrap();
    assert_eq!((report.parts, report.part_attempts_failed), (3, 2));

    let log = proxy.log();
    let faulted = log.iter().filter(|seen| seen.fault.is_some()).count();
    assert_eq!(faulted, 5, "every planned refusal was made: {log:#?}");
    for seen in log.iter().filter(|seen| seen.fault.is_some()) {
        let again = log.iter().filter(|other| same_request(other, seen)).count();
        assert!(again >= 2, "{} {} was sent again", seen.method, seen.path);
    }
    for (local, name) in [(&small, "small.bin"), (&large, "large.bin")] {
        assert_stored(&server, &format!("refused/{name}"), local, name).await;
    }
}

/// A part replaced behind Ferry's back while its complete is on the way (Garage compares the
/// parts' ETags there): the complete is refused `InvalidPart`; Ferry lists the parts, sends
/// again the one the server holds in another version, completes, and the object is the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_replaced_before_the_complete_is_sent_again() {
    let garage = Garage::start(1).await;
    let node = garage.endpoint(0);
    let proxy = FaultProxy::start(node.trim_start_matches("http://").parse().unwrap()).await;
    fault_first_complete(&proxy, Fault::Delay(Duration::from_secs(2)));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let remote = garage.remote_toml_in("s3", 0, dir.path());
    std::fs::write(&config, remote.replace(&node, &proxy.url)).unwrap();
    let local = dir.path().join("replaced.bin");
    random_file(&local, 12 * MIB, 81);
    let push = push(&config, &dir.path().join("data"), &local)
        .spawn()
        .unwrap();

    // While the complete is held, another writer replaces part 1.
    let completes = || completes_seen(&proxy);
    wait_until("the complete is sent", Duration::from_secs(30), || {
        !completes().is_empty()
    })
    .await;
    let id = completes()[0].clone();
    garage
        .upload_part(0, ("replaced.bin", &id), 1, vec![7; 5 * MIB as usize])
        .await;
    let output = push.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("stale=[1]"), "part 1 found stale: {stderr}");

    let log = proxy.log();
    let part_1 = log
        .iter()
        .filter(|seen| seen.part_number == Some(1))
        .count();
    assert_eq!(part_1, 2, "part 1, and part 1 again");
    assert_eq!(completes().len(), 2);
    let stored = garage.get(0, "replaced.bin").await;
    assert!(
        stored == Some(std::fs::read(&local).unwrap()),
        "the object is the file"
    );
}

/// The upload ids of the completes the proxy saw, in order.
fn completes_seen(proxy: &FaultProxy) -> Vec<String> {
    let log = proxy.log();
    let completes = log
        .iter()
        .filter(|seen| is_complete(&seen.method, &seen.path));
    completes.filter_map(|seen| upload_id(&seen.path)).collect()
}

/// How many CreateMultipartUploads (POSTs not on an upload) `log` holds.
pub(crate) fn creates(log: &[Seen]) -> usize {
    let posts = log.iter().filter(|seen| seen.method == "POST");
    posts.filter(|seen| upload_id(&seen.path).is_none()).count()
}

/// Whether a request is a CompleteMultipartUpload (a POST on an upload).
fn is_complete(method: &str, path: &str) -> bool {
    method == "POST" && upload_id(path).is_some()
}

/// The `uploadId` in a request's query.
fn upload_id(path: &str) -> Option<String> {
    query_param(path, "uploadId")
}

/// The refusal planned for the first request of each kind, and its kind.
fn first_refusal(head: &RequestHead) -> Option<(&'static str, Fault)> {
    let has = |name: &str| query_param(&head.path, name).is_some();
    let s3 = |status, code| Fault::S3Error { status, code };
    match (head.method.as_str(), head.part_number) {
        ("PUT", None) => Some(("put", s3(503, "SlowDown"))),
        ("PUT", Some(1)) => Some(("part 1", s3(400, "RequestTimeout"))),
        ("PUT", Some(2)) => Some(("part 2", s3(503, "SlowDown"))),
        ("POST", _) if has("uploads") => Some(("create", s3(500, "InternalError"))),
        ("POST", _) if upload_id(&head.path).is_some() => {
            Some(("complete", s3(200, "InternalError")))
        }
        _ => None,
    }
}

/// Whether two requests the proxy saw are the same call (method, object, part; not the
/// signature).
fn same_request(one: &Seen, other: &Seen) -> bool {
    let path = |seen: &Seen| {
        seen.path
            .split_once('?')
            .map_or(seen.path.clone(), |(path, _)| path.to_string())
    };
    one.method == other.method && path(one) == path(other) && one.part_number == other.part_number
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_and_a_missing_bucket_fail_fast_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("denied.bin");
    random_file(&local, 6 * MIB, 24);
    // s3s-fs checks signatures (moto accepts any).
    let signing = S3Server::start(Flavor::S3sFs).await;
    let config = config_file(dir.path(), &signing, &signing.endpoint);
    std::fs::write(dir.path().join("secret"), "not-the-secret\n").unwrap();
    let stderr = refused_fast(
        &config,
        dir.path(),
        &local,
        "403 SignatureDoesNotMatch",
        "denied.bin",
    );
    let first_call = "CreateMultipartUpload refused by";
    assert!(stderr.contains(first_call), "the S3 call named: {stderr}");

    // moto checks buckets (s3s-fs creates them on demand).
    let buckets = S3Server::start(Flavor::Moto).await;
    let config = config_file(dir.path(), &buckets, &buckets.endpoint);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("ferry-test", "no-such-bucket");
    std::fs::write(&config, text).unwrap();
    refused_fast(
        &config,
        dir.path(),
        &local,
        "404 NoSuchBucket",
        "no-such-bucket",
    );
}

/// A machine whose clock is two hours off still uploads single and multipart objects: the
/// first refusal's `Date` corrects the date of every later signature (moto checks no dates).
/// s3s-fs checks them both ways, and refuses a date two hours old with `AccessDenied: Request
/// has expired` and one two hours ahead with `RequestTimeTooSkewed`; Garage checks only that
/// a date is not older than the signature's lifetime, and refuses it with `400 InvalidRequest:
/// Date is too old`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_hours_off_is_corrected_from_the_servers_date() {
    let server = S3Server::start(Flavor::S3sFs).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &server, &server.endpoint);
    for (offset, hours) in [("-2h", 2), ("+2h", -2)] {
        for local in push_from_clock(&config, offset, hours) {
            let name = local.file_name().unwrap().to_str().unwrap();
            assert_stored(&server, &format!("pushed/{name}"), &local, name).await;
        }
    }

    let garage = Garage::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, garage.remote_toml_in("s3", 0, dir.path())).unwrap();
    for local in push_from_clock(&config, "-2h", 2) {
        let name = local.file_name().unwrap().to_str().unwrap();
        let stored = garage.get(0, name).await;
        assert!(stored == Some(std::fs::read(&local).unwrap()), "{name}");
    }
}

/// Pushes a new small file and a new two-part one (beside `config`) to its remote `s3` from a
/// clock `offset` off the machine's; checks that the push learned the server's clock to be
/// about `hours` from its own, and returns the files.
fn push_from_clock(config: &Path, offset: &str, hours: i64) -> [PathBuf; 2] {
    let dir = config.parent().unwrap();
    let small = dir.join(format!("small{offset}.txt"));
    let large = dir.join(format!("large{offset}.bin"));
    random_file(&small, 100, 61);
    random_file(&large, 6 * MIB, 62);
    let data = dir.join(format!("data{offset}"));
    let mut push = push(config, &data, &small);
    let output = with_clock(offset, push.arg(&large)).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "clock {offset}: {stderr}");
    let learned = learned_skew_ms(&stderr).expect("the skew is said");
    let expected = hours * 3_600_000;
    assert!(
        (learned - expected).abs() < 300_000,
        "clock {offset}: learned {learned} ms, expected about {expected}"
    );
    [small, large]
}

/// `command` run by `faketime` with the wall clock `offset` from the machine's ("-2h"); the
/// monotonic clock, which timers use, left alone.
fn with_clock(offset: &str, command: &Command) -> Command {
    let mut faked = Command::new("faketime");
    faked
        .args(["-f", offset])
        .arg(command.get_program())
        .args(command.get_args())
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in command.get_envs() {
        match value {
            Some(value) => faked.env(name, value),
            None => faked.env_remove(name),
        };
    }
    faked
}

/// The server's clock minus ours that a push's log says it learned.
fn learned_skew_ms(log: &str) -> Option<i64> {
    let line = log
        .lines()
        .find(|line| line.contains("signing by its clock"))?;
    let value = line.split("skew_ms=").nth(1)?.split_whitespace().next()?;
    value.parse().ok()
}

/// A bucket that is there but not ours (Garage: our key is not allowed on it) stops the file
/// at once, with the server's words and the bucket named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_that_is_not_ours_fails_fast_with_a_clear_message() {
    let garage = Garage::start(1).await;
    garage.create_bucket("someone-elses");
    let dir = tempfile::tempdir().unwrap();
    let remote = garage.remote_toml_in("s3", 0, dir.path());
    let remote = remote.replace("bucket = \"ferry-test\"", "bucket = \"someone-elses\"");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, remote).unwrap();
    let local = dir.path().join("theirs.bin");
    random_file(&local, 6 * MIB, 91);
    let small = dir.path().join("small.bin");
    random_file(&small, 1000, 92);
    let stderr = failed_fast(&config, dir.path(), &[&local, &small]);
    for said in [
        "403 AccessDenied",
        "someone-elses",
        "CreateMultipartUpload refused by",
        "PutObject refused by",
        "(needs s3:PutObject on the key)",
    ] {
        assert!(stderr.contains(said), "{said}: {stderr}");
    }
}

/// A push of `local` fails at once (no retries) with `code` in a message that names `named`;
/// its error output.
fn refused_fast(config: &Path, dir: &Path, local: &Path, code: &str, named: &str) -> String {
    let stderr = failed_fast(config, dir, &[local]);
    assert!(stderr.contains(code), "{stderr}");
    assert!(
        stderr.contains(named),
        "the message names {named}: {stderr}"
    );
    stderr
}

/// The error output of a push of `files` (data in `dir`/data) that fails within 10 s: with no
/// retries.
fn failed_fast(config: &Path, dir: &Path, files: &[&Path]) -> String {
    let started = Instant::now();
    let output = push(config, &dir.join("data"), files[0])
        .args(&files[1..])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(10), "no retries: {elapsed:?}");
    stderr
}

/// The backend alone: a file whose bytes do not match the CRC32C sent is refused by a server
/// that checks it (s3s-fs checks PutObject's, not UploadPart's; moto checks none), and the refusal is one the
/// engine retries: the bytes were damaged on the way, or the file changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_whose_checksum_does_not_match_is_refused_as_transient() {
    let server = S3Server::start(Flavor::S3sFs).await;
    let backend = S3Backend::new(&server.config("")).unwrap();
    let request = request("bad.bin", 1024);
    let bytes = vec![7u8; 1024];
    let crc32c = Some(crc32c::crc32c(&bytes) ^ 1);
    let body = body(bytes, PartSums { crc32c, md5: None });
    let error = backend.put_file(&request, body).await.unwrap_err();
    assert_eq!(
        error.class(),
        ferry::upload::retry::ErrorClass::Transient,
        "{error}"
    );
    assert!(error.to_string().contains("BadDigest"), "{error}");
    // (s3s-fs 0.14.1 keeps the object it refused: it checks after writing. The retry that
    // follows replaces it.)
}

/// Opens a multipart upload of `key` with one 5 MiB part that no session of Ferry owns; returns
/// its UploadId.
async fn orphan(backend: &S3Backend, key: &str) -> String {
    let request = request(key, 6 * MIB);
    let session = backend.create(&request).await.unwrap();
    let body = body(vec![1u8; 5 * MIB as usize], PartSums::default());
    let reference = SessionRef {
        id: &session.id,
        remote_path: key,
    };
    let part = PartSpec {
        number: 1,
        offset: 0,
        size: 5 * MIB,
    };
    backend.put_part(reference, part, body).await.unwrap();
    let upload_id = ferry::upload::s3::SessionId::parse(&session.id)
        .unwrap()
        .upload_id;
    upload_id.to_string()
}

/// The uploads open on the server once `wanted` holds of them (polled for 30 s); `None` if it
/// never did.
async fn wait_open(
    backend: &S3Backend,
    wanted: impl Fn(&[ferry::upload::s3::OpenUpload]) -> bool,
) -> Option<Vec<ferry::upload::s3::OpenUpload>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let open = backend.open_uploads().await.unwrap();
        if wanted(&open) {
            return Some(open);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// The UploadIds open on the server.
async fn open_ids(backend: &S3Backend) -> Vec<String> {
    let uploads = backend.open_uploads().await.unwrap();
    uploads.into_iter().map(|upload| upload.upload_id).collect()
}

/// ListMultipartUploads read page by page: Garage lists at most 1,000 uploads a page and ends
/// it with a key alone; `ferry cleanup` finds each of 1,003 orphans once (dry run), then
/// aborts them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_reads_every_page_of_open_uploads_in_garage() {
    let secrets = tempfile::tempdir().unwrap();
    let garage = Garage::start(1).await;
    let remote = garage.remote_toml_in("main", 0, secrets.path());
    cleans_every_page(&garage.config(0), &remote).await;
}

/// The same in Ceph's gateway, which ends a page with a key and an upload id, as AWS does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_reads_every_page_of_open_uploads_in_ceph() {
    let secrets = tempfile::tempdir().unwrap();
    let ceph = S3Server::start(Flavor::CephRgw).await;
    let remote = ceph.remote_toml_in("main", "", secrets.path());
    cleans_every_page(&ceph.config(""), &remote).await;
}

/// Opens 1,003 uploads at `config`'s remote, then has `ferry cleanup` list and abort them
/// through `remote` (its TOML table). The one-upload listing of `config check --connect` is
/// taken as well.
async fn cleans_every_page(config: &ferry::upload::S3Config, remote: &str) {
    let direct = Arc::new(S3Backend::new(config).unwrap());
    let mut opening = tokio::task::JoinSet::new();
    for n in 0..1003 {
        let direct = direct.clone();
        opening.spawn(async move { direct.create(&request(&format!("left/{n}"), 6 * MIB)).await });
        while opening.len() >= 16 {
            opening.join_next().await.unwrap().unwrap().unwrap();
        }
    }
    while let Some(opened) = opening.join_next().await {
        opened.unwrap().unwrap();
    }
    // What `config check --connect` asks: one page of one upload, taken.
    direct.may_list_uploads().await.unwrap();
    let setup = Setup::with_remote(remote, "", "");
    let listed = cleanup(&setup, &["--older-than", "0s", "--dry-run"]);
    let keys: BTreeSet<&str> = listed.iter().map(|o| o["key"].as_str().unwrap()).collect();
    assert_eq!((listed.len(), keys.len()), (1003, 1003), "each orphan once");
    let aborted = cleanup(&setup, &["--older-than", "0s"]);
    let outcomes: BTreeSet<&str> = aborted
        .iter()
        .map(|o| o["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        (aborted.len(), outcomes),
        (1003, BTreeSet::from(["aborted"]))
    );
    let left = cleanup(&setup, &["--older-than", "0s", "--dry-run"]);
    assert!(left.is_empty(), "{} left", left.len());
}

fn cleanup(setup: &Setup, args: &[&str]) -> Vec<serde_json::Value> {
    let (orphans, stderr, code) = cleanup_exit(setup, args);
    assert_eq!(code, Some(0), "{stderr}");
    orphans
}

/// `ferry cleanup --json ARGS`: the orphans it printed, its stderr and its exit code.
fn cleanup_exit(setup: &Setup, args: &[&str]) -> (Vec<serde_json::Value>, String, Option<i32>) {
    let mut all = vec!["cleanup", "--json"];
    all.extend_from_slice(args);
    let output = setup.ferry(&all);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let orphans = serde_json::from_slice(&output.stdout).expect(&stderr);
    (orphans, stderr, output.status.code())
}

/// Has the daemon of `setup` look for orphans as it starts, and count any upload as idle.
fn clean_orphans_at_start(setup: &Setup) {
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let text = text.replacen(
        "shutdown_grace = \"5s\"",
        "shutdown_grace = \"5s\"\norphan_cleanup = \"0s\"",
        1,
    );
    std::fs::write(&setup.config, text).unwrap();
}

/// A remote that cannot be listed (s3s-fs has no ListMultipartUploads; its name sorts first)
/// keeps no other from being cleaned: the daemon's pass at start, `ferry cleanup` through the
/// daemon and `ferry cleanup` alone each abort moto's orphan; the command names the remote it
/// skipped and exits 1, and the daemon's metrics count the aborts and the failed listings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_goes_on_past_a_remote_it_cannot_list() {
    let moto = S3Server::start(Flavor::Moto).await;
    let fs = S3Server::start(Flavor::S3sFs).await;
    let direct = S3Backend::new(&moto.config("")).unwrap();
    let first = orphan(&direct, "old/first.bin").await;
    let secrets = tempfile::tempdir().unwrap();
    let remotes = [
        fs.remote_toml_in("a-nolist", "", secrets.path()),
        moto.remote_toml_in("main", "", secrets.path()),
    ];
    let setup = Setup::with_remote(&remotes.join("\n"), "", "");
    clean_orphans_at_start(&setup);
    let metrics = crate::metrics::serve_metrics(&setup);

    let daemon = setup.start().await;
    let gone = wait_open(&direct, |open| !open.iter().any(|u| u.upload_id == first)).await;
    assert!(gone.is_some(), "the daemon's pass went on to moto");
    cleanup_metrics_say(&metrics, 1).await;
    aborts_past_the_unlisted(&setup, &direct).await;
    cleanup_metrics_say(&metrics, 2).await;
    assert_eq!(daemon.terminate().await, Some(0));
    aborts_past_the_unlisted(&setup, &direct).await;
}

/// The daemon's metrics after `passes` cleanups, each of which aborted one orphan at `main`
/// and could not list `a-nolist`: moto listed lately, s3s-fs never.
async fn cleanup_metrics_say(address: &str, passes: u64) {
    let series = |name: &str, remote: &str| format!("ferry_orphan_{name}{{remote=\"{remote}\"}}");
    let failures = series("cleanup_failures_total", "a-nolist");
    let counted =
        |s: &std::collections::BTreeMap<String, f64>| s.get(&failures) == Some(&(passes as f64));
    let wait = Duration::from_secs(30);
    let samples = crate::metrics::scrape_until(address, &failures, wait, counted).await;
    let aborted = samples.get(&series("uploads_aborted_total", "main"));
    assert_eq!(aborted, Some(&(passes as f64)), "{samples:?}");
    let listed = series("cleanup_last_success_timestamp_seconds", "main");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    let age = now.unwrap().as_secs_f64() - samples[&listed];
    assert!(
        (0.0..60.0).contains(&age),
        "listed {age} s ago: {samples:?}"
    );
    let never = series("cleanup_last_success_timestamp_seconds", "a-nolist");
    assert!(!samples.contains_key(&never), "{samples:?}");
}

/// Opens an orphan in `direct`'s bucket; `ferry cleanup` aborts it and names `a-nolist`.
async fn aborts_past_the_unlisted(setup: &Setup, direct: &S3Backend) {
    let upload_id = orphan(direct, "old/next.bin").await;
    let (orphans, stderr, code) = cleanup_exit(setup, &["--older-than", "0s"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    assert_eq!(orphans[0]["upload_id"], upload_id.as_str());
    assert_eq!(orphans[0]["outcome"], "aborted");
    let said = "cannot list the uploads of remote a-nolist: ListMultipartUploads refused by";
    assert!(stderr.contains(said) && stderr.contains("501"), "{stderr}");
    assert!(open_ids(direct).await.is_empty());
}

/// The daemon's own pass at start, `ferry cleanup` through a running daemon (whose live upload
/// is left alone), and `ferry cleanup` with no daemon running, dry run first.
async fn cleanup_aborts_orphans_and_leaves_a_live_session_alone(flavor: Flavor) {
    let server = S3Server::start(flavor).await;
    let direct = S3Backend::new(&server.config("")).unwrap();
    let first = orphan(&direct, "old/first.bin").await;

    let proxy = proxy_before(&server).await;
    proxy.set_throttle(2 * MIB);
    let secrets = tempfile::tempdir().unwrap();
    let remote = server
        .remote_toml_in("main", "", secrets.path())
        .replace(&server.endpoint, &proxy.url);
    let setup = Setup::with_remote(&remote, "", "");
    clean_orphans_at_start(&setup);

    let daemon = setup.start().await;
    let aborted = wait_open(&direct, |open| !open.iter().any(|u| u.upload_id == first)).await;
    assert!(
        aborted.is_some(),
        "the daemon's pass at start aborted the orphan"
    );

    // A live upload, slowed by the proxy, and a second orphan.
    let local = setup.outbox.join("live.bin");
    random_file(&local, 30 * MIB, 31);
    let found = wait_open(&direct, |open| open.iter().any(|u| u.key == "live.bin")).await;
    let found = found.expect("the live upload started");
    let live = found
        .into_iter()
        .find(|u| u.key == "live.bin")
        .unwrap()
        .upload_id;
    let second = orphan(&direct, "old/second.bin").await;
    let orphans = cleanup(&setup, &["--older-than", "0s"]);
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    assert_eq!(orphans[0]["upload_id"], second.as_str());
    assert_eq!(orphans[0]["outcome"], "aborted");
    assert_eq!(orphans[0]["parts"], 1);
    let open = open_ids(&direct).await;
    assert!(!open.contains(&second) && open.contains(&live), "{open:?}");

    proxy.set_throttle(0);
    wait_until("the live upload to finish", Duration::from_secs(60), || {
        setup.status()["queue"]["done"] == 1
    })
    .await;
    assert_stored(
        &server,
        "live.bin",
        &local,
        "the live upload arrived intact",
    )
    .await;
    assert_eq!(daemon.terminate().await, Some(0));

    // No daemon: the store is opened by `ferry cleanup` itself.
    let third = orphan(&direct, "old/third.bin").await;
    let listed = cleanup(&setup, &["--older-than", "0s", "--dry-run"]);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["outcome"], "would_abort");
    assert!(
        open_ids(&direct).await.contains(&third),
        "a dry run aborts nothing"
    );
    let young = cleanup(&setup, &[]);
    assert!(young.is_empty(), "younger than the default 24 h: {young:?}");
    let aborted = cleanup(&setup, &["--older-than", "0s"]);
    assert_eq!(aborted[0]["outcome"], "aborted");
    assert!(open_ids(&direct).await.is_empty());
}

// s3s-fs has no ListMultipartUploads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_aborts_orphans_and_leaves_a_live_session_alone_in_moto() {
    cleanup_aborts_orphans_and_leaves_a_live_session_alone(Flavor::Moto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_aborts_orphans_and_leaves_a_live_session_alone_in_ceph() {
    cleanup_aborts_orphans_and_leaves_a_live_session_alone(Flavor::CephRgw).await;
}

/// A native remote has no uploads to list: `ferry cleanup --remote` on one says how its
/// sessions end instead, and a name that is no remote is named as such.
#[test]
fn cleanup_of_a_native_remote_says_how_its_sessions_end() {
    let setup = Setup::new("http://127.0.0.1:9", "", "");
    let refused = |remote: &str| {
        let output = setup.ferry(&["cleanup", "--remote", remote]);
        assert!(!output.status.success(), "{remote}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let native = refused("main");
    assert!(
        native.contains("remote \"main\" is a native remote") && native.contains("--session-ttl"),
        "{native}"
    );
    let unknown = refused("nowhere");
    assert!(
        unknown.contains("no S3 remote named \"nowhere\""),
        "{unknown}"
    );
}

/// Writes `count` files of mixed sizes named `{prefix}-{i}.bin` into `folder`.
fn drop_files(folder: &Path, prefix: &str, count: usize) -> Vec<String> {
    let sizes = [1024, 300 * 1024, 5 * MIB - 1, 5 * MIB + 1, 12 * MIB];
    (0..count)
        .map(|index| {
            let name = format!("{prefix}-{index}.bin");
            let seed = index as u64 + prefix.len() as u64 * 100;
            random_file(&folder.join(&name), sizes[index % sizes.len()], seed);
            name
        })
        .collect()
}

/// What a remote was seen to ignore shows under it in `ferry status` (and `--json`) for as long
/// as the daemon runs: on Garage, a storage class and an ACL; on s3s-fs, CRC32C (a file in
/// parts, whose CreateMultipartUpload reply does not name the algorithm back). The part size
/// shown is S3's least (5 MiB) where the remote asks for less.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_status_shows_what_a_remote_ignores() {
    let garage = Garage::start(1).await;
    let secrets = tempfile::tempdir().unwrap();
    let asked = "storage_class = \"STANDARD_IA\"\nacl = \"public-read\"\nchunk_size = \"1MiB\"\n";
    let remote = garage.remote_toml_in("main", 0, secrets.path()) + asked;
    let class = "the server ignores storage_class = \"STANDARD_IA\"";
    let acl = "the server ignores acl = \"public-read\"";
    notices_after_one_file(&remote, 1024, &[class, acl]).await;

    let server = S3Server::start(Flavor::S3sFs).await;
    let remote = server.remote_toml_in("main", "", secrets.path());
    let crc = "the server ignores CRC32C checksums: bodies carry their Content-MD5";
    notices_after_one_file(&remote, 6 * MIB, &[crc]).await;
}

/// Runs the daemon on `remote`, drops a file of `size` bytes, and checks `ferry status` then
/// shows `expected` under the remote, and nothing before.
async fn notices_after_one_file(remote: &str, size: u64, expected: &[&str]) {
    let setup = Setup::with_remote(remote, "", "");
    let daemon = setup.start().await;
    let notices = |status: serde_json::Value| status["remotes"][0]["notices"].clone();
    assert!(notices(setup.status()).is_null(), "none before a file");
    random_file(&setup.outbox.join("one.bin"), size, 61);
    let done = || setup.status()["queue"]["done"] == 1;
    wait_until("the file uploaded", Duration::from_secs(60), done).await;
    let status = setup.status();
    assert_eq!(notices(status.clone()), serde_json::json!(expected));
    assert!(
        status["remotes"][0]["part_size"].as_u64() >= Some(5 * MIB),
        "{status}"
    );
    let output = setup.ferry(&["status"]);
    let text = String::from_utf8_lossy(&output.stdout);
    for notice in expected {
        assert!(text.contains(&format!("\n    {notice}\n")), "{text}");
    }
    assert_eq!(daemon.terminate().await, Some(0));
}

/// The daemon against a 3-node Garage cluster with replication factor 3: files dropped while
/// one node is down, and more once it is back, all land byte-identical (read back through
/// another node than the one written to), and none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garage_cluster_takes_every_file_while_a_node_is_down() {
    let mut garage = Garage::start(3).await;
    let secrets = tempfile::tempdir().unwrap();
    let setup = Setup::with_remote(&garage.remote_toml_in("main", 0, secrets.path()), "", "");
    let daemon = setup.start().await;

    garage.kill(2);
    let mut names = drop_files(&setup.outbox, "down", 10);
    wait_until(
        "the files dropped with a node down",
        Duration::from_secs(120),
        || setup.status()["queue"]["done"] == 10,
    )
    .await;
    garage.restart(2).await;
    names.extend(drop_files(&setup.outbox, "back", 5));
    wait_until(
        "the files dropped after it came back",
        Duration::from_secs(120),
        || setup.status()["queue"]["done"] == 15,
    )
    .await;
    let status = setup.status();
    assert_eq!(status["queue"]["failed"], 0, "{status}");
    for name in &names {
        let stored = garage.get(1, name).await;
        let local = std::fs::read(setup.outbox.join(name)).unwrap();
        assert!(
            stored.as_deref() == Some(&local[..]),
            "{name} differs on node 1"
        );
    }
    assert_eq!(daemon.terminate().await, Some(0));
}

/// A remote that names no region, against Garage, which refuses requests signed for another
/// region than its own and names its own: the push signs for it from then on, lands, and says
/// which region to configure. With the region in the profile of the AWS shared config file,
/// `ferry config check` shows it and where it came from, and the push is never refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_buckets_region_comes_from_the_profile_or_from_the_server() {
    let garage = Garage::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let config = regionless_config(&garage, dir.path());
    let told = format!(
        "the bucket is in region {:?}, not \"us-east-1\"",
        garage::REGION
    );
    let stderr = push_to_garage(&garage, &config, "learned.bin", None).await;
    assert!(stderr.contains(&told), "{stderr}");

    let aws_config = dir.path().join("aws-config");
    std::fs::write(
        &aws_config,
        format!("[default]\nregion = {}\n", garage::REGION),
    )
    .unwrap();
    let mut check = Command::new(ferry_bin());
    check.arg("--config").arg(&config).args(["config", "check"]);
    let output = without_region(&mut check, &config, Some(&aws_config))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let from = format!("# from profile \"default\" of {}", aws_config.display());
    let shown = format!("region = {:?} {from}", garage::REGION);
    assert!(
        stdout.contains(&shown),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = push_to_garage(&garage, &config, "profile.bin", Some(&aws_config)).await;
    assert!(!stderr.contains("the bucket is in region"), "{stderr}");
}

/// The daemon, with a remote that names no region, against Garage: the first uploads go out
/// together (a proxy holds each of the first four requests 300 ms), all signed for the wrong
/// region and all refused; the first refusal teaches the region, and the others, refused for
/// the region they were signed for, are retried too: all land, none failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_refused_together_for_their_region_all_land() {
    let garage = Garage::start(1).await;
    let node = garage.endpoint(0);
    let proxy = FaultProxy::start(node.trim_start_matches("http://").parse().unwrap()).await;
    let held = Fault::Delay(Duration::from_millis(300));
    proxy.set_plan(move |_, index| (index < 4).then_some(held));
    let secrets = tempfile::tempdir().unwrap();
    let remote = garage
        .remote_toml_in("main", 0, secrets.path())
        .replace(&node, &proxy.url);
    let remote = remote.replace(&format!("region = \"{}\"\n", garage::REGION), "");
    let setup = Setup::with_remote(&remote, "", "");
    let home = secrets.path().display().to_string();
    let daemon = setup.start_with_env(&[("HOME", &home)]).await;
    let names = drop_files(&setup.outbox, "together", 8);
    wait_until("every file done", Duration::from_secs(60), || {
        let status = setup.status();
        status["queue"]["done"] == 8 || status["queue"]["failed"] != 0
    })
    .await;
    let status = setup.status();
    assert_eq!(status["queue"]["done"], 8, "{status}");
    for name in &names {
        let stored = garage.get(0, name).await;
        let local = std::fs::read(setup.outbox.join(name)).unwrap();
        assert!(stored.as_deref() == Some(&local[..]), "{name} differs");
    }
    assert_eq!(daemon.terminate().await, Some(0));
}

/// In `dir`, beside an empty `outbox` and `home`: a configuration of a remote on Garage's node
/// 0 that names no region, and a watch of the outbox.
fn regionless_config(garage: &Garage, dir: &Path) -> PathBuf {
    let remote = garage.remote_toml_in("s3", 0, dir);
    let remote = remote.replace(&format!("region = \"{}\"\n", garage::REGION), "");
    std::fs::create_dir(dir.join("home")).unwrap();
    let config = dir.join("config.toml");
    with_a_watch(&config, &remote);
    config
}

/// Writes `remote` (the remote `s3`) to `config` with a watch of a new `outbox` beside it,
/// which `ferry config check` asks for.
fn with_a_watch(config: &Path, remote: &str) {
    let outbox = config.parent().unwrap().join("outbox");
    std::fs::create_dir(&outbox).unwrap();
    let watch = format!("[[watch]]\npath = {outbox:?}\nremote = \"s3\"\n");
    std::fs::write(config, format!("{remote}\n{watch}")).unwrap();
}

/// `command` with no region in its environment, and `aws_config` as the AWS shared config file
/// (without it, `~/.aws/config` under the `home` beside `config`, which has none).
fn without_region<'a>(
    command: &'a mut Command,
    config: &Path,
    aws_config: Option<&Path>,
) -> &'a mut Command {
    for name in [
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_CONFIG_FILE",
        "AWS_PROFILE",
    ] {
        command.env_remove(name);
    }
    if let Some(file) = aws_config {
        command.env("AWS_CONFIG_FILE", file);
    }
    command.env("HOME", config.parent().unwrap().join("home"))
}

/// Pushes a new 6 MiB file `name` (beside `config`) through `config`'s Garage remote, with
/// `aws_config` as the shared config file; checks it landed whole, and returns the push's
/// standard error.
async fn push_to_garage(
    garage: &Garage,
    config: &Path,
    name: &str,
    aws_config: Option<&Path>,
) -> String {
    let dir = config.parent().unwrap();
    let local = dir.join(name);
    random_file(&local, 6 * MIB, name.len() as u64);
    let mut command = push(config, &dir.join("data"), &local);
    let output = without_region(&mut command, config, aws_config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "{name}: {stderr}");
    let stored = garage.get(0, name).await;
    assert!(
        stored == Some(std::fs::read(&local).unwrap()),
        "{name} differs"
    );
    stderr
}

/// A remote that names no endpoint takes it as the AWS CLI does: `$AWS_ENDPOINT_URL_S3`, then
/// `$AWS_ENDPOINT_URL`, then the profile's `endpoint_url`, none of them with
/// `$AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`; `ferry config check` says which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_left_out_comes_from_the_environment_as_the_aws_cli_takes_it() {
    let server = S3Server::start(Flavor::S3sFs).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &server, &server.endpoint);
    let remote = std::fs::read_to_string(&config).unwrap();
    let remote = remote.replace(&format!("endpoint = \"{}\"\n", server.endpoint), "");
    with_a_watch(&config, &remote);
    let profile = "[default]\nendpoint_url = http://127.0.0.1:9\n";
    std::fs::write(dir.path().join("aws-config"), profile).unwrap();

    let local = dir.path().join("from-env.bin");
    random_file(&local, 1000, 49);
    let mut pushed = push(&config, &dir.path().join("data"), &local);
    let vars = [("AWS_ENDPOINT_URL_S3", server.endpoint.as_str())];
    aws_environment(
        &mut pushed,
        &[vars[0], ("AWS_ENDPOINT_URL", "http://127.0.0.1:9")],
    );
    let output = pushed.output().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_stored(&server, "pushed/from-env.bin", &local, "push").await;

    let from_profile = format!("of {}", dir.path().join("aws-config").display());
    let ignored = [("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")];
    let cases: [(&[Var], Option<String>); 3] = [
        (
            &vars,
            Some(format!("{:?} # from $AWS_ENDPOINT_URL_S3", server.endpoint)),
        ),
        (
            &[],
            Some(format!(
                "\"http://127.0.0.1:9\" # from profile \"default\" {from_profile}"
            )),
        ),
        (&ignored, None),
    ];
    for (vars, shown) in cases {
        let expected = shown.map(|shown| format!("endpoint = {shown}"));
        assert_eq!(shown_endpoint(&config, vars), expected, "{vars:?}");
    }
}

/// An environment variable and its value.
type Var<'a> = (&'a str, &'a str);

/// `command` with `vars` alone of the AWS endpoint variables, and `aws-config` beside its
/// `--config` file as the AWS shared config file.
fn aws_environment(command: &mut Command, vars: &[Var]) {
    let mut args = command.get_args().skip_while(|arg| *arg != "--config");
    let config = Path::new(args.nth(1).expect("the command has --config"));
    let aws_config = config.parent().unwrap().join("aws-config");
    for name in ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_PROFILE"] {
        command.env_remove(name);
    }
    command.env("AWS_CONFIG_FILE", aws_config);
    command.envs(vars.iter().copied());
}

/// The `endpoint = ` line of `ferry config check` for `config`, with `vars` set.
fn shown_endpoint(config: &Path, vars: &[Var]) -> Option<String> {
    let mut check = Command::new(ferry_bin());
    check.arg("--config").arg(config).args(["config", "check"]);
    aws_environment(&mut check, vars);
    let output = check.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().find(|line| line.starts_with("endpoint = "));
    line.map(str::to_string)
}

/// `checksum = "md5"` (servers without flexible checksums): every part and PutObject carries
/// `Content-MD5`, and a wrong one is refused (s3s-fs checks PutObject's, and its part ETags are
/// MD5s, which Ferry checks against what it sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_checksums_are_sent_and_checked() {
    for flavor in BOTH {
        let server = S3Server::start(flavor).await;
        let mut config = server.config("md5/");
        config.checksum = ferry::upload::s3::Checksum::Md5;
        let settings = UploadSettings {
            chunk_size: ChunkSize::Fixed(5 * MIB),
            ..UploadSettings::default()
        };
        let backend = Arc::new(S3Backend::new(&config).unwrap());
        let engine = Engine::with_backend(backend.clone(), settings);
        let dir = tempfile::tempdir().unwrap();
        for (name, size) in [("small.bin", 100 * 1024), ("large.bin", 12 * MIB)] {
            let local = dir.path().join(name);
            random_file(&local, size, 41);
            let report = engine.upload_cleanly(&local, name).await;
            assert_eq!(
                u64::from(report.parts),
                size.div_ceil(5 * MIB),
                "{flavor:?} {name}"
            );
            assert_stored(
                &server,
                &format!("md5/{name}"),
                &local,
                &format!("{flavor:?} {name}"),
            )
            .await;
        }
        if flavor == Flavor::S3sFs {
            let md5 = Some([0u8; 16]);
            let body = body(vec![3u8; 2048], PartSums { crc32c: None, md5 });
            let request = request("wrong-md5.bin", 2048);
            let error = backend.put_file(&request, body).await.unwrap_err();
            assert!(error.to_string().contains("BadDigest"), "{error}");
        }
    }
}

/// The daemon's group commit: small files dropped together (each sent whole, so keeping no
/// session record) reach the bucket with far fewer store flushes than files, because the
/// outcomes reported together share one. Without it each outcome took a flush of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_reported_together_share_a_flush() {
    const FILES: u64 = 80;
    let server = S3Server::start(Flavor::S3sFs).await;
    let secrets = tempfile::tempdir().unwrap();
    let setup = Setup::with_remote(&server.remote_toml_in("main", "", secrets.path()), "", "");
    let _daemon = setup.start().await;
    let flushes = |status: serde_json::Value| status["store_flushes"].as_u64().unwrap();
    let before = flushes(setup.status());
    // Written aside and moved in at once, so that they settle together.
    let staging = secrets.path().join("staging");
    std::fs::create_dir(&staging).unwrap();
    for index in 0..FILES {
        random_file(&staging.join(format!("s{index}.bin")), 4096, index);
    }
    for index in 0..FILES {
        let name = format!("s{index}.bin");
        std::fs::rename(staging.join(&name), setup.outbox.join(&name)).unwrap();
    }
    setup
        .wait_idle_with_done(FILES, Duration::from_secs(60))
        .await;
    let spent = flushes(setup.status()) - before;
    for index in 0..FILES {
        let name = format!("s{index}.bin");
        let local = std::fs::read(setup.outbox.join(&name)).unwrap();
        assert_eq!(
            server.get(&name).await.as_deref(),
            Some(&local[..]),
            "{name}"
        );
    }
    // Queueing takes a flush per batch the watcher hands over (about 10 here); the outcomes
    // took one each (80), and share about one per 6 now.
    assert!(
        spent < FILES * 3 / 4,
        "{spent} store flushes for {FILES} files (queueing and outcomes)"
    );
}
