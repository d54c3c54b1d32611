//! The upload engine: one resumable session per file, through any `Backend`.
//!
//! For each file: open it and fingerprint it; hash it on a blocking thread while the parts go
//! out; find the session recorded for it in the store and reconcile with what the remote holds,
//! or open a new one; send the missing parts in parallel within a part-count and byte budget,
//! recording each acknowledged part durably; check the file did not change; complete with the
//! manifest and the SHA-256; verify the remote's answer; forget the session record. A file sent
//! as one part is not recorded at all: after a crash it is sent again whole, which costs what
//! resuming would, and small files cost no store writes. A backend that takes a whole file in
//! one request (S3's PutObject) gets such a file that way, with no session to open or complete.
//!
//! Invariants kept here: an acknowledged part of a recorded session is recorded before it
//! counts, and is not sent again on resume unless the remote lost it; a file that changed is
//! never completed from mixed content (the session is aborted and the upload starts over);
//! transient failures retry with backoff, permanent ones stop with the file, the request and the
//! remote's code.

mod parts;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use parts::{Layout, SessionContext};

use super::backend::{
    Backend, BackendError, CompletedPart, CreateRequest, Held, Rejection, RemoteFile, RemotePart,
    SessionRef, SessionStatus, UpFront,
};
use super::bwlimit::Limiter;
use super::controller::Estimates;
use super::open::{OpenError, Reach, Refusal};
use super::planner::{PartPlanner, PlanContext, Planner, fit};
use super::progress::Progress;
use super::retry::{ErrorClass, RetryPolicy};
use super::source::{Hashing, LocalFile, SumsAhead};
use super::{UploadError, UploadSettings};
use crate::queue::{Fingerprint, PartLimits, PartRecord, RECORD_VERSION, Sessions, UploadRecord};

/// Fresh sessions one upload may start (file changed, session expired, manifest rejected)
/// before it gives up: a file rewritten this often is not stable enough to upload.
const MAX_FRESH_STARTS: u32 = 3;
/// Rounds of re-sending parts the remote holds in another version, before starting over.
const MAX_MANIFEST_REPAIRS: u32 = 2;
/// How long to wait for a part's reader to report after its request failed.
const READER_REPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often, at most, what the planner learned is kept after an upload: a trip to the store
/// per small file was a tenth of its cost. The daemon and `ferry push` also keep it when they
/// stop and before a reload (`Uploader::keep_learned`), so nothing learned is lost.
const KEEP_LEARNED_EVERY: Duration = Duration::from_secs(2);

/// One file to upload.
#[derive(Debug, Clone)]
pub struct UploadJob {
    pub local_path: PathBuf,
    pub remote_path: String,
    /// Guessed from `remote_path` when not given.
    pub mime_type: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// How the file may be reached: beneath its watch through no link, or as given.
    pub reach: Reach,
    /// The file that was queued: an open that finds another file (another device or inode)
    /// refuses it.
    pub expected: Option<Fingerprint>,
}

/// What an upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadReport {
    pub local_path: PathBuf,
    pub remote_path: String,
    /// The file as it was uploaded.
    pub fingerprint: Fingerprint,
    pub size: u64,
    pub sha256: String,
    /// Bytes of the parts acknowledged in this run (resumed parts excluded).
    pub bytes_sent: u64,
    pub parts: u32,
    /// Parts the remote already held from an earlier, interrupted run.
    pub parts_resumed: u32,
    pub part_sizes: PartSizes,
    pub duration: Duration,
    /// Part attempts that failed on the way, each retried or ending in a new session.
    pub part_attempts_failed: u64,
}

/// The sizes of a file's parts: the first, the last, the smallest and the largest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PartSizes {
    pub first: u64,
    pub last: u64,
    pub min: u64,
    pub max: u64,
}

impl PartSizes {
    fn of<'a>(parts: impl IntoIterator<Item = &'a PartRecord>) -> PartSizes {
        let sizes: Vec<u64> = parts.into_iter().map(|part| part.size).collect();
        PartSizes {
            first: sizes.first().copied().unwrap_or(0),
            last: sizes.last().copied().unwrap_or(0),
            min: sizes.iter().copied().min().unwrap_or(0),
            max: sizes.iter().copied().max().unwrap_or(0),
        }
    }
}

/// What an upload sent: parts in all, parts resumed, bytes sent in this run, part sizes.
struct Tally(u32, u32, u64, PartSizes);

/// How an attempt at a session ended, when it did not succeed.
enum Attempt {
    /// Boxed: the error is large and attempts travel through many `Result`s.
    Fatal(Box<UploadError>),
    /// Start a new session (the reason is logged).
    Restart(String),
    /// The session's planned parts are too large for the link as it is now: abort it and
    /// start a new one with parts the planner sizes afresh.
    Replan(String),
    /// The remote no longer has the session (a request on it said so): forget its record and
    /// start a new one, whatever a query of it would say (some servers list a session they
    /// no longer know as open).
    Gone(String),
}

impl From<UploadError> for Attempt {
    fn from(error: UploadError) -> Self {
        Attempt::Fatal(Box::new(error))
    }
}

/// Uploads files through one backend, keeping session records in the store.
pub struct Uploader {
    backend: Arc<dyn Backend>,
    sessions: Sessions,
    settings: UploadSettings,
    /// The remote's planner, shared by every file sent through this uploader.
    planner: Arc<dyn PartPlanner>,
    /// Whether what an earlier run learned was looked for in the store.
    restored: tokio::sync::OnceCell<()>,
    /// The bandwidth limit bodies draw from (shared with other uploaders, or this remote's).
    limiter: Option<Arc<Limiter>>,
    /// When what the planner learned was last kept in the store.
    kept: std::sync::Mutex<Option<Instant>>,
}

/// Where a session stands after opening or resuming it.
enum Opened {
    /// Ready to send: parts already acknowledged carry an etag; or a new file that goes whole
    /// in one request (`Backend::put_file`).
    Ready(Box<Ready>),
    /// The remote completed it before a crash let us record that.
    AlreadyComplete {
        parts: Vec<PartRecord>,
        file: RemoteFile,
    },
}

/// A session ready for its parts: its record, the parts acknowledged before, whether the
/// record is in the store yet, and the request when the file goes whole in one.
struct Ready {
    record: UploadRecord,
    parts: Vec<PartRecord>,
    recorded: bool,
    whole: Option<CreateRequest>,
}

impl Opened {
    /// A session to send the parts of, `parts` those it holds already.
    fn parts(record: UploadRecord, parts: Vec<PartRecord>, recorded: bool) -> Opened {
        let whole = None;
        Opened::Ready(Box::new(Ready {
            record,
            parts,
            recorded,
            whole,
        }))
    }

    /// A new file sent whole by `request`.
    fn whole(record: UploadRecord, request: CreateRequest) -> Opened {
        let (parts, recorded, whole) = (Vec::new(), false, Some(request));
        Opened::Ready(Box::new(Ready {
            record,
            parts,
            recorded,
            whole,
        }))
    }
}

impl Uploader {
    /// An uploader to `backend`, its session records and learned part sizes in `sessions`.
    pub fn new(
        backend: Arc<dyn Backend>,
        sessions: Sessions,
        settings: UploadSettings,
    ) -> Uploader {
        let planner = Arc::new(Planner::new(settings.controller_limits()));
        Uploader::with_planner(backend, sessions, settings, planner)
    }

    /// `new`, with another planner (a benchmark's peer, say).
    pub fn with_planner(
        backend: Arc<dyn Backend>,
        sessions: Sessions,
        settings: UploadSettings,
        planner: Arc<dyn PartPlanner>,
    ) -> Uploader {
        Uploader {
            backend,
            sessions,
            planner,
            settings,
            restored: tokio::sync::OnceCell::new(),
            limiter: None,
            kept: std::sync::Mutex::new(None),
        }
    }

    /// The bandwidth limit this uploader's bodies draw from.
    pub fn limiter(&self) -> Option<&Arc<Limiter>> {
        self.limiter.as_ref()
    }

    /// This uploader, its bodies sent within `limiter`'s bandwidth.
    pub fn with_limiter(mut self, limiter: Option<Arc<Limiter>>) -> Uploader {
        self.limiter = limiter;
        self
    }

    /// What the remote was seen to do otherwise than configured (`Backend::notices`).
    pub fn notices(&self) -> Vec<String> {
        self.backend.notices()
    }

    /// The planner's current choices and estimates, and the parts in flight now; `None` for a
    /// planner that does not estimate. The part size is the one sessions get: within the
    /// remote's limits where they are known before a session (S3's 5 MiB to 5 GiB).
    pub fn estimates(&self) -> Option<(Estimates, usize)> {
        let (mut estimates, in_flight) = self.planner.estimates()?;
        if let Some(limits) = self.backend.single_request() {
            let (least, most) = (limits.min_part_size, limits.max_part_size);
            estimates.part_size = estimates.part_size.clamp(least, most.max(least));
        }
        Some((estimates, in_flight))
    }

    /// Starts the planner from what an earlier run learned about this remote, once (the first
    /// upload does it, if the daemon did not at start).
    pub async fn restore(&self) {
        self.restored
            .get_or_init(|| async {
                let (sessions, identity) = (self.sessions.clone(), self.backend.identity());
                let found = tokio::task::spawn_blocking(move || sessions.learned(&identity))
                    .await
                    .expect("reading the store does not panic");
                match found {
                    Ok(Some(learned)) => self.planner.restore(learned),
                    Ok(None) => {}
                    Err(error) => tracing::warn!(error = %crate::error::chain(&error), "cannot read what was learned of the remote; starting afresh"),
                }
            })
            .await;
    }

    /// Keeps what the planner learned, unless it was kept less than `KEEP_LEARNED_EVERY` ago.
    async fn keep_learned_now_and_then(&self) {
        let now = Instant::now();
        {
            let mut kept = self.kept.lock().expect("kept lock is never poisoned");
            if kept.is_some_and(|at| now.duration_since(at) < KEEP_LEARNED_EVERY) {
                return;
            }
            *kept = Some(now);
        }
        self.keep_learned().await;
    }

    /// Keeps what the planner learned (not flushed: later writes carry it).
    pub async fn keep_learned(&self) {
        let (sessions, identity) = (self.sessions.clone(), self.backend.identity());
        let Some(learned) = self.planner.learned() else {
            return;
        };
        let saved =
            tokio::task::spawn_blocking(move || sessions.save_learned(&identity, &learned)).await;
        if let Ok(Err(error)) = saved {
            tracing::warn!(error = %crate::error::chain(&error), "cannot keep what was learned of the remote");
        }
    }

    /// Uploads one file, resuming its earlier session if there is one. `progress` is updated
    /// as bytes go out.
    pub async fn upload(
        &self,
        job: &UploadJob,
        progress: Arc<Progress>,
    ) -> Result<UploadReport, UploadError> {
        let key = session_key(&self.backend.identity(), job);
        self.restore().await;
        let mut fresh_starts = 0;
        loop {
            let attempt = self.attempt(job, &key, &progress).await;
            self.keep_learned_now_and_then().await;
            let (reason, gone) = match attempt {
                Ok(report) => return Ok(report),
                Err(Attempt::Fatal(error)) => return Err(*error),
                Err(Attempt::Restart(reason) | Attempt::Replan(reason)) => (reason, false),
                Err(Attempt::Gone(reason)) => (reason, true),
            };
            if fresh_starts == MAX_FRESH_STARTS {
                let path = job.local_path.clone();
                let restarts = fresh_starts;
                return Err(UploadError::Unstable {
                    path,
                    restarts,
                    reason,
                });
            }
            fresh_starts += 1;
            tracing::info!(path = %job.local_path.display(), %reason, "starting a new upload session");
            if gone && let Err(Attempt::Fatal(error)) = self.forget(&key, &job.local_path).await {
                return Err(*error);
            }
        }
    }

    async fn attempt(
        &self,
        job: &UploadJob,
        key: &str,
        progress: &Arc<Progress>,
    ) -> Result<UploadReport, Attempt> {
        let started = Instant::now();
        let (sessions, lookup) = (self.sessions.clone(), key.to_string());
        let (file, recorded) = open_local(job, self.backend.up_front(None), move || {
            sessions.load(&lookup)
        })
        .await?;
        let file = Arc::new(file);
        progress.start(file.fingerprint().size);
        // The file is hashed while the parts go out (the digest is needed only at complete),
        // from when the parts' size is known, so that the same pass sums them.
        let hash_cancel = CancellationToken::new();
        let _stop_hashing = hash_cancel.clone().drop_guard();
        let ready = match self.open_session(job, key, &file, recorded).await? {
            Opened::Ready(ready) => *ready,
            Opened::AlreadyComplete {
                parts,
                file: remote,
            } => {
                let digest = self.digest(file.sha256(hash_cancel, None), &file).await?;
                let tally = self.already_complete(job, key, &file, (&parts, &remote), &digest);
                let tally = tally.await?;
                return Ok(report(job, &file, digest, tally, (started, progress)));
            }
        };
        let (digest, tally) = self.send(key, &file, ready, progress, hash_cancel).await?;
        Ok(report(job, &file, digest, tally, (started, progress)))
    }

    /// Sends the parts of `ready` not yet acknowledged, hashing the file meanwhile, and
    /// finishes the session. Returns the file's digest and what was sent.
    async fn send(
        &self,
        key: &str,
        file: &Arc<LocalFile>,
        ready: Ready,
        progress: &Arc<Progress>,
        hash_cancel: CancellationToken,
    ) -> Result<(String, Tally), Attempt> {
        let Ready {
            record,
            parts,
            recorded,
            whole,
        } = ready;
        let size = file.fingerprint().size;
        let (mut layout, acknowledged) = Layout::new(parts, size, record.limits);
        let recorded = self
            .record_if_needed(key, &record, &mut layout, recorded, file)
            .await?;
        let ahead = self.sums_ahead(&layout, (&record, whole.is_some()), size);
        let hashing = file.sha256(hash_cancel, ahead.clone());
        let context = self.context(key, &record, file, progress, (recorded, whole, ahead));
        let parts_resumed = acknowledged.len() as u32;
        let resumed_bytes: u64 = acknowledged.values().map(|p| p.size).sum();
        progress.add_resumed(resumed_bytes);
        let held = &context.acknowledged;
        held.store(resumed_bytes, std::sync::atomic::Ordering::Relaxed);
        let in_flight = self.settings.in_flight_bytes();
        let manifest = match parts::send_all(&context, layout, acknowledged, in_flight).await {
            Err(Attempt::Replan(reason)) => return Err(self.start_over(&context, &reason).await),
            other => other?,
        };
        tracing::debug!(path = %file.path().display(), parts = manifest.len(), "all parts acknowledged");
        let (digest, manifest) = self.finish(&context, &record, manifest, hashing).await?;
        let bytes_sent = manifest.values().map(|part| part.size).sum::<u64>() - resumed_bytes;
        let sizes = PartSizes::of(manifest.values());
        let tally = Tally(manifest.len() as u32, parts_resumed, bytes_sent, sizes);
        Ok((digest, tally))
    }

    /// A session the remote completed before (its reply was lost): forgets it, and checks it
    /// holds this version of the file.
    async fn already_complete(
        &self,
        job: &UploadJob,
        key: &str,
        file: &LocalFile,
        (parts, remote): (&[PartRecord], &RemoteFile),
        digest: &str,
    ) -> Result<Tally, Attempt> {
        self.forget(key, &job.local_path).await?;
        let size = file.fingerprint().size;
        if verify(&job.local_path, remote, size, digest).is_err() {
            return Err(Attempt::Restart(
                "the remote completed an earlier version of the file".into(),
            ));
        }
        let count = parts.len() as u32;
        Ok(Tally(count, count, 0, PartSizes::of(parts)))
    }

    /// The parts' up-front sums, made by the pass that hashes the file, when the remote wants
    /// them for the `record`ed session's parts and they are uniform (or the file goes
    /// `whole`, without a session): see `source::SumsAhead`.
    fn sums_ahead(
        &self,
        layout: &Layout,
        (record, whole): (&UploadRecord, bool),
        size: u64,
    ) -> Option<Arc<SumsAhead>> {
        let session = SessionRef {
            id: &record.upload_id,
            remote_path: &record.remote_path,
        };
        let (part_size, session) = match whole {
            true => (Some(size), None),
            false => (layout.uniform_size(), Some(session)),
        };
        let ahead = SumsAhead::new(part_size?, size, self.backend.up_front(session))?;
        Some(Arc::new(ahead))
    }

    /// Once every part is acknowledged: checks the file did not change, completes the session
    /// (a file sent whole needs none), forgets its record and verifies what the remote holds.
    /// Returns the digest and the manifest that completed.
    async fn finish(
        &self,
        context: &Arc<SessionContext>,
        record: &UploadRecord,
        manifest: BTreeMap<u32, PartRecord>,
        hashing: Hashing,
    ) -> Result<(String, BTreeMap<u32, PartRecord>), Attempt> {
        let (file, size) = (&context.file, context.file.fingerprint().size);
        self.ensure_unchanged(context).await?;
        let digest = self.digest(hashing, file).await?;
        let (remote, manifest) = match &context.whole {
            Some(request) => {
                let path = request.remote_path.clone();
                let remote = RemoteFile {
                    path,
                    size,
                    sha256: None,
                };
                (remote, manifest)
            }
            None => {
                self.complete(context, record, manifest, &digest, size)
                    .await?
            }
        };
        self.forget_recorded(context).await?;
        verify(file.path(), &remote, size, &digest)?;
        Ok((digest, manifest))
    }

    fn context(
        &self,
        key: &str,
        record: &UploadRecord,
        file: &Arc<LocalFile>,
        progress: &Arc<Progress>,
        (recorded, whole, ahead): (bool, Option<CreateRequest>, Option<Arc<SumsAhead>>),
    ) -> Arc<SessionContext> {
        Arc::new(SessionContext {
            backend: self.backend.clone(),
            sessions: self.sessions.clone(),
            key: key.to_string(),
            upload_id: record.upload_id.clone(),
            remote_path: record.remote_path.clone(),
            file: file.clone(),
            progress: progress.clone(),
            retry: self.settings.retry,
            stall_timeout: self.settings.stall_timeout,
            planner: self.planner.clone(),
            acknowledged: Default::default(),
            recorded,
            whole,
            limiter: self.limiter.clone(),
            ahead,
        })
    }

    /// Completes the session with `manifest`. Parts the remote holds in another version (a
    /// late duplicate of an earlier attempt, say) are sent again, at most
    /// `MAX_MANIFEST_REPAIRS` times; any other refusal of the manifest starts over. Returns
    /// what the remote reports and the manifest that completed.
    async fn complete(
        &self,
        context: &Arc<SessionContext>,
        record: &UploadRecord,
        mut manifest: BTreeMap<u32, PartRecord>,
        digest: &str,
        size: u64,
    ) -> Result<(RemoteFile, BTreeMap<u32, PartRecord>), Attempt> {
        let mut repairs = 0;
        loop {
            let error = match self.complete_once(context, &manifest, digest, size).await {
                Ok(remote) => return Ok((remote, manifest)),
                Err(Attempt::Fatal(error)) if refused_manifest(&error) => error,
                Err(other) => return Err(other),
            };
            let reason = format!(
                "the remote refused the manifest: {}",
                crate::error::chain(&*error)
            );
            if rejection(&error) != Some(Rejection::ManifestMismatch)
                || repairs == MAX_MANIFEST_REPAIRS
            {
                return Err(self.start_over(context, &reason).await);
            }
            repairs += 1;
            manifest = self
                .resend_stale(context, record, manifest, &reason)
                .await?;
        }
    }

    /// One completion of the session with `manifest`, retried as any request.
    async fn complete_once(
        &self,
        context: &SessionContext,
        manifest: &BTreeMap<u32, PartRecord>,
        digest: &str,
        size: u64,
    ) -> Result<RemoteFile, Attempt> {
        let completed = completed_parts(manifest);
        let session = context.session();
        self.with_retry(context.file.path(), || {
            self.backend.complete(session, &completed, digest, size)
        })
        .await
    }

    /// Sends again the parts of `manifest` that the remote holds in another version. Starts
    /// over, for `reason`, when it holds none such or the session is no longer open.
    async fn resend_stale(
        &self,
        context: &Arc<SessionContext>,
        record: &UploadRecord,
        manifest: BTreeMap<u32, PartRecord>,
        reason: &str,
    ) -> Result<BTreeMap<u32, PartRecord>, Attempt> {
        let path = context.file.path();
        let status = self
            .with_retry(path, || self.backend.query(context.session()))
            .await?;
        let SessionStatus::Open { held } = status else {
            return Err(self.start_over(context, reason).await);
        };
        let parts = reconcile(manifest.into_values().collect(), &held);
        let stale: Vec<u32> = parts
            .iter()
            .filter(|p| !p.is_acknowledged())
            .map(|p| p.number)
            .collect();
        if stale.is_empty() {
            return Err(self.start_over(context, reason).await);
        }
        tracing::info!(path = %path.display(), ?stale, "the remote holds other versions of some parts; sending them again");
        let size = context.file.fingerprint().size;
        let (layout, acknowledged) = Layout::new(parts, size, record.limits);
        let in_flight_bytes = self.settings.in_flight_bytes();
        let manifest = parts::send_all(context, layout, acknowledged, in_flight_bytes).await?;
        self.ensure_unchanged(context).await?;
        Ok(manifest)
    }

    /// Starts over (aborting the session) when the file changed since it was opened.
    async fn ensure_unchanged(&self, context: &SessionContext) -> Result<(), Attempt> {
        if self.changed(&context.file).await {
            return Err(self
                .start_over(context, "the file changed during the upload")
                .await);
        }
        Ok(())
    }

    /// Reconciles the session recorded for this file (`existing`) with the remote, or opens a
    /// new one and records it durably.
    async fn open_session(
        &self,
        job: &UploadJob,
        key: &str,
        file: &Arc<LocalFile>,
        existing: Option<(UploadRecord, Vec<PartRecord>)>,
    ) -> Result<Opened, Attempt> {
        if let Some((record, parts)) = existing {
            if let Some(opened) = self.resume(job, file, record, parts).await? {
                return Ok(opened);
            }
            self.forget(key, &job.local_path).await?;
        }
        if let Some(limits) = self.whole_in_one(file.fingerprint().size) {
            let request = create_request(job, file);
            let record = self.record(job, file, String::new(), limits, None);
            return Ok(Opened::whole(record, request));
        }
        self.create_session(job, file).await
    }

    /// The remote's limits, when it takes a file in one request and the first part the planner
    /// would choose is the whole file.
    fn whole_in_one(&self, size: u64) -> Option<PartLimits> {
        let limits = self.backend.single_request()?;
        let plan = PlanContext {
            offset: 0,
            file_size: size,
            next_number: 1,
            limits,
        };
        (fit(self.planner.desired_size(&plan), &plan) >= size).then_some(limits)
    }

    /// Resumes the recorded session when it is still this file's and open on the remote;
    /// `None` when it cannot be (gone, or of another version of the file: then aborted).
    async fn resume(
        &self,
        job: &UploadJob,
        file: &LocalFile,
        record: UploadRecord,
        parts: Vec<PartRecord>,
    ) -> Result<Option<Opened>, Attempt> {
        let session = SessionRef {
            id: &record.upload_id,
            remote_path: &record.remote_path,
        };
        if !self.still_this_files(&record, job, file) {
            // The file changed since that session began: its parts are of other content.
            tracing::info!(path = %job.local_path.display(), "the file changed since its earlier session; starting over");
            if let Err(error) = self.backend.abort(session).await {
                tracing::warn!(%error, "could not abort an outdated session");
            }
            return Ok(None);
        }
        let status = self
            .with_retry(&job.local_path, || self.backend.query(session))
            .await?;
        match status {
            SessionStatus::Open { held } => Ok(Some(resumed(job, record, parts, &held))),
            SessionStatus::Completed { file } => Ok(Some(Opened::AlreadyComplete { parts, file })),
            SessionStatus::Gone => {
                tracing::info!(path = %job.local_path.display(), "the earlier session is gone");
                Ok(None)
            }
        }
    }

    /// Whether the recorded session is of this version of the file, to this remote and path.
    fn still_this_files(&self, record: &UploadRecord, job: &UploadJob, file: &LocalFile) -> bool {
        record.fingerprint == file.fingerprint()
            && record.remote == self.backend.identity()
            && record.remote_path == job.remote_path
    }

    /// Opens a new session on the remote. It is recorded by `send_parts`, once it is known to
    /// take more than one part.
    async fn create_session(&self, job: &UploadJob, file: &LocalFile) -> Result<Opened, Attempt> {
        let request = create_request(job, file);
        let started = Instant::now();
        let created = self
            .with_retry(&job.local_path, || self.backend.create(&request))
            .await?;
        // A request without a body: its time is the link's fixed time (a retry blurs it).
        self.planner.observe_request(started.elapsed());
        let record = self.record(job, file, created.id, created.limits, created.expires_at);
        Ok(Opened::parts(record, Vec::new(), false))
    }

    /// The record of a new session.
    fn record(
        &self,
        job: &UploadJob,
        file: &LocalFile,
        upload_id: String,
        limits: PartLimits,
        expires_at: Option<String>,
    ) -> UploadRecord {
        UploadRecord {
            version: RECORD_VERSION,
            remote: self.backend.identity(),
            remote_path: job.remote_path.clone(),
            local_path: job.local_path.clone(),
            upload_id,
            fingerprint: file.fingerprint(),
            limits,
            expires_at,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
        }
    }

    /// Decides, before any part goes out, whether the session is recorded: a resumed one
    /// already is; a new one is when its first part is not the whole file (recorded durably
    /// now, with that first part noted).
    async fn record_if_needed(
        &self,
        key: &str,
        record: &UploadRecord,
        layout: &mut Layout,
        recorded: bool,
        file: &LocalFile,
    ) -> Result<bool, Attempt> {
        let Some(first) = layout.plan_first(self.planner.as_ref()) else {
            return Ok(recorded);
        };
        if recorded || layout.is_whole_file(&first) {
            return Ok(recorded);
        }
        self.sessions
            .save_durable(key, record)
            .await
            .map_err(|source| store_error(file.path(), source))?;
        let sessions = self.sessions.clone();
        let key = key.to_string();
        blocking(move || Ok(sessions.plan_part(&key, &first)))
            .await
            .expect("the closure returns Ok")
            .map_err(|source| store_error(file.path(), source))?;
        Ok(true)
    }

    /// Runs a non-streaming request with the retry policy.
    async fn with_retry<T, F, Fut>(&self, path: &Path, mut call: F) -> Result<T, Attempt>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, BackendError>>,
    {
        let (value, _) = retrying(&self.settings.retry, path, None, |_| {
            let request = call();
            async move { Ok(request.await) }
        })
        .await?;
        Ok(value)
    }

    /// True when the file may have changed since it was opened (a failed check counts), so
    /// that what was sent may mix versions. A snapshot cannot: it is not checked again.
    async fn changed(&self, file: &Arc<LocalFile>) -> bool {
        if file.is_snapshot() {
            return false;
        }
        let check = file.clone();
        blocking(move || Ok(check.changed())).await.unwrap_or(true)
    }

    /// Aborts the session, forgets it, and asks for a fresh start.
    async fn start_over(&self, context: &SessionContext, reason: &str) -> Attempt {
        // A file sent whole has no session to abort.
        if context.whole.is_none()
            && let Err(error) = self.backend.abort(context.session()).await
        {
            tracing::warn!(%error, "could not abort the session");
        }
        match self.forget_recorded(context).await {
            Ok(()) => Attempt::Restart(reason.to_string()),
            Err(attempt) => attempt,
        }
    }

    /// Removes the session's record, if it has one.
    async fn forget_recorded(&self, context: &SessionContext) -> Result<(), Attempt> {
        if !context.recorded {
            return Ok(());
        }
        self.forget(&context.key, context.file.path()).await
    }

    /// Removes a session's record from the store.
    async fn forget(&self, key: &str, path: &Path) -> Result<(), Attempt> {
        let sessions = self.sessions.clone();
        let key = key.to_string();
        blocking(move || Ok(sessions.remove(&key)))
            .await
            .expect("the closure returns Ok")
            .map_err(|source| store_error(path, source))
    }

    async fn digest(&self, hashing: Hashing, file: &LocalFile) -> Result<String, Attempt> {
        match hashing.finish().await {
            Ok(digest) => Ok(digest),
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => Err(Attempt::Restart(
                "the file changed while it was hashed".into(),
            )),
            Err(source) => Err(UploadError::Read {
                path: file.path().to_path_buf(),
                source,
            }
            .into()),
        }
    }
}

/// What a new session (or a file sent whole) is for.
fn create_request(job: &UploadJob, file: &LocalFile) -> CreateRequest {
    CreateRequest {
        remote_path: job.remote_path.clone(),
        size: file.fingerprint().size,
        mime_type: job.mime_type.clone().or_else(|| {
            mime_guess::from_path(&job.remote_path)
                .first_raw()
                .map(str::to_owned)
        }),
        metadata: job.metadata.clone(),
        sha256: None,
        mtime_ns: Some(file.fingerprint().mtime_ns),
    }
}

/// Opens the job's file as its reach allows (a small one is read whole, with the checksums the
/// remote wants up front) and checks it is the file that was queued; then, on the same
/// blocking thread, runs `lookup` (the session recorded for the file).
async fn open_local<T: Send + 'static>(
    job: &UploadJob,
    wanted: UpFront,
    lookup: impl FnOnce() -> Result<T, crate::queue::QueueError> + Send + 'static,
) -> Result<(LocalFile, T), UploadError> {
    let path = job.local_path.clone();
    let reach = job.reach.clone();
    let opened = tokio::task::spawn_blocking(move || {
        let file = LocalFile::open(&path, &reach, wanted)?;
        Ok((file, lookup()))
    })
    .await
    .map_err(|join| OpenError::Io(io::Error::other(join)))
    .and_then(|opened| opened);
    let path = job.local_path.clone();
    let (file, looked_up) = match opened {
        Ok(opened) => opened,
        Err(OpenError::Io(error)) if error.kind() == io::ErrorKind::NotFound => {
            return Err(UploadError::Vanished { path });
        }
        Err(OpenError::Io(source)) => return Err(UploadError::Open { path, source }),
        Err(OpenError::Refused(refusal)) => return Err(UploadError::Refused { path, refusal }),
    };
    let found = file.fingerprint();
    match job.expected {
        Some(queued) if (queued.device, queued.inode) != (found.device, found.inode) => {
            let refusal = Refusal::Replaced {
                device: found.device,
                inode: found.inode,
            };
            Err(UploadError::Refused { path, refusal })
        }
        _ => match looked_up {
            Ok(found) => Ok((file, found)),
            Err(source) => Err(UploadError::Store { path, source }),
        },
    }
}

fn store_error(path: &Path, source: crate::queue::QueueError) -> Attempt {
    UploadError::Store {
        path: path.to_path_buf(),
        source,
    }
    .into()
}

/// The manifest to complete with: every part's number and etag.
fn completed_parts(manifest: &BTreeMap<u32, PartRecord>) -> Vec<CompletedPart> {
    manifest
        .values()
        .map(|part| CompletedPart {
            number: part.number,
            etag: part
                .etag
                .clone()
                .expect("manifest holds acknowledged parts"),
            crc32c: part.crc32c,
        })
        .collect()
}

/// Checks that the remote holds what was sent: the size, and the digest when it reports one.
fn verify(path: &Path, remote: &RemoteFile, size: u64, digest: &str) -> Result<(), Attempt> {
    if remote.size == size && remote.sha256.as_deref().is_none_or(|d| d == digest) {
        return Ok(());
    }
    Err(UploadError::Verification {
        path: path.to_path_buf(),
        detail: format!(
            "sent {size} bytes with sha256 {digest}, the remote reports {} bytes with sha256 {}",
            remote.size,
            remote.sha256.as_deref().unwrap_or("(none)")
        ),
    }
    .into())
}

/// What an upload did; `counts` is (parts, parts resumed, bytes sent in this run). The failed
/// part attempts are those of every run, as `progress` counts them.
fn report(
    job: &UploadJob,
    file: &LocalFile,
    sha256: String,
    Tally(parts, parts_resumed, bytes_sent, part_sizes): Tally,
    (started, progress): (Instant, &Progress),
) -> UploadReport {
    UploadReport {
        local_path: job.local_path.clone(),
        remote_path: job.remote_path.clone(),
        fingerprint: file.fingerprint(),
        size: file.fingerprint().size,
        sha256,
        bytes_sent,
        parts,
        parts_resumed,
        part_sizes,
        duration: started.elapsed(),
        part_attempts_failed: progress.failed_attempts(),
    }
}

/// What the remote's refusal of a failed request means, if the engine acts on it.
fn rejection(error: &UploadError) -> Option<Rejection> {
    match error {
        UploadError::Remote { source, .. } => source.rejection(),
        _ => None,
    }
}

/// True for the complete refusals that a fresh session cures: the remote's parts do not add up
/// to the file (it changed, or the remote lost or replaced parts).
fn refused_manifest(error: &UploadError) -> bool {
    matches!(
        rejection(error),
        Some(Rejection::ManifestMismatch | Rejection::DigestMismatch | Rejection::PartTooSmall)
    )
}

enum Step {
    Retry(BackendError),
    Stop(Attempt),
}

/// The one retry loop, for every request: calls `call` (with the attempt's number) until it
/// succeeds, the policy gives up, or a failure that retrying cannot cure; `next_step` decides.
/// `call` fails outright (`Err`) for what is not the remote's doing, a local read say. Returns
/// the value and the attempts it took. `part` (number and size) names the part in logs.
async fn retrying<T, F, Fut>(
    retry: &RetryPolicy,
    path: &Path,
    part: Option<(u32, u64)>,
    mut call: F,
) -> Result<(T, u32), Attempt>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Result<Result<T, BackendError>, Attempt>>,
{
    let mut attempts = 0;
    loop {
        attempts += 1;
        let error = match call(attempts).await? {
            Ok(value) => return Ok((value, attempts)),
            Err(error) => error,
        };
        match next_step(retry, attempts, path, error) {
            Step::Retry(error) => {
                let (part, size) = (part.map(|p| p.0), part.map(|p| p.1));
                tracing::warn!(path = %path.display(), part, size, attempts, %error, "retrying");
                retry.wait(attempts, error.retry_after()).await;
            }
            Step::Stop(attempt) => return Err(attempt),
        }
    }
}

/// The single decision after a failed request: retry, resume or start a new session, or stop.
fn next_step(retry: &RetryPolicy, attempts: u32, path: &Path, error: BackendError) -> Step {
    if let Some(Rejection::OffsetConflict { remote_offset }) = error.rejection() {
        // Attempt again: the recorded session is queried and resumed from the remote's offset.
        return Step::Stop(Attempt::Restart(format!(
            "the remote holds {remote_offset} bytes, not what was recorded"
        )));
    }
    match error.class() {
        ErrorClass::Transient if retry.allows_another(attempts) => Step::Retry(error),
        ErrorClass::Transient => Step::Stop(
            UploadError::RetriesExhausted {
                path: path.to_path_buf(),
                attempts,
                source: error,
            }
            .into(),
        ),
        ErrorClass::SessionGone => Step::Stop(Attempt::Gone(error.to_string())),
        ErrorClass::Permanent => Step::Stop(
            UploadError::Remote {
                path: path.to_path_buf(),
                source: error,
            }
            .into(),
        ),
    }
}

/// The recorded session, open on the remote, with its parts reconciled with those the remote
/// `held`.
fn resumed(job: &UploadJob, record: UploadRecord, parts: Vec<PartRecord>, held: &Held) -> Opened {
    let recorded = parts.iter().filter(|p| p.is_acknowledged()).count();
    let parts = reconcile(parts, held);
    let now_held = parts.iter().filter(|p| p.is_acknowledged()).count();
    tracing::info!(
        path = %job.local_path.display(),
        upload_id = %record.upload_id,
        recorded,
        held = now_held,
        "resuming the earlier session"
    );
    Opened::parts(record, parts, true)
}

/// Keeps each recorded acknowledgement only if the remote still holds that very part; the
/// others are sent again. By parts: the same number, etag and size, and CRC32C where both know
/// it. By prefix: a part that ends within it is held (its etag is its end offset, as such
/// remotes issue them), even one whose acknowledgement a crash kept from being recorded.
pub(crate) fn reconcile(local: Vec<PartRecord>, held: &Held) -> Vec<PartRecord> {
    local
        .into_iter()
        .map(|part| match held {
            Held::Parts(remote) if part.etag.is_some() && holds(remote, &part) => part,
            Held::Prefix(offset) if part.end() <= *offset => PartRecord {
                etag: Some(part.etag.clone().unwrap_or_else(|| part.end().to_string())),
                ..part
            },
            _ => PartRecord {
                etag: None,
                crc32c: None,
                ..part
            },
        })
        .collect()
}

/// Whether `remote` lists `part` (acknowledged) as it was recorded. A remote that lists parts
/// without etags (s3s-fs) is matched by number, size and CRC32C where it gives one: the
/// recorded part was acknowledged, and the file is the same (its fingerprint is checked first).
fn holds(remote: &[RemotePart], part: &PartRecord) -> bool {
    let etag = part.etag.as_deref().unwrap_or_default();
    remote.iter().any(|r| {
        r.number == part.number
            && (r.etag.is_empty() || r.etag.trim_matches('"') == etag.trim_matches('"'))
            && r.size == part.size
            && match (r.crc32c, part.crc32c) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    })
}

/// The store key of a file's session: a digest of the remote's identity, the remote path and
/// the local path, so one local file may go to several remotes and names of any length fit.
fn session_key(identity: &str, job: &UploadJob) -> String {
    let mut hasher = Sha256::new();
    for field in [
        identity.as_bytes(),
        job.remote_path.as_bytes(),
        job.local_path.as_os_str().as_encoded_bytes(),
    ] {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field);
    }
    hex::encode(hasher.finalize())
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|join| Err(io::Error::other(join)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(number: u32, etag: Option<&str>, crc: Option<u32>) -> PartRecord {
        PartRecord {
            version: RECORD_VERSION,
            number,
            offset: u64::from(number - 1) * 10,
            size: 10,
            etag: etag.map(str::to_owned),
            crc32c: crc,
        }
    }

    fn remote(number: u32, etag: &str, size: u64, crc: Option<u32>) -> RemotePart {
        RemotePart {
            number,
            size,
            etag: etag.into(),
            crc32c: crc,
        }
    }

    #[test]
    fn reconcile_table() {
        let local = vec![
            part(1, Some("a"), Some(1)), // held as recorded: kept
            part(2, Some("b"), Some(2)), // remote has another etag: re-send
            part(3, Some("c"), Some(3)), // remote lost it: re-send
            part(4, None, None),         // planned, never acknowledged: send
            part(5, Some("e"), Some(5)), // remote CRC differs: re-send
            part(6, Some("f"), None),    // no CRC on one side: etag and size decide
            part(7, Some("g"), Some(7)), // size differs: re-send
            part(8, Some("h"), None),    // listed without an etag: size decides
            part(9, Some("i"), None),    // listed without an etag, another size: re-send
        ];
        let held = vec![
            remote(1, "\"a\"", 10, Some(1)),
            remote(2, "other", 10, Some(2)),
            remote(4, "d", 10, None),
            remote(5, "e", 10, Some(99)),
            remote(6, "f", 10, Some(6)),
            remote(7, "g", 9, Some(7)),
            remote(8, "", 10, None),
            remote(9, "", 3, None),
        ];
        let acknowledged: Vec<u32> = reconcile(local, &Held::Parts(held))
            .into_iter()
            .filter(PartRecord::is_acknowledged)
            .map(|p| p.number)
            .collect();
        assert_eq!(acknowledged, vec![1, 6, 8]);
    }

    #[test]
    fn a_prefix_holds_the_parts_that_end_within_it() {
        let local = vec![
            part(1, Some("10"), None), // 0..10, acknowledged: held
            part(2, None, None),       // 10..20, sent but never recorded: held
            part(3, Some("30"), None), // 20..30, past the remote's offset: sent again
            part(4, None, None),       // 30..40: sent
        ];
        let reconciled = reconcile(local, &Held::Prefix(25));
        let etags: Vec<Option<&str>> = reconciled.iter().map(|p| p.etag.as_deref()).collect();
        assert_eq!(etags, vec![Some("10"), Some("20"), None, None]);
        let all = reconcile(reconciled, &Held::Prefix(40));
        assert!(all.iter().all(PartRecord::is_acknowledged));
    }

    #[test]
    fn session_keys_separate_remotes_and_paths() {
        let job = |local: &str, remote: &str| UploadJob {
            local_path: local.into(),
            remote_path: remote.into(),
            mime_type: None,
            metadata: BTreeMap::new(),
            reach: Reach::AsGiven,
            expected: None,
        };
        let base = session_key("native a ws", &job("/x", "y"));
        assert_eq!(base, session_key("native a ws", &job("/x", "y")));
        assert_ne!(base, session_key("native b ws", &job("/x", "y")));
        assert_ne!(base, session_key("native a ws", &job("/x", "z")));
        assert_ne!(base, session_key("native a ws", &job("/xy", "")));
    }
}
