//! The job queue and the index of what was uploaded.
//!
//! Trees: `jobs` (id → record), `job_paths` (local path → id of its live job, so jobs coalesce
//! by path), `ready` (next attempt time, id → nothing: the queued jobs in due order), `failed`
//! (time of failure, id → nothing: the failed jobs, latest last), `uploaded` (remote, path →
//! what was uploaded: fingerprint and SHA-256), `meta` (the prune log). What happens to a job
//! is decided by `transition`; this module stores the answer.
//!
//! No sled transactions: in sled 0.34 the first one switches every later operation of the
//! process onto one global lock, which deadlocks against the flusher under load. Instead one
//! mutex serializes changes to jobs, each change writes the job record before its indexes, and
//! `recover` rebuilds the indexes from the records at open, so a crash between two writes can
//! leave nothing worse than a stale index, repaired before the queue is used.
//!
//! Durability: `enqueue` and every `finish_*` end with a flush; a job is durable before its
//! path counts as handled, and an outcome is durable before the file is deleted or moved.
//! Active jobs are not flushed: after a crash `open` puts them back in the queue.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::record::{Fingerprint, RECORD_VERSION};
use super::transition::{self, Event, Next};
use super::{QueueError, Store, decode, encode, sled_error};

/// A job's identifier: sled's monotonic id generator, shown to users.
pub type JobId = u64;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Active,
    Failed,
    Done,
}

impl std::str::FromStr for JobState {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "queued" => Ok(JobState::Queued),
            "active" => Ok(JobState::Active),
            "failed" => Ok(JobState::Failed),
            "done" => Ok(JobState::Done),
            _ => Err(format!(
                "unknown state {text:?}: use queued, active, failed or done"
            )),
        }
    }
}

/// One file to upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub version: u32,
    pub id: JobId,
    #[serde(with = "crate::local_path")]
    pub path: PathBuf,
    /// Root of the watch that found it (its settings are looked up by this at upload time).
    #[serde(with = "crate::local_path")]
    pub watch_root: PathBuf,
    pub remote: String,
    pub remote_path: String,
    pub state: JobState,
    /// Upload attempts that failed so far.
    pub attempts: u32,
    /// Unix milliseconds of the next attempt (queued jobs).
    pub next_attempt_ms: u64,
    #[serde(default)]
    pub last_error: Option<String>,
    pub enqueued_ms: u64,
    pub updated_ms: u64,
    /// The file changed while it was being uploaded: upload it again afterwards.
    #[serde(default)]
    pub dirty: bool,
    /// The file as last reported by a watch or scan.
    #[serde(default)]
    pub fingerprint: Option<Fingerprint>,
}

impl JobRecord {
    /// True when the file's path inside its watch is not valid UTF-8: no remote name can carry
    /// it (its `remote_path` is a lossy stand-in, for display).
    pub fn remote_path_unrepresentable(&self) -> bool {
        let relative = self
            .path
            .strip_prefix(&self.watch_root)
            .unwrap_or(&self.path);
        relative.to_str().is_none()
    }
}

/// What was uploaded for a local path to a remote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub version: u32,
    pub fingerprint: Fingerprint,
    pub sha256: String,
    pub remote_path: String,
    pub uploaded_ms: u64,
}

/// A stable file found by a watch, to be queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub path: PathBuf,
    pub watch_root: PathBuf,
    pub remote: String,
    pub remote_path: String,
    pub fingerprint: Fingerprint,
}

/// What `enqueue` did with a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// A new job.
    New(JobId),
    /// Folded into the path's existing job.
    Coalesced(JobId),
    /// Already uploaded with this very fingerprint.
    Unchanged,
}

/// How a claimed job ended, for `write_outcomes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish<'a> {
    /// Uploaded with this fingerprint and SHA-256: the index remembers it and the job is done.
    /// A job whose file changed meanwhile is queued again.
    Done {
        fingerprint: Fingerprint,
        sha256: &'a str,
    },
    /// Failed for now: back in the queue for another attempt at `at` (Unix milliseconds).
    Retry { error: &'a str, at: u64 },
    /// Failed for good (until `retry`), keeping the reason. A job whose file changed
    /// meanwhile gets another attempt instead.
    Failed { error: &'a str },
    /// Vanished or refused: forgotten. A job whose file was reported again while it ran
    /// (`dirty`) is queued again instead, so that the new version is not lost.
    Dropped,
}

/// Jobs per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub queued: u64,
    pub active: u64,
    pub failed: u64,
    pub done: u64,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

fn ready_key(next_attempt_ms: u64, id: JobId) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&next_attempt_ms.to_be_bytes());
    key[8..].copy_from_slice(&id.to_be_bytes());
    key
}

fn path_key(path: &Path) -> Vec<u8> {
    path.as_os_str().as_encoded_bytes().to_vec()
}

fn index_key(remote: &str, path: &Path) -> Vec<u8> {
    let mut key = remote.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(path.as_os_str().as_encoded_bytes());
    key
}

/// Jobs pruned so far, and the batch being pruned: a prune cut short by a crash is finished at
/// open, so `done` stays exact without a multi-key transaction.
#[derive(Debug, Default, Serialize, Deserialize)]
struct PruneLog {
    pruned: u64,
    #[serde(default)]
    pending: Vec<JobId>,
}

const PRUNE_LOG: &[u8] = b"prune_log";
/// What stores kept before the prune log: the number of jobs ever done.
const LEGACY_DONE_TOTAL: &[u8] = b"done_total";
/// Done jobs removed per prune step (the step's ids are written to the prune log first).
const PRUNE_STEP: usize = 1024;

fn id_key(id: JobId) -> [u8; 8] {
    id.to_be_bytes()
}

fn id_of(bytes: &[u8]) -> JobId {
    u64::from_be_bytes(bytes.try_into().unwrap_or_default())
}

impl Counts {
    /// Follows one job from state `from` to state `to` (`None`: no such job).
    fn shift(&mut self, from: Option<JobState>, to: Option<JobState>) {
        if from == to {
            return;
        }
        for (state, delta) in [(from, -1i64), (to, 1)] {
            let counter = match state {
                Some(JobState::Queued) => &mut self.queued,
                Some(JobState::Active) => &mut self.active,
                Some(JobState::Failed) => &mut self.failed,
                // `done` counts jobs ever finished: it only grows.
                Some(JobState::Done) if delta > 0 => &mut self.done,
                _ => continue,
            };
            *counter = counter.saturating_add_signed(delta);
        }
    }
}

/// The job queue: a view of the one sled database; cheap to clone.
#[derive(Clone)]
pub struct JobQueue {
    pub(super) store: Store,
}

/// A job's live facts, as `recover` collects them from the records.
#[derive(Clone, Copy)]
struct Live {
    id: JobId,
    state: JobState,
    next_attempt_ms: u64,
    updated_ms: u64,
}

impl JobQueue {
    /// Brings the queue to a consistent state after any stop, clean or not, and counts the
    /// jobs. Runs once, at open. Blocking: scans every job.
    ///
    /// Only `jobs` (and `uploaded`) are the truth; `ready`, `failed` and `job_paths` are
    /// indexes derived from it, written after it, and repaired here: a crash between two
    /// writes can only leave an index stale, never a job lost.
    pub(super) fn recover(&self) -> Result<Counts, QueueError> {
        let mut log = self.finish_prune()?;
        let (live, done) = self.live_jobs()?;
        if let Some(total) = self
            .store
            .t()?
            .meta
            .remove(LEGACY_DONE_TOTAL)
            .map_err(sled_error("read counters"))?
        {
            log.pruned = id_of(&total).saturating_sub(done);
            self.write_prune_log(&log)?;
        }
        let mut counts = Counts {
            done: log.pruned + done,
            ..Counts::default()
        };
        let (mut due, mut failed) = (BTreeSet::new(), BTreeSet::new());
        for job in live.values() {
            counts.shift(None, Some(job.state));
            match job.state {
                JobState::Queued => due.insert(ready_key(job.next_attempt_ms, job.id)),
                JobState::Failed => failed.insert(ready_key(job.updated_ms, job.id)),
                _ => false,
            };
        }
        let trees = self.store.t()?;
        repair_keys(&trees.ready, due)?;
        repair_keys(&trees.failed, failed)?;
        self.repair_job_paths(live)?;
        Ok(counts)
    }

    /// Finishes a prune that a crash cut short; returns the prune log.
    fn finish_prune(&self) -> Result<PruneLog, QueueError> {
        let mut log = self.prune_log()?;
        if !log.pending.is_empty() {
            for id in std::mem::take(&mut log.pending) {
                self.store
                    .t()?
                    .jobs
                    .remove(id_key(id))
                    .map_err(sled_error("prune job"))?;
            }
            self.write_prune_log(&log)?;
        }
        Ok(log)
    }

    /// The live job of each path, and how many done jobs there are. A crash inside
    /// `finish_done` can leave two live jobs for a path: the newer (it holds the later
    /// content) wins and the older is removed.
    fn live_jobs(&self) -> Result<(HashMap<Vec<u8>, Live>, u64), QueueError> {
        let mut live: HashMap<Vec<u8>, Live> = HashMap::new();
        let mut superseded = Vec::new();
        let mut done = 0;
        for entry in self.store.t()?.jobs.iter() {
            let (_, value) = entry.map_err(sled_error("scan jobs"))?;
            let job: JobRecord = decode("job", &value)?;
            if job.state == JobState::Done {
                done += 1;
                continue;
            }
            let this = Live {
                id: job.id,
                state: job.state,
                next_attempt_ms: job.next_attempt_ms,
                updated_ms: job.updated_ms,
            };
            if let Some(other) = live.insert(path_key(&job.path), this) {
                let (older, newer) = if other.id < this.id {
                    (other, this)
                } else {
                    (this, other)
                };
                superseded.push(older.id);
                live.insert(path_key(&job.path), newer);
            }
        }
        for id in superseded {
            self.store
                .t()?
                .jobs
                .remove(id_key(id))
                .map_err(sled_error("remove superseded job"))?;
        }
        Ok((live, done))
    }

    /// Makes `job_paths` map each live job's path to it, and nothing else.
    fn repair_job_paths(&self, mut live: HashMap<Vec<u8>, Live>) -> Result<(), QueueError> {
        let paths = self.store.t()?.job_paths.clone();
        for entry in paths.iter() {
            let (path, id) = entry.map_err(sled_error("scan job paths"))?;
            match live.get(path.as_ref()) {
                Some(job) if id_of(&id) == job.id => {
                    live.remove(path.as_ref());
                }
                _ => {
                    paths.remove(path).map_err(sled_error("repair job paths"))?;
                }
            }
        }
        for (path, job) in live {
            paths
                .insert(path, &id_key(job.id))
                .map_err(sled_error("repair job paths"))?;
        }
        Ok(())
    }

    fn prune_log(&self) -> Result<PruneLog, QueueError> {
        match self
            .store
            .t()?
            .meta
            .get(PRUNE_LOG)
            .map_err(sled_error("read prune log"))?
        {
            Some(bytes) => decode("prune log", &bytes),
            None => Ok(PruneLog::default()),
        }
    }

    fn write_prune_log(&self, log: &PruneLog) -> Result<(), QueueError> {
        self.store
            .t()?
            .meta
            .insert(PRUNE_LOG, encode(log))
            .map_err(sled_error("write prune log"))?;
        Ok(())
    }

    /// Serializes changes to jobs; the guard is the state counters, kept in step with them.
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.store
            .shared
            .job_lock
            .lock()
            .expect("no code panics while holding the queue lock")
    }

    fn write_job(&self, job: &JobRecord) -> Result<(), QueueError> {
        self.store
            .t()?
            .jobs
            .insert(id_key(job.id), encode(job))
            .map_err(sled_error("write job"))?;
        Ok(())
    }

    /// Makes everything written so far durable. Blocking.
    pub fn flush(&self) -> Result<(), QueueError> {
        self.store.flush_blocking()
    }

    /// Queues stable files, coalescing by path and skipping files already uploaded unchanged;
    /// durable when it returns. `now` is Unix milliseconds. Blocking.
    pub fn enqueue(&self, candidates: &[Candidate], now: u64) -> Result<Vec<Enqueued>, QueueError> {
        self.enqueue_telling(candidates, now, |_, _| {})
    }

    /// `enqueue`, calling `queued` with each new job before any claim can see it (under the
    /// queue's lock): whatever tells of a job being queued comes before what tells of its start.
    pub fn enqueue_telling(
        &self,
        candidates: &[Candidate],
        now: u64,
        mut queued: impl FnMut(JobId, &Candidate),
    ) -> Result<Vec<Enqueued>, QueueError> {
        let mut outcomes = Vec::with_capacity(candidates.len());
        for candidate in candidates {
            outcomes.push(self.enqueue_one(candidate, now, &mut queued)?);
        }
        self.flush()?;
        Ok(outcomes)
    }

    fn enqueue_one(
        &self,
        candidate: &Candidate,
        now: u64,
        queued: &mut impl FnMut(JobId, &Candidate),
    ) -> Result<Enqueued, QueueError> {
        // Under the lock, so that an upload finishing meanwhile is seen either way.
        let mut counts = self.lock();
        let indexed = self.uploaded_entry(&candidate.remote, &candidate.path)?;
        if indexed.is_some_and(|entry| {
            entry.fingerprint == candidate.fingerprint && entry.remote_path == candidate.remote_path
        }) {
            return Ok(Enqueued::Unchanged);
        }
        let existing = match self
            .store
            .t()?
            .job_paths
            .get(path_key(&candidate.path))
            .map_err(sled_error("read job paths"))?
        {
            Some(id) => self.job(id_of(&id))?,
            None => None,
        };
        if let Some(job) = existing.filter(|job| job.state != JobState::Done) {
            let report = Event::Reported {
                remote_path: &candidate.remote_path,
                fingerprint: candidate.fingerprint,
            };
            if let Next::Write(next) = transition::apply(&job, report, now) {
                self.rewrite(&mut counts, &job, &next)?;
            }
            return Ok(Enqueued::Coalesced(job.id));
        }
        let job = transition::new_job(candidate, self.new_id()?, now);
        self.insert_queued(&mut counts, &job)?;
        queued(job.id, candidate);
        Ok(Enqueued::New(job.id))
    }

    fn new_id(&self) -> Result<JobId, QueueError> {
        self.store
            .t()?
            .db
            .generate_id()
            .map_err(sled_error("generate id"))
    }

    /// Writes a changed job, then moves its index keys and its count from what it was
    /// (`before`). The caller holds the lock and passes its counters.
    fn rewrite(
        &self,
        counts: &mut Counts,
        before: &JobRecord,
        job: &JobRecord,
    ) -> Result<(), QueueError> {
        self.write_job(job)?;
        self.set_indexed(before, false)?;
        self.set_indexed(job, true)?;
        counts.shift(Some(before.state), Some(job.state));
        Ok(())
    }

    /// Adds or removes a job's key in the index of its state: `ready` for a queued job (by
    /// due time), `failed` for a failed one (by the time it failed).
    fn set_indexed(&self, job: &JobRecord, present: bool) -> Result<(), QueueError> {
        let trees = self.store.t()?;
        let (tree, key) = match job.state {
            JobState::Queued => (&trees.ready, ready_key(job.next_attempt_ms, job.id)),
            JobState::Failed => (&trees.failed, ready_key(job.updated_ms, job.id)),
            _ => return Ok(()),
        };
        match present {
            true => tree.insert(key, &[]).map(drop),
            false => tree.remove(key).map(drop),
        }
        .map_err(sled_error("update job index"))
    }

    /// Writes a new queued job, then its indexes. The caller holds the lock.
    fn insert_queued(&self, counts: &mut Counts, job: &JobRecord) -> Result<(), QueueError> {
        self.write_job(job)?;
        self.store
            .t()?
            .job_paths
            .insert(path_key(&job.path), &id_key(job.id))
            .map_err(sled_error("write job paths"))?;
        self.set_indexed(job, true)?;
        counts.shift(None, Some(JobState::Queued));
        Ok(())
    }

    /// Marks up to `limit` jobs due at `now` active and returns them, oldest due first.
    /// Blocking.
    pub fn claim(&self, now: u64, limit: usize) -> Result<Vec<JobRecord>, QueueError> {
        let mut counts = self.lock();
        let mut claimed = Vec::new();
        let ready = self.store.t()?.ready.clone();
        for key in ready.range(..ready_key(now, u64::MAX)).keys() {
            if claimed.len() >= limit {
                break;
            }
            let key = key.map_err(sled_error("scan ready jobs"))?;
            // Removed first: a key that is stale (left by a crash before `recover` ran, or by
            // a bug) is dropped rather than trusted; the current one is the job's own.
            ready
                .remove(&key)
                .map_err(sled_error("update ready jobs"))?;
            let id = id_of(&key[8..16]);
            let Some(job) = self.job(id)? else { continue };
            if key.as_ref() != ready_key(job.next_attempt_ms, id) {
                continue;
            }
            if let Next::Write(next) = transition::apply(&job, Event::Claimed, now) {
                self.write_job(&next)?;
                counts.shift(Some(job.state), Some(next.state));
                claimed.push(*next);
            }
        }
        Ok(claimed)
    }

    /// Time of the earliest queued job, if any (to sleep until then). Blocking, cheap.
    pub fn next_due_ms(&self) -> Result<Option<u64>, QueueError> {
        Ok(self
            .store
            .t()?
            .ready
            .first()
            .map_err(sled_error("scan ready jobs"))?
            .map(|(key, _)| {
                u64::from_be_bytes(key[..8].try_into().expect("ready keys are 16 bytes"))
            }))
    }

    /// Writes how each job ended, without flushing: durable after the next `flush`, or lost
    /// in a crash before it (the jobs are then active, and `open` queues them again). The
    /// daemon's group commit: its outcomes share flushes. Blocking.
    pub fn write_outcomes(
        &self,
        finished: &[(JobId, Finish<'_>)],
        now: u64,
    ) -> Result<(), QueueError> {
        for (id, finish) in finished {
            match *finish {
                Finish::Done {
                    fingerprint,
                    sha256,
                } => self.write_done(*id, fingerprint, sha256, now)?,
                Finish::Retry { error, at } => {
                    self.write_transition(*id, Event::RetryLater { error, at }, now)?;
                }
                Finish::Failed { error } => {
                    self.write_transition(*id, Event::Failed { error }, now)?;
                }
                Finish::Dropped => self.write_dropped(*id, now)?,
            }
        }
        Ok(())
    }

    /// The writes of a successful upload, not flushed.
    ///
    /// Write order, for a crash between any two writes: the index entry first (a job still
    /// active is uploaded again, harmlessly), then the follow-up job (if two live jobs share a
    /// path, `recover` keeps the newer), then the job's `done`.
    fn write_done(
        &self,
        id: JobId,
        fingerprint: Fingerprint,
        sha256: &str,
        now: u64,
    ) -> Result<(), QueueError> {
        let mut counts = self.lock();
        // Only an upload in progress can finish: never count a job twice.
        let Some(job) = self.job(id)? else {
            return Ok(());
        };
        let Next::Write(done) = transition::apply(&job, Event::Uploaded { fingerprint }, now)
        else {
            return Ok(());
        };
        let entry = IndexEntry {
            version: RECORD_VERSION,
            fingerprint,
            sha256: sha256.to_string(),
            remote_path: job.remote_path.clone(),
            uploaded_ms: now,
        };
        self.store
            .t()?
            .uploaded
            .insert(index_key(&job.remote, &job.path), encode(&entry))
            .map_err(sled_error("write upload index"))?;
        let again = transition::uploads_again(&job, fingerprint);
        if again {
            let follow_up = transition::follow_up(&job, self.new_id()?, now);
            self.insert_queued(&mut counts, &follow_up)?;
        }
        self.write_job(&done)?;
        if !again {
            self.forget_path(&job)?;
        }
        counts.shift(Some(job.state), Some(done.state));
        Ok(())
    }

    /// The writes of `Finish::Dropped`, not flushed.
    fn write_dropped(&self, id: JobId, now: u64) -> Result<(), QueueError> {
        let mut counts = self.lock();
        let Some(job) = self.job(id)? else {
            return Ok(());
        };
        match transition::apply(&job, Event::Vanished, now) {
            Next::Same => Ok(()),
            Next::Write(next) => self.rewrite(&mut counts, &job, &next),
            Next::Forget => self.forget(&mut counts, &job),
        }
    }

    /// Removes a job and its index keys. The caller holds the lock.
    fn forget(&self, counts: &mut Counts, job: &JobRecord) -> Result<(), QueueError> {
        self.store
            .t()?
            .jobs
            .remove(id_key(job.id))
            .map_err(sled_error("remove job"))?;
        self.set_indexed(job, false)?;
        self.forget_path(job)?;
        counts.shift(Some(job.state), None);
        Ok(())
    }

    /// Removes the path's entry in `job_paths` if it still names this job.
    fn forget_path(&self, job: &JobRecord) -> Result<(), QueueError> {
        let paths = self.store.t()?.job_paths.clone();
        let key = path_key(&job.path);
        let current = paths.get(&key).map_err(sled_error("read job paths"))?;
        if current.as_deref() == Some(&id_key(job.id)[..]) {
            paths.remove(key).map_err(sled_error("write job paths"))?;
        }
        Ok(())
    }

    /// Applies `event` to a job and keeps its indexes in step; durable when it returns.
    /// Returns whether the job changed. Blocking.
    fn transition(&self, id: JobId, event: Event<'_>, now: u64) -> Result<bool, QueueError> {
        let changed = self.write_transition(id, event, now)?;
        self.flush()?;
        Ok(changed)
    }

    /// The writes of `transition`, not flushed.
    fn write_transition(&self, id: JobId, event: Event<'_>, now: u64) -> Result<bool, QueueError> {
        let mut counts = self.lock();
        let Some(job) = self.job(id)? else {
            return Ok(false);
        };
        let Next::Write(next) = transition::apply(&job, event, now) else {
            return Ok(false);
        };
        self.rewrite(&mut counts, &job, &next)?;
        Ok(true)
    }

    /// Queues failed jobs again now: those listed, or all of them. Returns how many. Blocking.
    pub fn retry_failed(&self, ids: Option<&[JobId]>, now: u64) -> Result<usize, QueueError> {
        let targets: Vec<JobId> = match ids {
            Some(ids) => ids.to_vec(),
            None => self.failed_ids(usize::MAX)?,
        };
        let mut retried = 0;
        for id in targets {
            retried += usize::from(self.transition(id, Event::RetryAsked, now)?);
        }
        Ok(retried)
    }

    pub fn job(&self, id: JobId) -> Result<Option<JobRecord>, QueueError> {
        match self
            .store
            .t()?
            .jobs
            .get(id_key(id))
            .map_err(sled_error("read job"))?
        {
            Some(bytes) => decode("job", &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Jobs in `state` (or all), in id order, at most `limit`. Blocking: a scan of every job,
    /// but for failed jobs, which are read through their index.
    pub fn list(
        &self,
        state: Option<JobState>,
        limit: usize,
    ) -> Result<Vec<JobRecord>, QueueError> {
        if state == Some(JobState::Failed) {
            let mut ids = self.failed_ids(usize::MAX)?;
            ids.sort_unstable();
            ids.truncate(limit);
            return self.jobs_by_id(&ids);
        }
        let mut found = Vec::new();
        for entry in self.store.t()?.jobs.iter() {
            let (_, value) = entry.map_err(sled_error("scan jobs"))?;
            let job: JobRecord = decode("job", &value)?;
            if state.is_none_or(|wanted| job.state == wanted) {
                found.push(job);
                if found.len() >= limit {
                    break;
                }
            }
        }
        Ok(found)
    }

    /// The `limit` jobs that failed last, the latest first. Blocking; reads `limit` records
    /// however many jobs there are (for `ferry status`, every second).
    pub fn recent_failures(&self, limit: usize) -> Result<Vec<JobRecord>, QueueError> {
        let ids = self.failed_ids(limit)?;
        self.jobs_by_id(&ids)
    }

    /// Ids of failed jobs from the `failed` index, the latest failure first, at most `limit`.
    fn failed_ids(&self, limit: usize) -> Result<Vec<JobId>, QueueError> {
        let mut ids = Vec::new();
        for key in self.store.t()?.failed.iter().keys().rev().take(limit) {
            ids.push(id_of(&key.map_err(sled_error("scan failed jobs"))?[8..16]));
        }
        Ok(ids)
    }

    /// The jobs with these ids that still exist and failed, in the given order.
    fn jobs_by_id(&self, ids: &[JobId]) -> Result<Vec<JobRecord>, QueueError> {
        let mut jobs = Vec::with_capacity(ids.len());
        for &id in ids {
            if let Some(job) = self.job(id)?.filter(|job| job.state == JobState::Failed) {
                jobs.push(job);
            }
        }
        Ok(jobs)
    }

    /// Jobs per state; `done` counts every job ever finished, pruned or not. Cheap: kept in
    /// memory, in step with every transition.
    pub fn counts(&self) -> Result<Counts, QueueError> {
        Ok(*self.lock())
    }

    /// After a crash or restart: jobs left active are queued again, due now. Blocking.
    pub fn requeue_active(&self, now: u64) -> Result<usize, QueueError> {
        self.requeue_active_except(&[], now)
    }

    /// Jobs left active, but for those in `running`, are queued again, due now: after the
    /// store recovers from a failure that kept their outcome from being recorded. Blocking.
    pub fn requeue_active_except(&self, running: &[JobId], now: u64) -> Result<usize, QueueError> {
        let mut requeued = 0;
        for job in self.list(Some(JobState::Active), usize::MAX)? {
            if !running.contains(&job.id) {
                requeued += usize::from(self.transition(job.id, Event::Interrupted, now)?);
            }
        }
        Ok(requeued)
    }

    /// Removes done jobs last updated before `before_ms` (their count stays). Blocking.
    pub fn prune_done(&self, before_ms: u64) -> Result<usize, QueueError> {
        let due: Vec<JobId> = self
            .list(Some(JobState::Done), usize::MAX)?
            .iter()
            .filter(|job| job.updated_ms < before_ms)
            .map(|job| job.id)
            .collect();
        // A done job never changes again, so the list stays true while it is pruned.
        for step in due.chunks(PRUNE_STEP) {
            let _counts = self.lock();
            let mut log = self.prune_log()?;
            log.pruned += step.len() as u64;
            log.pending = step.to_vec();
            self.write_prune_log(&log)?;
            for &id in step {
                self.store
                    .t()?
                    .jobs
                    .remove(id_key(id))
                    .map_err(sled_error("prune job"))?;
            }
            log.pending.clear();
            self.write_prune_log(&log)?;
        }
        self.flush()?;
        Ok(due.len())
    }

    /// What was last uploaded from `path` to `remote`. Blocking.
    pub fn uploaded_entry(
        &self,
        remote: &str,
        path: &Path,
    ) -> Result<Option<IndexEntry>, QueueError> {
        match self
            .store
            .t()?
            .uploaded
            .get(index_key(remote, path))
            .map_err(sled_error("read upload index"))?
        {
            Some(bytes) => decode("upload index", &bytes).map(Some),
            None => Ok(None),
        }
    }
}

/// Makes an index tree hold exactly the `wanted` keys (values are empty).
fn repair_keys(tree: &sled::Tree, mut wanted: BTreeSet<[u8; 16]>) -> Result<(), QueueError> {
    for key in tree.iter().keys() {
        let key = key.map_err(sled_error("scan job index"))?;
        let current: Option<[u8; 16]> = key.as_ref().try_into().ok();
        if !current.is_some_and(|current| wanted.remove(&current)) {
            tree.remove(key).map_err(sled_error("repair job index"))?;
        }
    }
    for key in wanted {
        tree.insert(key, &[])
            .map_err(sled_error("repair job index"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each outcome recorded as the daemon records them (written, then flushed), one at a time.
    impl JobQueue {
        fn finish(&self, id: JobId, finish: Finish<'_>, now: u64) -> Result<(), QueueError> {
            self.write_outcomes(&[(id, finish)], now)?;
            self.flush()
        }

        fn finish_done(
            &self,
            id: JobId,
            fingerprint: Fingerprint,
            sha256: &str,
            now: u64,
        ) -> Result<(), QueueError> {
            let done = Finish::Done {
                fingerprint,
                sha256,
            };
            self.finish(id, done, now)
        }

        fn finish_retry(
            &self,
            id: JobId,
            error: &str,
            at: u64,
            now: u64,
        ) -> Result<(), QueueError> {
            self.finish(id, Finish::Retry { error, at }, now)
        }

        fn finish_failed(&self, id: JobId, error: &str, now: u64) -> Result<(), QueueError> {
            self.finish(id, Finish::Failed { error }, now)
        }

        fn drop_job(&self, id: JobId, now: u64) -> Result<(), QueueError> {
            self.finish(id, Finish::Dropped, now)
        }
    }
    use crate::queue::PartRecord;

    fn candidate(path: &str, size: u64) -> Candidate {
        Candidate {
            path: PathBuf::from(path),
            watch_root: PathBuf::from("/w"),
            remote: "main".into(),
            remote_path: path.trim_start_matches("/w/").into(),
            fingerprint: Fingerprint {
                size,
                mtime_ns: 1,
                inode: 7,
                device: 1,
            },
        }
    }

    fn store() -> (tempfile::TempDir, JobQueue) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap().jobs();
        (dir, store)
    }

    #[test]
    fn reopen_keeps_what_was_flushed_and_counts_it_again() {
        let (_dir, store) = store();
        store
            .enqueue(&[candidate("/w/a", 1), candidate("/w/b", 2)], now_ms())
            .unwrap();
        let other_handle = store.clone();
        store.store.reopen().unwrap();
        assert_eq!(
            other_handle.counts().unwrap().queued,
            2,
            "every clone sees the new database"
        );
        store.enqueue(&[candidate("/w/c", 3)], now_ms()).unwrap();
        store.store.probe_write().unwrap();
        store.store.reopen().unwrap();
        assert_eq!(store.counts().unwrap().queued, 3);
    }

    #[test]
    fn enqueue_tells_of_new_jobs_only_before_they_can_be_claimed() {
        let (_dir, store) = store();
        let mut told = Vec::new();
        let batch = [
            candidate("/w/a", 1),
            candidate("/w/a", 2),
            candidate("/w/b", 1),
        ];
        let claimer = store.clone();
        let outcomes = store
            .enqueue_telling(&batch, now_ms(), |id, candidate| {
                // The queue's lock is held: a claim now would wait, so it sees nothing yet.
                assert!(
                    claimer.store.shared.job_lock.try_lock().is_err(),
                    "told under the lock"
                );
                told.push((id, candidate.path.clone()));
            })
            .unwrap();
        let new: Vec<_> = outcomes
            .iter()
            .filter_map(|o| match o {
                Enqueued::New(id) => Some(*id),
                _ => None,
            })
            .collect();
        assert_eq!(told.iter().map(|(id, _)| *id).collect::<Vec<_>>(), new);
        assert_eq!(told[0].1, Path::new("/w/a"));
        assert_eq!(told[1].1, Path::new("/w/b"));
    }

    #[test]
    fn jobs_coalesce_by_path_and_unchanged_files_are_skipped() {
        let (_dir, store) = store();
        let first = store
            .enqueue(&[candidate("/w/a", 1), candidate("/w/a", 2)], now_ms())
            .unwrap();
        let Enqueued::New(id) = first[0] else {
            panic!("{first:?}")
        };
        assert_eq!(first[1], Enqueued::Coalesced(id));
        let claimed = store.claim(now_ms(), 10).unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(store.counts().unwrap().active, 1);
        store
            .finish_done(id, candidate("/w/a", 2).fingerprint, "ab", now_ms())
            .unwrap();
        assert_eq!(
            store.enqueue(&[candidate("/w/a", 2)], now_ms()).unwrap(),
            vec![Enqueued::Unchanged]
        );
        assert!(matches!(
            store.enqueue(&[candidate("/w/a", 3)], now_ms()).unwrap()[0],
            Enqueued::New(_)
        ));
        let counts = store.counts().unwrap();
        assert_eq!((counts.queued, counts.done), (1, 1));
    }

    #[test]
    fn a_change_during_upload_queues_the_file_again() {
        let (_dir, store) = store();
        let Enqueued::New(id) = store.enqueue(&[candidate("/w/b", 1)], now_ms()).unwrap()[0] else {
            panic!()
        };
        store.claim(now_ms(), 1).unwrap();
        assert_eq!(
            store.enqueue(&[candidate("/w/b", 5)], now_ms()).unwrap(),
            vec![Enqueued::Coalesced(id)]
        );
        store
            .finish_done(id, candidate("/w/b", 1).fingerprint, "cd", now_ms())
            .unwrap();
        let again = store.claim(now_ms(), 10).unwrap();
        assert_eq!(again.len(), 1);
        assert_ne!(again[0].id, id);
        assert_eq!(again[0].path, PathBuf::from("/w/b"));
    }

    #[test]
    fn a_scan_re_reporting_the_file_being_uploaded_changes_nothing() {
        let (_dir, store) = store();
        let Enqueued::New(id) = store.enqueue(&[candidate("/w/s", 1)], now_ms()).unwrap()[0] else {
            panic!()
        };
        store.claim(now_ms(), 1).unwrap();
        store.enqueue(&[candidate("/w/s", 1)], now_ms()).unwrap();
        store
            .finish_done(id, candidate("/w/s", 1).fingerprint, "ab", now_ms())
            .unwrap();
        assert!(
            store.claim(now_ms(), 10).unwrap().is_empty(),
            "not queued again"
        );
        assert_eq!(store.counts().unwrap().done, 1);
    }

    #[test]
    fn the_state_counters_always_match_a_recount() {
        let (_dir, store) = store();
        let agree = |store: &JobQueue, step: &str| {
            let recount = store.recover().unwrap();
            assert_eq!(store.counts().unwrap(), recount, "after {step}");
        };
        store
            .enqueue(
                &[
                    candidate("/w/1", 1),
                    candidate("/w/2", 1),
                    candidate("/w/3", 1),
                    candidate("/w/4", 1),
                ],
                now_ms(),
            )
            .unwrap();
        agree(&store, "enqueue");
        let claimed = store.claim(now_ms(), 3).unwrap();
        agree(&store, "claim");
        store
            .enqueue(&[candidate("/w/1", 2), candidate("/w/4", 2)], now_ms())
            .unwrap();
        agree(&store, "coalescing into active and queued jobs");
        store
            .finish_done(
                claimed[0].id,
                candidate("/w/1", 1).fingerprint,
                "a",
                now_ms(),
            )
            .unwrap();
        agree(&store, "done with a changed file");
        store.finish_failed(claimed[1].id, "403", now_ms()).unwrap();
        store
            .finish_retry(claimed[2].id, "503", now_ms() + 60_000, now_ms())
            .unwrap();
        agree(&store, "failed and retry");
        store.enqueue(&[candidate("/w/2", 9)], now_ms()).unwrap();
        agree(&store, "a changed failed file");
        store.retry_failed(None, now_ms()).unwrap();
        let more = store.claim(now_ms(), 10).unwrap();
        store.drop_job(more[0].id, now_ms()).unwrap();
        agree(&store, "drop");
        store.requeue_active(now_ms()).unwrap();
        agree(&store, "requeue");
    }

    #[test]
    fn a_stale_ready_key_never_claims_a_job_twice() {
        let (_dir, store) = store();
        let Enqueued::New(id) = store.enqueue(&[candidate("/w/r", 1)], now_ms()).unwrap()[0] else {
            panic!()
        };
        let job = store.claim(now_ms(), 1).unwrap().remove(0);
        // What a claim racing a coalescing enqueue can leave behind: a second key for the job.
        store
            .store
            .t()
            .unwrap()
            .ready
            .insert(ready_key(job.next_attempt_ms + 1, id), &[])
            .unwrap();
        assert!(
            store.claim(u64::MAX, 10).unwrap().is_empty(),
            "an active job is not claimed again"
        );
        store
            .finish_done(id, candidate("/w/r", 1).fingerprint, "ab", now_ms())
            .unwrap();
        store
            .store
            .t()
            .unwrap()
            .ready
            .insert(ready_key(job.next_attempt_ms + 2, id), &[])
            .unwrap();
        assert!(
            store.claim(u64::MAX, 10).unwrap().is_empty(),
            "a done job is not claimed again"
        );
        store
            .finish_done(id, candidate("/w/r", 1).fingerprint, "ab", now_ms())
            .unwrap();
        assert_eq!(
            store.counts().unwrap().done,
            1,
            "finishing twice counts once"
        );
        assert_eq!(
            store.store.t().unwrap().ready.len(),
            0,
            "stale keys are dropped"
        );
    }

    #[test]
    fn retries_wait_for_their_time_and_failures_wait_for_the_user() {
        let (_dir, store) = store();
        let Enqueued::New(id) = store.enqueue(&[candidate("/w/c", 1)], now_ms()).unwrap()[0] else {
            panic!()
        };
        store.claim(now_ms(), 1).unwrap();
        let later = now_ms() + 60_000;
        store.finish_retry(id, "503 busy", later, now_ms()).unwrap();
        assert!(store.claim(now_ms(), 10).unwrap().is_empty(), "not due yet");
        assert_eq!(store.next_due_ms().unwrap(), Some(later));
        let job = &store.claim(later, 10).unwrap()[0];
        assert_eq!(
            (job.attempts, job.last_error.as_deref()),
            (1, Some("503 busy"))
        );
        store.finish_failed(id, "403 forbidden", now_ms()).unwrap();
        assert!(store.claim(u64::MAX, 10).unwrap().is_empty());
        assert_eq!(store.counts().unwrap().failed, 1);
        assert_eq!(store.retry_failed(None, now_ms()).unwrap(), 1);
        assert_eq!(store.claim(now_ms(), 10).unwrap()[0].id, id);
    }

    #[test]
    fn active_jobs_return_to_the_queue_after_a_restart_and_done_counts_outlive_pruning() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap().jobs();
            store
                .enqueue(&[candidate("/w/d", 1), candidate("/w/e", 1)], now_ms())
                .unwrap();
            let claimed = store.claim(now_ms(), 10).unwrap();
            store
                .finish_done(
                    claimed[0].id,
                    candidate("/w/d", 1).fingerprint,
                    "ef",
                    now_ms(),
                )
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap().jobs();
        assert_eq!(store.requeue_active(now_ms()).unwrap(), 1);
        let counts = store.counts().unwrap();
        assert_eq!((counts.queued, counts.active, counts.done), (1, 0, 1));
        assert_eq!(store.prune_done(now_ms() + 1).unwrap(), 1);
        assert_eq!(
            store.counts().unwrap().done,
            1,
            "the count outlives the record"
        );
        assert!(store.list(Some(JobState::Done), 10).unwrap().is_empty());
    }

    /// What a kill -9 between two writes can leave, and a store of the transaction era: `open`
    /// repairs every index from the job records and keeps the counts exact.
    #[test]
    fn open_repairs_what_a_crash_between_writes_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let (queued, done_again) = {
            let store = Store::open(dir.path()).unwrap().jobs();
            let ids: Vec<JobId> = store
                .enqueue(
                    &[
                        candidate("/w/q", 1),
                        candidate("/w/d", 1),
                        candidate("/w/p", 1),
                    ],
                    now_ms(),
                )
                .unwrap()
                .iter()
                .map(|outcome| match outcome {
                    Enqueued::New(id) => *id,
                    other => panic!("{other:?}"),
                })
                .collect();
            let claimed = store.claim(now_ms(), 3).unwrap();
            assert_eq!(claimed.len(), 3);
            store
                .finish_done(ids[2], candidate("/w/p", 1).fingerprint, "p", now_ms())
                .unwrap();
            // /w/q: back in the queue, but its ready key and path entry never written.
            let mut job = store.job(ids[0]).unwrap().unwrap();
            job.state = JobState::Queued;
            store.write_job(&job).unwrap();
            store
                .store
                .t()
                .unwrap()
                .job_paths
                .remove(path_key(&job.path))
                .unwrap();
            // /w/d: the follow-up of a changed file written, the finished job still active.
            let mut follow_up = store.job(ids[1]).unwrap().unwrap();
            follow_up.id = 1_000;
            follow_up.state = JobState::Queued;
            store.write_job(&follow_up).unwrap();
            // Stale keys: a ready key of no job, a path of no job, parts of no session.
            store
                .store
                .t()
                .unwrap()
                .ready
                .insert(ready_key(5, 77), &[])
                .unwrap();
            store
                .store
                .t()
                .unwrap()
                .job_paths
                .insert(b"/w/gone", &id_key(78))
                .unwrap();
            store
                .store
                .sessions()
                .plan_part(
                    "no-such-session",
                    &PartRecord {
                        version: RECORD_VERSION,
                        number: 1,
                        offset: 0,
                        size: 1,
                        etag: None,
                        crc32c: None,
                    },
                )
                .unwrap();
            // A prune cut short after its log was written: one job removed, one not yet.
            store
                .write_prune_log(&PruneLog {
                    pruned: 2,
                    pending: vec![ids[2], 79],
                })
                .unwrap();
            // A store written before the prune log: its count of jobs ever done.
            store
                .store
                .t()
                .unwrap()
                .meta
                .insert(LEGACY_DONE_TOTAL, &3u64.to_be_bytes())
                .unwrap();
            store.store.flush_blocking().unwrap();
            (ids[0], follow_up.id)
        };
        let store = Store::open(dir.path()).unwrap().jobs();
        // Legacy total 3 less the 1 done job present then (the pending prune was finished
        // first, leaving none): 3 pruned, and nothing done is left in the tree.
        assert_eq!(
            store.counts().unwrap(),
            Counts {
                queued: 2,
                active: 0,
                failed: 0,
                done: 3
            }
        );
        assert!(store.list(Some(JobState::Done), 10).unwrap().is_empty());
        let mut claimed: Vec<JobId> = store
            .claim(u64::MAX, 10)
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect();
        claimed.sort();
        assert_eq!(
            claimed,
            vec![queued, done_again],
            "each path's newest job, once"
        );
        assert_eq!(store.store.t().unwrap().ready.len(), 0);
        let paths: Vec<_> = store
            .store
            .t()
            .unwrap()
            .job_paths
            .iter()
            .keys()
            .map(Result::unwrap)
            .collect();
        assert_eq!(paths.len(), 2, "{paths:?}");
        assert!(
            store
                .store
                .t()
                .unwrap()
                .job_paths
                .get(b"/w/gone")
                .unwrap()
                .is_none()
        );
        assert_eq!(
            store.store.t().unwrap().parts.len(),
            0,
            "orphan parts removed"
        );
        assert_eq!(store.recover().unwrap(), store.counts().unwrap());
    }

    fn ids_of(jobs: Vec<JobRecord>) -> Vec<JobId> {
        jobs.iter().map(|job| job.id).collect()
    }

    /// `ferry status` reads the latest failures through their index, never every job; a store
    /// without the index (older, or damaged) gets it rebuilt at open.
    #[test]
    fn failures_are_listed_latest_first_and_their_index_is_rebuilt_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<JobId> = {
            let queue = Store::open(dir.path()).unwrap().jobs();
            let files = [
                candidate("/w/f1", 1),
                candidate("/w/f2", 1),
                candidate("/w/f3", 1),
            ];
            queue.enqueue(&files, 1).unwrap();
            let ids = ids_of(queue.claim(1, 3).unwrap());
            for (index, at) in [(2, 10), (0, 20), (1, 30)] {
                queue.finish_failed(ids[index], "403", at).unwrap();
            }
            let latest: Vec<JobId> = ids_of(queue.recent_failures(2).unwrap());
            assert_eq!(
                latest,
                vec![ids[1], ids[0]],
                "latest first, at most the limit"
            );
            assert_eq!(queue.retry_failed(Some(&[ids[1]]), 40).unwrap(), 1);
            queue.store.t().unwrap().failed.clear().unwrap();
            queue.store.flush_blocking().unwrap();
            ids
        };
        let queue = Store::open(dir.path()).unwrap().jobs();
        let latest: Vec<JobId> = ids_of(queue.recent_failures(10).unwrap());
        assert_eq!(latest, vec![ids[0], ids[2]], "rebuilt from the records");
        let listed: Vec<JobId> = ids_of(queue.list(Some(JobState::Failed), 10).unwrap());
        assert_eq!(
            listed,
            vec![ids[0], ids[2]],
            "`jobs --state failed` lists in id order"
        );
    }

    #[test]
    fn version_1_job_records_still_load() {
        let job: JobRecord =
            serde_json::from_str(include_str!("../../tests/fixtures/job-record-v1.json")).unwrap();
        assert_eq!((job.id, job.state, job.attempts), (42, JobState::Failed, 3));
        let entry: IndexEntry =
            serde_json::from_str(include_str!("../../tests/fixtures/index-entry-v1.json")).unwrap();
        assert_eq!(entry.fingerprint.size, 4096);
    }
}
