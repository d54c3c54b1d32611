//! The S3 backend against an old server: Ceph 16.2's RADOS gateway, which has no flexible
//! checksums (it stores a body whatever its `x-amz-checksum-crc32c` says) and checks
//! `Content-MD5`; and s3s-fs, which checks neither for a part. Bodies are damaged on the way
//! by the fault proxy; every object is read back through the server.

use std::sync::{Arc, Mutex};

use ferry::upload::backend::{Backend, PartSums};
use ferry::upload::s3::{Checksum, S3Backend};
use ferry::upload::{ChunkSize, UploadSettings};

use crate::s3::{
    assert_stored, body, config_file, creates, killed_push, proxy_before, push, request, summary,
};
use crate::support::fault_proxy::{Fault, FaultProxy, RequestHead};
use crate::support::s3::{Flavor, S3Server};
use crate::support::{Engine, MIB, fast_retry_settings, random_file};

/// An engine with 5 MiB parts on the gateway behind `proxy`, its remote's checksum `checksum`.
fn engine(server: &S3Server, proxy: &FaultProxy, checksum: Checksum) -> (Engine, Arc<S3Backend>) {
    let mut config = server.config("old/");
    config.endpoint = Some(proxy.url.clone());
    config.checksum = checksum;
    let backend = Arc::new(S3Backend::new(&config).unwrap());
    let settings = UploadSettings {
        chunk_size: ChunkSize::Fixed(5 * MIB),
        ..fast_retry_settings()
    };
    (Engine::with_backend(backend.clone(), settings), backend)
}

/// Damages the first attempt of each request `damaged` picks.
fn damage_once(proxy: &FaultProxy, damaged: impl Fn(&RequestHead) -> bool + Send + Sync + 'static) {
    let done = Mutex::new(Vec::<String>::new());
    proxy.set_plan(move |head, _| {
        let what = format!("{} {:?}", head.path.split('?').next()?, head.part_number);
        let mut done = done.lock().unwrap();
        if !damaged(head) || done.contains(&what) {
            return None;
        }
        done.push(what);
        Some(Fault::Corrupt)
    });
}

/// How many times the proxy saw a PUT of `name` (its part `part`, or the whole file).
fn puts_of(proxy: &FaultProxy, name: &str, part: Option<u32>) -> usize {
    let log = proxy.log();
    let puts = log.iter().filter(|seen| seen.method == "PUT");
    puts.filter(|seen| seen.path.contains(name) && seen.part_number == part)
        .count()
}

/// `checksum = "md5"`: every size around the 5 MiB part minimum arrives whole although the
/// first attempt of each whole-file PUT and of every part but the first was damaged, because
/// the gateway refuses a body whose `Content-MD5` does not match and Ferry sends it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_gateway_refuses_a_damaged_body_by_its_content_md5() {
    let server = S3Server::start(Flavor::CephRgw).await;
    let proxy = proxy_before(&server).await;
    damage_once(&proxy, |head| {
        head.method == "PUT" && head.part_number != Some(1)
    });
    let (engine, backend) = engine(&server, &proxy, Checksum::Md5);
    let dir = tempfile::tempdir().unwrap();
    let sizes = [1, 5 * MIB - 1, 5 * MIB, 5 * MIB + 1, 12 * MIB];
    for (seed, size) in sizes.into_iter().enumerate() {
        let name = format!("md5-{size}.bin");
        let local = dir.path().join(&name);
        random_file(&local, size, seed as u64);
        let report = engine.upload(&local, &name).await.unwrap();
        assert_eq!(u64::from(report.parts), size.div_ceil(5 * MIB), "{name}");
        assert_stored(&server, &format!("old/{name}"), &local, &name).await;
        let damaged = if report.parts == 1 { None } else { Some(2) };
        assert_eq!(
            puts_of(&proxy, &name, damaged),
            2,
            "{name} sent again: {:#?}",
            proxy.log()
        );
    }
    // The gateway itself refuses a wrong Content-MD5 (BadDigest), not only Ferry's ETag check.
    proxy.set_plan(|_, _| None);
    let md5 = Some([0u8; 16]);
    let wrong = body(vec![3u8; 2048], PartSums { crc32c: None, md5 });
    let error = backend
        .put_file(&request("wrong-md5.bin", 2048), wrong)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("BadDigest"), "{error}");
}

/// The default `checksum = "crc32c"` to a server that ignores it: the first whole-file PUT's
/// reply does not name the CRC32C back, so that body is sent again with `Content-MD5` and so
/// is every body after it. Both damaged bodies are refused and sent again, and both objects
/// arrive whole; without the turn to MD5 the gateway stores the damaged bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_ignores_crc32c_is_sent_content_md5_instead() {
    let server = S3Server::start(Flavor::CephRgw).await;
    let proxy = proxy_before(&server).await;
    damage_once(&proxy, |head| {
        head.method == "PUT" && (head.part_number.is_none() || head.part_number == Some(2))
    });
    let (engine, _) = engine(&server, &proxy, Checksum::Crc32c);
    let dir = tempfile::tempdir().unwrap();
    for (name, size) in [("whole.bin", 64 * 1024), ("parts.bin", 12 * MIB)] {
        let local = dir.path().join(name);
        random_file(&local, size, 17);
        engine.upload(&local, name).await.unwrap();
        assert_stored(&server, &format!("old/{name}"), &local, name).await;
    }
    // Damaged with its CRC32C ignored, then whole with its MD5.
    assert_eq!(puts_of(&proxy, "whole.bin", None), 2);
    assert_eq!(puts_of(&proxy, "parts.bin", Some(2)), 2);
}

/// The default `checksum = "crc32c"` to servers that do not check a part's CRC32C, a file in
/// parts first: neither Ceph's gateway nor s3s-fs names the algorithm back at
/// CreateMultipartUpload, so that upload is aborted and opened again without it, and the
/// parts carry their MD5. The damaged part is refused (by the gateway, `BadDigest`; from
/// s3s-fs, by its ETag, not the MD5 sent) and sent again. Before, both stored it damaged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_does_not_keep_crc32c_for_an_upload_gets_its_parts_md5() {
    for flavor in [Flavor::S3sFs, Flavor::CephRgw] {
        let server = S3Server::start(flavor).await;
        let proxy = proxy_before(&server).await;
        damage_once(&proxy, |head| {
            head.method == "PUT" && head.part_number == Some(2)
        });
        let (engine, _) = engine(&server, &proxy, Checksum::Crc32c);
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("parts.bin");
        random_file(&local, 12 * MIB, 18);
        let report = engine.upload(&local, "parts.bin").await.unwrap();
        assert_eq!(report.parts, 3, "{flavor:?}");
        assert_stored(&server, "old/parts.bin", &local, &format!("{flavor:?}")).await;
        let log = proxy.log();
        let calls = log.iter().filter(|seen| seen.part_number.is_none());
        let methods: Vec<&str> = calls.map(|seen| seen.method.as_str()).collect();
        let reopened = ["POST", "DELETE", "POST"];
        assert_eq!(methods[..3], reopened, "{flavor:?}: {log:#?}");
        let part_2 = puts_of(&proxy, "parts.bin", Some(2));
        assert_eq!(part_2, 2, "{flavor:?}: the damaged part sent again");
    }
}

/// A push SIGKILLed mid-way to a server that ignores CRC32C, on the default checksum: its
/// upload was opened again without CRC32C, and the session id it recorded says so. The push
/// that resumes it has seen no reply of the server's yet, and sends the parts left with their
/// MD5 from the first. The first attempt of the last part is damaged; it is refused (Ceph:
/// `BadDigest`; s3s-fs: its ETag) and sent again. Before, the resumed parts carried the CRC32C
/// the server ignores, and the damaged one was stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_resumed_after_a_kill_sends_md5_to_a_server_that_ignores_crc32c() {
    for flavor in [Flavor::S3sFs, Flavor::CephRgw] {
        let server = S3Server::start(flavor).await;
        let proxy = proxy_before(&server).await;
        let dir = tempfile::tempdir().unwrap();
        let config = config_file(dir.path(), &server, &proxy.url);
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, text.replace("checksum = \"md5\"\n", "")).unwrap();
        let (data, local) = (dir.path().join("data"), dir.path().join("resumed.bin"));
        random_file(&local, 40 * MIB, 23);
        proxy.set_throttle(4 * MIB);
        killed_push(&config, &data, &local, 2, &proxy).await;

        proxy.set_throttle(0);
        let mark = proxy.mark();
        damage_once(&proxy, |head| {
            head.method == "PUT" && head.part_number == Some(8)
        });
        let summary = summary(&push(&config, &data, &local).output().unwrap());
        let file = &summary["files"][0];
        assert!(file["parts_resumed"].as_u64().unwrap() >= 2, "{summary}");
        assert_stored(
            &server,
            "pushed/resumed.bin",
            &local,
            &format!("{flavor:?}"),
        )
        .await;
        let resumed = &proxy.log()[mark..];
        assert_eq!(creates(resumed), 0, "{flavor:?}: resumed, not opened again");
        let part_8 = resumed.iter().filter(|seen| seen.part_number == Some(8));
        assert_eq!(part_8.count(), 2, "{flavor:?}: the damaged part sent again");
    }
}
