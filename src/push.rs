//! `ferry push`: one-shot uploads through the engine, with a progress bar on a terminal, plain
//! progress lines otherwise, and a JSON summary on request. Session records live in their own
//! store under the data directory, so a push that was killed resumes when run again.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::output::errln;
use crate::queue::{QueueError, Store};
use crate::upload::bwlimit::{Bandwidth, Limiter};
use crate::upload::{
    Backend, BackendError, PartSizes, Progress, UploadError, UploadJob, UploadReport,
    UploadSettings, Uploader,
};

/// Interval between plain progress lines when stderr is not a terminal.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// What to push and where.
#[derive(Clone)]
pub struct PushOptions {
    pub files: Vec<PathBuf>,
    /// Where to: a receiver named by `--url`, or a configured remote.
    pub backend: Arc<dyn Backend>,
    /// Remote path for a single file; default: the file's name.
    pub name: Option<String>,
    /// Folder of the push session store.
    pub data_dir: PathBuf,
    pub json: bool,
    pub settings: UploadSettings,
    /// A bandwidth limit for the whole push.
    pub bwlimit: Option<Bandwidth>,
}

/// Failures that stop a push before any file is tried.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Store(#[from] QueueError),
    #[error("cannot create the data directory {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{failed} of {total} files failed to upload")]
    SomeFailed { failed: usize, total: usize },
    #[error("cannot print the summary")]
    Output(#[source] std::io::Error),
}

/// One file's line of the `--json` summary.
#[derive(Debug, Serialize)]
struct FileSummary {
    path: PathBuf,
    remote_path: String,
    size: u64,
    sha256: String,
    bytes_sent: u64,
    parts: u32,
    parts_resumed: u32,
    part_sizes: PartSizes,
    duration_ms: u128,
    /// Part attempts that failed and were retried (a flaky link shows here).
    part_attempts_failed: u64,
}

#[derive(Debug, Serialize)]
struct FailedFile {
    path: PathBuf,
    error: String,
}

#[derive(Debug, Serialize)]
struct Summary {
    files: Vec<FileSummary>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    failed: Vec<FailedFile>,
}

/// The remote path of `file` when no `--name` is given: its file name.
pub fn default_remote_path(file: &Path) -> Option<String> {
    file.file_name()
        .and_then(|name| name.to_str())
        .map(str::to_owned)
}

/// Uploads every file in turn; one failure does not stop the others.
pub async fn run(options: PushOptions) -> Result<(), PushError> {
    let uploader = open_uploader(&options).await?;
    let mut summary = Summary {
        files: Vec::new(),
        failed: Vec::new(),
    };
    for file in &options.files {
        match upload_with_progress(&uploader, &job_for(&options, file)).await {
            Ok(report) => {
                errln(&describe(&report));
                summary.files.push(file_summary(file, report));
            }
            Err(error) => {
                let message = crate::error::chain(&error);
                errln(&format!("error: {message}"));
                summary.failed.push(FailedFile {
                    path: file.clone(),
                    error: message,
                });
            }
        }
    }
    uploader.keep_learned().await;
    if options.json {
        let json = serde_json::to_string(&summary).expect("the summary serialises");
        crate::output::outln(&json).map_err(PushError::Output)?;
    }
    if summary.failed.is_empty() {
        Ok(())
    } else {
        Err(PushError::SomeFailed {
            failed: summary.failed.len(),
            total: options.files.len(),
        })
    }
}

/// The uploader of a push: its session store in the data directory (made if missing, on a
/// blocking thread) and the bandwidth limit.
async fn open_uploader(options: &PushOptions) -> Result<Uploader, PushError> {
    let data_dir = options.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&data_dir).map_err(|source| PushError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        Ok::<_, PushError>(Store::open(&data_dir.join("push-sessions"))?)
    })
    .await
    .expect("opening the store does not panic")?;
    let limiter = options
        .bwlimit
        .clone()
        .map(|limit| Arc::new(Limiter::new(limit)));
    let uploader = Uploader::new(options.backend.clone(), store.sessions(), options.settings);
    Ok(uploader.with_limiter(limiter))
}

/// The job for `file`: to `--name`, else its file name.
fn job_for(options: &PushOptions, file: &Path) -> UploadJob {
    let remote_path = options.name.clone().or_else(|| default_remote_path(file));
    UploadJob {
        local_path: std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf()),
        remote_path: remote_path.unwrap_or_default(),
        mime_type: None,
        metadata: Default::default(),
        reach: crate::upload::Reach::AsGiven,
        expected: None,
    }
}

async fn upload_with_progress(
    uploader: &Uploader,
    job: &UploadJob,
) -> Result<UploadReport, UploadError> {
    let progress = Arc::new(Progress::default());
    let label = job.remote_path.clone();
    let reporter = tokio::spawn(report_progress(progress.clone(), label));
    let result = uploader.upload(job, progress).await;
    reporter.abort();
    let _ = reporter.await;
    result
}

/// Draws a bar on a terminal, or prints a line every few seconds otherwise, until aborted.
async fn report_progress(progress: Arc<Progress>, label: String) {
    if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .expect("the template is valid")
            .progress_chars("=> "),
        );
        bar.set_message(label);
        // Clears the bar when the task is aborted and this guard drops.
        struct ClearOnDrop(ProgressBar);
        impl Drop for ClearOnDrop {
            fn drop(&mut self) {
                self.0.finish_and_clear();
            }
        }
        let bar = ClearOnDrop(bar);
        loop {
            let snapshot = progress.snapshot();
            bar.0.set_length(snapshot.total);
            bar.0.set_position(snapshot.position());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    } else {
        loop {
            tokio::time::sleep(PLAIN_PROGRESS_EVERY).await;
            let snapshot = progress.snapshot();
            let percent = (snapshot.position() * 100)
                .checked_div(snapshot.total)
                .unwrap_or(100);
            errln(&format!(
                "{label}: {percent}% ({} of {})",
                ByteSize(snapshot.position()).display().iec(),
                ByteSize(snapshot.total).display().iec()
            ));
        }
    }
}

fn describe(report: &UploadReport) -> String {
    let seconds = report.duration.as_secs_f64().max(1e-6);
    let rate = (report.bytes_sent as f64 / seconds) as u64;
    let mut notes = String::new();
    if report.parts_resumed > 0 {
        notes += &format!(", {} parts resumed", report.parts_resumed);
    }
    if report.part_attempts_failed > 0 {
        notes += &format!(", {} part attempts retried", report.part_attempts_failed);
    }
    format!(
        "uploaded {} to {} ({} in {:.1}s, {}/s{notes})",
        report.local_path.display(),
        report.remote_path,
        ByteSize(report.size).display().iec(),
        seconds,
        ByteSize(rate).display().iec(),
    )
}

fn file_summary(path: &Path, report: UploadReport) -> FileSummary {
    FileSummary {
        path: path.to_path_buf(),
        remote_path: report.remote_path,
        size: report.size,
        sha256: report.sha256,
        bytes_sent: report.bytes_sent,
        parts: report.parts,
        parts_resumed: report.parts_resumed,
        part_sizes: report.part_sizes,
        duration_ms: report.duration.as_millis(),
        part_attempts_failed: report.part_attempts_failed,
    }
}
