//! The job queue and the index of what was uploaded.
//!
//! Trees: `jobs` (id → record), `job_paths` (local path → id of its live job, so jobs coalesce
//! by path), `ready` (next attempt time, id → nothing: the queued jobs in due order), `uploaded`
//! (remote, path → what was uploaded: fingerprint and SHA-256), `meta` (counters). Transitions
//! touch several trees in one sled transaction, so the indexes never disagree with the jobs.
//!
//! Durability: `enqueue` and every `finish_*` end with a flush; a job is durable before its
//! path counts as handled, and an outcome is durable before the file is deleted or moved.
//! Active jobs are not flushed: after a crash `open` puts them back in the queue.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::record::{Fingerprint, RECORD_VERSION};
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
    pub path: PathBuf,
    /// Root of the watch that found it (its settings are looked up by this at upload time).
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

/// Jobs per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub queued: u64,
    pub active: u64,
    pub failed: u64,
    pub done: u64,
}

const DONE_TOTAL: &[u8] = b"done_total";

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

type TxResult<T> = Result<T, ConflictableTransactionError<QueueError>>;

fn tx_get_job(jobs: &TransactionalTree, id: JobId) -> TxResult<Option<JobRecord>> {
    match jobs.get(id.to_be_bytes())? {
        Some(bytes) => decode("job", &bytes)
            .map(Some)
            .map_err(ConflictableTransactionError::Abort),
        None => Ok(None),
    }
}

fn tx_error(error: TransactionError<QueueError>) -> QueueError {
    match error {
        TransactionError::Abort(error) => error,
        TransactionError::Storage(source) => QueueError::Sled {
            operation: "transaction",
            source,
        },
    }
}

/// Counts jobs per state by scanning them (once, when the store opens).
pub(super) fn count_states(jobs: &sled::Tree, meta: &sled::Tree) -> Result<Counts, QueueError> {
    let mut counts = Counts::default();
    for entry in jobs.iter() {
        let (_, value) = entry.map_err(sled_error("scan jobs"))?;
        match decode::<JobRecord>("job", &value)?.state {
            JobState::Queued => counts.queued += 1,
            JobState::Active => counts.active += 1,
            JobState::Failed => counts.failed += 1,
            JobState::Done => {}
        }
    }
    counts.done = meta
        .get(DONE_TOTAL)
        .map_err(sled_error("read counters"))?
        .map_or(0, |v| {
            u64::from_be_bytes(v.as_ref().try_into().unwrap_or_default())
        });
    Ok(counts)
}

impl Store {
    /// Queues stable files, coalescing by path and skipping files already uploaded unchanged;
    /// durable when it returns. Blocking.
    pub fn enqueue(&self, candidates: &[Candidate]) -> Result<Vec<Enqueued>, QueueError> {
        let now = now_ms();
        let mut outcomes = Vec::with_capacity(candidates.len());
        for candidate in candidates {
            let indexed = self.uploaded_entry(&candidate.remote, &candidate.path)?;
            if indexed.is_some_and(|entry| {
                entry.fingerprint == candidate.fingerprint
                    && entry.remote_path == candidate.remote_path
            }) {
                outcomes.push(Enqueued::Unchanged);
                continue;
            }
            let fresh_id = self.db.generate_id().map_err(sled_error("generate id"))?;
            let outcome = (&self.jobs, &self.job_paths, &self.ready)
                .transaction(|(jobs, paths, ready)| {
                    let existing = match paths.get(path_key(&candidate.path))? {
                        Some(id) => tx_get_job(
                            jobs,
                            u64::from_be_bytes(id.as_ref().try_into().unwrap_or_default()),
                        )?,
                        None => None,
                    };
                    if let Some(mut job) = existing {
                        let before = job.state;
                        let reported = Some(candidate.fingerprint);
                        match job.state {
                            // A scan that re-reports the file being uploaded changes nothing.
                            JobState::Active if job.fingerprint == reported => {}
                            JobState::Active => {
                                job.dirty = true;
                                job.fingerprint = reported;
                            }
                            JobState::Queued | JobState::Failed => {
                                if job.state == JobState::Queued {
                                    ready.remove(&ready_key(job.next_attempt_ms, job.id))?;
                                }
                                // A change deserves a prompt attempt, whatever failed before.
                                job.state = JobState::Queued;
                                job.attempts = 0;
                                job.next_attempt_ms = now;
                                job.remote_path = candidate.remote_path.clone();
                                job.fingerprint = reported;
                                ready.insert(&ready_key(now, job.id), &[])?;
                            }
                            JobState::Done => return Ok(None),
                        }
                        job.updated_ms = now;
                        jobs.insert(&job.id.to_be_bytes(), encode(&job))?;
                        return Ok(Some((Enqueued::Coalesced(job.id), before, job.state)));
                    }
                    Ok(None)
                })
                .map_err(tx_error)?;
            let outcome = match outcome {
                Some((outcome, before, after)) => {
                    self.moved(Some(before), Some(after));
                    outcome
                }
                None => {
                    let job = JobRecord {
                        version: RECORD_VERSION,
                        id: fresh_id,
                        path: candidate.path.clone(),
                        watch_root: candidate.watch_root.clone(),
                        remote: candidate.remote.clone(),
                        remote_path: candidate.remote_path.clone(),
                        state: JobState::Queued,
                        attempts: 0,
                        next_attempt_ms: now,
                        last_error: None,
                        enqueued_ms: now,
                        updated_ms: now,
                        dirty: false,
                        fingerprint: Some(candidate.fingerprint),
                    };
                    self.insert_new(&job)?;
                    Enqueued::New(job.id)
                }
            };
            outcomes.push(outcome);
        }
        self.db.flush().map_err(sled_error("flush"))?;
        Ok(outcomes)
    }

    fn insert_new(&self, job: &JobRecord) -> Result<(), QueueError> {
        (&self.jobs, &self.job_paths, &self.ready)
            .transaction(|(jobs, paths, ready)| {
                jobs.insert(&job.id.to_be_bytes(), encode(job))?;
                paths.insert(path_key(&job.path), &job.id.to_be_bytes())?;
                ready.insert(&ready_key(job.next_attempt_ms, job.id), &[])?;
                Ok(())
            })
            .map_err(tx_error)?;
        self.moved(None, Some(JobState::Queued));
        Ok(())
    }

    /// Keeps the state counters in step with a committed change of one job.
    fn moved(&self, from: Option<JobState>, to: Option<JobState>) {
        if from == to {
            return;
        }
        let mut counts = self
            .counts
            .lock()
            .expect("the counters' lock is never poisoned");
        for (state, delta) in [(from, -1i64), (to, 1)] {
            let counter = match state {
                Some(JobState::Queued) => &mut counts.queued,
                Some(JobState::Active) => &mut counts.active,
                Some(JobState::Failed) => &mut counts.failed,
                // `done` counts jobs ever finished: it only grows.
                Some(JobState::Done) if delta > 0 => &mut counts.done,
                _ => continue,
            };
            *counter = counter.saturating_add_signed(delta);
        }
    }

    /// Marks up to `limit` due jobs active and returns them, oldest due first. Blocking.
    pub fn claim(&self, now: u64, limit: usize) -> Result<Vec<JobRecord>, QueueError> {
        let mut claimed = Vec::new();
        for entry in self.ready.range(..ready_key(now, u64::MAX)) {
            if claimed.len() >= limit {
                break;
            }
            let (key, _) = entry.map_err(sled_error("scan ready jobs"))?;
            let id = u64::from_be_bytes(key[8..16].try_into().expect("ready keys are 16 bytes"));
            let job = (&self.jobs, &self.ready)
                .transaction(|(jobs, ready)| {
                    // The scan runs beside `enqueue`, which may have moved this job to another
                    // key since the scan read this one: claim only a queued job by its current
                    // key, and drop a key that is stale.
                    ready.remove(&key)?;
                    let Some(mut job) = tx_get_job(jobs, id)? else {
                        return Ok(None);
                    };
                    if job.state != JobState::Queued || key != ready_key(job.next_attempt_ms, id) {
                        return Ok(None);
                    }
                    job.state = JobState::Active;
                    job.updated_ms = now_ms();
                    jobs.insert(&id.to_be_bytes(), encode(&job))?;
                    Ok(Some(job))
                })
                .map_err(tx_error)?;
            if job.is_some() {
                self.moved(Some(JobState::Queued), Some(JobState::Active));
            }
            claimed.extend(job);
        }
        Ok(claimed)
    }

    /// Time of the earliest queued job, if any (to sleep until then). Blocking, cheap.
    pub fn next_due_ms(&self) -> Result<Option<u64>, QueueError> {
        Ok(self
            .ready
            .first()
            .map_err(sled_error("scan ready jobs"))?
            .map(|(key, _)| {
                u64::from_be_bytes(key[..8].try_into().expect("ready keys are 16 bytes"))
            }))
    }

    /// Records a successful upload: the job is done, the index remembers what was uploaded. A
    /// job whose file changed meanwhile is queued again. Durable when it returns. Blocking.
    pub fn finish_done(
        &self,
        id: JobId,
        fingerprint: Fingerprint,
        sha256: &str,
    ) -> Result<(), QueueError> {
        let now = now_ms();
        let requeue_id = self.db.generate_id().map_err(sled_error("generate id"))?;
        let finished = (
            &self.jobs,
            &self.job_paths,
            &self.ready,
            &self.uploaded,
            &self.meta,
        )
            .transaction(|(jobs, paths, ready, uploaded, meta)| {
                // Only an upload in progress can finish: never count a job twice.
                let Some(mut job) =
                    tx_get_job(jobs, id)?.filter(|job| job.state == JobState::Active)
                else {
                    return Ok(None);
                };
                let entry = IndexEntry {
                    version: RECORD_VERSION,
                    fingerprint,
                    sha256: sha256.to_string(),
                    remote_path: job.remote_path.clone(),
                    uploaded_ms: now,
                };
                uploaded.insert(index_key(&job.remote, &job.path), encode(&entry))?;
                let total = meta.get(DONE_TOTAL)?.map_or(0, |v| {
                    u64::from_be_bytes(v.as_ref().try_into().unwrap_or_default())
                });
                meta.insert(DONE_TOTAL, &(total + 1).to_be_bytes())?;
                // Upload again only if the file last reported is not the one uploaded.
                let dirty = job.dirty && job.fingerprint != Some(fingerprint);
                job.state = JobState::Done;
                job.dirty = false;
                job.last_error = None;
                job.updated_ms = now;
                jobs.insert(&id.to_be_bytes(), encode(&job))?;
                if dirty {
                    let again = JobRecord {
                        id: requeue_id,
                        state: JobState::Queued,
                        attempts: 0,
                        next_attempt_ms: now,
                        enqueued_ms: now,
                        ..job.clone()
                    };
                    jobs.insert(&again.id.to_be_bytes(), encode(&again))?;
                    paths.insert(path_key(&job.path), &again.id.to_be_bytes())?;
                    ready.insert(&ready_key(now, again.id), &[])?;
                } else {
                    paths.remove(path_key(&job.path))?;
                }
                Ok(Some(dirty))
            })
            .map_err(tx_error)?;
        if let Some(requeued) = finished {
            self.moved(Some(JobState::Active), Some(JobState::Done));
            if requeued {
                self.moved(None, Some(JobState::Queued));
            }
        }
        self.db.flush().map_err(sled_error("flush"))?;
        Ok(())
    }

    /// Puts a job back in the queue for another attempt at `next_attempt_ms`. Blocking.
    pub fn finish_retry(
        &self,
        id: JobId,
        error: &str,
        next_attempt_ms: u64,
    ) -> Result<(), QueueError> {
        self.transition(id, |job| {
            job.state = JobState::Queued;
            job.attempts += 1;
            job.last_error = Some(error.to_string());
            job.next_attempt_ms = if job.dirty { now_ms() } else { next_attempt_ms };
            job.dirty = false;
        })
    }

    /// Marks a job failed for good (until `retry`), keeping the reason. A job whose file
    /// changed meanwhile gets another attempt instead. Blocking.
    pub fn finish_failed(&self, id: JobId, error: &str) -> Result<(), QueueError> {
        self.transition(id, |job| {
            job.attempts += 1;
            job.last_error = Some(error.to_string());
            if job.dirty {
                job.state = JobState::Queued;
                job.next_attempt_ms = now_ms();
                job.dirty = false;
            } else {
                job.state = JobState::Failed;
            }
        })
    }

    /// Forgets a job (its file vanished). Blocking.
    pub fn drop_job(&self, id: JobId) -> Result<(), QueueError> {
        let dropped = (&self.jobs, &self.job_paths, &self.ready)
            .transaction(|(jobs, paths, ready)| {
                let Some(job) = tx_get_job(jobs, id)? else {
                    return Ok(None);
                };
                ready.remove(&ready_key(job.next_attempt_ms, id))?;
                if paths.get(path_key(&job.path))?.as_deref() == Some(&id.to_be_bytes()[..]) {
                    paths.remove(path_key(&job.path))?;
                }
                jobs.remove(&id.to_be_bytes())?;
                Ok(Some(job.state))
            })
            .map_err(tx_error)?;
        self.moved(dropped, None);
        self.db.flush().map_err(sled_error("flush"))?;
        Ok(())
    }

    /// Applies `change` to a job and keeps the ready index in step; durable when it returns.
    fn transition(&self, id: JobId, change: impl Fn(&mut JobRecord)) -> Result<(), QueueError> {
        let changed = (&self.jobs, &self.ready)
            .transaction(|(jobs, ready)| {
                let Some(mut job) = tx_get_job(jobs, id)? else {
                    return Ok(None);
                };
                let before = job.state;
                if job.state == JobState::Queued {
                    ready.remove(&ready_key(job.next_attempt_ms, id))?;
                }
                change(&mut job);
                job.updated_ms = now_ms();
                if job.state == JobState::Queued {
                    ready.insert(&ready_key(job.next_attempt_ms, id), &[])?;
                }
                jobs.insert(&id.to_be_bytes(), encode(&job))?;
                Ok(Some((before, job.state)))
            })
            .map_err(tx_error)?;
        if let Some((before, after)) = changed {
            self.moved(Some(before), Some(after));
        }
        self.db.flush().map_err(sled_error("flush"))?;
        Ok(())
    }

    /// Queues failed jobs again now: those listed, or all of them. Returns how many. Blocking.
    pub fn retry_failed(&self, ids: Option<&[JobId]>) -> Result<usize, QueueError> {
        let targets: Vec<JobId> = match ids {
            Some(ids) => ids.to_vec(),
            None => self
                .list(Some(JobState::Failed), usize::MAX)?
                .iter()
                .map(|job| job.id)
                .collect(),
        };
        let mut retried = 0;
        for id in targets {
            let failed = self
                .job(id)?
                .is_some_and(|job| job.state == JobState::Failed);
            if failed {
                self.transition(id, |job| {
                    job.state = JobState::Queued;
                    job.attempts = 0;
                    job.next_attempt_ms = now_ms();
                })?;
                retried += 1;
            }
        }
        Ok(retried)
    }

    pub fn job(&self, id: JobId) -> Result<Option<JobRecord>, QueueError> {
        match self
            .jobs
            .get(id.to_be_bytes())
            .map_err(sled_error("read job"))?
        {
            Some(bytes) => decode("job", &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Jobs in `state` (or all), in id order, at most `limit`. Blocking: a scan.
    pub fn list(
        &self,
        state: Option<JobState>,
        limit: usize,
    ) -> Result<Vec<JobRecord>, QueueError> {
        let mut found = Vec::new();
        for entry in self.jobs.iter() {
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

    /// Jobs per state; `done` counts every job ever finished, pruned or not. Cheap: kept in
    /// memory, in step with every transition.
    pub fn counts(&self) -> Result<Counts, QueueError> {
        Ok(*self
            .counts
            .lock()
            .expect("the counters' lock is never poisoned"))
    }

    /// After a crash or restart: jobs left active are queued again, due now. Blocking.
    pub fn requeue_active(&self) -> Result<usize, QueueError> {
        let active: Vec<JobId> = self
            .list(Some(JobState::Active), usize::MAX)?
            .iter()
            .map(|j| j.id)
            .collect();
        for id in &active {
            self.transition(*id, |job| {
                job.state = JobState::Queued;
                job.next_attempt_ms = now_ms();
            })?;
        }
        Ok(active.len())
    }

    /// Removes done jobs last updated before `before_ms` (their count stays). Blocking.
    pub fn prune_done(&self, before_ms: u64) -> Result<usize, QueueError> {
        let mut pruned = 0;
        for job in self.list(Some(JobState::Done), usize::MAX)? {
            if job.updated_ms < before_ms {
                self.jobs
                    .remove(job.id.to_be_bytes())
                    .map_err(sled_error("prune job"))?;
                pruned += 1;
            }
        }
        Ok(pruned)
    }

    /// What was last uploaded from `path` to `remote`. Blocking.
    pub fn uploaded_entry(
        &self,
        remote: &str,
        path: &Path,
    ) -> Result<Option<IndexEntry>, QueueError> {
        match self
            .uploaded
            .get(index_key(remote, path))
            .map_err(sled_error("read upload index"))?
        {
            Some(bytes) => decode("upload index", &bytes).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn jobs_coalesce_by_path_and_unchanged_files_are_skipped() {
        let (_dir, store) = store();
        let first = store
            .enqueue(&[candidate("/w/a", 1), candidate("/w/a", 2)])
            .unwrap();
        let Enqueued::New(id) = first[0] else {
            panic!("{first:?}")
        };
        assert_eq!(first[1], Enqueued::Coalesced(id));
        let claimed = store.claim(now_ms(), 10).unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(store.counts().unwrap().active, 1);
        store
            .finish_done(id, candidate("/w/a", 2).fingerprint, "ab")
            .unwrap();
        assert_eq!(
            store.enqueue(&[candidate("/w/a", 2)]).unwrap(),
            vec![Enqueued::Unchanged]
        );
        assert!(matches!(
            store.enqueue(&[candidate("/w/a", 3)]).unwrap()[0],
            Enqueued::New(_)
        ));
        let counts = store.counts().unwrap();
        assert_eq!((counts.queued, counts.done), (1, 1));
    }

    #[test]
    fn a_change_during_upload_queues_the_file_again() {
        let (_dir, store) = store();
        let Enqueued::New(id) = store.enqueue(&[candidate("/w/b", 1)]).unwrap()[0] else {
            panic!()
        };
        store.claim(now_ms(), 1).unwrap();
        assert_eq!(
            store.enqueue(&[candidate("/w/b", 5)]).unwrap(),
            vec![Enqueued::Coalesced(id)]
        );
        store
            .finish_done(id, candidate("/w/b", 1).fingerprint, "cd")
            .unwrap();
        let again = store.claim(now_ms(), 10).unwrap();
        assert_eq!(again.len(), 1);
        assert_ne!(again[0].id, id);
        assert_eq!(again[0].path, PathBuf::from("/w/b"));
    }

    #[test]
    fn a_scan_re_reporting_the_file_being_uploaded_changes_nothing() {
        let (_dir, store) = store();
        let Enqueued::New(id) = store.enqueue(&[candidate("/w/s", 1)]).unwrap()[0] else {
            panic!()
        };
        store.claim(now_ms(), 1).unwrap();
        store.enqueue(&[candidate("/w/s", 1)]).unwrap();
        store
            .finish_done(id, candidate("/w/s", 1).fingerprint, "ab")
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
        let agree = |store: &Store, step: &str| {
            let recount = count_states(&store.jobs, &store.meta).unwrap();
            assert_eq!(store.counts().unwrap(), recount, "after {step}");
        };
        store
            .enqueue(&[
                candidate("/w/1", 1),
                candidate("/w/2", 1),
                candidate("/w/3", 1),
                candidate("/w/4", 1),
            ])
            .unwrap();
        agree(&store, "enqueue");
        let claimed = store.claim(now_ms(), 3).unwrap();
        agree(&store, "claim");
        store
            .enqueue(&[candidate("/w/1", 2), candidate("/w/4", 2)])
            .unwrap();
        agree(&store, "coalescing into active and queued jobs");
        store
            .finish_done(claimed[0].id, candidate("/w/1", 1).fingerprint, "a")
            .unwrap();
        agree(&store, "done with a changed file");
        store.finish_failed(claimed[1].id, "403").unwrap();
        store
            .finish_retry(claimed[2].id, "503", now_ms() + 60_000)
            .unwrap();
        agree(&store, "failed and retry");
        store.enqueue(&[candidate("/w/2", 9)]).unwrap();
        agree(&store, "a changed failed file");
        store.retry_failed(None).unwrap();
        let more = store.claim(now_ms(), 10).unwrap();
        store.drop_job(more[0].id).unwrap();
        agree(&store, "drop");
        store.requeue_active().unwrap();
        agree(&store, "requeue");
    }

    #[test]
    fn a_stale_ready_key_never_claims_a_job_twice() {
        let (_dir, store) = store();
        let Enqueued::New(id) = store.enqueue(&[candidate("/w/r", 1)]).unwrap()[0] else {
            panic!()
        };
        let job = store.claim(now_ms(), 1).unwrap().remove(0);
        // What a claim racing a coalescing enqueue can leave behind: a second key for the job.
        store
            .ready
            .insert(ready_key(job.next_attempt_ms + 1, id), &[])
            .unwrap();
        assert!(
            store.claim(u64::MAX, 10).unwrap().is_empty(),
            "an active job is not claimed again"
        );
        store
            .finish_done(id, candidate("/w/r", 1).fingerprint, "ab")
            .unwrap();
        store
            .ready
            .insert(ready_key(job.next_attempt_ms + 2, id), &[])
            .unwrap();
        assert!(
            store.claim(u64::MAX, 10).unwrap().is_empty(),
            "a done job is not claimed again"
        );
        store
            .finish_done(id, candidate("/w/r", 1).fingerprint, "ab")
            .unwrap();
        assert_eq!(
            store.counts().unwrap().done,
            1,
            "finishing twice counts once"
        );
        assert_eq!(store.ready.len(), 0, "stale keys are dropped");
    }

    #[test]
    fn retries_wait_for_their_time_and_failures_wait_for_the_user() {
        let (_dir, store) = store();
        let Enqueued::New(id) = store.enqueue(&[candidate("/w/c", 1)]).unwrap()[0] else {
            panic!()
        };
        store.claim(now_ms(), 1).unwrap();
        let later = now_ms() + 60_000;
        store.finish_retry(id, "503 busy", later).unwrap();
        assert!(store.claim(now_ms(), 10).unwrap().is_empty(), "not due yet");
        assert_eq!(store.next_due_ms().unwrap(), Some(later));
        let job = &store.claim(later, 10).unwrap()[0];
        assert_eq!(
            (job.attempts, job.last_error.as_deref()),
            (1, Some("503 busy"))
        );
        store.finish_failed(id, "403 forbidden").unwrap();
        assert!(store.claim(u64::MAX, 10).unwrap().is_empty());
        assert_eq!(store.counts().unwrap().failed, 1);
        assert_eq!(store.retry_failed(None).unwrap(), 1);
        assert_eq!(store.claim(now_ms(), 10).unwrap()[0].id, id);
    }

    #[test]
    fn active_jobs_return_to_the_queue_after_a_restart_and_done_counts_outlive_pruning() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .enqueue(&[candidate("/w/d", 1), candidate("/w/e", 1)])
                .unwrap();
            let claimed = store.claim(now_ms(), 10).unwrap();
            store
                .finish_done(claimed[0].id, candidate("/w/d", 1).fingerprint, "ef")
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.requeue_active().unwrap(), 1);
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
