//! `ferry serve` against clients that misbehave (issue #9): slow or stalled clients are cut off
//! by timeouts while others are served, bogus ids leave no state behind, one session cannot
//! hold more than its file, open sessions are capped, and a full disk is said as such.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ferry::server::Guards;
use serde_json::json;

use crate::support::api::Api;
use crate::support::*;

/// Guards with short timeouts, so that a test sees them act.
fn quick_guards() -> Guards {
    Guards {
        header_timeout: Duration::from_secs(1),
        body_idle_timeout: Duration::from_secs(1),
        ..Guards::default()
    }
}

/// True once the peer has closed `stream` (EOF or reset) within `limit`.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue, // a response (e.g. 408) before the close
            Err(error) => {
                return !matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed_while_an_upload_goes_through() {
    let receiver = Receiver::start_with(|config| {
        config.guards = Guards {
            max_connections: 32,
            ..quick_guards()
        }
    })
    .await;
    // More slow-header clients than the receiver serves at once, each sending a header line
    // and then nothing more.
    let mut slow: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut stream = TcpStream::connect(receiver.address).unwrap();
            stream
                .write_all(b"PUT /v1/uploads/chunked/up_x/parts HTTP/1.1\r\nHost: a\r\n")
                .unwrap();
            stream
        })
        .collect();
    // A keep-alive connection left idle after one request.
    let mut idle = TcpStream::connect(receiver.address).unwrap();
    idle.write_all(b"GET /v1/health HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("through.bin");
    random_file(&file, 3 * MIB, 7);
    let engine = Engine::new(&receiver.url, fast_retry_settings());
    let started = Instant::now();
    let report = engine.upload(&file, "through.bin").await.unwrap();
    assert_eq!(report.size, 3 * MIB);
    assert_same_content(&file, &receiver.file("through.bin"));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the upload waited {:?}",
        started.elapsed()
    );
    let deadline = Duration::from_secs(5);
    let slow_closed = tokio::task::spawn_blocking(move || {
        slow.iter_mut()
            .map(|stream| closed_within(stream, deadline))
            .filter(|closed| *closed)
            .count()
    })
    .await
    .unwrap();
    assert_eq!(slow_closed, 100, "every slow-header connection is closed");
    assert!(
        closed_within(&mut idle, deadline),
        "the idle keep-alive connection is closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_body_that_stops_short_is_abandoned_and_nothing_is_stored() {
    let receiver = Receiver::start_with(|config| config.guards = quick_guards()).await;
    let api = Api::new(&receiver);
    let id = api.open("short.bin", 1000).await;
    let started = Instant::now();
    let answer = announce_part(receiver.address, &id, 1, 1000, &[7u8; 10]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(answer.contains("after 10 of 1000 bytes"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let path = format!("/v1/uploads/chunked/{id}");
    let (_, session) = api.call(reqwest::Method::GET, &path, None).await;
    assert_eq!(session["parts"], json!([]), "{session}");
    assert_eq!(receiver.stored_parts(), 0);
}

/// Sends the headers of a part upload of `length` bytes and the start of its body, then
/// nothing more; returns the answer.
fn announce_part(
    address: std::net::SocketAddr,
    id: &str,
    number: u32,
    length: u64,
    body_start: &[u8],
) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    let head = format!(
        "PUT /v1/uploads/chunked/{id}/parts HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TOKEN}\r\n\
         Fastio-Part-Number: {number}\r\nContent-Length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body_start).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bogus_upload_ids_leaves_memory_flat() {
    let dir = tempfile::tempdir().unwrap();
    let serve = ServeProcess::spawn(
        &dir.path().join("storage"),
        "127.0.0.1:0",
        &token_file(dir.path()),
    );
    let api = std::sync::Arc::new(Api::at(&format!("http://{}", serve.address)));
    let pid = serve.child.id();
    let flood = |round: usize| {
        let api = api.clone();
        async move {
            for index in 0..375 {
                let id = format!("up_{round}_{index}_{}", "a".repeat(60 * 1024));
                let (aborted, _) = api
                    .call(
                        reqwest::Method::DELETE,
                        &format!("/v1/uploads/chunked/{id}"),
                        None,
                    )
                    .await;
                assert_eq!(aborted, 404);
                let (completed, _) = api.complete(&id, &[], None).await;
                assert_eq!(completed, 404);
            }
        }
    };
    // Warm up (allocator arenas, connection pools), then measure 3,000 requests more.
    flood(99).await;
    let before = rss(pid);
    let rounds: Vec<_> = (0..4).map(|round| tokio::spawn(flood(round))).collect();
    for round in rounds {
        round.await.unwrap();
    }
    let after = rss(pid);
    assert!(
        after < before + 16 * MIB,
        "RSS grew from {} MiB to {} MiB",
        before / MIB,
        after / MIB
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_never_stores_much_more_than_its_file() {
    let receiver = Receiver::start().await;
    let api = Api::new(&receiver);
    let id = api.open("small.bin", MIB).await;
    let (first, _) = api.put(&id, "1", vec![1u8; MIB as usize]).await;
    assert_eq!(first, 200);
    // The refusal comes from the headers alone, before any of the body is read: announce
    // each further part and read the answer (a client still sending would see its pipe broken).
    let mut refused = 0;
    for number in 2..=60 {
        let answer = announce_part(receiver.address, &id, number, MIB, &[]);
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "part {number}: {answer}"
        );
        assert!(answer.contains("part_too_large"), "{answer}");
        refused += 1;
    }
    assert_eq!(refused, 59, "only one 1 MiB part of a 1 MiB file fits");
    assert_eq!(receiver.stored_parts(), 1);
    // Part 1 may still be replaced: that holds no more bytes.
    let (again, _) = api.put(&id, "1", vec![2u8; MIB as usize]).await;
    assert_eq!(again, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_sessions_are_capped_with_429_and_retry_after() {
    let receiver = Receiver::start_with(|config| {
        config.guards = Guards {
            max_open_sessions: 5,
            ..Guards::default()
        }
    })
    .await;
    let api = Api::new(&receiver);
    let mut ids = Vec::new();
    for index in 0..5 {
        ids.push(api.open(&format!("f{index}"), 10).await);
    }
    let refused = api
        .client
        .post(format!("{}/v1/uploads/chunked/init", api.url))
        .bearer_auth(TOKEN)
        .json(&json!({"filename": "one-too-many", "workspace_id": "ws", "total_size": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "30");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_sessions");

    // Closing one frees its place.
    let path = format!("/v1/uploads/chunked/{}", ids[0]);
    let (aborted, _) = api.call(reqwest::Method::DELETE, &path, None).await;
    assert_eq!(aborted, 204);
    assert_eq!(api.init("now-it-fits", 10).await.0, 201);
    assert_eq!(api.init("but-no-more", 10).await.0, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gets_507_and_keeps_no_partial_part() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("disk"), "8m");
    let storage = dir.path().join("disk/storage");
    let receiver = Receiver::start_at(&storage, "127.0.0.1:0".parse().unwrap(), |_| {}).await;
    let api = Api::new(&receiver);
    let id = api.open("big.bin", 2 * MIB).await;
    // Fill the disk but for 256 KiB, then send a 1 MiB part.
    let filler = dir.path().join("disk/filler");
    let keep = 256 * KIB;
    let fill = disk.free() - keep;
    std::fs::write(&filler, vec![0u8; fill as usize]).unwrap();
    let free_before = disk.free();
    let (status, body) = api.put(&id, "1", vec![3u8; MIB as usize]).await;
    assert_eq!(status, 507);
    assert_eq!(body["error"]["code"], "insufficient_storage");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("disk is full")
    );
    assert_eq!(receiver.stored_parts(), 0);
    assert!(
        disk.free() + 16 * KIB >= free_before,
        "what the part wrote before the disk filled is given back: {} < {free_before}",
        disk.free()
    );

    // The client does not retry a full receiver blindly: it stops and says so.
    std::fs::remove_file(&filler).unwrap();
    let local = dir.path().join("local.bin");
    random_file(&local, 3 * MIB, 1);
    std::fs::write(&filler, vec![0u8; (disk.free() - MIB) as usize]).unwrap();
    let engine = Engine::new(&receiver.url, fast_retry_settings());
    let error = engine.upload(&local, "local.bin").await.unwrap_err();
    let chain = ferry::error::chain(&error);
    assert!(
        matches!(error, ferry::upload::UploadError::Remote { .. })
            && chain.contains("insufficient_storage"),
        "{chain}"
    );
    drop(receiver);
}
