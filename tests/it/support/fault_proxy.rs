//! A small HTTP/1.1 fault proxy for loopback tests. It sits between a client and a real
//! receiver, forwards requests, and injects faults chosen per request: cut the connection in the
//! middle of a body, stall it, answer `503` with `Retry-After` without forwarding, or hold a
//! request back for a while, flip a byte of the body, or change the request's query. It can also
//! throttle request bodies to slow an upload down.
//!
//! Each connection carries one request: the proxy adds `Connection: close` to what it forwards,
//! so the receiver's reply tells the client not to reuse the connection. Every request is logged
//! with its part number, the fault applied and when it ended, for the tests to assert on.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What to do to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward the head and half the body, then drop both connections.
    CutMidBody,
    /// Forward the head and half the body, then neither read nor write for this long.
    Stall(Duration),
    /// Answer `503` with `Retry-After: N` (seconds) without forwarding.
    Unavailable { retry_after_secs: u64 },
    /// Answer `status` with an S3 `<Error>` of `code` without forwarding (`status` 200: the
    /// error in a success reply, as S3's CompleteMultipartUpload can send it).
    S3Error { status: u16, code: &'static str },
    /// Wait this long, then forward normally.
    Delay(Duration),
    /// Forward everything, but flip the bits of the body's middle byte.
    Corrupt,
    /// Forward the request whole and let the receiver answer, then close the client's
    /// connection without relaying the reply: the request took effect, its reply was lost.
    DropReply,
    /// Forward the request with `from` replaced by `to` in its target (path and query), as a
    /// server that reads the query otherwise would (moto, which checks no signature).
    Rewrite {
        from: &'static str,
        to: &'static str,
    },
    /// Answer `status` (301, 307, 308...) with a `Location` at the upstream, the same path and
    /// query, without forwarding: a front that sends clients elsewhere (http to https, a moved
    /// host).
    Redirect { status: u16 },
}

/// One request the proxy saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub part_number: Option<u32>,
    pub fault: Option<Fault>,
    pub arrived: Instant,
    /// When the reply was fully relayed (or the fault finished).
    pub finished: Option<Instant>,
}

type Plan = dyn Fn(&RequestHead, usize) -> Option<Fault> + Send + Sync;

/// The parts of a request head the fault plan can look at.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: String,
    pub path: String,
    pub part_number: Option<u32>,
    pub content_length: u64,
}

impl RequestHead {
    pub fn is_part(&self) -> bool {
        self.method == "PUT" && self.path.ends_with("/parts")
    }
}

struct Shared {
    upstream: SocketAddr,
    plan: Mutex<Box<Plan>>,
    log: Mutex<Vec<Seen>>,
    /// Request body bytes per second forwarded, per connection; 0 means unlimited.
    throttle: Mutex<u64>,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` that injects nothing yet.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Shared {
            upstream,
            plan: Mutex::new(Box::new(|_, _| None)),
            log: Mutex::new(Vec::new()),
            throttle: Mutex::new(0),
        });
        let accept_shared = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(handle(client, accept_shared.clone()));
            }
        });
        FaultProxy { url, shared, task }
    }

    /// Sets the plan: called with each request head and its index among all requests; returns
    /// the fault to inject, if any.
    pub fn set_plan(
        &self,
        plan: impl Fn(&RequestHead, usize) -> Option<Fault> + Send + Sync + 'static,
    ) {
        *self.shared.plan.lock().unwrap() = Box::new(plan);
    }

    /// Limits request bodies to `bytes_per_second` per connection (0: unlimited).
    pub fn set_throttle(&self, bytes_per_second: u64) {
        *self.shared.throttle.lock().unwrap() = bytes_per_second;
    }

    pub fn log(&self) -> Vec<Seen> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Requests still being relayed (a client may be gone while the proxy still delivers what
    /// it had already sent).
    pub fn in_flight(&self) -> usize {
        self.shared
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|seen| seen.finished.is_none())
            .count()
    }

    /// The part numbers of the requests logged since `mark`, each asserted to be sent once.
    pub fn parts_sent_once_since(&self, mark: usize) -> Vec<u32> {
        let sent: Vec<u32> = self.log()[mark..]
            .iter()
            .filter_map(|seen| seen.part_number)
            .collect();
        let distinct: std::collections::BTreeSet<u32> = sent.iter().copied().collect();
        assert_eq!(sent.len(), distinct.len(), "no part sent twice: {sent:?}");
        sent
    }

    /// How many requests were logged so far: `log()[mark..]` are the ones seen after.
    pub fn mark(&self) -> usize {
        self.shared.log.lock().unwrap().len()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shared {
    /// Logs a request and decides its fault; returns its index in the log.
    fn admit(&self, head: &RequestHead) -> (usize, Option<Fault>) {
        let mut log = self.log.lock().unwrap();
        let index = log.len();
        let fault = (self.plan.lock().unwrap())(head, index);
        log.push(Seen {
            method: head.method.clone(),
            path: head.path.clone(),
            part_number: head.part_number,
            fault,
            arrived: Instant::now(),
            finished: None,
        });
        (index, fault)
    }

    /// Notes when request `index` ended.
    fn finish(&self, index: usize) {
        if let Some(seen) = self.log.lock().unwrap().get_mut(index) {
            seen.finished = Some(Instant::now());
        }
    }
}

async fn handle(mut client: TcpStream, shared: Arc<Shared>) {
    let Some((head, raw_head, early_body)) = read_head(&mut client).await else {
        return;
    };
    let (index, fault) = shared.admit(&head);
    let finish = |shared: &Shared| shared.finish(index);

    let canned = fault.and_then(|fault| canned_reply(fault, &head.path, shared.upstream));
    if let Some((reply_head, body)) = canned {
        let body_left = head.content_length.saturating_sub(early_body.len() as u64);
        answer(client, body_left, &reply_head, &body).await;
        finish(&shared);
        return;
    }
    if let Some(Fault::Delay(delay)) = fault {
        tokio::time::sleep(delay).await;
    }
    let Ok(upstream) = TcpStream::connect(shared.upstream).await else {
        // The receiver is down: the client sees its connection closed, as it would.
        finish(&shared);
        return;
    };
    let (upstream_read, mut upstream_write) = upstream.into_split();
    let (mut client_read, client_write) = client.into_split();
    let raw_head = match fault {
        Some(Fault::Rewrite { from, to }) => rewrite_target(&raw_head, from, to),
        _ => raw_head,
    };
    if upstream_write.write_all(&raw_head).await.is_err() {
        finish(&shared);
        return;
    }
    // Relay the reply concurrently: the receiver may answer before reading the whole body.
    let drop_reply = fault == Some(Fault::DropReply);
    let reply = tokio::spawn(relay_reply(upstream_read, client_write, drop_reply));

    let cut_at = match fault {
        Some(Fault::CutMidBody | Fault::Stall(_)) => head.content_length / 2,
        _ => u64::MAX,
    };
    let throttle = *shared.throttle.lock().unwrap();
    let corrupt_at = (fault == Some(Fault::Corrupt)).then_some(head.content_length / 2);
    let forwarded = forward_body(
        &mut client_read,
        &mut upstream_write,
        early_body,
        head.content_length.min(cut_at),
        BodyRules {
            throttle,
            corrupt_at,
        },
    )
    .await;
    match fault {
        Some(Fault::CutMidBody) => {
            reply.abort();
            finish(&shared);
            return;
        }
        Some(Fault::Stall(duration)) => {
            tokio::time::sleep(duration).await;
            reply.abort();
            finish(&shared);
            return;
        }
        _ => {}
    }
    if forwarded.is_err() {
        reply.abort();
    } else {
        let _ = reply.await;
    }
    finish(&shared);
}

/// `raw_head` with `from` replaced by `to` in its request line alone.
fn rewrite_target(raw_head: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(raw_head);
    let (request_line, rest) = text.split_once("\r\n").unwrap_or((&text, ""));
    format!("{}\r\n{rest}", request_line.replace(from, to)).into_bytes()
}

/// The value of parameter `name` in a request path's query, decoded (`""` for a bare
/// `?uploads`); `None` when the query has no such parameter.
pub fn query_param(path: &str, name: &str) -> Option<String> {
    let query = path.split_once('?')?.1;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// The reply (status line after `HTTP/1.1 ` with headers, and body) a fault answers a request
/// for `path` with in place of the receiver at `upstream`, if it does.
fn canned_reply(fault: Fault, path: &str, upstream: SocketAddr) -> Option<(String, String)> {
    match fault {
        Fault::Redirect { status } => Some((
            format!("{status} Redirect\r\nlocation: http://{upstream}{path}"),
            String::new(),
        )),
        Fault::Unavailable { retry_after_secs } => Some((
            format!(
                "503 Service Unavailable\r\nretry-after: {retry_after_secs}\r\ncontent-type: application/json"
            ),
            r#"{"error":{"code":"unavailable","message":"injected by the test proxy"}}"#.into(),
        )),
        Fault::S3Error { status, code } => Some((
            format!("{status} {code}\r\ncontent-type: application/xml"),
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>"
            ),
        )),
        _ => None,
    }
}

/// Answers with `head` (the status line after `HTTP/1.1 `, and headers) and `body` without
/// forwarding, after draining the request's body (so the client sees the reply, not a reset).
async fn answer(mut client: TcpStream, body_left: u64, head: &str, body: &str) {
    let _ = discard(&mut client, body_left).await;
    let reply = format!(
        "HTTP/1.1 {head}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(reply.as_bytes()).await;
    let _ = client.shutdown().await;
}

/// Copies the receiver's reply to the client, or to nowhere when it is to be lost.
async fn relay_reply(
    mut upstream: tokio::net::tcp::OwnedReadHalf,
    mut client: tokio::net::tcp::OwnedWriteHalf,
    drop_reply: bool,
) {
    if drop_reply {
        let _ = tokio::io::copy(&mut upstream, &mut tokio::io::sink()).await;
    } else {
        let _ = tokio::io::copy(&mut upstream, &mut client).await;
    }
    let _ = client.shutdown().await;
}

/// Reads a request head; returns it parsed, rewritten with `Connection: close`, and any body
/// bytes read past it.
async fn read_head(client: &mut TcpStream) -> Option<(RequestHead, Vec<u8>, Vec<u8>)> {
    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let end = loop {
        let read = client.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(position) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break position + 4;
        }
        if buffer.len() > 64 * 1024 {
            return None;
        }
    };
    let text = String::from_utf8_lossy(&buffer[..end]).to_string();
    let mut lines = text.split("\r\n");
    let request_line = lines.next()?;
    let mut words = request_line.split(' ');
    let method = words.next()?.to_string();
    let path = words.next()?.to_string();
    let mut content_length = 0;
    let mut part_number = None;
    let mut rewritten = format!("{request_line}\r\n");
    for line in lines.filter(|line| !line.is_empty()) {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "connection" => continue,
            "content-length" => content_length = value.parse().ok()?,
            "fastio-part-number" => part_number = value.parse().ok(),
            _ => {}
        }
        rewritten.push_str(line);
        rewritten.push_str("\r\n");
    }
    rewritten.push_str("connection: close\r\n\r\n");
    // S3 names the part in the query.
    part_number =
        part_number.or_else(|| query_param(&path, "partNumber").and_then(|n| n.parse().ok()));
    let head = RequestHead {
        method,
        path,
        part_number,
        content_length,
    };
    Some((head, rewritten.into_bytes(), buffer[end..].to_vec()))
}

/// How a body is forwarded.
struct BodyRules {
    /// Bytes per second at most; 0 for no limit.
    throttle: u64,
    /// Offset of a byte to flip.
    corrupt_at: Option<u64>,
}

/// Forwards `length` body bytes (some already read into `early`) under `rules`.
async fn forward_body(
    client: &mut tokio::net::tcp::OwnedReadHalf,
    upstream: &mut tokio::net::tcp::OwnedWriteHalf,
    mut early: Vec<u8>,
    length: u64,
    rules: BodyRules,
) -> std::io::Result<()> {
    let started = Instant::now();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    early.truncate(length as usize);
    let mut pending = early;
    loop {
        if let Some(at) = rules.corrupt_at
            && (sent..sent + pending.len() as u64).contains(&at)
        {
            pending[(at - sent) as usize] ^= 0xff;
        }
        upstream.write_all(&pending).await?;
        sent += pending.len() as u64;
        if rules.throttle > 0 {
            let due = Duration::from_secs_f64(sent as f64 / rules.throttle as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        if sent >= length {
            return Ok(());
        }
        let want = (length - sent).min(buffer.len() as u64) as usize;
        let read = client.read(&mut buffer[..want]).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        pending = buffer[..read].to_vec();
    }
}

async fn discard(client: &mut TcpStream, mut length: u64) -> std::io::Result<()> {
    let mut buffer = vec![0u8; 64 * 1024];
    while length > 0 {
        let want = length.min(buffer.len() as u64) as usize;
        let read = client.read(&mut buffer[..want]).await?;
        if read == 0 {
            break;
        }
        length -= read as u64;
    }
    Ok(())
}
