//! A network emulator for loopback: a TCP proxy that shapes each direction of every
//! connection through it like a link, since these machines have no kernel netem. Shared by the
//! tests (`tests/it/support`), the benches and `examples/netem.rs` (by hand).
//!
//! Per direction: a token bucket shared by all connections (the link's rate), a one-way delay
//! with jitter (bytes stay in order, so throughput is kept while they are in flight), and on
//! the way up resets after an exponentially distributed number of bytes and stalls (no bytes
//! for a while). Every random draw comes from the profile's seed, so a run repeats.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What the link does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    /// Bytes per second each way, shared by every connection; `None`: unlimited.
    pub rate: Option<u64>,
    /// One-way delay, and up to this much more at random (bytes stay in order).
    pub delay: Duration,
    pub jitter: Duration,
    /// Mean bytes sent up between connection resets (exponential); `None`: never.
    pub reset_mean: Option<u64>,
    /// Mean bytes sent up between stalls, and how long a stall lasts; `None`: never.
    pub stall_mean: Option<u64>,
    pub stall_for: Duration,
    pub seed: u64,
}

impl Profile {
    /// A link with this rate and one-way delay, and nothing else.
    pub fn link(rate: Option<u64>, delay: Duration) -> Profile {
        Profile {
            rate,
            delay,
            jitter: Duration::ZERO,
            reset_mean: None,
            stall_mean: None,
            stall_for: Duration::ZERO,
            seed: 1,
        }
    }
}

/// A running emulator; stops when dropped.
pub struct Netem {
    pub address: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

struct Shared {
    profile: Mutex<Profile>,
    up: Mutex<Bucket>,
    down: Mutex<Bucket>,
    connections: Mutex<u64>,
    /// Resets and stalls so far, for tests to assert on.
    resets: Mutex<u64>,
}

impl Netem {
    /// Listens on a free loopback port and relays every connection to `upstream`.
    pub async fn start(upstream: SocketAddr, profile: Profile) -> Netem {
        Netem::start_on(0, upstream, profile).await
    }

    /// `start`, on loopback port `port` (0: any free one).
    pub async fn start_on(port: u16, upstream: SocketAddr, profile: Profile) -> Netem {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind netem");
        let address = listener.local_addr().expect("netem address");
        let shared = Arc::new(Shared {
            profile: Mutex::new(profile),
            up: Mutex::new(Bucket::new(profile.rate)),
            down: Mutex::new(Bucket::new(profile.rate)),
            connections: Mutex::new(0),
            resets: Mutex::new(0),
        });
        let accepting = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let shared = accepting.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(client, server, shared).await;
                    }
                });
            }
        });
        Netem {
            address,
            shared,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Connections reset so far.
    pub fn resets(&self) -> u64 {
        *self.shared.resets.lock().unwrap()
    }
}

impl Drop for Netem {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// A token bucket: `rate` bytes per second, bursts of at most 64 KiB.
struct Bucket {
    rate: Option<u64>,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: Option<u64>) -> Bucket {
        Bucket {
            rate,
            tokens: 0.0,
            at: Instant::now(),
        }
    }

    /// Takes `bytes`; returns how long to wait before they may go.
    fn take(&mut self, bytes: usize) -> Duration {
        let Some(rate) = self.rate.filter(|&rate| rate > 0) else {
            return Duration::ZERO;
        };
        let now = Instant::now();
        let burst = 64.0 * 1024.0;
        let refill = now.duration_since(self.at).as_secs_f64() * rate as f64;
        self.tokens = (self.tokens + refill).min(burst) - bytes as f64;
        self.at = now;
        match self.tokens < 0.0 {
            true => Duration::from_secs_f64(-self.tokens / rate as f64),
            false => Duration::ZERO,
        }
    }
}

/// Relays one connection both ways until either side closes or a reset is drawn.
async fn relay(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let index = {
        let mut count = shared.connections.lock().unwrap();
        *count += 1;
        *count
    };
    let seed = shared.profile.lock().unwrap().seed;
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up_rng = StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(index));
    let down_rng = StdRng::seed_from_u64(seed.wrapping_mul(7_919).wrapping_add(index));
    let up = pump(
        client_read,
        server_write,
        shared.clone(),
        Direction::Up,
        up_rng,
    );
    let down = pump(server_read, client_write, shared, Direction::Down, down_rng);
    // Either direction ending (a close, or a reset drawn going up) ends the connection.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Up,
    Down,
}

/// Copies one direction through the link: reads, waits for the bucket, then hands the bytes
/// to a writer that sends each chunk once its delay has passed.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    shared: Arc<Shared>,
    direction: Direction,
    mut rng: StdRng,
) {
    let (queue, mut due) = mpsc::channel::<(Instant, Vec<u8>)>(1024);
    let writer = tokio::spawn(async move {
        while let Some((at, bytes)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    });
    let profile = *shared.profile.lock().unwrap();
    let mut until_reset = draw(
        &mut rng,
        profile.reset_mean.filter(|_| direction == Direction::Up),
    );
    let mut until_stall = draw(
        &mut rng,
        profile.stall_mean.filter(|_| direction == Direction::Up),
    );
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let profile = *shared.profile.lock().unwrap();
        let bucket = match direction {
            Direction::Up => &shared.up,
            Direction::Down => &shared.down,
        };
        let wait = bucket.lock().unwrap().take(read);
        tokio::time::sleep(wait).await;
        if until_stall.is_some_and(|left| left <= read as u64) {
            tokio::time::sleep(profile.stall_for).await;
            until_stall = draw(&mut rng, profile.stall_mean);
        } else if let Some(left) = until_stall.as_mut() {
            *left -= read as u64;
        }
        if until_reset.is_some_and(|left| left <= read as u64) {
            *shared.resets.lock().unwrap() += 1;
            writer.abort();
            return;
        } else if let Some(left) = until_reset.as_mut() {
            *left -= read as u64;
        }
        let jitter = profile.jitter.mul_f64(rng.random::<f64>());
        let at = Instant::now() + profile.delay + jitter;
        if queue.send((at, buffer[..read].to_vec())).await.is_err() {
            break;
        }
    }
    drop(queue);
    let _ = writer.await;
}

/// Bytes until the next event of mean `mean` (exponential), or `None` for never.
fn draw(rng: &mut StdRng, mean: Option<u64>) -> Option<u64> {
    let mean = mean? as f64;
    let uniform: f64 = rng.random_range(f64::EPSILON..1.0);
    Some((-uniform.ln() * mean).max(1.0) as u64)
}
