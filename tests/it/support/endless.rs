//! A server that answers every request with a body that never ends, and a way to measure what a
//! ferry process facing it holds: what a broken or hostile remote or credential service can do.

use std::time::Duration;

/// The most a push may hold while refusing an endless reply: its own 30 MiB or so, the 8 MiB it
/// reads of the reply, and room to spare.
pub const PEAK_LIMIT_KIB: u64 = 64 * 1024;

/// Runs `command` (ferry) to its end, or kills it once it holds over `PEAK_LIMIT_KIB`: its exit
/// code and the most resident memory it was seen to hold, in KiB: its `VmHWM`, read every 2 ms
/// while it runs. (The child's own `ru_maxrss` would count the test process it was spawned
/// from, which `cargo test` shares among tests.)
pub async fn run_measured(mut command: std::process::Command) -> (Option<i32>, u64) {
    let mut child = command.spawn().unwrap();
    let status = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0;
    loop {
        if let Some(exit) = child.try_wait().unwrap() {
            return (exit.code(), peak_kib);
        }
        let text = std::fs::read_to_string(&status).unwrap_or_default();
        peak_kib = peak_kib.max(ferrys_peak_kib(&text).unwrap_or(0));
        if peak_kib > PEAK_LIMIT_KIB {
            let _ = child.kill();
            let _ = child.wait();
            return (None, peak_kib);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `VmHWM` in a `/proc/PID/status`, once the process is ferry (not yet, just before its exec).
fn ferrys_peak_kib(status: &str) -> Option<u64> {
    let field = |name: &str| {
        let line = status.lines().find(|line| line.starts_with(name))?;
        Some(line[name.len()..].trim().to_string())
    };
    if field("Name:")? != "ferry" {
        return None;
    }
    field("VmHWM:")?.trim_end_matches(" kB").parse().ok()
}

/// An HTTP server on loopback that answers every request `200` with a body that never ends.
pub async fn server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer_endlessly(stream));
        }
    });
    url
}

/// Reads a request's head, then writes 64 KiB chunks until the client goes.
async fn answer_endlessly(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut head, mut buffer) = (Vec::new(), [0u8; 4096]);
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => head.extend_from_slice(&buffer[..read]),
        }
    }
    let start =
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
    let chunk = format!("10000\r\n{}\r\n", " ".repeat(0x10000));
    let mut sent = stream.write_all(start.as_bytes()).await;
    while sent.is_ok() {
        sent = stream.write_all(chunk.as_bytes()).await;
    }
}
