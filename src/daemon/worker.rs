//! Workers: the scheduler claims due jobs up to `transfers` at a time (none while paused), and
//! each job goes through the engine of its remote. The outcome is recorded durably before
//! `after_upload` touches the file; one failing file never holds up the others.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::hooks::{self, Then, Told};
use super::metrics::ErrorClass;
use super::{ActiveJob, Daemon};
use crate::config::{AfterUpload, Symlinks, WatchConfig};
use crate::control::EventKind;
use crate::queue::jobs::now_ms;
use crate::queue::{Deliveries, Delivery, Fingerprint, JobId, JobQueue, JobRecord, QueueError};
use crate::upload::{Progress, Reach, UploadError, UploadJob};

/// Longest the scheduler sleeps without a wake-up, as a safety net.
const IDLE_RECHECK: Duration = Duration::from_secs(30);

/// Claims due jobs and starts a worker for each, until `stop`.
pub(super) async fn schedule(
    daemon: Arc<Daemon>,
    workers: TaskTracker,
    stop: CancellationToken,
    abandon: CancellationToken,
) {
    loop {
        if stop.is_cancelled() {
            return;
        }
        let next_due = claim_and_start(&daemon, &workers, &abandon).await;
        let sleep = next_due
            .map(|due| Duration::from_millis(due.saturating_sub(now_ms())))
            .unwrap_or(IDLE_RECHECK)
            .min(IDLE_RECHECK);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = daemon.wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// Claims due jobs into the free transfer slots (none while paused or while the store fails)
/// and starts a worker for each; returns when the next job falls due. One trip to the store
/// for both: with many small files the scheduler runs once per file.
async fn claim_and_start(
    daemon: &Arc<Daemon>,
    workers: &TaskTracker,
    abandon: &CancellationToken,
) -> Option<u64> {
    let transfers = daemon
        .settings
        .read()
        .expect("settings lock is never poisoned")
        .transfers;
    let running = daemon
        .active
        .lock()
        .expect("active lock is never poisoned")
        .len();
    let free = transfers.saturating_sub(running);
    let claiming =
        !daemon.paused.load(Ordering::Relaxed) && free > 0 && !daemon.store_health.is_failing();
    let found = daemon
        .with_queue(move |queue| {
            let jobs = match claiming {
                true => queue.claim(now_ms(), free)?,
                false => Vec::new(),
            };
            Ok((jobs, queue.next_due_ms()?))
        })
        .await;
    match found {
        Ok((jobs, next_due)) => {
            for job in jobs {
                start_job(daemon, workers, job, abandon);
            }
            next_due
        }
        Err(error) if daemon.store_health.is_failing() => {
            tracing::debug!(error = %crate::error::chain(&error), "cannot claim jobs");
            None
        }
        Err(error) => {
            tracing::error!(error = %crate::error::chain(&error), "cannot claim jobs");
            None
        }
    }
}

/// Makes a claimed job active (status shows it from now) and starts its worker.
fn start_job(
    daemon: &Arc<Daemon>,
    workers: &TaskTracker,
    job: JobRecord,
    abandon: &CancellationToken,
) {
    daemon
        .active
        .lock()
        .expect("active lock is never poisoned")
        .insert(
            job.id,
            ActiveJob {
                path: job.path.clone(),
                remote_path: job.remote_path.clone(),
                progress: Arc::new(Progress::default()),
                started: Instant::now(),
            },
        );
    daemon
        .events
        .record(EventKind::Started, job.id, &job.path, None);
    let span = tracing::info_span!("job", job_id = job.id, path = %job.path.display());
    workers.spawn(run_job(daemon.clone(), job, abandon.clone()).instrument(span));
}

/// Uploads one job's file and records the outcome. Abandoned at shutdown after the grace
/// period: the job stays active in the store and is queued again at the next start.
async fn run_job(daemon: Arc<Daemon>, job: JobRecord, abandon: CancellationToken) {
    let found = {
        let settings = daemon
            .settings
            .read()
            .expect("settings lock is never poisoned");
        let watch = settings
            .watches
            .iter()
            .find(|w| w.path == job.watch_root)
            .cloned();
        let uploader = settings.uploaders.get(&job.remote).cloned();
        (watch, uploader, settings.upload.retry)
    };
    let progress = daemon
        .active
        .lock()
        .expect("active lock is never poisoned")
        .get(&job.id)
        .map(|a| a.progress.clone());
    let (watch, uploader, retry) = found;
    let (Some(uploader), Some(progress)) = (uploader, progress) else {
        let reason = format!(
            "remote {} is no longer configured; restore it and `ferry retry`",
            job.remote
        );
        finish(&daemon, &job, Outcome::Failed(reason), watch.as_ref()).await;
        return;
    };
    if job.remote_path_unrepresentable() {
        let reason = format!(
            "{} has a name that is not valid UTF-8, which no remote can store; rename it",
            job.path.display()
        );
        tracing::error!(error = %reason, "not uploaded");
        finish(&daemon, &job, Outcome::Failed(reason), watch.as_ref()).await;
        return;
    }
    let (upload, after) = upload_job(&job, watch.as_ref());
    let result = tokio::select! {
        result = uploader.upload(&upload, progress) => result,
        _ = abandon.cancelled() => {
            daemon.active.lock().expect("active lock is never poisoned").remove(&job.id);
            return;
        }
    };
    let outcome = match result {
        Ok(report) => {
            daemon.metrics.uploaded(&job.remote, report.size);
            tracing::info!(remote_path = %report.remote_path, size = report.size, duration = ?report.duration, parts_resumed = report.parts_resumed, "uploaded");
            Outcome::Done {
                fingerprint: report.fingerprint,
                size: report.size,
                sha256: report.sha256,
                after,
                root: job.watch_root.clone(),
            }
        }
        Err(error) => {
            let outcome = failed(error, &job, retry);
            daemon.metrics.failed(&job.remote, outcome.error_class());
            outcome
        }
    };
    finish(&daemon, &job, outcome, watch.as_ref()).await;
}

/// What the engine is asked to upload for `job`, and what to do with the file after. A job
/// queued under a watch that a reload removed is still uploaded: nothing queued is lost.
/// Without its watch it gets no metadata, its file is kept, and no link is followed.
fn upload_job(job: &JobRecord, watch: Option<&WatchConfig>) -> (UploadJob, AfterUpload) {
    let (metadata, after, symlinks) = match watch {
        Some(watch) => (
            watch.metadata.clone(),
            watch.after_upload.clone(),
            watch.symlinks,
        ),
        None => (Default::default(), AfterUpload::Keep, Symlinks::Skip),
    };
    let upload = UploadJob {
        local_path: job.path.clone(),
        remote_path: job.remote_path.clone(),
        mime_type: None,
        metadata,
        reach: match symlinks {
            Symlinks::Follow => Reach::AsGiven,
            Symlinks::Skip => Reach::Beneath(job.watch_root.clone()),
        },
        expected: job.fingerprint,
    };
    (upload, after)
}

/// The one decision, with its log line, about an upload that failed: drop the job (the file
/// is gone, or not one to send), fail it until the user acts, or retry it after a backoff.
fn failed(error: UploadError, job: &JobRecord, retry: crate::upload::RetryPolicy) -> Outcome {
    match error {
        UploadError::Vanished { .. } => {
            tracing::info!("the file vanished before it was uploaded; dropping its job");
            Outcome::Dropped
        }
        UploadError::Refused { refusal, .. } => {
            tracing::warn!(reason = %refusal, "not uploaded; dropping its job");
            Outcome::Dropped
        }
        error if is_permanent(&error) => {
            let reason = crate::error::chain(&error);
            tracing::error!(error = %reason, "upload failed; `ferry retry` tries again");
            Outcome::Failed(reason)
        }
        error => {
            let reason = crate::error::chain(&error);
            let delay = retry
                .delay(job.attempts + 1, rand::random(), None)
                .max(retry.backoff_base);
            tracing::warn!(error = %reason, ?delay, "upload failed; will retry");
            Outcome::Retry(reason, now_ms() + delay.as_millis() as u64)
        }
    }
}

enum Outcome {
    Done {
        fingerprint: Fingerprint,
        size: u64,
        sha256: String,
        after: AfterUpload,
        root: std::path::PathBuf,
    },
    /// Vanished or refused: forgotten (a newer version reported meanwhile is queued again).
    Dropped,
    Failed(String),
    Retry(String, u64),
}

impl Outcome {
    /// How a failure counts in the metrics (a success counts as no error at all).
    fn error_class(&self) -> ErrorClass {
        match self {
            Outcome::Failed(_) => ErrorClass::Permanent,
            Outcome::Dropped => ErrorClass::Dropped,
            Outcome::Done { .. } | Outcome::Retry(..) => ErrorClass::Transient,
        }
    }
}

/// The hook deliveries `outcome` calls for under `watch` (an `after_upload` that waits for
/// `on_uploaded` travels with its delivery).
fn hook_deliveries(
    daemon: &Daemon,
    job: &JobRecord,
    outcome: &Outcome,
    watch: Option<&WatchConfig>,
) -> Vec<Delivery> {
    let Some(watch) = watch else {
        return Vec::new();
    };
    let started_ms = daemon
        .active
        .lock()
        .expect("active lock is never poisoned")
        .get(&job.id)
        .map_or(now_ms(), |active| {
            now_ms().saturating_sub(active.started.elapsed().as_millis() as u64)
        });
    let mut told = Told {
        job,
        event: EventKind::Failed,
        size: None,
        sha256: None,
        metadata: &watch.metadata,
        started_ms,
        error: None,
    };
    let (hook, then) = match outcome {
        Outcome::Done {
            fingerprint,
            size,
            sha256,
            after,
            root,
        } => {
            (told.event, told.size, told.sha256) =
                (EventKind::Uploaded, Some(*size), Some(sha256.as_str()));
            let waits = watch.after_upload_waits_for_hook && *after != AfterUpload::Keep;
            let then = waits.then(|| Then {
                move_to: match after {
                    AfterUpload::MoveTo(folder) => Some(folder.clone()),
                    _ => None,
                },
                root: root.clone(),
                fingerprint: *fingerprint,
            });
            (&watch.hooks.on_uploaded, then)
        }
        Outcome::Failed(reason) => {
            told.error = Some(reason);
            (&watch.hooks.on_failed, None)
        }
        Outcome::Dropped | Outcome::Retry(..) => return Vec::new(),
    };
    match hook {
        Some(hook) => vec![hooks::delivery(hook, &told, then)],
        None => Vec::new(),
    }
}

/// Records the outcome durably, with the hook deliveries it calls for written first in the same
/// step; then (for a success whose `after_upload` does not wait for a hook) applies
/// `after_upload`; its event follows.
async fn finish(
    daemon: &Arc<Daemon>,
    job: &JobRecord,
    outcome: Outcome,
    watch: Option<&WatchConfig>,
) {
    let id = job.id;
    let hooks = hook_deliveries(daemon, job, &outcome, watch);
    let has_hooks = !hooks.is_empty();
    let (kind, detail) = match &outcome {
        Outcome::Done { .. } => (EventKind::Uploaded, Some(job.remote_path.clone())),
        Outcome::Dropped => (EventKind::Dropped, None),
        Outcome::Failed(reason) => (EventKind::Failed, Some(reason.clone())),
        Outcome::Retry(reason, _) => (EventKind::Retrying, Some(reason.clone())),
    };
    let (deliveries, path) = (daemon.store.deliveries(), job.path.clone());
    let recorded = daemon
        .with_queue(move |queue| record_outcome(queue, &deliveries, (id, &path), outcome, hooks))
        .await;
    if has_hooks {
        daemon.hooks_wake.notify_one();
    }
    match recorded {
        Ok(()) => daemon.events.record(kind, id, &job.path, detail),
        Err(error) => {
            tracing::error!(error = %crate::error::chain(&error), "cannot record the outcome; the job runs again once the store takes writes (or at the next start)")
        }
    }
    daemon
        .active
        .lock()
        .expect("active lock is never poisoned")
        .remove(&job.id);
    daemon.wake.notify_one();
}

/// The store step of `finish`: the hook deliveries, then the job's outcome (which flushes
/// both), then `after_upload` unless it waits for a hook. Blocking.
fn record_outcome(
    queue: &JobQueue,
    deliveries: &Deliveries,
    (id, path): (JobId, &Path),
    outcome: Outcome,
    hooks: Vec<Delivery>,
) -> Result<(), QueueError> {
    let waits = hooks.iter().any(|delivery| delivery.then.is_some());
    for delivery in hooks {
        deliveries.add(delivery)?;
    }
    match outcome {
        Outcome::Done {
            fingerprint,
            sha256,
            after,
            root,
            ..
        } => {
            queue.finish_done(id, fingerprint, &sha256, now_ms())?;
            if !waits && let Err(error) = after_upload(&after, path, &root, fingerprint) {
                tracing::warn!(path = %path.display(), %error, "after_upload could not be applied");
            }
            Ok(())
        }
        Outcome::Dropped => queue.drop_job(id, now_ms()),
        Outcome::Failed(reason) => queue.finish_failed(id, &reason, now_ms()),
        Outcome::Retry(reason, at) => queue.finish_retry(id, &reason, at, now_ms()),
    }
}

/// Failures that another attempt will not cure: the user must act (`ferry retry`).
fn is_permanent(error: &UploadError) -> bool {
    match error {
        UploadError::Open { .. }
        | UploadError::Remote { .. }
        | UploadError::Verification { .. } => true,
        UploadError::Vanished { .. }
        | UploadError::Refused { .. }
        | UploadError::Read { .. }
        | UploadError::RetriesExhausted { .. }
        | UploadError::Unstable { .. }
        | UploadError::Store { .. } => false,
    }
}

/// Deletes or moves an uploaded file, unless it changed since (then the new content is
/// uploaded first, and the action waits for that). Blocking.
pub(super) fn after_upload(
    action: &AfterUpload,
    path: &Path,
    root: &Path,
    uploaded: Fingerprint,
) -> std::io::Result<()> {
    if *action == AfterUpload::Keep {
        return Ok(());
    }
    let current = Fingerprint::of(&std::fs::symlink_metadata(path)?);
    if current != uploaded {
        tracing::info!(path = %path.display(), "changed since its upload; left in place");
        return Ok(());
    }
    match action {
        AfterUpload::Keep => Ok(()),
        AfterUpload::Delete => std::fs::remove_file(path),
        AfterUpload::MoveTo(folder) => {
            let relative = path
                .strip_prefix(root)
                .unwrap_or(Path::new(path.file_name().unwrap_or_default()));
            let destination = folder.join(relative);
            if let Some(parent) = destination.parent() {
                std::fs::create_dir_all(parent)?;
            }
            match std::fs::rename(path, &destination) {
                Err(error) if error.raw_os_error() == Some(libc::EXDEV) => {
                    // Another filesystem: copy, make it durable, then remove the original.
                    std::fs::copy(path, &destination)?;
                    std::fs::File::open(&destination)?.sync_all()?;
                    std::fs::remove_file(path)
                }
                other => other,
            }
        }
    }
}
