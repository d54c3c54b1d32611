//! `ferry serve` against PROTOCOL.md: every endpoint, every error code, and hostile input that
//! must be refused without writing outside the storage folder.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use ferry::protocol::{CHECKSUM_HEADER, PART_NUMBER_HEADER, encode_crc32c};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::api::Api;
use crate::support::*;

fn assert_error(reply: &(StatusCode, Value), status: u16, code: &str) {
    assert_eq!(
        reply.0.as_u16(),
        status,
        "expected {status} {code}, got {reply:?}"
    );
    assert_eq!(reply.1["error"]["code"], code, "{reply:?}");
    assert!(
        reply.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Every file under `root`, relative to it.
fn all_files(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    found
}

/// Sends raw bytes and returns the status line's code (0 when the connection just closed).
fn raw_request(address: std::net::SocketAddr, request: &[u8], close_write: bool) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    if close_write {
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    let code = reply
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (code, reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_session_follows_the_protocol() {
    let receiver = Receiver::start().await;
    let api = Api::new(&receiver);
    let health: Value = api
        .client
        .get(format!("{}/v1/health", receiver.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");

    let part_1 = vec![1u8; 256 * 1024];
    let part_2 = b"tail".to_vec();
    let content = [part_1.clone(), part_2.clone()].concat();
    let body = json!({
        "filename": "reports/2026/data.csv", "total_size": content.len(), "workspace_id": "ws",
        "mime_type": "text/csv", "metadata": {"project": "atlas"}, "sha256": sha256_hex(&content),
        "mtime": "2021-05-06T07:08:09.123456789Z"
    });
    let (status, init) = api.init_with(body).await;
    assert_eq!(status, StatusCode::CREATED);
    let upload_id = init["upload_id"].as_str().unwrap();
    assert!(
        upload_id.len() >= 3 + 32,
        "at least 128 random bits: {upload_id}"
    );
    assert_eq!(init["min_part_size"], 262144);
    assert_eq!(init["max_parts"], 10000);

    // Parts in reverse order; a re-sent part replaces the earlier one.
    let (status, second) = api.put(upload_id, "2", b"xxxx".to_vec()).await;
    assert_eq!(status, StatusCode::OK);
    let (_, second_again) = api.put(upload_id, "2", part_2.clone()).await;
    assert_ne!(second["etag"], second_again["etag"]);
    assert_eq!(
        second_again["crc32c"],
        encode_crc32c(crc32c::crc32c(&part_2))
    );
    let (status, first) = api.put(upload_id, "1", part_1.clone()).await;
    assert_eq!(status, StatusCode::OK);

    let (status, session) = api
        .call(
            reqwest::Method::GET,
            &format!("/v1/uploads/chunked/{upload_id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(session["state"], "open");
    assert_eq!(session["parts"].as_array().unwrap().len(), 2);
    assert_eq!(session["parts"][0]["part_number"], 1);

    // The replaced etag no longer completes.
    let stale = api
        .complete(
            upload_id,
            &[
                (1, first["etag"].as_str().unwrap()),
                (2, second["etag"].as_str().unwrap()),
            ],
            None,
        )
        .await;
    assert_error(&stale, 400, "manifest_mismatch");
    let manifest = [
        (1, first["etag"].as_str().unwrap()),
        (2, second_again["etag"].as_str().unwrap()),
    ];
    let (status, done) = api.complete(upload_id, &manifest, None).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["file"]["sha256"], sha256_hex(&content));
    assert_eq!(
        std::fs::read(receiver.storage.join("ws/reports/2026/data.csv")).unwrap(),
        content
    );

    // Complete is idempotent; another manifest is refused; parts are refused once completed.
    let (status, again) = api.complete(upload_id, &manifest, None).await;
    assert_eq!((status, &again), (StatusCode::OK, &done));
    assert_error(
        &api.complete(upload_id, &manifest[..1], None).await,
        409,
        "upload_not_open",
    );
    assert_error(
        &api.put(upload_id, "1", part_1.clone()).await,
        409,
        "upload_not_open",
    );

    let (status, meta) = api
        .call(
            reqwest::Method::GET,
            "/v1/workspaces/ws/files/reports/2026/data.csv",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(meta["mime_type"], "text/csv");
    assert_eq!(meta["metadata"]["project"], "atlas");
    assert_eq!(meta["mtime"], "2021-05-06T07:08:09.123456789Z");
    let placed = std::fs::metadata(receiver.storage.join("ws/reports/2026/data.csv")).unwrap();
    let since_epoch = placed
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH);
    assert_eq!(
        since_epoch.unwrap(),
        Duration::new(1_620_284_889, 123_456_789)
    );
    assert_eq!(meta["size"], content.len());
    assert_error(
        &api.call(
            reqwest::Method::GET,
            "/v1/workspaces/ws/files/nope.csv",
            None,
        )
        .await,
        404,
        "file_not_found",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_checks_the_manifest_and_the_digest() {
    let receiver = Receiver::start().await;
    let api = Api::new(&receiver);
    let min = 256 * 1024;
    let upload_id = api.open("m.bin", 2 * min + 10).await;
    let mut etags = Vec::new();
    for (number, size) in [(1, min), (2, min), (3, 10)] {
        let (status, part) = api
            .put(
                &upload_id,
                &number.to_string(),
                vec![number as u8; size as usize],
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        etags.push(part["etag"].as_str().unwrap().to_string());
    }
    let e = |i: usize| etags[i].as_str();
    let refused: [(&str, Vec<(u32, &str)>); 6] = [
        ("skips part 2: sizes do not sum", vec![(1, e(0)), (3, e(2))]),
        ("repeats", vec![(1, e(0)), (1, e(0)), (3, e(2))]),
        ("misordered", vec![(2, e(1)), (1, e(0)), (3, e(2))]),
        ("wrong etag", vec![(1, e(1)), (2, e(1)), (3, e(2))]),
        ("never stored", vec![(1, e(0)), (2, e(1)), (4, e(2))]),
        ("empty", vec![]),
    ];
    for (case, manifest) in &refused {
        let reply = api.complete(&upload_id, manifest, None).await;
        assert_eq!(
            reply.1["error"]["code"], "manifest_mismatch",
            "{case}: {reply:?}"
        );
        assert_error(&reply, 400, "manifest_mismatch");
    }

    // A small part in the middle.
    let small = api.open("s.bin", min + 20).await;
    let (_, a) = api.put(&small, "1", vec![0; 10]).await;
    let (_, b) = api.put(&small, "2", vec![0; (min + 10) as usize]).await;
    let small_reply = api
        .complete(
            &small,
            &[
                (1, a["etag"].as_str().unwrap()),
                (2, b["etag"].as_str().unwrap()),
            ],
            None,
        )
        .await;
    assert_error(&small_reply, 400, "part_too_small");

    // A wrong digest leaves the session open; the right one completes it.
    let manifest = [(1, e(0)), (2, e(1)), (3, e(2))];
    assert_error(
        &api.complete(&upload_id, &manifest, Some(&"0".repeat(64)))
            .await,
        422,
        "sha256_mismatch",
    );
    assert!(
        !receiver.storage.join("ws/m.bin").exists(),
        "nothing visible after a failed complete"
    );
    let content = [
        vec![1u8; min as usize],
        vec![2u8; min as usize],
        vec![3u8; 10],
    ]
    .concat();
    // Parts sent in order at a uniform size lie in the session's data file already: complete
    // publishes that very file (same inode) instead of copying it.
    use std::os::unix::fs::MetadataExt;
    let sessions = receiver.storage.join(".ferry/sessions");
    let data = sessions.join(&upload_id).join("data");
    let data_inode = std::fs::metadata(&data).unwrap().ino();
    let (status, _) = api
        .complete(&upload_id, &manifest, Some(&sha256_hex(&content)))
        .await;
    assert_eq!(status, StatusCode::OK);
    let published = receiver.storage.join("ws/m.bin");
    assert_eq!(std::fs::read(&published).unwrap(), content);
    assert_eq!(std::fs::metadata(&published).unwrap().ino(), data_inode);
}

/// Protocol v1.1: parts of varying sizes that carry their offset are written in place, so
/// complete publishes the session's data file as it is; the same layout without the offsets
/// is copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_of_any_sizes_that_carry_their_offset_are_published_without_a_copy() {
    use std::os::unix::fs::MetadataExt;
    let receiver = Receiver::start().await;
    let api = Api::new(&receiver);
    let kib = 1024usize;
    let sizes = [256 * kib, 768 * kib, 512 * kib, 100];
    let parts: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(index, &size)| vec![index as u8 + 1; size])
        .collect();
    let content = parts.concat();
    let offsets: Vec<u64> = sizes
        .iter()
        .scan(0u64, |end, &size| {
            let offset = *end;
            *end += size as u64;
            Some(offset)
        })
        .collect();
    let mut inodes = Vec::new();
    for with_offsets in [true, false] {
        let name = format!("varying-{with_offsets}.bin");
        let upload_id = api.open(&name, content.len() as u64).await;
        let mut etags = vec![String::new(); parts.len()];
        for index in [1, 0, 3, 2] {
            let offset = with_offsets.then_some(offsets[index]);
            let number = (index + 1).to_string();
            let (status, body) = api
                .put_at(&upload_id, &number, parts[index].clone(), offset)
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            etags[index] = body["etag"].as_str().unwrap().to_string();
        }
        let data = receiver
            .storage
            .join(".ferry/sessions")
            .join(&upload_id)
            .join("data");
        let data_inode = std::fs::metadata(&data).map(|m| m.ino()).ok();
        let manifest: Vec<(u32, &str)> = (1..=4).zip(etags.iter().map(String::as_str)).collect();
        let (status, body) = api
            .complete(&upload_id, &manifest, Some(&sha256_hex(&content)))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let published = receiver.storage.join("ws").join(&name);
        assert_eq!(std::fs::read(&published).unwrap(), content);
        let inode = std::fs::metadata(&published).unwrap().ino();
        inodes.push((data_inode, inode));
    }
    let (with, without) = (inodes[0], inodes[1]);
    assert_eq!(
        with.0,
        Some(with.1),
        "with offsets: the data file is the file"
    );
    assert_ne!(without.0, Some(without.1), "without: the parts were copied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_the_protocol_codes_and_nothing_escapes_storage() {
    let receiver = Receiver::start_with(|config| {
        config.workspaces = vec!["ws".into()];
        config.limits.max_part_size = 1024 * 1024;
        config.limits.max_parts = 100;
        config.limits.max_file_size = 64 * 1024 * 1024;
    })
    .await;
    let api = Api::new(&receiver);
    let parent = receiver.storage.parent().unwrap().to_path_buf();
    let before: Vec<String> = std::fs::read_dir(&parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();

    // Filenames and workspaces.
    let long = "a".repeat(1025);
    let long_component = format!("dir/{}", "b".repeat(256));
    for filename in [
        "../escape",
        "/etc/passwd",
        "a/../../escape",
        "a/./b",
        "a//b",
        "",
        "nul\0byte",
        "bell\u{7}",
        "back\\slash",
        &long,
        &long_component,
    ] {
        assert_error(&api.init(filename, 1).await, 400, "invalid_request");
    }
    for workspace in ["..", "a/b", "", ".ferry"] {
        let body = json!({"filename": "f", "total_size": 1, "workspace_id": workspace});
        assert_error(&api.init_with(body).await, 400, "invalid_request");
    }
    let body = json!({"filename": "f", "total_size": 1, "workspace_id": "other"});
    assert_error(&api.init_with(body).await, 403, "forbidden");
    let body = json!({"filename": "f", "workspace_id": "ws"});
    let missing = api.init_with(body).await;
    assert_error(&missing, 400, "invalid_request");
    assert!(
        missing.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("total_size"),
        "names the field: {missing:?}"
    );
    let body =
        json!({"filename": "f", "total_size": 1, "workspace_id": "ws", "mtime": "yesterday"});
    let bad_time = api.init_with(body).await;
    assert_error(&bad_time, 400, "invalid_request");
    let message = bad_time.1["error"]["message"].as_str().unwrap();
    assert!(message.contains("mtime"), "names the field: {message}");
    assert_error(&api.init("big", 65 * 1024 * 1024).await, 413, "too_large");
    let too_many: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    let body =
        json!({"filename": "f", "total_size": 1, "workspace_id": "ws", "metadata": too_many});
    assert_error(&api.init_with(body).await, 400, "invalid_request");
    let garbage = api
        .client
        .post(format!("{}/v1/uploads/chunked/init", receiver.url))
        .bearer_auth(TOKEN)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);

    // Authentication.
    let anonymous = api
        .client
        .post(format!("{}/v1/uploads/chunked/init", receiver.url))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let wrong = api
        .client
        .get(format!("{}/v1/uploads/chunked/up_0", receiver.url))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    // Part numbers, sizes, checksums, unknown ids.
    let upload_id = api.open("target.bin", 2 * 1024 * 1024).await;
    for number in ["0", "101", "abc", "-1", ""] {
        assert_error(
            &api.put(&upload_id, number, vec![1; 10]).await,
            400,
            "invalid_part_number",
        );
    }
    assert_error(
        &api.put("up_00000000000000000000000000000000", "1", vec![1])
            .await,
        404,
        "upload_not_found",
    );
    assert_error(
        &api.put("up_..%2F..%2F..%2Fetc", "1", vec![1]).await,
        404,
        "upload_not_found",
    );
    let (code, _) = raw_request(receiver.address, format!(
        "PUT /v1/uploads/chunked/{upload_id}/parts HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: Bearer {TOKEN}\r\n{PART_NUMBER_HEADER}: 1\r\ncontent-length: {}\r\n\r\n", 2 * 1024 * 1024).as_bytes(), false);
    assert_eq!(code, 413, "over max_part_size");
    let (code, _) = raw_request(receiver.address, format!(
        "PUT /v1/uploads/chunked/{upload_id}/parts HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: Bearer {TOKEN}\r\n{PART_NUMBER_HEADER}: 1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").as_bytes(), false);
    assert_eq!(code, 411, "no Content-Length");
    // A Content-Length that lies: 1000 promised, 10 sent, then the client stops sending.
    let (code, _) = raw_request(receiver.address, format!(
        "PUT /v1/uploads/chunked/{upload_id}/parts HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: Bearer {TOKEN}\r\n{PART_NUMBER_HEADER}: 1\r\ncontent-length: 1000\r\n\r\n0123456789").as_bytes(), true);
    assert!(code == 400 || code == 0, "short body refused, got {code}");
    let bad_crc = api
        .client
        .put(format!(
            "{}/v1/uploads/chunked/{upload_id}/parts",
            receiver.url
        ))
        .bearer_auth(TOKEN)
        .header(PART_NUMBER_HEADER, "1")
        .header(CHECKSUM_HEADER, encode_crc32c(12345))
        .body(vec![7u8; 100])
        .send()
        .await
        .unwrap();
    assert_eq!(bad_crc.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        bad_crc.json::<Value>().await.unwrap()["error"]["code"],
        "checksum_mismatch"
    );
    let good_crc = api
        .client
        .put(format!(
            "{}/v1/uploads/chunked/{upload_id}/parts",
            receiver.url
        ))
        .bearer_auth(TOKEN)
        .header(PART_NUMBER_HEADER, "2")
        .header(CHECKSUM_HEADER, encode_crc32c(crc32c::crc32c(&[7u8; 100])))
        .body(vec![7u8; 100])
        .send()
        .await
        .unwrap();
    assert_eq!(good_crc.status(), StatusCode::OK);
    let (_, session) = api
        .call(
            reqwest::Method::GET,
            &format!("/v1/uploads/chunked/{upload_id}"),
            None,
        )
        .await;
    let stored: Vec<u64> = session["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["part_number"].as_u64().unwrap())
        .collect();
    assert_eq!(
        stored,
        vec![2],
        "the lying, oversized and mismatched parts stored nothing"
    );

    // Abort is idempotent and closes the session.
    let path = format!("/v1/uploads/chunked/{upload_id}");
    assert_eq!(
        api.call(reqwest::Method::DELETE, &path, None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.call(reqwest::Method::DELETE, &path, None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_error(
        &api.put(&upload_id, "1", vec![1; 10]).await,
        409,
        "upload_not_open",
    );
    assert_error(
        &api.call(reqwest::Method::GET, "/v1/nowhere", None).await,
        404,
        "not_found",
    );

    // Nothing was written beside the storage folder, and inside it only the protocol's layout.
    let after: Vec<String> = std::fs::read_dir(&parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    assert_eq!(before, after);
    for file in all_files(&receiver.storage) {
        assert!(
            file.starts_with(".ferry/sessions/up_") && file.ends_with("session.json"),
            "unexpected file {file}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_receiver_restart_and_expire() {
    let receiver = Receiver::start().await;
    let storage = receiver.storage.clone();
    let address = receiver.address;
    let api = Api::new(&receiver);
    let upload_id = api.open("kept.bin", 300 * 1024).await;
    let (_, part) = api.put(&upload_id, "1", vec![9u8; 300 * 1024]).await;
    let dir = receiver.stop().await;

    let restarted = Receiver::start_at(&storage, address, |config| {
        config.session_ttl = Duration::from_secs(2)
    })
    .await;
    let api = Api::new(&restarted);
    let (status, session) = api
        .call(
            reqwest::Method::GET,
            &format!("/v1/uploads/chunked/{upload_id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(session["parts"][0]["etag"], part["etag"]);
    let (status, _) = api
        .complete(&upload_id, &[(1, part["etag"].as_str().unwrap())], None)
        .await;
    assert_eq!(status, StatusCode::OK);

    // Sessions opened under a 2 s lifetime expire and are swept.
    let short = api.open("short.bin", 10).await;
    let session_dir = storage.join(".ferry/sessions").join(&short);
    assert!(session_dir.exists());
    wait_until(
        "the expired session is swept",
        Duration::from_secs(10),
        || !session_dir.exists(),
    )
    .await;
    assert_error(
        &api.put(&short, "1", vec![0; 10]).await,
        404,
        "upload_not_found",
    );
    drop(dir);
}
