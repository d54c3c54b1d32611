//! A Garage cluster on loopback: one `garage server` process per node, each with its own
//! ports and folders and a shared RPC secret, connected, given a layout with every object on
//! every node (replication factor 3 for 3 nodes), and a bucket with a key allowed on it. Garage checks signatures, checksums, part
//! numbers and ETags as AWS does. Installed, pinned, by `scripts/test-deps.sh`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry::upload::s3::S3Config;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use super::s3::BUCKET;
use super::{client, free_port};

pub const KEY_ID: &str = "GK0123456789abcdef01234567";
pub const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
/// The region Garage serves, and checks requests are signed for.
pub const REGION: &str = "garage";

struct Node {
    config: PathBuf,
    s3_port: u16,
    rpc_port: u16,
    child: Option<Child>,
}

/// A running cluster; its servers are killed when dropped.
pub struct Garage {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Garage {
    pub async fn start(count: usize) -> Garage {
        let dir = tempfile::tempdir().unwrap();
        let secret: String = (0..4)
            .map(|_| format!("{:016x}", rand::random::<u64>()))
            .collect();
        let mut nodes: Vec<Node> = (0..count)
            .map(|index| node(dir.path(), (index, count), &secret))
            .collect();
        for node in &mut nodes {
            node.child = Some(spawn(&node.config));
        }
        let mut garage = Garage { nodes, _dir: dir };
        for index in 0..count {
            garage.wait_rpc(index).await;
        }
        garage.form_cluster();
        garage.wait_bucket(0).await;
        garage
    }

    /// `garage -c <node 0's config> <args>`, which must succeed.
    fn admin(&self, args: &[&str]) -> String {
        let output = Command::new("garage")
            .arg("-c")
            .arg(&self.nodes[0].config)
            .args(args)
            .output()
            .expect("garage is installed (scripts/test-deps.sh)");
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(
            output.status.success(),
            "garage {args:?}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    fn node_id(&self, index: usize) -> String {
        let output = Command::new("garage")
            .arg("-c")
            .arg(&self.nodes[index].config)
            .args(["node", "id", "-q"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Connects the nodes, gives each a role, and opens the bucket to the test key.
    fn form_cluster(&self) {
        let ids: Vec<String> = (0..self.nodes.len()).map(|i| self.node_id(i)).collect();
        for id in &ids[1..] {
            self.admin(&["node", "connect", id]);
        }
        let mut assign = vec!["layout", "assign", "-z", "dc1", "-c", "1G"];
        let short: Vec<&str> = ids.iter().map(|id| &id[..16]).collect();
        assign.extend(short);
        self.admin(&assign);
        self.admin(&["layout", "apply", "--version", "1"]);
        self.admin(&["key", "import", "--yes", KEY_ID, SECRET]);
        self.admin(&["bucket", "create", BUCKET]);
        let allow = ["bucket", "allow", "--read", "--write", "--owner", BUCKET];
        self.admin(&[&allow[..], &["--key", KEY_ID]].concat());
    }

    /// Waits until node `index` listens for RPC, and fails if it exited instead (a port it
    /// could not bind, say).
    async fn wait_rpc(&mut self, index: usize) {
        let port = self.nodes[index].rpc_port;
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            let child = self.nodes[index].child.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                panic!("garage node {index} exited ({status}) before listening on {port}");
            }
            assert!(
                Instant::now() < deadline,
                "garage node {index} did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until node `index` answers for the bucket (the layout has reached it).
    async fn wait_bucket(&self, index: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let url = rusty_s3::actions::HeadBucket::new(&self.bucket(index), Some(&keys()))
                .sign(Duration::from_secs(600));
            let answered = client().head(url).send().await;
            if answered.is_ok_and(|response| response.status().is_success()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "garage node {index} never served the bucket"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn endpoint(&self, index: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[index].s3_port)
    }

    fn bucket(&self, index: usize) -> Bucket {
        let url = self.endpoint(index).parse().unwrap();
        Bucket::new(url, UrlStyle::Path, BUCKET, REGION).unwrap()
    }

    /// The `[remotes.NAME]` table for node `index`, the secret in `secret_file`.
    pub fn remote_toml(&self, name: &str, index: usize, secret_file: &Path) -> String {
        format!(
            "[remotes.{name}]\nkind = \"s3\"\nendpoint = \"{}\"\nregion = \"{REGION}\"\nbucket = \"{BUCKET}\"\naccess_key_id = \"{KEY_ID}\"\nsecret_access_key_file = \"{}\"\n",
            self.endpoint(index),
            secret_file.display()
        )
    }

    /// `remote_toml`, its secret written to `secret` in `dir`.
    pub fn remote_toml_in(&self, name: &str, index: usize, dir: &Path) -> String {
        let secret = dir.join("secret");
        std::fs::write(&secret, SECRET).unwrap();
        self.remote_toml(name, index, &secret)
    }

    /// The object's bytes, read through node `index`.
    pub async fn get(&self, index: usize, key: &str) -> Option<Vec<u8>> {
        let got = self.get_with(index, key, &[]).await;
        super::s3::found(got, &format!("{key} through node {index}"))
    }

    /// The object read through node `index` with `headers` (SSE-C's key): the status and the
    /// body.
    pub async fn get_with(
        &self,
        index: usize,
        key: &str,
        headers: &[(&'static str, String)],
    ) -> (u16, Vec<u8>) {
        super::s3::get_with(&self.bucket(index), &keys(), key, headers).await
    }

    /// Creates bucket `name`, which the test's key is not allowed to use.
    pub fn create_bucket(&self, name: &str) {
        self.admin(&["bucket", "create", name]);
    }

    /// A remote on node `index`'s bucket, for a backend built by the test itself.
    pub fn config(&self, index: usize) -> S3Config {
        super::s3::bucket_config(&self.endpoint(index), REGION, (KEY_ID, SECRET))
    }

    /// Sends `body` through node `index` as part `number` of the multipart upload `upload_id`
    /// of `key`, as another writer could: the part it replaces keeps its number, not its ETag.
    pub async fn upload_part(
        &self,
        index: usize,
        (key, upload_id): (&str, &str),
        number: u16,
        body: Vec<u8>,
    ) {
        let (bucket, keys) = (self.bucket(index), keys());
        let mut action =
            rusty_s3::actions::UploadPart::new(&bucket, Some(&keys), key, number, upload_id);
        // The upload asked for CRC32C checksums: Garage wants one, signed, with every part.
        let crc = crc32c::crc32c(&body).to_be_bytes();
        let crc = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, crc);
        action
            .headers_mut()
            .insert("x-amz-checksum-crc32c", crc.clone());
        let url = action.sign(Duration::from_secs(600));
        let request = client().put(url).header("x-amz-checksum-crc32c", crc);
        let response = request.body(body).send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(
            status.is_success(),
            "part {number} of {key}: {status} {text}"
        );
    }

    /// Kills node `index` (SIGKILL).
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `index` again on its folders and ports.
    pub async fn restart(&mut self, index: usize) {
        self.nodes[index].child = Some(spawn(&self.nodes[index].config));
        self.wait_rpc(index).await;
        self.wait_bucket(index).await;
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill(index);
        }
    }
}

fn keys() -> Credentials {
    Credentials::new(KEY_ID, SECRET)
}

/// Node `index`'s folders and configuration; every object is on all `count` nodes.
fn node(dir: &Path, (index, count): (usize, usize), secret: &str) -> Node {
    let root = dir.join(format!("node{index}"));
    std::fs::create_dir_all(&root).unwrap();
    let (s3_port, rpc_port) = (free_port(), free_port());
    let config = root.join("garage.toml");
    let text = format!(
        "metadata_dir = \"{root}/meta\"\ndata_dir = \"{root}/data\"\ndb_engine = \"sqlite\"\n\
         replication_factor = {count}\nrpc_bind_addr = \"127.0.0.1:{rpc_port}\"\n\
         rpc_public_addr = \"127.0.0.1:{rpc_port}\"\nrpc_secret = \"{secret}\"\n\n\
         [s3_api]\ns3_region = \"{REGION}\"\napi_bind_addr = \"127.0.0.1:{s3_port}\"\n\
         root_domain = \".s3.garage.localhost\"\n",
        root = root.display()
    );
    std::fs::write(&config, text).unwrap();
    Node {
        config,
        s3_port,
        rpc_port,
        child: None,
    }
}

fn spawn(config: &Path) -> Child {
    Command::new("garage")
        .arg("-c")
        .arg(config)
        .arg("server")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("garage is installed (scripts/test-deps.sh)")
}
