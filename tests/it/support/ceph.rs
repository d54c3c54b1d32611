//! A Ceph cluster on loopback serving S3 through the RADOS gateway: one monitor, one OSD that
//! keeps its objects in memory, and `radosgw`, each its own process. It is Debian 12's Ceph 16.2,
//! the old-server case: no flexible checksums (it stores a body whatever its
//! `x-amz-checksum-crc32c` says) but `Content-MD5` checked, real SigV4, part ETags that are
//! MD5s. Installed by `scripts/test-deps.sh`; `S3Server` (flavor `CephRgw`) runs it.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::s3::Processes;
use std::time::{Duration, Instant};

use super::free_port;

/// The one key of the gateway's KMS (its `testing` backend keeps keys in its configuration), so
/// that it stores objects under SSE-KMS (`aws:kms`) over plain HTTP.
pub const KMS_KEY_ID: &str = "testkey-1";

/// How long the monitor and the OSD get to come up.
const UP_WITHIN: Duration = Duration::from_secs(60);

/// Starts the monitor and the OSD in `dir`, gives the gateway the user `keys`, and starts the
/// gateway on `port`: the processes, the gateway last. Blocking; a failure kills those started.
pub fn spawn(port: u16, dir: &Path, (key_id, secret): &(String, String)) -> Processes {
    for folder in ["mon", "osd", "run"] {
        std::fs::create_dir_all(dir.join(folder)).unwrap();
    }
    let conf = dir.join("ceph.conf");
    let fsid = uuid();
    let mon_address = format!("v1:127.0.0.1:{}", free_port());
    std::fs::write(&conf, config(dir, &fsid, &mon_address, port)).unwrap();
    let monmap = dir.join("monmap").display().to_string();
    Command::new("monmaptool")
        .args([
            "--create",
            "--addv",
            "a",
            &mon_address,
            "--fsid",
            &fsid,
            &monmap,
        ])
        .done();
    ceph(
        "ceph-mon",
        &conf,
        &["--mkfs", "-i", "a", "--monmap", &monmap],
    )
    .done();
    let mut processes = Processes::default();
    processes.push(daemon("ceph-mon", &conf, &["-i", "a"]));
    // The OSD's own id, the same to the monitor and in its store, or it is refused at boot.
    let osd_uuid = uuid();
    ceph(
        "ceph",
        &conf,
        &["--connect-timeout", "30", "osd", "new", &osd_uuid],
    )
    .done();
    ceph(
        "ceph-osd",
        &conf,
        &["-i", "0", "--mkfs", "--osd-uuid", &osd_uuid],
    )
    .done();
    ceph(
        "ceph",
        &conf,
        &["osd", "crush", "add", "osd.0", "1", "root=default"],
    )
    .done();
    processes.push(daemon("ceph-osd", &conf, &["-i", "0"]));
    wait_osd_up(&conf, dir);
    let user = [
        "user",
        "create",
        "--uid",
        "ferry",
        "--display-name",
        "ferry",
    ];
    ceph("radosgw-admin", &conf, &user)
        .args(["--access-key", key_id, "--secret", secret])
        .done();
    processes.push(daemon("radosgw", &conf, &["-n", "client.rgw"]));
    processes
}

/// The cluster's configuration: no cephx (loopback only), one copy of everything, the OSD's
/// objects in memory, everything the daemons write under `dir`. The OSD does not place itself
/// in the CRUSH map at start (`spawn` does): an OSD that asks the monitor before it has the
/// monitor's map asks with no cluster id, is refused, and never comes up (see `ATTEMPTS`).
fn config(dir: &Path, fsid: &str, mon_address: &str, rgw_port: u16) -> String {
    let dir = dir.display();
    format!(
        "[global]
fsid = {fsid}
mon host = {mon_address}
auth cluster required = none
auth service required = none
auth client required = none
ms bind msgr2 = false
ms bind ipv6 = false
mon data = {dir}/mon
mon allow pool size one = true
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1
osd data = {dir}/osd
osd objectstore = memstore
memstore device bytes = 1073741824
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
osd crush update on start = false
osd class update on start = false
run dir = {dir}/run
admin socket = {dir}/run/$name.asok
pid file = {dir}/run/$name.pid
log file = {dir}/$name.log
[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw crypt require ssl = false
rgw crypt s3 kms backend = testing
rgw crypt s3 kms encryption keys = {KMS_KEY_ID}=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=
"
    )
}

/// `program -c conf args`.
fn ceph(program: &str, conf: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(program);
    command.arg("-c").arg(conf).args(args);
    command
}

/// A daemon in the foreground, so that killing the child stops it.
fn daemon(program: &str, conf: &Path, args: &[&str]) -> Child {
    ceph(program, conf, args)
        .arg("-f")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|error| {
            panic!("cannot start {program}: {error} (install it with scripts/test-deps.sh)")
        })
}

trait Done {
    /// Runs the command until it succeeds, at most `ATTEMPTS` times.
    fn done(&mut self);
}

/// How often a command is run before its failure fails the test. With cephx off a Ceph client
/// may ask the monitor before it has the monitor's map, and is refused (EPERM, "wrong fsid");
/// asking again works.
const ATTEMPTS: usize = 10;

impl Done for Command {
    fn done(&mut self) {
        let mut failure = String::new();
        for _ in 0..ATTEMPTS {
            let output = self.output().unwrap_or_else(|error| {
                panic!("cannot run {self:?}: {error} (install Ceph with scripts/test-deps.sh)")
            });
            if output.status.success() {
                return;
            }
            let stderr = String::from_utf8_lossy(&output.stderr);
            let last: Vec<&str> = stderr.lines().rev().take(5).collect();
            failure = format!("{}: {last:?}", output.status);
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!("{self:?} failed {ATTEMPTS} times; the last: {failure}");
    }
}

/// Waits until the monitor counts the OSD up, so that the gateway's pools can be made.
fn wait_osd_up(conf: &Path, dir: &Path) {
    let deadline = Instant::now() + UP_WITHIN;
    while Instant::now() < deadline {
        let output = ceph("ceph", conf, &["osd", "stat", "--format", "json"])
            .output()
            .unwrap();
        let stat: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        if stat["num_up_osds"] == 1 {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = std::fs::read_to_string(dir.join("osd.0.log")).unwrap_or_default();
    let last: Vec<&str> = log.lines().rev().take(8).collect();
    panic!("the Ceph OSD was not up within {UP_WITHIN:?}; its log ends {last:#?}");
}

/// A random cluster id, in the form Ceph wants.
fn uuid() -> String {
    let hex = format!("{:032x}", rand::random::<u128>());
    let part = |range: std::ops::Range<usize>| &hex[range];
    let parts = [
        part(0..8),
        part(8..12),
        part(12..16),
        part(16..20),
        part(20..32),
    ];
    parts.join("-")
}
