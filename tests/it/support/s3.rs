//! Real S3 servers for the tests, each started by the test on a loopback port: moto (every
//! multipart call, no signature or checksum checks) and s3s-fs (real SigV4 over a folder). Both
//! are installed, pinned, by `scripts/test-deps.sh`. Objects are read back through the server
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

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Moto,
    S3sFs,
}

/// A running S3 server with the test bucket; killed when dropped.
pub struct S3Server {
    pub endpoint: String,
    child: Child,
    /// s3s-fs's folder; moto keeps everything in memory.
    _dir: tempfile::TempDir,
}

impl S3Server {
    pub async fn start(flavor: Flavor) -> S3Server {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            let port = free_port();
            let mut child = spawn(flavor, port, dir.path());
            let endpoint = format!("http://127.0.0.1:{port}");
            if wait_listening(&mut child, port).await {
                let server = S3Server {
                    endpoint,
                    child,
                    _dir: dir,
                };
                server.create_bucket(BUCKET).await;
                return server;
            }
            let _ = child.kill();
        }
        panic!("{flavor:?} did not start on a free port (installed? see scripts/test-deps.sh)");
    }

    /// A remote on this server's test bucket, keys from a secret held in `secret_dir`.
    pub fn config(&self, prefix: &str) -> S3Config {
        S3Config {
            endpoint: Some(self.endpoint.clone()),
            endpoint_source: None,
            region: "us-east-1".into(),
            region_source: None,
            bucket: BUCKET.into(),
            prefix: prefix.into(),
            path_style: None,
            storage_class: None,
            checksum: Checksum::Crc32c,
            credentials: CredentialSource::Keys {
                access_key_id: ACCESS_KEY.into(),
                secret_access_key: SECRET_KEY.into(),
            },
            encryption: None,
            acl: None,
            ca_cert: None,
        }
    }

    /// The `[remotes.NAME]` table of a configuration file for this server.
    pub fn remote_toml(&self, name: &str, prefix: &str, secret_file: &Path) -> String {
        format!(
            "[remotes.{name}]\nkind = \"s3\"\nendpoint = \"{}\"\nbucket = \"{BUCKET}\"\nprefix = \"{prefix}\"\naccess_key_id = \"{ACCESS_KEY}\"\nsecret_access_key_file = \"{}\"\n",
            self.endpoint,
            secret_file.display()
        )
    }

    fn bucket(&self, name: &str) -> Bucket {
        let url = self.endpoint.parse().unwrap();
        Bucket::new(url, UrlStyle::Path, name.to_string(), "us-east-1").unwrap()
    }

    fn keys() -> Credentials {
        Credentials::new(ACCESS_KEY, SECRET_KEY)
    }

    async fn create_bucket(&self, name: &str) {
        let bucket = self.bucket(name);
        let keys = Self::keys();
        let url = rusty_s3::actions::CreateBucket::new(&bucket, &keys).sign(SIGNED_FOR);
        let request = client().put(url).header("content-length", "0");
        let response = request.send().await.unwrap();
        assert!(
            response.status().is_success(),
            "creating bucket {name}: {}",
            response.status()
        );
    }

    /// The object's bytes, read through the server; `None` if it is not there.
    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        let bucket = self.bucket(BUCKET);
        let keys = Self::keys();
        let url = rusty_s3::actions::GetObject::new(&bucket, Some(&keys), key).sign(SIGNED_FOR);
        let response = client().get(url).send().await.unwrap();
        match response.status().as_u16() {
            404 => None,
            200 => Some(response.bytes().await.unwrap().to_vec()),
            other => panic!("GET {key}: {other}"),
        }
    }

    /// The object's ACL document (GET ?acl), read through the server.
    pub async fn acl(&self, key: &str) -> String {
        use rusty_s3::S3Action as _;
        let bucket = self.bucket(BUCKET);
        let keys = Self::keys();
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
        let keys = Self::keys();
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
        let keys = Self::keys();
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

    /// Kills the server (it is gone when this returns).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(flavor: Flavor, port: u16, dir: &Path) -> Child {
    let mut command = match flavor {
        Flavor::Moto => {
            let mut command = Command::new("moto_server");
            command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            command
        }
        Flavor::S3sFs => {
            let mut command = Command::new("s3s-fs");
            let port = port.to_string();
            command.args(["--host", "127.0.0.1", "--port", &port]);
            command.args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY]);
            command.arg(dir);
            command
        }
    };
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|error| {
            panic!("cannot start {flavor:?}: {error} (install it with scripts/test-deps.sh)")
        })
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
