//! Reading a configuration file key by key from toml's span-keeping tree, collecting every
//! problem with its key path and line instead of stopping at the first.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::*;
use crate::upload::bwlimit::Bandwidth;
use crate::upload::{ChunkSize, PartsInFlight, RetryPolicy};

mod aws;
mod hooks;
mod remote;

pub(super) struct Reader<'t> {
    text: &'t str,
    problems: Vec<Problem>,
    /// Lines of the keys that later checks (`check`) may have to point at.
    lines: BTreeMap<String, usize>,
}

/// A duration written as a human string ("1s", "500ms").
fn duration(text: String) -> Result<Duration, String> {
    humantime::parse_duration(&text)
        .map_err(|error| format!("{error} (write e.g. \"1s\" or \"500ms\")"))
}

/// A duration of at most `max`, so that no arithmetic on it can overflow.
fn duration_up_to(max: Duration) -> impl FnOnce(String) -> Result<Duration, String> {
    move |text| duration(text).and_then(|value| at_most(value, max))
}

fn at_most(value: Duration, max: Duration) -> Result<Duration, String> {
    if value > max {
        Err(format!(
            "must be at most {}",
            humantime::format_duration(max)
        ))
    } else {
        Ok(value)
    }
}

/// A count from 1 to `max`.
fn count_up_to(max: usize) -> impl FnOnce(usize) -> Result<usize, String> {
    move |n| match n {
        0 => Err("must be at least 1".into()),
        n if n > max => Err(format!("must be at most {max}")),
        n => Ok(n),
    }
}

/// Checks a retry policy's bounds.
fn retry_policy(policy: RetryPolicy) -> Result<RetryPolicy, String> {
    if policy.max_attempts == 0 || policy.max_attempts > MAX_RETRY_ATTEMPTS {
        return Err(format!(
            "max_attempts must be from 1 to {MAX_RETRY_ATTEMPTS}"
        ));
    }
    at_most(policy.backoff_max, MAX_BACKOFF).map_err(|e| format!("backoff_max {e}"))?;
    if policy.backoff_base > policy.backoff_max {
        return Err("backoff_base must not exceed backoff_max".into());
    }
    Ok(policy)
}

/// A size written as a human string ("8MiB") or a number of bytes.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

fn size(value: SizeValue) -> Result<u64, String> {
    match value {
        SizeValue::Bytes(bytes) => Ok(bytes),
        SizeValue::Text(text) => text
            .parse::<bytesize::ByteSize>()
            .map(|size| size.as_u64())
            .map_err(|error| format!("{error} (write e.g. \"8MiB\")")),
    }
}

/// The keys of `[upload]` that a remote may also set, for itself.
const UPLOAD_KEYS: [&str; 6] = [
    "chunk_size",
    "chunk_size_min",
    "chunk_size_max",
    "parallel_parts",
    "parallel_parts_max",
    "bandwidth",
];

/// The keys `[daemon]` may have.
const DAEMON_KEYS: &[&str] = &[
    "data_dir",
    "socket",
    "transfers",
    "log_format",
    "done_retention",
    "shutdown_grace",
    "orphan_cleanup",
    "metrics_listen",
];

/// The keys a `[[watch]]` may have.
const WATCH_KEYS: &[&str] = &[
    "path",
    "remote",
    "prefix",
    "recursive",
    "include",
    "ignore",
    "settle",
    "after_upload",
    "metadata",
    "symlinks",
    "on_uploaded",
    "on_failed",
    "after_upload_waits_for_hook",
];

/// A watch's remote prefix: relative, and free of `..`.
fn relative_prefix(prefix: String) -> Result<String, String> {
    if prefix.starts_with('/') || prefix.split('/').any(|c| c == "..") {
        Err("must be relative and free of '..'".into())
    } else {
        Ok(prefix)
    }
}

/// `text` or `json`.
fn log_format(text: String) -> Result<LogFormat, String> {
    match text.as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("must be \"text\" or \"json\"".into()),
    }
}

/// How often the daemon looks for orphaned uploads, or `off`.
fn orphan_cleanup(text: String) -> Result<Option<Duration>, String> {
    match text.as_str() {
        "off" => Ok(None),
        _ => duration_up_to(MAX_RETENTION)(text).map(Some),
    }
}

/// An address and port to listen on, or `off`.
fn listen_address(text: String) -> Result<Option<std::net::SocketAddr>, String> {
    match text.as_str() {
        "off" => Ok(None),
        _ => text.parse().map(Some).map_err(|_| {
            "must be an address and port such as \"127.0.0.1:9184\", or \"off\"".into()
        }),
    }
}

/// A bandwidth limit: a rate or an rclone-style timetable (`upload::bwlimit`).
fn bandwidth(text: String) -> Result<Bandwidth, String> {
    Bandwidth::parse(&text).map_err(|error| {
        format!("{error} (write e.g. \"10MiB/s\", \"off\" or \"Mon-08:00,512KiB 18:00,off\")")
    })
}

/// A part size: above zero and at most `MAX_CHUNK_SIZE`.
fn part_size(value: SizeValue) -> Result<u64, String> {
    size(value).and_then(|bytes| match bytes {
        0 => Err("must be above zero".into()),
        bytes if bytes > MAX_CHUNK_SIZE => Err(format!(
            "must be at most {}",
            bytesize::ByteSize(MAX_CHUNK_SIZE).display().iec()
        )),
        bytes => Ok(bytes),
    })
}

/// `chunk_size`: "auto" or a part size.
fn chunk_size(value: SizeValue) -> Result<ChunkSize, String> {
    match value {
        SizeValue::Text(text) if text == "auto" => Ok(ChunkSize::Auto),
        other => part_size(other).map(ChunkSize::Fixed),
    }
}

/// A count written as a number, or "auto".
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum CountValue {
    Count(usize),
    Text(String),
}

/// `parallel_parts`: "auto" or a number of parts.
fn parallel_parts(value: CountValue) -> Result<PartsInFlight, String> {
    match value {
        CountValue::Text(text) if text == "auto" => Ok(PartsInFlight::Auto),
        CountValue::Count(n) => count_up_to(MAX_PARALLEL_PARTS)(n).map(PartsInFlight::Fixed),
        CountValue::Text(_) => Err("must be \"auto\" or a number of parts".into()),
    }
}

fn globs(patterns: &[String]) -> Result<GlobSet, String> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        builder.add(Glob::new(pattern).map_err(|error| format!("glob {pattern:?}: {error}"))?);
    }
    builder.build().map_err(|error| error.to_string())
}

/// A watch of `path` with every optional key at its default.
pub(super) fn watch_with_defaults(path: PathBuf, remote: String) -> Result<WatchConfig, String> {
    let include = vec!["**/*".to_string()];
    let ignore: Vec<String> = Vec::new();
    let all_ignores: Vec<String> = DEFAULT_IGNORES.iter().map(|g| g.to_string()).collect();
    Ok(WatchConfig {
        path,
        remote,
        prefix: String::new(),
        recursive: true,
        include_set: globs(&include)?,
        ignore_set: globs(&all_ignores)?,
        include,
        ignore,
        settle: DEFAULT_SETTLE,
        after_upload: AfterUpload::Keep,
        metadata: BTreeMap::new(),
        symlinks: Symlinks::Skip,
        hooks: Hooks::default(),
        after_upload_waits_for_hook: false,
    })
}

impl<'t> Reader<'t> {
    pub(super) fn new(text: &'t str) -> Reader<'t> {
        Reader {
            text,
            problems: Vec::new(),
            lines: BTreeMap::new(),
        }
    }

    pub(super) fn into_problems(self) -> Vec<Problem> {
        self.problems
    }

    fn line(&self, span: Range<usize>) -> usize {
        self.text[..span.start.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    /// Remembers the line of `key` of `table` (if present) as `path.key`.
    fn remember_line(&mut self, path: &str, table: &DeTable<'_>, key: &str) {
        if let Some(value) = table.get(key) {
            let line = self.line(value.span());
            self.lines.insert(join(path, key), line);
        }
    }

    fn problem(
        &mut self,
        key: impl Into<String>,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) {
        let line = span.map(|span| self.line(span));
        self.problems.push(Problem {
            key: key.into(),
            line,
            message: message.into(),
        });
    }

    /// Reports keys of `table` that are not in `known`.
    fn unknown_keys(&mut self, path: &str, table: &DeTable<'_>, known: &[&str]) {
        for key in table.keys() {
            if !known.contains(&key.get_ref().as_ref()) {
                let message = format!("unknown key; expected one of: {}", known.join(", "));
                self.problem(join(path, key.get_ref()), Some(key.span()), message);
            }
        }
    }

    /// Deserializes `key` of `table`; `None` when absent, or invalid (reported).
    fn get<T: DeserializeOwned>(
        &mut self,
        path: &str,
        table: &DeTable<'_>,
        key: &str,
    ) -> Option<T> {
        let value = table.get(key)?;
        match T::deserialize(toml::de::ValueDeserializer::from(value.clone())) {
            Ok(parsed) => Some(parsed),
            Err(error) => {
                self.problem(
                    join(path, key),
                    Some(value.span()),
                    error.message().to_string(),
                );
                None
            }
        }
    }

    /// Like `get`, then converts the value, reporting a failed conversion at the key.
    fn get_as<T: DeserializeOwned, U>(
        &mut self,
        path: &str,
        table: &DeTable<'_>,
        key: &str,
        convert: impl FnOnce(T) -> Result<U, String>,
    ) -> Option<U> {
        let raw = self.get::<T>(path, table, key)?;
        match convert(raw) {
            Ok(value) => Some(value),
            Err(message) => {
                let span = table.get(key).map(Spanned::span);
                self.problem(join(path, key), span, message);
                None
            }
        }
    }

    fn require<T>(
        &mut self,
        path: &str,
        table: &DeTable<'_>,
        key: &str,
        value: Option<T>,
        span: Option<Range<usize>>,
    ) -> Option<T> {
        if value.is_none() && table.get(key).is_none() {
            self.problem(join(path, key), span, "is required");
        }
        value
    }

    /// The top-level table `name`, or `empty` when it is left out (or is not a table, which
    /// is a problem).
    fn section<'a, 'i>(
        &mut self,
        root: &'a DeTable<'i>,
        name: &str,
        empty: &'a DeTable<'i>,
    ) -> &'a DeTable<'i> {
        match root.get(name) {
            Some(value) => self.sub_table(name, value).unwrap_or(empty),
            None => empty,
        }
    }

    fn sub_table<'a, 'i>(
        &mut self,
        path: &str,
        value: &'a Spanned<DeValue<'i>>,
    ) -> Option<&'a DeTable<'i>> {
        match value.get_ref() {
            DeValue::Table(table) => Some(table),
            other => {
                self.problem(
                    path,
                    Some(value.span()),
                    format!("must be a table, not a {}", other.type_str()),
                );
                None
            }
        }
    }

    pub(super) fn config(&mut self, defaults: &Defaults, file: &Path) -> Option<Config> {
        let root = match DeTable::parse(self.text) {
            Ok(root) => root,
            Err(error) => {
                self.problem("(syntax)", error.span(), error.message().to_string());
                return None;
            }
        };
        let root = root.get_ref();
        let base = folder_of(file);
        let base = base.as_path();
        self.unknown_keys("", root, &["daemon", "remotes", "upload", "hooks", "watch"]);

        let empty = DeTable::new();
        let daemon_table = self.section(root, "daemon", &empty);
        let daemon = self.daemon(daemon_table, defaults, base);
        let upload_table = self.section(root, "upload", &empty);
        let upload = self.upload(upload_table);
        let bandwidth = self
            .get_as("upload", upload_table, "bandwidth", bandwidth)
            .unwrap_or_default();

        let (remotes, remote_upload, remote_bandwidth) = self.remotes(root, base, upload);
        let hooks = self.hooks_section(root, base);
        let watches = self.watches(root, (base, &hooks), &remotes);
        Some(Config {
            daemon: daemon?,
            remotes,
            remote_upload,
            upload: upload?,
            bandwidth,
            remote_bandwidth,
            watches,
            source: None,
            lines: std::mem::take(&mut self.lines),
        })
    }

    /// `[hooks]`, every watch's defaults; none when it is left out.
    fn hooks_section(&mut self, root: &DeTable<'_>, base: &Path) -> Hooks {
        let Some(value) = root.get("hooks") else {
            return Hooks::default();
        };
        self.sub_table("hooks", value)
            .map_or_else(Hooks::default, |table| self.hook_defaults(table, base))
    }

    /// Every `[[watch]]`; none is a problem only to run the daemon (`check_paths`):
    /// `ferry push --remote` and `ferry cleanup` need remotes alone.
    fn watches(
        &mut self,
        root: &DeTable<'_>,
        context: (&Path, &Hooks),
        remotes: &BTreeMap<String, RemoteConfig>,
    ) -> Vec<WatchConfig> {
        let mut watches = Vec::new();
        match root
            .get("watch")
            .map(|value| (value.get_ref(), value.span()))
        {
            None => {}
            Some((DeValue::Array(entries), _)) => {
                for (index, entry) in entries.iter().enumerate() {
                    let path = format!("watch[{index}]");
                    if let Some(table) = self.sub_table(&path, entry)
                        && let Some(watch) =
                            self.watch(&path, table, entry.span(), context, remotes)
                    {
                        watches.push(watch);
                    }
                }
            }
            Some((_, span)) => self.problem(
                "watch",
                Some(span),
                "must be an array of tables: write [[watch]]",
            ),
        }
        watches
    }

    fn daemon(
        &mut self,
        table: &DeTable<'_>,
        defaults: &Defaults,
        base: &Path,
    ) -> Option<DaemonConfig> {
        let path = "daemon";
        self.unknown_keys(path, table, DAEMON_KEYS);
        let (data_dir, socket) = self.daemon_paths(table, defaults, base);
        let transfers = self
            .get_as(path, table, "transfers", count_up_to(MAX_TRANSFERS))
            .unwrap_or(DEFAULT_TRANSFERS);
        let log_format = self
            .get_as(path, table, "log_format", log_format)
            .unwrap_or(LogFormat::Text);
        let done_retention = self
            .get_as(path, table, "done_retention", duration_up_to(MAX_RETENTION))
            .unwrap_or(DEFAULT_DONE_RETENTION);
        let shutdown_grace = self
            .get_as(
                path,
                table,
                "shutdown_grace",
                duration_up_to(MAX_SHUTDOWN_GRACE),
            )
            .unwrap_or(DEFAULT_SHUTDOWN_GRACE);
        let orphan_cleanup = self
            .get_as(path, table, "orphan_cleanup", orphan_cleanup)
            .unwrap_or(Some(DEFAULT_ORPHAN_CLEANUP));
        let metrics_listen = self
            .get_as(path, table, "metrics_listen", listen_address)
            .unwrap_or(None);
        Some(DaemonConfig {
            data_dir,
            socket,
            transfers,
            log_format,
            done_retention,
            shutdown_grace,
            orphan_cleanup,
            metrics_listen,
        })
    }

    /// `[daemon]`'s `data_dir` and `socket`, relative to `base`; the defaults' when not given
    /// (the socket in the runtime folder, else in the data folder).
    fn daemon_paths(
        &mut self,
        table: &DeTable<'_>,
        defaults: &Defaults,
        base: &Path,
    ) -> (PathBuf, PathBuf) {
        let path = "daemon";
        self.remember_line(path, table, "data_dir");
        self.remember_line(path, table, "socket");
        let data_dir = self
            .get::<PathBuf>(path, table, "data_dir")
            .map(|dir| base.join(dir))
            .unwrap_or_else(|| defaults.data_dir.clone());
        let socket = self
            .get::<PathBuf>(path, table, "socket")
            .map(|socket| base.join(socket))
            .unwrap_or_else(|| defaults.socket(&data_dir));
        (data_dir, socket)
    }

    /// Every `[remotes.NAME]`, the upload settings of those that set their own (from
    /// `upload`, the `[upload]` read already), and the bandwidth limits of those with their own.
    fn remotes(
        &mut self,
        root: &DeTable<'_>,
        base: &Path,
        upload: Option<UploadSettings>,
    ) -> (
        BTreeMap<String, RemoteConfig>,
        BTreeMap<String, UploadSettings>,
        BTreeMap<String, Bandwidth>,
    ) {
        let mut remotes = BTreeMap::new();
        let mut remote_upload = BTreeMap::new();
        let mut remote_bandwidth = BTreeMap::new();
        if let Some(value) = root.get("remotes")
            && let Some(table) = self.sub_table("remotes", value)
        {
            for (name, value) in table.iter() {
                let path = format!("remotes.{}", name.get_ref());
                let Some(remote_table) = self.sub_table(&path, value) else {
                    continue;
                };
                if let Some(remote) = self.remote(&path, remote_table, value.span(), base) {
                    remotes.insert(name.get_ref().to_string(), remote);
                }
                if let Some(global) = upload
                    && UPLOAD_KEYS
                        .iter()
                        .any(|key| remote_table.get(*key).is_some())
                {
                    let own = self.upload_keys(&path, remote_table, global);
                    remote_upload.insert(name.get_ref().to_string(), own);
                }
                if let Some(own) = self.get_as(&path, remote_table, "bandwidth", bandwidth) {
                    remote_bandwidth.insert(name.get_ref().to_string(), own);
                }
            }
        }
        (remotes, remote_upload, remote_bandwidth)
    }

    fn upload(&mut self, table: &DeTable<'_>) -> Option<UploadSettings> {
        let path = "upload";
        let keys: Vec<&str> = UPLOAD_KEYS.iter().copied().chain(["retry"]).collect();
        self.unknown_keys(path, table, &keys);
        let d = UploadSettings::default();
        let settings = UploadSettings {
            retry: self
                .get_as(path, table, "retry", retry_policy)
                .unwrap_or(d.retry),
            ..self.upload_keys(path, table, d)
        };
        Some(settings)
    }

    /// The part-size and parallelism keys of `[upload]`, or of a remote that overrides them:
    /// each read from `table`, else kept from `base`.
    fn upload_keys(
        &mut self,
        path: &str,
        table: &DeTable<'_>,
        base: UploadSettings,
    ) -> UploadSettings {
        let settings = UploadSettings {
            chunk_size: self
                .get_as(path, table, "chunk_size", chunk_size)
                .unwrap_or(base.chunk_size),
            chunk_size_min: self
                .get_as(path, table, "chunk_size_min", part_size)
                .unwrap_or(base.chunk_size_min),
            chunk_size_max: self
                .get_as(path, table, "chunk_size_max", part_size)
                .unwrap_or(base.chunk_size_max),
            parallel_parts: self
                .get_as(path, table, "parallel_parts", parallel_parts)
                .unwrap_or(base.parallel_parts),
            parallel_parts_max: self
                .get_as(
                    path,
                    table,
                    "parallel_parts_max",
                    count_up_to(MAX_PARALLEL_PARTS),
                )
                .unwrap_or(base.parallel_parts_max),
            ..base
        };
        if settings.chunk_size_min > settings.chunk_size_max {
            let span = table
                .get("chunk_size_min")
                .or(table.get("chunk_size_max"))
                .map(Spanned::span);
            self.problem(
                join(path, "chunk_size_min"),
                span,
                "must not exceed chunk_size_max",
            );
        }
        settings
    }

    fn watch(
        &mut self,
        path: &str,
        table: &DeTable<'_>,
        span: Range<usize>,
        (base, hooks): (&Path, &Hooks),
        remotes: &BTreeMap<String, RemoteConfig>,
    ) -> Option<WatchConfig> {
        self.unknown_keys(path, table, WATCH_KEYS);
        self.remember_line(path, table, "path");
        self.remember_line(path, table, "after_upload");
        let root = self
            .get::<PathBuf>(path, table, "path")
            .map(|root| base.join(root));
        let root = self.require(path, table, "path", root, Some(span.clone()));
        let remote = self.get_as(path, table, "remote", |name: String| {
            if remotes.contains_key(&name) {
                Ok(name)
            } else {
                Err(format!("no [remotes.{name}] is configured"))
            }
        });
        let remote = self.require(path, table, "remote", remote, Some(span));
        let mut watch = watch_with_defaults(
            root.clone().unwrap_or_default(),
            remote.clone().unwrap_or_default(),
        )
        .expect("the default globs compile");
        self.watch_options(path, table, base, &mut watch);
        let to = remote.as_ref().and_then(|name| remotes.get(name));
        watch.metadata = self.watch_metadata(path, table, to);
        watch.hooks = self.hooks(path, table, base, hooks);
        let waits = self.get::<bool>(path, table, "after_upload_waits_for_hook");
        watch.after_upload_waits_for_hook = waits.unwrap_or(false);
        root?;
        remote?;
        Some(watch)
    }

    /// A watch's settings that have defaults: each one given replaces its default in `watch`.
    fn watch_options(
        &mut self,
        path: &str,
        table: &DeTable<'_>,
        base: &Path,
        watch: &mut WatchConfig,
    ) {
        if let Some(prefix) = self.get_as(path, table, "prefix", relative_prefix) {
            watch.prefix = prefix;
        }
        if let Some(recursive) = self.get::<bool>(path, table, "recursive") {
            watch.recursive = recursive;
        }
        self.watch_globs(path, table, watch);
        if let Some(settle) = self.get_as(path, table, "settle", duration_up_to(MAX_SETTLE)) {
            watch.settle = settle;
        }
        if let Some(after) = self.after_upload(path, table, base) {
            watch.after_upload = after;
        }
        if let Some(symlinks) = self.get_as(path, table, "symlinks", symlinks) {
            watch.symlinks = symlinks;
        }
    }

    /// A watch's `metadata`, checked against what its remote `to` can carry: the native
    /// protocol's limits, and S3's header names and size (every upload would fail otherwise).
    fn watch_metadata(
        &mut self,
        path: &str,
        table: &DeTable<'_>,
        to: Option<&RemoteConfig>,
    ) -> BTreeMap<String, String> {
        let checked = |metadata: BTreeMap<String, String>| {
            crate::protocol::check_metadata(&metadata)?;
            if let Some(RemoteConfig::S3(_)) = to {
                crate::upload::s3::metadata::check(&metadata)?;
            }
            Ok(metadata)
        };
        let metadata = self.get_as(path, table, "metadata", checked);
        metadata.unwrap_or_default()
    }

    /// A watch's `include` and `ignore` globs (the default ignores always apply).
    fn watch_globs(&mut self, path: &str, table: &DeTable<'_>, watch: &mut WatchConfig) {
        if let Some((include, set)) = self.get_as(path, table, "include", |globs_: Vec<String>| {
            globs(&globs_).map(|set| (globs_, set))
        }) {
            watch.include = include;
            watch.include_set = set;
        }
        if let Some((ignore, set)) = self.get_as(path, table, "ignore", |own: Vec<String>| {
            let all: Vec<String> = own
                .iter()
                .cloned()
                .chain(DEFAULT_IGNORES.iter().map(|g| g.to_string()))
                .collect();
            globs(&all).map(|set| (own, set))
        }) {
            watch.ignore = ignore;
            watch.ignore_set = set;
        }
    }

    /// A watch's `after_upload`: "keep", "delete" or `{ move_to = "folder" }`.
    fn after_upload(
        &mut self,
        path: &str,
        table: &DeTable<'_>,
        base: &Path,
    ) -> Option<AfterUpload> {
        let value = table.get("after_upload")?;
        let parsed = match value.get_ref() {
            DeValue::String(text) if text.as_ref() == "keep" => Some(AfterUpload::Keep),
            DeValue::String(text) if text.as_ref() == "delete" => Some(AfterUpload::Delete),
            DeValue::Table(inner) => {
                let key = join(path, "after_upload");
                self.unknown_keys(&key, inner, &["move_to"]);
                self.get::<PathBuf>(&key, inner, "move_to")
                    .map(|dir| AfterUpload::MoveTo(base.join(dir)))
            }
            _ => None,
        };
        if parsed.is_none() {
            self.problem(
                join(path, "after_upload"),
                Some(value.span()),
                "must be \"keep\", \"delete\" or { move_to = \"/folder\" }",
            );
        }
        parsed
    }
}

/// A watch's `symlinks`.
fn symlinks(mode: String) -> Result<Symlinks, String> {
    match mode.as_str() {
        "skip" => Ok(Symlinks::Skip),
        "follow" => Ok(Symlinks::Follow),
        _ => Err("must be \"skip\" or \"follow\"".into()),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The folder of the configuration `file`, which relative paths are relative to: made
/// absolute, so that nothing downstream depends on the working directory (`ferry.toml` has
/// the folder "").
fn folder_of(file: &Path) -> std::path::PathBuf {
    let absolute = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    absolute.parent().unwrap_or(Path::new("/")).to_path_buf()
}
