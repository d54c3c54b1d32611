//! The configuration: where it is found, its TOML keys (a contract, DESIGN.md), defaults, and
//! validation. Parsing reads the file into a span-keeping tree first and then checks every key,
//! so that every problem (unknown key, wrong type, bad value) is reported at once with its key
//! and line, the way `ferry config check` shows them.
//!
//! With no file at all, the default configuration watches an outbox folder under the data
//! directory and uploads to a receiver embedded in the daemon.

mod check;
mod read;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::GlobSet;

use crate::upload::bwlimit::Bandwidth;
use crate::upload::{ChunkSize, PartsInFlight, UploadSettings};
pub use check::{check_paths, no_watch, path_problems};
use read::Reader;

/// Globs ignored in every watch, besides the watch's own: temp, partial and editor files.
pub const DEFAULT_IGNORES: &[&str] = &[
    "**/*.tmp",
    "**/*.temp",
    "**/*.part",
    "**/*.partial",
    "**/*.crdownload",
    "**/*.swp",
    "**/*.swx",
    "**/*~",
    "**/~*",
    "**/.#*",
    "**/#*#",
    "**/.DS_Store",
    "**/Thumbs.db",
    "**/.ferry-*",
];

/// Files uploaded at once by default: enough to overlap small files' round trips.
pub const DEFAULT_TRANSFERS: usize = 4;
/// Default settle window: long enough for most writers to finish a file, short enough to feel
/// immediate.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(1);
/// How long finished jobs are listed before being pruned (their count is kept).
pub const DEFAULT_DONE_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Time in-flight parts get to finish at shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Idle time after which an S3 multipart upload no session owns is aborted (rclone, aws-cli and
/// S3 lifecycle rules commonly use a day or a week).
pub const DEFAULT_ORPHAN_CLEANUP: Duration = Duration::from_secs(24 * 3600);

// Bounds on configured values: each far above any sensible setting and far below where
// arithmetic on instants, sizes or counts could overflow (`ferry config check` names them).
/// Longest settle window: a file unchanged for a day is settled.
pub const MAX_SETTLE: Duration = Duration::from_secs(24 * 3600);
/// Longest time finished jobs are listed: ten years.
pub const MAX_RETENTION: Duration = Duration::from_secs(3650 * 24 * 3600);
/// Longest shutdown grace: a service manager gives up on a stop long before an hour.
pub const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(3600);
/// Longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(24 * 3600);
/// Most attempts at one file.
pub const MAX_RETRY_ATTEMPTS: u32 = 1000;
/// Largest part: S3's limit, and more than any receiver buffers.
pub const MAX_CHUNK_SIZE: u64 = 5 * 1024 * 1024 * 1024;
/// Most parts of one file in flight.
pub const MAX_PARALLEL_PARTS: usize = 256;
/// Most files uploaded at once.
pub const MAX_TRANSFERS: usize = 256;

/// A configuration problem, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key path, e.g. `watch[1].settle`.
    pub key: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} has {} problem(s):\n  {}", problems.len(), problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
    #[error("no home directory to derive default folders from; set daemon.data_dir")]
    NoHome,
}

/// A bearer token, never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Output format of the daemon's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `[daemon]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub transfers: usize,
    pub log_format: LogFormat,
    pub done_retention: Duration,
    pub shutdown_grace: Duration,
    /// Multipart uploads of S3 remotes that no session owns and idle this long are aborted
    /// (hourly); `None`: never.
    pub orphan_cleanup: Option<Duration>,
    /// Where `/metrics` is served for Prometheus; `None` (the default): nowhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// How to reach a remote.
#[derive(Debug, Clone, PartialEq)]
pub enum RemoteConfig {
    Native {
        url: String,
        workspace_id: String,
        token: Secret,
        /// CA certificates trusted beside the system's.
        ca_cert: Option<crate::upload::http::CaCert>,
    },
    /// The receiver the daemon runs itself (the default configuration), storing here.
    Embedded { storage: PathBuf },
    /// An S3-compatible bucket.
    S3(Box<crate::upload::S3Config>),
}

/// A program or webhook told of a job's outcome (`on_uploaded`, `on_failed`), with the job's
/// JSON document: on the program's standard input, or as the webhook's body.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookSpec {
    /// A program and its arguments, run without a shell; `{path}`, `{remote}`,
    /// `{remote_path}`, `{size}` and `{sha256}` in them are replaced.
    Exec {
        argv: Vec<String>,
        #[serde(with = "humantime_serde")]
        timeout: Duration,
    },
    /// An HTTP POST, signed with HMAC-SHA256 when a secret is given.
    Webhook {
        url: String,
        secret_file: Option<PathBuf>,
        #[serde(with = "humantime_serde")]
        timeout: Duration,
    },
}

/// A watch's hooks (or `[hooks]`, every watch's defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    pub on_uploaded: Option<HookSpec>,
    pub on_failed: Option<HookSpec>,
}

/// What to do with a local file once it is uploaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterUpload {
    Keep,
    Delete,
    MoveTo(PathBuf),
}

/// Whether a watch follows symbolic links (rclone's `-L`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Symlinks {
    /// Links are neither walked nor uploaded, and no queued file is read through one.
    Skip,
    /// Links to files are uploaded under the link's name and links to folders are walked, each
    /// folder at most once per scan (by device and inode), so a loop ends.
    Follow,
}

/// One `[[watch]]`.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub path: PathBuf,
    pub remote: String,
    pub prefix: String,
    pub recursive: bool,
    pub include: Vec<String>,
    pub ignore: Vec<String>,
    pub settle: Duration,
    pub after_upload: AfterUpload,
    pub metadata: BTreeMap<String, String>,
    pub symlinks: Symlinks,
    pub hooks: Hooks,
    /// `after_upload` (delete or move) waits until `on_uploaded` succeeded, so a pipeline
    /// started by the hook never loses its input.
    pub after_upload_waits_for_hook: bool,
    /// `include` compiled.
    pub include_set: GlobSet,
    /// `ignore` and the default ignores compiled.
    pub ignore_set: GlobSet,
}

impl WatchConfig {
    /// True when `path` (inside this watch) should be uploaded: included and not ignored.
    pub fn accepts(&self, path: &Path) -> bool {
        let Ok(relative) = path.strip_prefix(&self.path) else {
            return false;
        };
        self.include_set.is_match(relative) && !self.ignore_set.is_match(relative)
    }

    /// The remote path of a file in this watch: `prefix` + its path relative to the watch root,
    /// `/`-separated. `None` for paths outside the watch or not valid UTF-8.
    pub fn remote_path(&self, path: &Path) -> Option<String> {
        let relative = path.strip_prefix(&self.path).ok()?;
        let parts: Option<Vec<&str>> = relative
            .components()
            .map(|c| c.as_os_str().to_str())
            .collect();
        Some(format!("{}{}", self.prefix, parts?.join("/")))
    }
}

/// The whole configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub remotes: BTreeMap<String, RemoteConfig>,
    /// The upload settings of the remotes that override `[upload]`'s part sizes or
    /// parallelism; see `upload_for`.
    pub remote_upload: BTreeMap<String, UploadSettings>,
    pub upload: UploadSettings,
    /// `[upload] bandwidth`: shared by every transfer of the daemon, except those to a remote
    /// with its own (`remote_bandwidth`).
    pub bandwidth: Bandwidth,
    pub remote_bandwidth: BTreeMap<String, Bandwidth>,
    pub watches: Vec<WatchConfig>,
    /// The file it came from; `None` for the built-in default.
    pub source: Option<PathBuf>,
    /// Lines of the keys that `check_paths` may point at (`watch[0].path` → 12).
    pub lines: BTreeMap<String, usize>,
}

/// Platform folders used for defaults.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub data_dir: PathBuf,
    pub runtime_dir: Option<PathBuf>,
    pub config_file: PathBuf,
}

impl Defaults {
    /// From the `directories` crate (XDG on Linux, Application Support on macOS).
    pub fn from_platform() -> Result<Defaults, ConfigError> {
        let dirs = directories::ProjectDirs::from("", "", "ferry").ok_or(ConfigError::NoHome)?;
        Ok(Defaults {
            data_dir: dirs.data_dir().to_path_buf(),
            runtime_dir: dirs.runtime_dir().map(Path::to_path_buf),
            config_file: dirs.config_dir().join("config.toml"),
        })
    }

    fn socket(&self, data_dir: &Path) -> PathBuf {
        match &self.runtime_dir {
            Some(dir) => dir.join("ferry.sock"),
            None => data_dir.join("ferry.sock"),
        }
    }
}

/// Which file to read: `--config`, else `$FERRY_CONFIG`, else the platform's config file if it
/// exists. `None`: use the built-in default.
pub fn locate(flag: Option<&Path>, env: Option<PathBuf>, defaults: &Defaults) -> Option<PathBuf> {
    if let Some(path) = flag {
        return Some(path.to_path_buf());
    }
    if let Some(path) = env.filter(|p| !p.as_os_str().is_empty()) {
        return Some(path);
    }
    defaults
        .config_file
        .exists()
        .then(|| defaults.config_file.clone())
}

/// Loads the configuration from `path`, or the built-in default when `path` is `None`.
pub fn load(path: Option<&Path>, defaults: &Defaults) -> Result<Config, ConfigError> {
    let Some(path) = path else {
        return Ok(builtin(defaults));
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, defaults, path)
}

/// Parses configuration text; `path` names it in messages and anchors relative token files.
pub fn parse(text: &str, defaults: &Defaults, path: &Path) -> Result<Config, ConfigError> {
    let mut reader = Reader::new(text);
    let config = reader.config(defaults, path);
    match (config, reader.into_problems()) {
        (Some(mut config), problems) if problems.is_empty() => {
            config.source = Some(path.to_path_buf());
            Ok(config)
        }
        (_, problems) => Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        }),
    }
}

/// The configuration used when there is no file: one watch of `<data_dir>/outbox` uploading to
/// the embedded receiver, which stores under `<data_dir>/received`.
pub fn builtin(defaults: &Defaults) -> Config {
    let data_dir = defaults.data_dir.clone();
    let mut remotes = BTreeMap::new();
    remotes.insert(
        "embedded".to_string(),
        RemoteConfig::Embedded {
            storage: data_dir.join("received"),
        },
    );
    let watch = read::watch_with_defaults(data_dir.join("outbox"), "embedded".into())
        .expect("the default globs compile");
    Config {
        daemon: DaemonConfig {
            socket: defaults.socket(&data_dir),
            data_dir,
            transfers: DEFAULT_TRANSFERS,
            log_format: LogFormat::Text,
            done_retention: DEFAULT_DONE_RETENTION,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            orphan_cleanup: Some(DEFAULT_ORPHAN_CLEANUP),
            metrics_listen: None,
        },
        remotes,
        remote_upload: BTreeMap::new(),
        upload: UploadSettings::default(),
        bandwidth: Bandwidth::Unlimited,
        remote_bandwidth: BTreeMap::new(),
        watches: vec![watch],
        source: None,
        lines: BTreeMap::new(),
    }
}

impl Config {
    /// How uploads to the remote `name` go: its own settings, else `[upload]`'s.
    pub fn upload_for(&self, name: &str) -> UploadSettings {
        self.remote_upload.get(name).copied().unwrap_or(self.upload)
    }

    /// The effective configuration as TOML, tokens left out, for `ferry config check`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_daemon(&mut out);
        self.render_remotes(&mut out);
        self.render_upload(&mut out);
        self.render_watches(&mut out);
        out
    }

    /// Where the configuration came from, and `[daemon]`.
    fn render_daemon(&self, out: &mut String) {
        use std::fmt::Write;
        let d = &self.daemon;
        let _ = writeln!(
            out,
            "# source: {}",
            self.source
                .as_deref()
                .map_or("built-in default".into(), |p| p.display().to_string())
        );
        let _ = writeln!(
            out,
            "[daemon]\ndata_dir = {:?}\nsocket = {:?}\ntransfers = {}",
            d.data_dir, d.socket, d.transfers
        );
        let log_format = match d.log_format {
            LogFormat::Json => "json",
            LogFormat::Text => "text",
        };
        let duration = |value| humantime::format_duration(value).to_string();
        let _ = writeln!(
            out,
            "log_format = {log_format:?}\ndone_retention = {:?}\nshutdown_grace = {:?}",
            duration(d.done_retention),
            duration(d.shutdown_grace)
        );
        let cleanup = d.orphan_cleanup.map_or("off".to_string(), duration);
        let _ = writeln!(out, "orphan_cleanup = {cleanup:?}");
        let metrics = d
            .metrics_listen
            .map_or("off".to_string(), |at| at.to_string());
        let _ = writeln!(out, "metrics_listen = {metrics:?}\n");
    }

    /// Each `[remotes.NAME]`, its token left out and its URL redacted.
    fn render_remotes(&self, out: &mut String) {
        use std::fmt::Write;
        for (name, remote) in &self.remotes {
            let _ = writeln!(out, "[remotes.{name}]");
            match remote {
                RemoteConfig::Native {
                    url,
                    workspace_id,
                    ca_cert,
                    ..
                } => {
                    let url = crate::redact::url(url);
                    let _ = writeln!(
                        out,
                        "kind = \"native\"\nurl = {url:?}\nworkspace_id = {workspace_id:?}\n# token: set (not shown)"
                    );
                    render_ca_cert(out, ca_cert.as_ref());
                }
                RemoteConfig::Embedded { storage } => {
                    let _ = writeln!(
                        out,
                        "# the receiver embedded in the daemon, storing in {}",
                        storage.display()
                    );
                }
                RemoteConfig::S3(s3) => render_s3(out, s3),
            }
            if let Some(own) = self.remote_upload.get(name) {
                render_sizes(out, own);
            }
            if let Some(own) = self.remote_bandwidth.get(name) {
                let _ = writeln!(out, "bandwidth = \"{own}\"");
            }
            out.push('\n');
        }
    }

    /// `[upload]`.
    fn render_upload(&self, out: &mut String) {
        use std::fmt::Write;
        let u = &self.upload;
        out.push_str("[upload]\n");
        render_sizes(out, u);
        let _ = writeln!(out, "bandwidth = \"{}\"", self.bandwidth);
        let _ = writeln!(
            out,
            "retry = {{ max_attempts = {}, backoff_base = {:?}, backoff_max = {:?} }}\n",
            u.retry.max_attempts,
            humantime::format_duration(u.retry.backoff_base).to_string(),
            humantime::format_duration(u.retry.backoff_max).to_string()
        );
    }

    /// Each `[[watch]]`.
    fn render_watches(&self, out: &mut String) {
        for watch in &self.watches {
            render_watch(watch, out);
        }
    }
}

/// One `[[watch]]` table.
fn render_watch(watch: &WatchConfig, out: &mut String) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "[[watch]]\npath = {:?}\nremote = {:?}\nprefix = {:?}\nrecursive = {}",
        watch.path, watch.remote, watch.prefix, watch.recursive
    );
    let _ = writeln!(
        out,
        "include = {:?}\nignore = {:?}\nsettle = {:?}",
        watch.include,
        watch.ignore,
        humantime::format_duration(watch.settle).to_string()
    );
    let _ = writeln!(out, "after_upload = {}", render_after(&watch.after_upload));
    let symlinks = match watch.symlinks {
        Symlinks::Skip => "skip",
        Symlinks::Follow => "follow",
    };
    let _ = writeln!(out, "symlinks = {symlinks:?}");
    let metadata: Vec<String> = watch
        .metadata
        .iter()
        .map(|(k, v)| format!("{k:?} = {v:?}"))
        .collect();
    let _ = writeln!(out, "metadata = {{ {} }}", metadata.join(", "));
    let hooks = [
        ("on_uploaded", &watch.hooks.on_uploaded),
        ("on_failed", &watch.hooks.on_failed),
    ];
    for (key, hook) in hooks {
        if let Some(hook) = hook {
            let _ = writeln!(out, "{key} = {}", render_hook(hook));
        }
    }
    let waits = watch.after_upload_waits_for_hook;
    let _ = writeln!(out, "after_upload_waits_for_hook = {waits}\n");
}

/// `after_upload`'s value as the configuration writes it.
fn render_after(after: &AfterUpload) -> String {
    match after {
        AfterUpload::Keep => "\"keep\"".to_string(),
        AfterUpload::Delete => "\"delete\"".to_string(),
        AfterUpload::MoveTo(path) => format!("{{ move_to = {path:?} }}"),
    }
}

/// A hook as the configuration writes it (a webhook's secret file named, never read).
fn render_hook(hook: &HookSpec) -> String {
    match hook {
        HookSpec::Exec { argv, timeout } => format!(
            "{{ exec = {argv:?}, timeout = {:?} }}",
            humantime::format_duration(*timeout).to_string()
        ),
        HookSpec::Webhook {
            url,
            secret_file,
            timeout,
        } => {
            let secret = secret_file
                .as_ref()
                .map(|file| format!(", secret_file = {file:?}"))
                .unwrap_or_default();
            format!(
                "{{ webhook = {{ url = {:?}{secret} }}, timeout = {:?} }}",
                crate::redact::url(url),
                humantime::format_duration(*timeout).to_string()
            )
        }
    }
}

/// The part-size and parallelism keys of `[upload]` (or a remote's own).
fn render_sizes(out: &mut String, u: &UploadSettings) {
    use std::fmt::Write;
    let chunk_size = match u.chunk_size {
        ChunkSize::Auto => "auto".to_string(),
        ChunkSize::Fixed(size) => iec(size),
    };
    let parallel = match u.parallel_parts {
        PartsInFlight::Auto => "\"auto\"".to_string(),
        PartsInFlight::Fixed(parts) => parts.to_string(),
    };
    let _ = writeln!(
        out,
        "chunk_size = {chunk_size:?}\nchunk_size_min = {:?}\nchunk_size_max = {:?}\nparallel_parts = {parallel}\nparallel_parts_max = {}",
        iec(u.chunk_size_min),
        iec(u.chunk_size_max),
        u.parallel_parts_max
    );
}

/// A size as users write it: a whole number of its largest binary unit ("256KiB", "8MiB"),
/// else what bytesize shows, without the space ("1.5MiB").
fn iec(bytes: u64) -> String {
    let units = [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    match units
        .into_iter()
        .find(|&(_, unit)| bytes >= unit && bytes.is_multiple_of(unit))
    {
        Some((name, unit)) => format!("{}{name}", bytes / unit),
        None => bytesize::ByteSize(bytes)
            .display()
            .iec()
            .to_string()
            .replace(' ', ""),
    }
}

/// An S3 remote as `config check` prints it: where, how, and where its keys come from.
fn render_s3(out: &mut String, s3: &crate::upload::S3Config) {
    use std::fmt::Write;
    let _ = writeln!(out, "kind = \"s3\"");
    let comment = |source: &Option<String>| match source {
        Some(source) => format!(" # from {source}"),
        None => String::new(),
    };
    if let Some(endpoint) = &s3.endpoint {
        let endpoint = crate::redact::url(endpoint);
        let from = comment(&s3.endpoint_source);
        let _ = writeln!(out, "endpoint = {endpoint:?}{from}");
    }
    let from = comment(&s3.region_source);
    let _ = writeln!(
        out,
        "region = {:?}{from}\nbucket = {:?}\nprefix = {:?}\nchecksum = \"{}\"",
        s3.region, s3.bucket, s3.prefix, s3.checksum
    );
    if let Some(style) = s3.path_style {
        let _ = writeln!(out, "path_style = {style}");
    }
    if let Some(class) = &s3.storage_class {
        let _ = writeln!(out, "storage_class = {class:?}");
    }
    render_encryption(out, s3.encryption.as_ref());
    if let Some(acl) = &s3.acl {
        let _ = writeln!(out, "acl = {acl:?}");
    }
    if let Ok(url) = s3.bucket_url() {
        let _ = writeln!(out, "# bucket URL: {}", crate::redact::url(url.as_str()));
    }
    let _ = writeln!(out, "# credentials: {}", s3.credentials.describe());
    render_ca_cert(out, s3.ca_cert.as_ref());
}

/// The encryption asked for; a customer key by its MD5, as S3 names it.
fn render_encryption(out: &mut String, encryption: Option<&crate::upload::s3::Encryption>) {
    use crate::upload::s3::Encryption;
    use std::fmt::Write;
    match encryption {
        None => {}
        Some(Encryption::Customer(key)) => {
            let md5 = key.md5();
            let _ = writeln!(
                out,
                "# server-side encryption: SSE-C, the key whose MD5 is {md5}"
            );
        }
        Some(encryption) => {
            let _ = writeln!(out, "server_side_encryption = {:?}", encryption.algorithm());
        }
    }
    if let Some(Encryption::Kms {
        key_id: Some(key_id),
        ..
    }) = encryption
    {
        let _ = writeln!(out, "sse_kms_key_id = {key_id:?}");
    }
}

/// `ca_cert`, with how many certificates it holds.
fn render_ca_cert(out: &mut String, ca_cert: Option<&crate::upload::http::CaCert>) {
    use std::fmt::Write;
    if let Some(ca) = ca_cert {
        let count = ca.certs.len();
        let from = ca
            .from_env
            .map(|name| format!("from ${name}; "))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "ca_cert = {:?} # {from}certificates in it: {count}",
            ca.path
        );
    }
}

#[cfg(test)]
mod tests;
