//! `ferry push`: checks its command line, finds the token and data folder, then runs
//! `crate::push`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use crate::UsageError;
use crate::push::{PushOptions, default_remote_path};
use crate::upload::bwlimit::Bandwidth;
use crate::upload::http::CaCert;
use crate::upload::{
    Backend, ChunkSize, NativeBackend, NativeConfig, PartsInFlight, UploadSettings,
};

/// Shortest stall timeout honoured: below it, every part would look stalled.
const MIN_STALL_TIMEOUT: Duration = Duration::from_millis(100);

/// What `ferry push` was asked, as its command line gave it.
pub struct PushRequest {
    pub files: Vec<PathBuf>,
    pub target: Target,
    /// `--name`: the remote path of a single file.
    pub name: Option<String>,
    /// `--data-dir`; else the platform data directory.
    pub data_dir: Option<PathBuf>,
    pub json: bool,
    /// Retries and the stall timeout; part sizes and parallelism come from the remote's
    /// configuration, or the defaults, unless `chunk_size` or `parallel_parts` is given.
    pub settings: UploadSettings,
    pub chunk_size: Option<ChunkSize>,
    pub parallel_parts: Option<PartsInFlight>,
    /// `--bwlimit`: a rate or an rclone-style timetable for every file of the push.
    pub bwlimit: Option<Bandwidth>,
}

/// Where a push goes.
pub enum Target {
    /// `--url` and `--workspace`: a native receiver, its token from `--token-file` or
    /// `FERRY_TOKEN`, its certificate checked with `--ca-cert` too.
    Url {
        url: String,
        workspace: String,
        token_file: Option<PathBuf>,
        ca_cert: Option<PathBuf>,
    },
    /// `--remote NAME`: a remote of the configuration (`--config`, or where the daemon finds
    /// it); its own part sizes and parallelism apply unless a flag sets them.
    Remote {
        name: String,
        config: Option<PathBuf>,
    },
}

/// Checks the request and pushes every file.
pub async fn push(request: PushRequest) -> Result<()> {
    let options = check(request)?;
    crate::push::run(options).await?;
    Ok(())
}

/// The options a valid request means; a usage error naming the flag otherwise.
fn check(request: PushRequest) -> Result<PushOptions> {
    check_names(&request)?;
    let data_dir = match request.data_dir {
        Some(dir) => dir,
        None => directories::ProjectDirs::from("", "", "ferry")
            .map(|dirs| dirs.data_dir().to_path_buf())
            .ok_or_else(|| {
                UsageError("no home directory to keep push sessions in; pass --data-dir".into())
            })?,
    };
    let (backend, mut settings) = match request.target {
        Target::Url {
            url,
            workspace,
            token_file,
            ca_cert,
        } => {
            let ca_cert = ca_cert
                .map(|file| CaCert::read(&file))
                .transpose()
                .map_err(|error| UsageError(format!("--ca-cert: {error}")))?;
            (
                native(url, workspace, token_file, ca_cert)?,
                request.settings,
            )
        }
        Target::Remote { name, config } => configured(&name, config.as_deref(), request.settings)?,
    };
    settings.stall_timeout = settings.stall_timeout.max(MIN_STALL_TIMEOUT);
    settings.chunk_size = request.chunk_size.unwrap_or(settings.chunk_size);
    settings.parallel_parts = request.parallel_parts.unwrap_or(settings.parallel_parts);
    Ok(PushOptions {
        files: request.files,
        backend,
        name: request.name,
        data_dir,
        json: request.json,
        settings,
        bwlimit: request.bwlimit,
    })
}

/// The receiver `--url` names, with the token from `--token-file` or `FERRY_TOKEN`.
fn native(
    url: String,
    workspace: String,
    token_file: Option<PathBuf>,
    ca_cert: Option<CaCert>,
) -> Result<Arc<dyn Backend>> {
    crate::protocol::check_base_url(&url).map_err(|problem| {
        let url = crate::redact::url(&url);
        UsageError(format!("--url {url}: {problem}"))
    })?;
    let token =
        crate::secret::file_or_env(token_file.as_deref(), "FERRY_TOKEN").map_err(|error| {
            match token_file {
                Some(_) => UsageError(format!("--token-file: {}", crate::error::chain(&error))),
                None => UsageError("no token: pass --token-file FILE or set FERRY_TOKEN".into()),
            }
        })?;
    let config = NativeConfig {
        url,
        workspace_id: workspace,
        token,
        ca_cert,
    };
    Ok(Arc::new(NativeBackend::new(config)?))
}

/// The configured remote `name`, and its upload settings under the flags given.
fn configured(
    name: &str,
    config: Option<&Path>,
    flags: UploadSettings,
) -> Result<(Arc<dyn Backend>, UploadSettings)> {
    let config = crate::cli::load_config(config)?;
    let (_, remote) = crate::cli::remote_named(&config, name)?;
    let backend = crate::remotes::backend(name, remote, None)?.ok_or_else(|| {
        UsageError(format!(
            "--remote {name} is the daemon's embedded receiver; push to a running `ferry serve` with --url"
        ))
    })?;
    let own = config.upload_for(name);
    let settings = UploadSettings {
        retry: flags.retry,
        stall_timeout: flags.stall_timeout,
        ..own
    };
    Ok((backend, settings))
}

/// `--chunk-size`: `auto` or a size such as `8MiB` (above zero).
pub fn parse_chunk_size(text: &str) -> Result<ChunkSize, String> {
    if text == "auto" {
        return Ok(ChunkSize::Auto);
    }
    match text.parse::<bytesize::ByteSize>()?.as_u64() {
        0 => Err("must be above zero".into()),
        bytes => Ok(ChunkSize::Fixed(bytes)),
    }
}

/// `--parallel-parts`: `auto` or a number of parts (at least 1).
pub fn parse_parallel_parts(text: &str) -> Result<PartsInFlight, String> {
    if text == "auto" {
        return Ok(PartsInFlight::Auto);
    }
    match text.parse::<usize>() {
        Ok(0) | Err(_) => Err("must be \"auto\" or a number of parts from 1".into()),
        Ok(parts) => Ok(PartsInFlight::Fixed(parts)),
    }
}

/// `--name` names one file; without it, every file needs a usable name of its own.
fn check_names(request: &PushRequest) -> Result<(), UsageError> {
    if request.name.is_some() && request.files.len() > 1 {
        return Err(UsageError(
            "--name names one remote file; give a single FILE with it".into(),
        ));
    }
    if request.name.is_none()
        && let Some(file) = request
            .files
            .iter()
            .find(|f| default_remote_path(f).is_none())
    {
        return Err(UsageError(format!(
            "{} has no usable file name; pass --name",
            file.display()
        )));
    }
    Ok(())
}

/// `--bwlimit`: a rate (`10M`, `512KiB/s`, `off`) or an rclone timetable.
pub fn parse_bwlimit(text: &str) -> Result<Bandwidth, String> {
    Bandwidth::parse(text)
}
