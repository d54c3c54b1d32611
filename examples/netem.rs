//! The network emulator by hand: relays a local port to a receiver through an emulated link.
//!
//! ```text
//! cargo run --release --example netem -- --to 127.0.0.1:7373 [--listen-port 7474] \
//!     [--rate 10MB] [--delay 20ms] [--jitter 5ms] [--reset-every 5MB] \
//!     [--stall-every 50MB --stall-for 10s] [--seed 1]
//! ```
//! Sizes are bytes per second or bytes (`10MB`, `512KiB`), durations humantime (`20ms`).

#[path = "../benches/support/netem.rs"]
#[allow(dead_code)]
mod netem;

use std::net::SocketAddr;
use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut to: Option<SocketAddr> = None;
    let mut port = 0u16;
    let mut profile = netem::Profile::link(None, Duration::ZERO);
    let size = |text: String| text.parse::<bytesize::ByteSize>().expect("a size").as_u64();
    let time = |text: String| *text.parse::<humantime::Duration>().expect("a duration");
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--to" => to = Some(value.parse().expect("an address, e.g. 127.0.0.1:7373")),
            "--listen-port" => port = value.parse().expect("a port"),
            "--rate" => profile.rate = Some(size(value)),
            "--delay" => profile.delay = time(value),
            "--jitter" => profile.jitter = time(value),
            "--reset-every" => profile.reset_mean = Some(size(value)),
            "--stall-every" => profile.stall_mean = Some(size(value)),
            "--stall-for" => profile.stall_for = time(value),
            "--seed" => profile.seed = value.parse().expect("a number"),
            other => panic!("unknown flag {other}"),
        }
    }
    let to = to.expect("--to ADDRESS is required");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let link = netem::Netem::start_on(port, to, profile).await;
        println!("netem on {} relaying to {to}: {profile:?}", link.url());
        let _ = tokio::signal::ctrl_c().await;
    });
}
