//! `ferry push`: checks its command line, finds the token and data folder, then runs
//! `crate::push`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use crate::UsageError;
use crate::push::{PushOptions, default_remote_path};
use crate::upload::{ChunkSize, PartsInFlight, UploadSettings};

/// Shortest stall timeout honoured: below it, every part would look stalled.
const MIN_STALL_TIMEOUT: Duration = Duration::from_millis(100);

/// What `ferry push` was asked, as its command line gave it.
pub struct PushRequest {
    pub files: Vec<PathBuf>,
    pub url: String,
    pub workspace: String,
    /// `--name`: the remote path of a single file.
    pub name: Option<String>,
    /// `--token-file`; else `FERRY_TOKEN`.
    pub token_file: Option<PathBuf>,
    /// `--data-dir`; else the platform data directory.
    pub data_dir: Option<PathBuf>,
    pub json: bool,
    pub settings: UploadSettings,
}

/// Checks the request and pushes every file.
pub async fn push(request: PushRequest) -> Result<()> {
    let options = check(request)?;
    crate::push::run(options).await?;
    Ok(())
}

/// The options a valid request means; a usage error naming the flag otherwise.
fn check(request: PushRequest) -> Result<PushOptions, UsageError> {
    crate::protocol::check_base_url(&request.url).map_err(|problem| {
        let url = crate::redact::url(&request.url);
        UsageError(format!("--url {url}: {problem}"))
    })?;
    check_names(&request)?;
    let token = crate::secret::file_or_env(request.token_file.as_deref(), "FERRY_TOKEN").map_err(
        |error| match request.token_file {
            Some(_) => UsageError(format!("--token-file: {}", crate::error::chain(&error))),
            None => UsageError("no token: pass --token-file FILE or set FERRY_TOKEN".into()),
        },
    )?;
    let data_dir = match request.data_dir {
        Some(dir) => dir,
        None => directories::ProjectDirs::from("", "", "ferry")
            .map(|dirs| dirs.data_dir().to_path_buf())
            .ok_or_else(|| {
                UsageError("no home directory to keep push sessions in; pass --data-dir".into())
            })?,
    };
    let mut settings = request.settings;
    settings.stall_timeout = settings.stall_timeout.max(MIN_STALL_TIMEOUT);
    Ok(PushOptions {
        files: request.files,
        url: request.url,
        workspace: request.workspace,
        name: request.name,
        token,
        data_dir,
        json: request.json,
        settings,
    })
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
