//! A single-node Garage for the S3 bench: a store whose CompleteMultipartUpload only joins the
//! parts' metadata (as AWS, MinIO and R2 do), where s3s-fs reads every part back. Started fresh
//! for each upload, so every tool meets the same empty store (Garage keeps deleted blocks for
//! ten minutes, and finds blocks it already holds). Installed by `scripts/test-deps.sh`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ports::free_port;

/// Garage's key format: `GK` and 24 hex digits; the secret is 64 hex digits.
pub const KEY_ID: &str = "GK0123456789abcdef01234567";
pub const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A running node on `s3_port`, over its own folder; killed and removed when dropped.
pub struct Garage {
    child: Child,
    config: PathBuf,
    root: PathBuf,
}

impl Garage {
    /// Starts a node in `root` serving `bucket` on `s3_port` to `KEY_ID`, in region
    /// `us-east-1` (the one every tool in the bench is given).
    pub fn start(root: &Path, s3_port: u16, bucket: &str) -> Garage {
        std::fs::create_dir_all(root).unwrap();
        let rpc_port = free_port();
        let config = root.join("garage.toml");
        let secret: String = (0..4)
            .map(|_| format!("{:016x}", rand::random::<u64>()))
            .collect();
        let text = format!(
            "metadata_dir = \"{root}/meta\"\ndata_dir = \"{root}/data\"\ndb_engine = \"sqlite\"\n\
             replication_factor = 1\ncompression_level = \"none\"\n\
             rpc_bind_addr = \"127.0.0.1:{rpc_port}\"\nrpc_public_addr = \"127.0.0.1:{rpc_port}\"\n\
             rpc_secret = \"{secret}\"\n\n[s3_api]\ns3_region = \"us-east-1\"\n\
             api_bind_addr = \"127.0.0.1:{s3_port}\"\nroot_domain = \".s3.garage.localhost\"\n",
            root = root.display()
        );
        std::fs::write(&config, text).unwrap();
        let child = Command::new("garage")
            .arg("-c")
            .arg(&config)
            .arg("server")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("garage (scripts/test-deps.sh installs it)");
        let garage = Garage {
            child,
            config,
            root: root.to_path_buf(),
        };
        wait_port(rpc_port);
        wait_port(s3_port);
        garage.open_bucket(bucket);
        garage
    }

    /// Gives the node its role, and `bucket` to the bench's key.
    fn open_bucket(&self, bucket: &str) {
        let id = self.admin(&["node", "id", "-q"]);
        self.admin(&["layout", "assign", "-z", "dc1", "-c", "100G", &id[..16]]);
        self.admin(&["layout", "apply", "--version", "1"]);
        self.admin(&["key", "import", "--yes", KEY_ID, SECRET]);
        self.admin(&["bucket", "create", bucket]);
        let allow = ["bucket", "allow", "--read", "--write", "--owner", bucket];
        self.admin(&[&allow[..], &["--key", KEY_ID]].concat());
    }

    /// `garage -c <config> <args>`, which must succeed; its output.
    fn admin(&self, args: &[&str]) -> String {
        let output = Command::new("garage")
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "garage {args:?}: {stdout}{stderr}");
        stdout
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "garage did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
