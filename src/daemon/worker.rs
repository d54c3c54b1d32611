//! Workers: the scheduler claims due jobs up to `transfers` at a time (none while paused), and
//! each job goes through the engine of its remote. The outcome is recorded durably before
//! `after_upload` touches the file; one failing file never holds up the others.
//!
//! The scheduler is also the store's group commit. A worker reports its outcome to it and
//! waits until the outcome is durable. In one trip to the store the scheduler writes every
//! outcome reported meanwhile and claims jobs for the slots they freed; the outcomes written
//! within `GROUP_COMMIT` of each other share one flush. No event or `after_upload` follows an
//! outcome before its flush; the queue's counts in `ferry status` may show it up to
//! `GROUP_COMMIT` sooner (a crash then runs the job again: nothing is lost). Once the
//! scheduler has stopped, workers finishing in the grace period record their own outcomes.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::hooks::{self, Then, Told};
use super::metrics::ErrorClass;
use super::{ActiveJob, Daemon};
use crate::config::{AfterUpload, Symlinks, WatchConfig};
use crate::control::EventKind;
use crate::queue::jobs::now_ms;
use crate::queue::{Deliveries, Delivery, Fingerprint, Finish, JobQueue, JobRecord, QueueError};
use crate::upload::{Progress, Reach, RetryPolicy, UploadError, UploadJob, Uploader};

/// Longest the scheduler sleeps without a wake-up, as a safety net.
const IDLE_RECHECK: Duration = Duration::from_secs(30);

/// A worker's report: its job ended with `outcome`; `recorded` hears whether that is durable.
struct Report {
    job: JobRecord,
    outcome: Outcome,
    /// The hook deliveries the outcome calls for, until they are written.
    hooks: Vec<Delivery>,
    /// Whether it called for any: the hook runner is woken once they are durable.
    hooked: bool,
    recorded: oneshot::Sender<bool>,
}

/// Where workers send their reports: the scheduler, while it runs.
type Reports = mpsc::UnboundedSender<Report>;

/// Longest a reported outcome waits for the flush that makes it durable while other uploads
/// run: the outcomes reported within it share one flush. (Each sled flush wakes all of sled's
/// IO threads; on a disk it is a sync.) When nothing else runs, the flush is at once.
const GROUP_COMMIT: Duration = Duration::from_millis(10);

/// Outcomes written to the store but not flushed yet; their workers wait for the flush.
#[derive(Default)]
struct Unflushed {
    reports: Vec<Report>,
    since: Option<Instant>,
}

impl Unflushed {
    /// When they are to be flushed, if any wait.
    fn deadline(&self) -> Option<Instant> {
        self.since.map(|since| since + GROUP_COMMIT)
    }

    fn add(&mut self, reports: Vec<Report>) {
        if !reports.is_empty() {
            self.since.get_or_insert_with(Instant::now);
            self.reports.extend(reports);
        }
    }

    fn take(&mut self) -> Vec<Report> {
        self.since = None;
        std::mem::take(&mut self.reports)
    }
}

/// Records reported outcomes and claims due jobs, starting a worker for each, until `stop`.
/// Reports already sent when it stops are recorded, and all flushed, before it returns.
pub(super) async fn schedule(
    daemon: Arc<Daemon>,
    workers: TaskTracker,
    stop: CancellationToken,
    abandon: CancellationToken,
) {
    let (reports, mut reported) = mpsc::unbounded_channel();
    let (mut batch, mut unflushed) = (Vec::new(), Unflushed::default());
    while !stop.is_cancelled() {
        while let Ok(report) = reported.try_recv() {
            batch.push(report);
        }
        let uploading = uploading(&daemon, batch.len() + unflushed.reports.len());
        let free = free_slots(&daemon, uploading);
        let trip = Trip {
            uploading,
            free,
            force: false,
        };
        let (claimed, next_due) = trip
            .run(&daemon, &mut unflushed, std::mem::take(&mut batch))
            .await;
        for job in claimed {
            start_job(&daemon, &workers, job, &reports, &abandon);
        }
        let now = (now_ms(), Instant::now());
        let sleep = idle_for(next_due.filter(|_| free > 0), unflushed.deadline(), now);
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = daemon.wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
            Some(report) = reported.recv() => batch.push(report),
        }
    }
    // From here on a worker's report cannot be sent, and it records its own outcome.
    reported.close();
    while let Ok(report) = reported.try_recv() {
        batch.push(report);
    }
    Trip::closing().run(&daemon, &mut unflushed, batch).await;
}

/// How long the scheduler may wait for a report or a wake-up at `now` (wall milliseconds,
/// monotonic): until the next job is due (`None` when none is, or none could start: with no
/// slot free, waking at its due time would only find the slots still taken, again and
/// again), until the unflushed outcomes must be flushed, and never more than `IDLE_RECHECK`.
fn idle_for(
    next_due_ms: Option<u64>,
    flush_at: Option<Instant>,
    (now_ms, now): (u64, Instant),
) -> Duration {
    let due = next_due_ms.map(|due| Duration::from_millis(due.saturating_sub(now_ms)));
    let flush = flush_at.map(|at| at.saturating_duration_since(now));
    [due, flush]
        .into_iter()
        .flatten()
        .fold(IDLE_RECHECK, Duration::min)
}

/// Uploads running: the active jobs but the `reported` ones, whose workers only wait for their
/// outcomes to be recorded.
fn uploading(daemon: &Daemon, reported: usize) -> usize {
    let active = daemon.active.lock().expect("active lock is never poisoned");
    active.len().saturating_sub(reported)
}

/// How many jobs to claim: the transfer slots not taken by running uploads; none while paused
/// or while the store fails.
fn free_slots(daemon: &Daemon, uploading: usize) -> usize {
    let transfers = daemon
        .settings
        .read()
        .expect("settings lock is never poisoned")
        .transfers;
    match daemon.paused.load(Ordering::Relaxed) || daemon.store_health.is_failing() {
        true => 0,
        false => transfers.saturating_sub(uploading),
    }
}

/// One trip to the store: write the reported outcomes, claim up to `free` jobs, and flush when
/// the oldest unflushed outcome has waited `GROUP_COMMIT`, when nothing will run after the
/// trip, or when `force`d.
struct Trip {
    uploading: usize,
    free: usize,
    force: bool,
}

impl Trip {
    /// The trip that ends the scheduler, or a worker's own after it: no claim, a flush.
    fn closing() -> Trip {
        Trip {
            uploading: 0,
            free: 0,
            force: true,
        }
    }

    /// Runs the trip; each reporter whose outcome became durable (or failed to) hears so.
    /// Returns the claimed jobs and when the next job falls due.
    async fn run(
        self,
        daemon: &Arc<Daemon>,
        unflushed: &mut Unflushed,
        batch: Vec<Report>,
    ) -> (Vec<JobRecord>, Option<u64>) {
        let due = self.force || unflushed.deadline().is_some_and(|at| at <= Instant::now());
        let waiting = !unflushed.reports.is_empty() || !batch.is_empty();
        let (queue, deliveries) = (daemon.store.jobs(), daemon.store.deliveries());
        let (batch, written, flushed, claimed) = tokio::task::spawn_blocking(move || {
            let mut batch = batch;
            let written = write_outcomes(&queue, &deliveries, &mut batch);
            let claimed = claim(&queue, self.free);
            let idle = self.uploading == 0 && claimed.as_ref().is_ok_and(|(j, _)| j.is_empty());
            let flushed = (waiting && (due || idle)).then(|| queue.flush());
            (batch, written, flushed, claimed)
        })
        .await
        .expect("store operations do not panic");
        match written {
            Ok(()) => unflushed.add(batch),
            Err(error) => settle_reports(daemon, batch, Err(error)),
        }
        if let Some(flushed) = flushed {
            settle_reports(daemon, unflushed.take(), flushed);
        }
        claimed.unwrap_or_else(|error| {
            if !daemon.store_health.is_failing() {
                tracing::error!(error = %crate::error::chain(&error), "cannot claim jobs");
            }
            daemon.store_health.failed(&error);
            (Vec::new(), None)
        })
    }
}

/// Writes the outcomes of `batch`, each after the hook deliveries it calls for (the flush that
/// makes the outcome durable makes them durable too). Blocking.
fn write_outcomes(
    queue: &JobQueue,
    deliveries: &Deliveries,
    batch: &mut [Report],
) -> Result<(), QueueError> {
    if batch.is_empty() {
        return Ok(());
    }
    for report in batch.iter_mut() {
        for delivery in std::mem::take(&mut report.hooks) {
            deliveries.add(delivery)?;
        }
    }
    let finished: Vec<_> = batch
        .iter()
        .map(|report| (report.job.id, report.outcome.finish()))
        .collect();
    queue.write_outcomes(&finished, now_ms())
}

/// Claims up to `free` due jobs; also returns when the next job falls due. Blocking.
fn claim(queue: &JobQueue, free: usize) -> Result<(Vec<JobRecord>, Option<u64>), QueueError> {
    let jobs = match free {
        0 => Vec::new(),
        free => queue.claim(now_ms(), free)?,
    };
    Ok((jobs, queue.next_due_ms()?))
}

/// After the trip: the reported jobs are no longer active, their events follow (if their
/// outcomes are durable), and each reporter hears how it went.
fn settle_reports(daemon: &Daemon, batch: Vec<Report>, recorded: Result<(), QueueError>) {
    if let Err(error) = &recorded
        && !batch.is_empty()
    {
        daemon.store_health.failed(error);
        tracing::error!(error = %crate::error::chain(error), jobs = batch.len(), "cannot record the outcomes; the jobs run again once the store takes writes (or at the next start)");
    }
    if recorded.is_ok() && batch.iter().any(|report| report.hooked) {
        daemon.hooks_wake.notify_one();
    }
    let mut active = daemon.active.lock().expect("active lock is never poisoned");
    for report in batch {
        active.remove(&report.job.id);
        if recorded.is_ok() {
            let (kind, detail) = report.outcome.event(&report.job);
            daemon
                .events
                .record(kind, report.job.id, &report.job.path, detail);
        }
        let _ = report.recorded.send(recorded.is_ok());
    }
}

/// Makes a claimed job active (status shows it from now) and starts its worker.
fn start_job(
    daemon: &Arc<Daemon>,
    workers: &TaskTracker,
    job: JobRecord,
    reports: &Reports,
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
    let worker = run_job(daemon.clone(), job, reports.clone(), abandon.clone());
    workers.spawn(worker.instrument(span));
}

/// What running a job takes from the daemon.
struct JobNeeds {
    /// Its watch's settings (a job from a watch removed since has none).
    watch: Option<WatchConfig>,
    /// Its remote's uploader and its progress, or why it cannot start.
    start: Result<(Arc<Uploader>, Arc<Progress>), String>,
    retry: RetryPolicy,
}

fn job_needs(daemon: &Daemon, job: &JobRecord) -> JobNeeds {
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
    let progress = daemon
        .active
        .lock()
        .expect("active lock is never poisoned")
        .get(&job.id)
        .map(|a| a.progress.clone());
    let start = match (uploader, progress) {
        (Some(uploader), Some(progress)) => unsendable(job).map_or(Ok((uploader, progress)), Err),
        _ => Err(format!(
            "remote {} is no longer configured; restore it and `ferry retry`",
            job.remote
        )),
    };
    let retry = settings.upload.retry;
    JobNeeds {
        watch,
        start,
        retry,
    }
}

/// Uploads one job's file and records the outcome. Abandoned at shutdown after the grace
/// period: the job stays active in the store and is queued again at the next start.
async fn run_job(
    daemon: Arc<Daemon>,
    job: JobRecord,
    reports: Reports,
    abandon: CancellationToken,
) {
    let JobNeeds {
        watch,
        start,
        retry,
    } = job_needs(&daemon, &job);
    let (uploader, progress) = match start {
        Ok(found) => found,
        Err(reason) => {
            tracing::error!(error = %reason, "not uploaded");
            let failed = Outcome::Failed(reason);
            finish(&daemon, &reports, job, failed, watch.as_ref()).await;
            return;
        }
    };
    let (upload, after) = upload_job(&job, watch.as_ref());
    let attempts = progress.clone();
    let result = tokio::select! {
        result = uploader.upload(&upload, progress) => result,
        _ = abandon.cancelled() => {
            daemon.active.lock().expect("active lock is never poisoned").remove(&job.id);
            return;
        }
    };
    daemon
        .metrics
        .part_attempts_failed(&job.remote, attempts.failed_attempts());
    let outcome = outcome_of(&daemon, &job, result, after, retry);
    finish(&daemon, &reports, job, outcome, watch.as_ref()).await;
}

/// The outcome of `job`'s upload, counted in the metrics (and a success logged).
fn outcome_of(
    daemon: &Daemon,
    job: &JobRecord,
    result: Result<crate::upload::UploadReport, UploadError>,
    after: AfterUpload,
    retry: RetryPolicy,
) -> Outcome {
    match result {
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
            let outcome = failed(error, job, retry);
            daemon.metrics.failed(&job.remote, outcome.error_class());
            outcome
        }
    }
}

/// Why `job` cannot be sent to any remote, if it cannot.
fn unsendable(job: &JobRecord) -> Option<String> {
    job.remote_path_unrepresentable().then(|| {
        format!(
            "{} has a name that is not valid UTF-8, which no remote can store; rename it",
            job.path.display()
        )
    })
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
    /// What the store records.
    fn finish(&self) -> Finish<'_> {
        match self {
            Outcome::Done {
                fingerprint,
                sha256,
                ..
            } => Finish::Done {
                fingerprint: *fingerprint,
                sha256,
            },
            Outcome::Dropped => Finish::Dropped,
            Outcome::Failed(error) => Finish::Failed { error },
            Outcome::Retry(error, at) => Finish::Retry { error, at: *at },
        }
    }

    /// The event that tells of it, with its detail.
    fn event(&self, job: &JobRecord) -> (EventKind, Option<String>) {
        match self {
            Outcome::Done { .. } => (EventKind::Uploaded, Some(job.remote_path.clone())),
            Outcome::Dropped => (EventKind::Dropped, None),
            Outcome::Failed(reason) => (EventKind::Failed, Some(reason.clone())),
            Outcome::Retry(reason, _) => (EventKind::Retrying, Some(reason.clone())),
        }
    }

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
    let mut told = Told {
        job,
        event: EventKind::Failed,
        size: None,
        sha256: None,
        metadata: &watch.metadata,
        started_ms: started_ms(daemon, job.id),
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
            let then = waiting_after_upload(watch, after, root, *fingerprint);
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

/// When job `id` started (now, if it is not running), in milliseconds since the epoch.
fn started_ms(daemon: &Daemon, id: crate::queue::JobId) -> u64 {
    let active = daemon.active.lock().expect("active lock is never poisoned");
    active.get(&id).map_or(now_ms(), |active| {
        now_ms().saturating_sub(active.started.elapsed().as_millis() as u64)
    })
}

/// The `after_upload` to apply once `on_uploaded` is delivered, when the watch makes it wait
/// for the hook (and it does something).
fn waiting_after_upload(
    watch: &WatchConfig,
    after: &AfterUpload,
    root: &Path,
    fingerprint: Fingerprint,
) -> Option<Then> {
    let waits = watch.after_upload_waits_for_hook && *after != AfterUpload::Keep;
    waits.then(|| Then {
        move_to: match after {
            AfterUpload::MoveTo(folder) => Some(folder.clone()),
            _ => None,
        },
        root: root.to_path_buf(),
        fingerprint,
    })
}

/// Reports the outcome to the scheduler (or, once it has stopped, records it here) and waits
/// until it is durable; then, for a success whose `after_upload` does not wait for a hook,
/// applies `after_upload`.
async fn finish(
    daemon: &Arc<Daemon>,
    reports: &Reports,
    job: JobRecord,
    outcome: Outcome,
    watch: Option<&WatchConfig>,
) {
    let hooks = hook_deliveries(daemon, &job, &outcome, watch);
    let waits = hooks.iter().any(|delivery| delivery.then.is_some());
    let then = after_upload_now(&outcome, &job, waits);
    let (recorded, heard) = oneshot::channel();
    let report = Report {
        job,
        outcome,
        hooked: !hooks.is_empty(),
        hooks,
        recorded,
    };
    if let Err(mpsc::error::SendError(report)) = reports.send(report) {
        Trip::closing()
            .run(daemon, &mut Unflushed::default(), vec![report])
            .await;
    }
    let durable = heard.await.unwrap_or(false);
    if let Some(then) = then.filter(|_| durable) {
        apply_after_upload(then).await;
    }
}

/// What `after_upload` does to a file, where it is, under which watched folder, and the
/// version of it that was uploaded.
type AfterUploadOf = (
    AfterUpload,
    std::path::PathBuf,
    std::path::PathBuf,
    Fingerprint,
);

/// The `after_upload` to apply as soon as the outcome is durable: a success's, unless it
/// keeps the file or a hook decides when (`waits`).
fn after_upload_now(outcome: &Outcome, job: &JobRecord, waits: bool) -> Option<AfterUploadOf> {
    match outcome {
        Outcome::Done {
            after,
            root,
            fingerprint,
            ..
        } if !waits && *after != AfterUpload::Keep => {
            Some((after.clone(), job.path.clone(), root.clone(), *fingerprint))
        }
        _ => None,
    }
}

/// Applies `after_upload` on a blocking thread; a failure is logged with the file's path.
async fn apply_after_upload((after, path, root, fingerprint): AfterUploadOf) {
    let applied = tokio::task::spawn_blocking(move || {
        after_upload(&after, &path, &root, fingerprint).map_err(|e| (path, e))
    })
    .await;
    if let Ok(Err((path, error))) = applied {
        tracing::warn!(path = %path.display(), %error, "after_upload could not be applied");
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The scheduler sleeps until the sooner of the next due job and the flush, at most
    /// `IDLE_RECHECK`, and not at all for what is already due.
    #[test]
    fn the_scheduler_sleeps_until_the_next_thing_to_do() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let cases = [
            (None, None, IDLE_RECHECK),
            (Some(10_500), None, ms(500)),
            (Some(9_000), None, Duration::ZERO),
            (None, Some(now + ms(3)), ms(3)),
            (Some(10_500), Some(now + ms(3)), ms(3)),
            (Some(10_002), Some(now + ms(3)), ms(2)),
            (Some(10_000 + 3_600_000), None, IDLE_RECHECK),
        ];
        for (due, flush, expected) in cases {
            assert_eq!(idle_for(due, flush, (10_000, now)), expected, "{due:?}");
        }
    }
}
