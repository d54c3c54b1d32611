//! Adaptive part sizes against fixed ones, on emulated networks (`support/netem.rs`).
//!
//! Each profile uploads one file, in turn, with: `auto` cold (a fresh store), `auto` warm
//! (after one earlier upload to the same remote), fixed parts of 1, 4, 16 and 64 MiB with four
//! in flight, and a planner that does what the Nextcloud desktop client does (chunks sized
//! to take about 60 s, averaged half and half with the last; 10 MB to start, [5 MB, 5 GB],
//! at most 100 MB after a 413 or a connection closed mid-chunk). It prints a table and JSON,
//! ratios to the best fixed size of each profile, and writes `docs/adaptive.svg`.
//!
//! Run: `cargo bench --bench adaptive`; FERRY_BENCH_PROFILES=lan,wan picks some,
//! FERRY_BENCH_SCALE=0.5 halves every file, FERRY_BENCH_TIMEOUT (seconds, default 120) bounds
//! one upload (a run that does not finish counts at its size over the timeout).

#[path = "support/files.rs"]
mod files;
#[path = "support/netem.rs"]
#[allow(dead_code)] // shared: not every user of the emulator uses all of it
mod netem;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry::queue::Store;
use ferry::server::ServeConfig;
use ferry::upload::planner::{Observation, Outcome, PartPlanner, PlanContext};
use ferry::upload::{
    ChunkSize, NativeBackend, NativeConfig, PartsInFlight, Progress, Reach, UploadJob,
    UploadSettings, Uploader,
};
use netem::{Netem, Profile};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const MIB: u64 = 1024 * 1024;
const TOKEN: &str = "bench-token";

/// A network to emulate and the file size that keeps its runs short.
struct Network {
    name: &'static str,
    profile: Profile,
    file_size: u64,
}

fn networks(scale: f64) -> Vec<Network> {
    let ms = Duration::from_millis;
    let size = |mib: u64| ((mib as f64 * scale) as u64).max(1) * MIB;
    let link = Profile::link;
    vec![
        Network {
            name: "lan",
            profile: link(Some(125_000_000), Duration::from_micros(250)),
            file_size: size(256),
        },
        Network {
            name: "wan",
            profile: link(Some(12_500_000), ms(40)),
            file_size: size(64),
        },
        Network {
            name: "intercontinental",
            profile: link(Some(6_250_000), ms(150)),
            file_size: size(64),
        },
        Network {
            name: "mobile",
            profile: Profile {
                jitter: ms(20),
                reset_mean: Some(20_000_000),
                seed: 3,
                ..link(Some(1_000_000), ms(60))
            },
            file_size: size(16),
        },
        Network {
            name: "flaky-wifi",
            profile: Profile {
                jitter: ms(10),
                reset_mean: Some(5_000_000),
                stall_mean: Some(40_000_000),
                stall_for: Duration::from_secs(3),
                seed: 5,
                ..link(Some(2_500_000), ms(20))
            },
            file_size: size(16),
        },
    ]
}

/// The contenders.
#[derive(Clone, Copy, Debug)]
enum Planner {
    AutoCold,
    AutoWarm,
    Fixed(u64),
    Nextcloud,
}

impl Planner {
    fn name(self) -> String {
        match self {
            Planner::AutoCold => "auto (cold)".into(),
            Planner::AutoWarm => "auto (warm)".into(),
            Planner::Fixed(size) => format!("fixed {} MiB", size / MIB),
            Planner::Nextcloud => "nextcloud-style".into(),
        }
    }
}

const PLANNERS: [Planner; 7] = [
    Planner::AutoCold,
    Planner::AutoWarm,
    Planner::Fixed(MIB),
    Planner::Fixed(4 * MIB),
    Planner::Fixed(16 * MIB),
    Planner::Fixed(64 * MIB),
    Planner::Nextcloud,
];

fn main() {
    let scale: f64 = env_or("FERRY_BENCH_SCALE", 1.0);
    let timeout = Duration::from_secs(env_or("FERRY_BENCH_TIMEOUT", 120));
    let wanted = std::env::var("FERRY_BENCH_PROFILES").unwrap_or_default();
    let dir = tempfile::tempdir().expect("scratch folder");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (address, shutdown) = runtime.block_on(receiver(&dir.path().join("storage")));
    let mut results = Vec::new();
    for network in networks(scale) {
        if !wanted.is_empty() && !wanted.split(',').any(|w| w == network.name) {
            continue;
        }
        let file = dir.path().join(format!("{}.bin", network.name));
        files::random_file(&file, network.file_size, network.profile.seed);
        for planner in PLANNERS {
            let seconds =
                runtime.block_on(run(&network, planner, &file, address, timeout, dir.path()));
            let finished = seconds.is_some();
            let seconds = seconds.unwrap_or(timeout.as_secs_f64());
            let mib_s = network.file_size as f64 / MIB as f64 / seconds;
            eprintln!(
                "{:<17} {:<16} {mib_s:>7.2} MiB/s{}",
                network.name,
                planner.name(),
                if finished { "" } else { " (did not finish)" }
            );
            results.push((network.name, planner.name(), mib_s, finished));
        }
    }
    shutdown.cancel();
    report(&results);
}

/// One upload of `file` through a fresh emulated link with `planner`; its seconds, or `None`
/// when it did not finish in time.
async fn run(
    network: &Network,
    planner: Planner,
    file: &Path,
    receiver: std::net::SocketAddr,
    timeout: Duration,
    scratch: &Path,
) -> Option<f64> {
    let link = Netem::start(receiver, network.profile).await;
    let store_dir = tempfile::tempdir_in(scratch).unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let backend = Arc::new(
        NativeBackend::new(NativeConfig {
            url: link.url(),
            workspace_id: "default".into(),
            token: TOKEN.into(),
            ca_cert: None,
        })
        .unwrap(),
    );
    let uploader = match planner {
        Planner::AutoCold | Planner::AutoWarm => {
            Uploader::new(backend, store.sessions(), UploadSettings::default())
        }
        Planner::Fixed(size) => {
            let settings = UploadSettings {
                chunk_size: ChunkSize::Fixed(size),
                parallel_parts: PartsInFlight::Fixed(4),
                ..UploadSettings::default()
            };
            Uploader::new(backend, store.sessions(), settings)
        }
        Planner::Nextcloud => {
            let settings = UploadSettings {
                parallel_parts: PartsInFlight::Fixed(4),
                ..UploadSettings::default()
            };
            Uploader::with_planner(
                backend,
                store.sessions(),
                settings,
                Arc::new(Nextcloud::new()),
            )
        }
    };
    let job = |name: &str| UploadJob {
        local_path: file.to_path_buf(),
        remote_path: name.into(),
        mime_type: None,
        metadata: Default::default(),
        reach: Reach::AsGiven,
        expected: None,
    };
    if matches!(planner, Planner::AutoWarm) {
        let warm_up_job = job("warm-up.bin");
        let warm_up = uploader.upload(&warm_up_job, Arc::new(Progress::default()));
        tokio::time::timeout(timeout, warm_up).await.ok()?.ok()?;
    }
    let started = Instant::now();
    let measured = job("measured.bin");
    let upload = uploader.upload(&measured, Arc::new(Progress::default()));
    match tokio::time::timeout(timeout, upload).await {
        Ok(Ok(_)) => Some(started.elapsed().as_secs_f64()),
        Ok(Err(error)) => {
            eprintln!("{} {}: {error}", network.name, planner.name());
            None
        }
        Err(_) => None,
    }
}

/// The Nextcloud desktop client's chunk sizing: the next chunk should take `TARGET`, as the
/// last one's rate says, averaged half and half with the last size; 10 MB to start, within
/// [5 MB, 5 GB]; at most 100 MB once a chunk was refused as too large or cut mid-body.
struct Nextcloud {
    state: Mutex<(u64, u64)>,
}

impl Nextcloud {
    const TARGET: Duration = Duration::from_secs(60);

    fn new() -> Nextcloud {
        Nextcloud {
            state: Mutex::new((10_000_000, 5_000_000_000)),
        }
    }
}

impl PartPlanner for Nextcloud {
    fn desired_size(&self, _context: &PlanContext) -> u64 {
        self.state.lock().unwrap().0
    }

    fn parallel_parts(&self) -> usize {
        4
    }

    fn observe(&self, seen: &Observation) {
        let mut state = self.state.lock().unwrap();
        let (size, max) = &mut *state;
        match seen.outcome {
            Outcome::Acknowledged => {
                let rate = seen.size as f64 / seen.elapsed.as_secs_f64().max(1e-3);
                let target = rate * Self::TARGET.as_secs_f64();
                *size = ((target + *size as f64) / 2.0) as u64;
            }
            Outcome::TooLarge => *max = (*max).min(100_000_000),
            Outcome::Failed { .. } if seen.sent > 0 && seen.sent < seen.size => {
                *max = (*max).min(100_000_000)
            }
            _ => {}
        }
        *size = (*size).clamp(5_000_000, *max);
    }
}

async fn receiver(storage: &Path) -> (std::net::SocketAddr, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let config = ServeConfig::new(storage.to_path_buf(), TOKEN.into());
    let shutdown = CancellationToken::new();
    tokio::spawn(ferry::server::serve(listener, config, shutdown.clone()));
    (address, shutdown)
}

/// Prints the table and JSON, and writes the chart.
fn report(results: &[(&str, String, f64, bool)]) {
    let mut profiles: Vec<&str> = results.iter().map(|r| r.0).collect();
    profiles.dedup();
    let best_fixed = |profile: &str| {
        results
            .iter()
            .filter(|r| r.0 == profile && r.1.starts_with("fixed"))
            .map(|r| r.2)
            .fold(0.0, f64::max)
    };
    println!("| profile | planner | MiB/s | ratio to best fixed |");
    println!("|---|---|---:|---:|");
    let mut rows = Vec::new();
    for (profile, planner, mib_s, finished) in results {
        let ratio = mib_s / best_fixed(profile);
        let mark = if *finished { "" } else { " (did not finish)" };
        println!("| {profile} | {planner} | {mib_s:.2}{mark} | {ratio:.2} |");
        rows.push(
            json!({"profile": profile, "planner": planner, "mib_per_s": mib_s,
            "finished": finished, "ratio_to_best_fixed": ratio}),
        );
    }
    let planners: Vec<String> = PLANNERS.iter().map(|p| p.name()).collect();
    let mut geomeans = serde_json::Map::new();
    println!("\n| planner | geometric mean of ratios to the best fixed size |");
    println!("|---|---:|");
    for planner in &planners {
        let ratios: Vec<f64> = results
            .iter()
            .filter(|r| &r.1 == planner)
            .map(|r| r.2 / best_fixed(r.0))
            .collect();
        let geomean =
            (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len().max(1) as f64).exp();
        println!("| {planner} | {geomean:.3} |");
        geomeans.insert(planner.clone(), json!(geomean));
    }
    println!(
        "{}",
        json!({"benchmark": "adaptive", "runs": rows, "geomean_ratio_to_best_fixed": geomeans})
    );
    let svg = chart(&profiles, &planners, results, best_fixed);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/adaptive.svg");
    std::fs::write(&path, svg).expect("write the chart");
    eprintln!("chart written to {}", path.display());
}

/// A grouped bar chart: per profile, each planner's throughput relative to the best fixed size.
fn chart(
    profiles: &[&str],
    planners: &[String],
    results: &[(&str, String, f64, bool)],
    best_fixed: impl Fn(&str) -> f64,
) -> String {
    let colors = [
        "#1b9e77", "#66c2a5", "#bbbbbb", "#999999", "#777777", "#555555", "#d95f02",
    ];
    let (bar, gap, height) = (14.0, 30.0, 220.0);
    let group = bar * planners.len() as f64 + gap;
    let width = 60.0 + group * profiles.len() as f64 + 170.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">\n",
        height + 60.0
    );
    svg += "<text x=\"10\" y=\"14\">throughput / best fixed size (1.0 = line)</text>\n";
    let y_of = |ratio: f64| 20.0 + height - (ratio.min(1.5) / 1.5) * height;
    svg += &format!(
        "<line x1=\"50\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"black\" stroke-dasharray=\"4\"/>\n",
        width - 170.0,
        y = y_of(1.0)
    );
    for (p, profile) in profiles.iter().enumerate() {
        let x0 = 60.0 + group * p as f64;
        for (i, planner) in planners.iter().enumerate() {
            let Some(result) = results.iter().find(|r| r.0 == *profile && &r.1 == planner) else {
                continue;
            };
            let ratio = result.2 / best_fixed(profile);
            let (x, y) = (x0 + bar * i as f64, y_of(ratio));
            svg += &format!(
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{profile} {planner}: {ratio:.2}</title></rect>\n",
                bar - 2.0,
                20.0 + height - y,
                colors[i % colors.len()]
            );
        }
        svg += &format!(
            "<text x=\"{x0}\" y=\"{}\">{profile}</text>\n",
            height + 36.0
        );
    }
    for (i, planner) in planners.iter().enumerate() {
        let y = 30.0 + 16.0 * i as f64;
        svg += &format!(
            "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{planner}</text>\n",
            width - 160.0,
            y - 9.0,
            colors[i % colors.len()],
            width - 145.0,
            y
        );
    }
    svg + "</svg>\n"
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
