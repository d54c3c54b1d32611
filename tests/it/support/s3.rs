//! Real S3 servers for the tests, each started by the test on a loopback port: moto (every
//! multipart call, no signature or checksum checks), s3s-fs (real SigV4 over a folder) and
//! Ceph's RADOS gateway (an old server without flexible checksums, `ceph.rs`). All are
//! installed by `scripts/test-deps.sh`. Objects are read back through the server
//! with requests signed by `rusty-s3` and sent here, not by the backend under test.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry::upload::s3::{Checksum, CredentialSource, S3Config};

use super::{client, free_port};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

pub const ACCESS_KEY: &str = "AKIAFERRYTEST";
pub const SECRET_KEY: &str = "ferry-test-secret-key";
pub const BUCKET: &str = "ferry-test";
const SIGNED_FOR: Duration = Duration::from_secs(600);

/// A remote on the test bucket at `endpoint` in `region`, with the key id and secret `keys`,
/// everything else at its default (no prefix, CRC32C).
pub fn bucket_config(endpoint: &str, region: &str, keys: (&str, &str)) -> S3Config {
    S3Config {
        endpoint: Some(endpoint.to_string()),
        endpoint_source: None,
        region: region.into(),
        region_source: None,
        bucket: BUCKET.into(),
        prefix: String::new(),
        path_style: None,
        storage_class: None,
        checksum: Checksum::Crc32c,
        credentials: CredentialSource::Keys {
            access_key_id: keys.0.into(),
            secret_access_key: keys.1.into(),
        },
        encryption: None,
        acl: None,
        ca_cert: None,
    }
}

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Moto,
    S3sFs,
    /// Ceph 16.2's RADOS gateway before a monitor and an OSD (`ceph.rs`).
    CephRgw,
}

/// A running S3 server with the test bucket; killed when dropped.
pub struct S3Server {
    pub endpoint: String,
    /// The key id and secret s3s-fs and Ceph take (moto takes any).
    keys: (String, String),
    /// The checksum its remotes are configured with: Content-MD5 for Ceph's gateway, which
    /// does not check CRC32C (as docs/s3.md advises), CRC32C (the default) for the others.
    /// s3s-fs's turn to MD5 at their first multipart upload, as it checks no part's CRC32C.
    checksum: Checksum,
    /// The server's processes, killed when it is dropped.
    _processes: Processes,
    /// s3s-fs's folder, Ceph's; moto keeps everything in memory.
    _dir: tempfile::TempDir,
}

impl S3Server {
    pub async fn start(flavor: Flavor) -> S3Server {
        S3Server::start_with_keys(flavor, ACCESS_KEY, SECRET_KEY).await
    }

    /// A server whose one key is `key_id` with `secret` (s3s-fs checks it; moto takes any).
    pub async fn start_with_keys(flavor: Flavor, key_id: &str, secret: &str) -> S3Server {
        let dir = tempfile::tempdir().unwrap();
        let keys = (key_id.to_string(), secret.to_string());
        for _ in 0..5 {
            let port = free_port();
            let (path, owned_keys) = (dir.path().to_path_buf(), keys.clone());
            let spawned = move || spawn(flavor, port, &path, &owned_keys);
            let mut processes = tokio::task::spawn_blocking(spawned).await.unwrap();
            let endpoint = format!("http://127.0.0.1:{port}");
            if wait_listening(processes.serving(), port).await {
                let server = S3Server {
                    endpoint,
                    keys,
                    checksum: match flavor {
                        Flavor::CephRgw => Checksum::Md5,
                        Flavor::Moto | Flavor::S3sFs => Checksum::Crc32c,
                    },
                    _processes: processes,
                    _dir: dir,
                };
                server.create_bucket(BUCKET).await;
                if flavor == Flavor::CephRgw {
                    server.warm_up().await;
                }
                return server;
            }
            processes.kill();
        }
        panic!("{flavor:?} did not start on a free port (installed? see scripts/test-deps.sh)");
    }

    /// A remote on this server's test bucket, under `prefix`.
    pub fn config(&self, prefix: &str) -> S3Config {
        let mut config = bucket_config(&self.endpoint, "us-east-1", (ACCESS_KEY, SECRET_KEY));
        config.prefix = prefix.into();
        config.checksum = self.checksum;
        config
    }

    /// The `[remotes.NAME]` table of a configuration file for this server.
    pub fn remote_toml(&self, name: &str, prefix: &str, secret_file: &Path) -> String {
        let checksum = match self.checksum {
            Checksum::Crc32c => String::new(),
            other => format!("checksum = \"{other}\"\n"),
        };
        format!(
            "[remotes.{name}]\nkind = \"s3\"\nendpoint = \"{}\"\nbucket = \"{BUCKET}\"\nprefix = \"{prefix}\"\naccess_key_id = \"{ACCESS_KEY}\"\nsecret_access_key_file = \"{}\"\n{checksum}",
            self.endpoint,
            secret_file.display()
        )
    }

    /// `remote_toml`, its secret written to `secret` in `dir`.
    pub fn remote_toml_in(&self, name: &str, prefix: &str, dir: &Path) -> String {
        let secret = dir.join("secret");
        std::fs::write(&secret, &self.keys.1).unwrap();
        self.remote_toml(name, prefix, &secret)
    }

    fn bucket(&self, name: &str) -> Bucket {
        let url = self.endpoint.parse().unwrap();
        Bucket::new(url, UrlStyle::Path, name.to_string(), "us-east-1").unwrap()
    }

    fn keys(&self) -> Credentials {
        Credentials::new(&self.keys.0, &self.keys.1)
    }

    async fn create_bucket(&self, name: &str) {
        let bucket = self.bucket(name);
        let keys = self.keys();
        let url = rusty_s3::actions::CreateBucket::new(&bucket, &keys).sign(SIGNED_FOR);
        let request = client().put(url).header("content-length", "0");
        let response = request.send().await.unwrap();
        assert!(
            response.status().is_success(),
            "creating bucket {name}: {}",
            response.status()
        );
    }

    /// Writes and deletes an object, so that Ceph makes the bucket's data pool now: the first
    /// write into a new pool waits seconds for it, longer than a test's stall timeout.
    async fn warm_up(&self) {
        let (bucket, keys) = (self.bucket(BUCKET), self.keys());
        let key = "warm-up";
        let put = rusty_s3::actions::PutObject::new(&bucket, Some(&keys), key).sign(SIGNED_FOR);
        let response = client().put(put).body("warm").send().await.unwrap();
        assert!(response.status().is_success(), "warm-up PUT: {response:?}");
        let delete = rusty_s3::actions::DeleteObject::new(&bucket, Some(&keys), key);
        let response = client()
            .delete(delete.sign(SIGNED_FOR))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "warm-up DELETE: {response:?}"
        );
    }

    /// The object's bytes, read through the server; `None` if it is not there.
    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        found(self.get_with(key, &[]).await, key)
    }

    /// The object read with `headers` (SSE-C's key): the status and the body.
    pub async fn get_with(&self, key: &str, headers: &[(&'static str, String)]) -> (u16, Vec<u8>) {
        get_with(&self.bucket(BUCKET), &self.keys(), key, headers).await
    }

    /// The keys under `prefix`, as the server lists them (ListObjectsV2, one page: a GET of
    /// the bucket, signed as the GetObject of the empty key).
    pub async fn list(&self, prefix: &str) -> Vec<String> {
        use rusty_s3::S3Action as _;
        let bucket = self.bucket(BUCKET);
        let keys = self.keys();
        let mut action = rusty_s3::actions::GetObject::new(&bucket, Some(&keys), "");
        action.query_mut().insert("list-type", "2");
        action.query_mut().insert("prefix", prefix);
        let response = client().get(action.sign(SIGNED_FOR)).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "list {prefix}: {response:?}"
        );
        let text = response.text().await.unwrap();
        let listed: Listing = quick_xml::de::from_str(&text).unwrap();
        listed
            .contents
            .into_iter()
            .map(|object| object.key)
            .collect()
    }

    /// The object's ACL document (GET ?acl), read through the server.
    pub async fn acl(&self, key: &str) -> String {
        use rusty_s3::S3Action as _;
        let bucket = self.bucket(BUCKET);
        let keys = self.keys();
        let mut action = rusty_s3::actions::GetObject::new(&bucket, Some(&keys), key);
        action.query_mut().insert("acl", "");
        let response = client().get(action.sign(SIGNED_FOR)).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "GET {key}?acl: {}",
            response.status()
        );
        response.text().await.unwrap()
    }

    /// The object's headers (HEAD), read through the server.
    pub async fn head(&self, key: &str) -> reqwest::header::HeaderMap {
        let bucket = self.bucket(BUCKET);
        let keys = self.keys();
        let url = rusty_s3::actions::HeadObject::new(&bucket, Some(&keys), key).sign(SIGNED_FOR);
        let response = client().head(url).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "HEAD {key}: {}",
            response.status()
        );
        response.headers().clone()
    }

    /// Aborts a multipart upload behind Ferry's back.
    pub async fn abort(&self, key: &str, upload_id: &str) {
        let bucket = self.bucket(BUCKET);
        let keys = self.keys();
        let action =
            rusty_s3::actions::AbortMultipartUpload::new(&bucket, Some(&keys), key, upload_id);
        let response = client()
            .delete(action.sign(SIGNED_FOR))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "abort {key}: {}",
            response.status()
        );
    }
}

/// A user of moto's IAM with its keys, and roles it may assume, each also allowed to assume
/// roles and use S3.
pub struct IamAccount {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// ARNs of the roles `writer` and `second`.
    pub roles: Vec<String>,
}

/// Creates the user and its roles through moto's IAM (boto3, installed with moto), then turns
/// on moto's checks: from then on every request's signature and permissions are verified.
const IAM_SEED: &str = r#"
import boto3, json, sys, urllib.request
url = sys.argv[1]
iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1",
                   aws_access_key_id="AKIASEED", aws_secret_access_key="seed")
allow = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["sts:AssumeRole", "s3:*"], "Resource": "*"}]})
trust = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]})
iam.create_user(UserName="uploader")
key = iam.create_access_key(UserName="uploader")["AccessKey"]
iam.put_user_policy(UserName="uploader", PolicyName="allow", PolicyDocument=allow)
roles = []
for name in ["writer", "second"]:
    roles.append(iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust)["Role"]["Arn"])
    iam.put_role_policy(RoleName=name, PolicyName="allow", PolicyDocument=allow)
request = urllib.request.Request(url + "/moto-api/reset-auth", data=b"0", method="POST",
                                 headers={"Content-Type": "text/plain"})
urllib.request.urlopen(request).read()
print(json.dumps({"key": key["AccessKeyId"], "secret": key["SecretAccessKey"], "roles": roles}))
"#;

impl S3Server {
    /// moto's IAM and STS with an account in them, checking signatures from now on (moto only).
    pub fn iam_account(&self) -> IamAccount {
        let output = Command::new("python3")
            .args(["-c", IAM_SEED, &self.endpoint])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "seeding moto's IAM: {stderr}");
        let seeded: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let text = |value: &serde_json::Value| value.as_str().unwrap().to_string();
        IamAccount {
            access_key_id: text(&seeded["key"]),
            secret_access_key: text(&seeded["secret"]),
            roles: seeded["roles"]
                .as_array()
                .unwrap()
                .iter()
                .map(text)
                .collect(),
        }
    }

    /// The keys STS handed out for `role_arn` (moto's record of its assumed roles).
    pub async fn assumed_keys(&self, role_arn: &str) -> Vec<String> {
        let url = format!("{}/moto-api/data.json", self.endpoint);
        let data: serde_json::Value = client()
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let assumed = data["sts"]["AssumedRole"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assumed
            .iter()
            .filter(|role| role["role_arn"] == role_arn)
            .map(|role| role["access_key_id"].as_str().unwrap().to_string())
            .collect()
    }
}

/// The server's processes, the one serving S3 last. Blocking.
/// The body of a GET's reply (`got`, from `get_with`) of `what`: `None` for a 404; any status
/// but those two fails the test.
pub fn found((status, body): (u16, Vec<u8>), what: &str) -> Option<Vec<u8>> {
    match status {
        404 => None,
        200 => Some(body),
        other => panic!("GET {what}: {other}"),
    }
}

/// A GET of `key` in `bucket` with `headers`, signed and sent (as SSE-C's key must be): the
/// status and the body.
pub async fn get_with(
    bucket: &Bucket,
    keys: &Credentials,
    key: &str,
    headers: &[(&'static str, String)],
) -> (u16, Vec<u8>) {
    let mut action = rusty_s3::actions::GetObject::new(bucket, Some(keys), key);
    for (name, value) in headers {
        action.headers_mut().insert(*name, value.clone());
    }
    let mut request = client().get(action.sign(SIGNED_FOR));
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.bytes().await.unwrap().to_vec())
}

fn spawn(flavor: Flavor, port: u16, dir: &Path, keys: &(String, String)) -> Processes {
    let (key_id, secret) = keys;
    let mut command = match flavor {
        Flavor::CephRgw => return super::ceph::spawn(port, dir, keys),
        Flavor::Moto => {
            let mut command = Command::new("moto_server");
            command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            command
        }
        Flavor::S3sFs => {
            let mut command = Command::new("s3s-fs");
            let port = port.to_string();
            command.args(["--host", "127.0.0.1", "--port", &port]);
            command.args(["--access-key", key_id, "--secret-key", secret]);
            command.arg(dir);
            command
        }
    };
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|error| {
            panic!("cannot start {flavor:?}: {error} (install it with scripts/test-deps.sh)")
        });
    let mut processes = Processes::default();
    processes.push(child);
    processes
}

/// A server's processes, the one serving S3 last; killed when dropped, so that a server that
/// fails to start half-way leaves none running.
#[derive(Default)]
pub struct Processes(Vec<Child>);

impl Processes {
    pub fn push(&mut self, child: Child) {
        self.0.push(child);
    }

    /// The process serving S3: the last started.
    fn serving(&mut self) -> &mut Child {
        self.0.last_mut().expect("a server has a process")
    }

    /// Kills the processes, the last started first, and waits for them to be gone.
    fn kill(&mut self) {
        for mut child in self.0.drain(..).rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until the server accepts connections; false if it exited first.
async fn wait_listening(child: &mut Child, port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the S3 server on port {port} did not come up in 30 s");
}

/// A ListObjectsV2 reply, as far as `S3Server::list` reads it.
#[derive(serde::Deserialize)]
struct Listing {
    #[serde(rename = "Contents", default)]
    contents: Vec<Listed>,
}

#[derive(serde::Deserialize)]
struct Listed {
    #[serde(rename = "Key")]
    key: String,
}
