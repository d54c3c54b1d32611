//! Loopback ports for servers that must be told theirs in advance (Garage's RPC and S3 ports,
//! s3s-fs, moto), shared by the tests (`tests/it/support`) and the benches.
//!
//! `bind(0)` alone is not enough when many such servers start at once in one process: a port
//! handed out and released can be handed out again before its server binds it, and any
//! outgoing connection may take it as its local port. Two Garages once met that way and one
//! failed its RPC handshake with the other. So ports come from below Linux's ephemeral range
//! (32768 and up, where outgoing connections take theirs), each handed out once per process,
//! starting at an offset taken from the process id so that processes running side by side
//! (nextest, a bench beside the tests) start far apart.

use std::sync::atomic::{AtomicU32, Ordering};

const FIRST: u32 = 20_000;
const COUNT: u32 = 12_000;

/// A loopback port free a moment ago and never handed out before in this process.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % COUNT,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..COUNT {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % COUNT) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + COUNT);
}
