//! The durable store. Only this module touches sled (it calls itself beta; one owner keeps the
//! blast radius small). `Store` owns the database; the daemon sees it through `JobQueue`
//! (`jobs.rs`: the job queue and the upload index) and the engine through `Sessions`
//! (`sessions.rs`: the records of resumable upload sessions).
//!
//! Durability: every `*_durable` method returns only after `Db::flush`, sled's durability
//! point, so a record that was acknowledged survives a kill -9. Keys are big-endian so that a
//! session's parts scan in part-number order. Scans are blocking and belong in `spawn_blocking`.

pub mod hooks;
pub mod jobs;
pub mod record;
pub mod sessions;
mod summary;
pub mod transition;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub use hooks::{Deliveries, Delivery};
pub use jobs::{
    Candidate, Counts, Enqueued, Finish, IndexEntry, JobId, JobQueue, JobRecord, JobState,
};
pub use record::{Fingerprint, PartLimits, PartRecord, RECORD_VERSION, UploadRecord};
pub use sessions::Sessions;

/// sled's page cache. Its default (1 GiB) would dwarf the daemon's memory budget; session
/// records are small and read rarely.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// Store failures. The path says which store; the cause is sled's or serde's.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot open the store at {path}{hint}")]
    Open {
        path: PathBuf,
        /// What the cause most likely means, from `open_hint`.
        hint: &'static str,
        #[source]
        source: sled::Error,
    },
    #[error("cannot write the store's checkpoint in {path}")]
    Checkpoint {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store operation failed: {operation}")]
    Sled {
        operation: &'static str,
        #[source]
        source: sled::Error,
    },
    #[error("the store at {path} is closed: reopening it failed")]
    Closed { path: PathBuf },
    #[error("a {kind} record in the store is unreadable")]
    Corrupt {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl QueueError {
    /// "no space left" when the store's disk is full, the I/O error for another failure of
    /// the disk; `None` for failures that are not the disk's (an unreadable record, say).
    pub fn storage_problem(&self) -> Option<String> {
        match self {
            QueueError::Sled {
                source: sled::Error::Io(io),
                ..
            } if io.kind() == std::io::ErrorKind::StorageFull => Some("no space left".into()),
            QueueError::Sled {
                source: sled::Error::Io(io),
                ..
            } => Some(format!("I/O error: {io}")),
            QueueError::Closed { .. } => Some("closed after an I/O error".into()),
            _ => None,
        }
    }
}

/// Handle on the sled database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: std::sync::Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    /// The open database; `None` only while `reopen` swaps it. Each operation takes a clone
    /// of the `Arc` for its own duration.
    trees: std::sync::RwLock<Option<std::sync::Arc<Trees>>>,
    /// Serializes changes to jobs (sled's own transactions switch on a process-wide lock that
    /// can deadlock with its flusher, so the store uses none). It guards the jobs per state,
    /// kept in step with every change so that `ferry status` costs nothing however long the
    /// queue; counted at open.
    job_lock: std::sync::Mutex<Counts>,
    /// What `summary` found lost when the store was last opened.
    damage: std::sync::Mutex<Option<String>>,
    /// Flushes since the store was opened, through every database it reopened.
    flushes: std::sync::Arc<AtomicU64>,
}

/// The sled database and its trees.
struct Trees {
    db: sled::Db,
    uploads: sled::Tree,
    parts: sled::Tree,
    jobs: sled::Tree,
    job_paths: sled::Tree,
    ready: sled::Tree,
    failed: sled::Tree,
    uploaded: sled::Tree,
    meta: sled::Tree,
    hooks: sled::Tree,
    /// The store's flush count (`Shared::flushes`).
    flushes: std::sync::Arc<AtomicU64>,
}

impl Trees {
    /// Makes everything written so far durable, and counts it. Blocking.
    fn flush(&self) -> Result<(), QueueError> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.db.flush().map_err(sled_error("flush"))?;
        Ok(())
    }
}

/// How long `reopen` waits for operations in progress to let go of the old database.
const REOPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Store {
    /// Opens (creating) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store, QueueError> {
        let flushes = std::sync::Arc::new(AtomicU64::new(0));
        let trees = open_trees(dir, flushes.clone())?;
        let store = Store {
            shared: std::sync::Arc::new(Shared {
                dir: dir.to_path_buf(),
                trees: std::sync::RwLock::new(Some(std::sync::Arc::new(trees))),
                job_lock: Default::default(),
                damage: Default::default(),
                flushes,
            }),
        };
        store.recover_and_check()?;
        Ok(store)
    }

    /// The job queue kept in this store.
    pub fn jobs(&self) -> JobQueue {
        JobQueue {
            store: self.clone(),
        }
    }

    /// The records of upload sessions kept in this store.
    pub fn sessions(&self) -> Sessions {
        Sessions {
            store: self.clone(),
        }
    }

    /// The hook deliveries' view.
    pub fn deliveries(&self) -> Deliveries {
        Deliveries {
            store: self.clone(),
        }
    }

    /// Repairs the indexes and recounts (`JobQueue::recover`), removes the parts of sessions
    /// that are gone, then compares with the last checkpoint.
    fn recover_and_check(&self) -> Result<(), QueueError> {
        let jobs = self.jobs();
        let counts = jobs.recover()?;
        *jobs.lock() = counts;
        self.sessions().remove_orphan_parts()?;
        self.flush_blocking()?;
        let now = summary::Summary {
            uploaded: self.t()?.uploaded.len() as u64,
            done: counts.done,
        };
        let dir = &self.shared.dir;
        let damage = match summary::read(dir) {
            Ok(Some(recorded)) => summary::damage(recorded, now),
            Ok(None) => None,
            Err(problem) => {
                tracing::warn!(path = %dir.display(), %problem, "the store's checkpoint is unreadable: the store cannot be checked for damage this time");
                None
            }
        };
        if let Some(damage) = &damage {
            tracing::error!(path = %dir.display(), "store {damage}");
        }
        *self
            .shared
            .damage
            .lock()
            .expect("damage lock is never poisoned") = damage;
        Ok(())
    }

    /// Damage found when the store was opened, if any (until the daemon stops).
    pub fn damage(&self) -> Option<String> {
        self.shared
            .damage
            .lock()
            .expect("damage lock is never poisoned")
            .clone()
    }

    /// Records what the store holds now (see `summary`), to find damage at the next open.
    /// Counts, then flushes, so that what it records is durable. Blocking.
    pub fn checkpoint(&self) -> Result<(), QueueError> {
        let now = summary::Summary {
            uploaded: self.t()?.uploaded.len() as u64,
            done: self.jobs().lock().done,
        };
        self.flush_blocking()?;
        summary::write(&self.shared.dir, now).map_err(|source| QueueError::Checkpoint {
            path: self.shared.dir.clone(),
            source,
        })
    }

    /// The open database, for one operation.
    fn t(&self) -> Result<std::sync::Arc<Trees>, QueueError> {
        self.shared
            .trees
            .read()
            .expect("no code panics while holding the trees lock")
            .clone()
            .ok_or_else(|| QueueError::Closed {
                path: self.shared.dir.clone(),
            })
    }

    /// Closes the database and opens it again, then repairs and recounts as at open. After an
    /// I/O error (a full disk, say) sled fails every later operation with that same error,
    /// even once the cause is gone: reopening is how the daemon recovers without a restart.
    /// Writes that were never flushed are lost, as in a crash; none was acknowledged. Blocking.
    pub fn reopen(&self) -> Result<(), QueueError> {
        let slot = || {
            self.shared
                .trees
                .write()
                .expect("no code panics while holding the trees lock")
        };
        // Taken out under the lock, waited for outside it: operations meanwhile fail with
        // `Closed` instead of queueing behind the swap.
        let old = slot().take();
        if let Some(old) = old {
            let deadline = std::time::Instant::now() + REOPEN_WAIT;
            while std::sync::Arc::strong_count(&old) > 1 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            drop(old); // releases sled's lock on its files
        }
        let flushes = self.shared.flushes.clone();
        let trees = std::sync::Arc::new(open_trees(&self.shared.dir, flushes)?);
        *slot() = Some(trees);
        self.recover_and_check()
    }

    /// Writes and flushes a small record: whether the store can take writes now. Blocking.
    pub fn probe_write(&self) -> Result<(), QueueError> {
        let t = self.t()?;
        t.meta
            .insert("probe", &jobs::now_ms().to_be_bytes())
            .map_err(sled_error("write probe"))?;
        t.flush()
    }

    /// The folder the store lives in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Makes everything written so far durable. Blocking.
    pub fn flush_blocking(&self) -> Result<(), QueueError> {
        self.t()?.flush()
    }

    /// Flushes since the store was opened: each makes everything written durable (a sync on
    /// a disk); the daemon's outcomes reported together share one.
    pub fn flushes(&self) -> u64 {
        self.shared.flushes.load(Ordering::Relaxed)
    }

    /// Inserts `value` at `key` in the tree `tree` picks and waits until it is durable.
    async fn insert_durably(
        &self,
        tree: fn(&Trees) -> &sled::Tree,
        key: Vec<u8>,
        value: Vec<u8>,
        operation: &'static str,
    ) -> Result<(), QueueError> {
        self.durably(move |trees| {
            tree(trees)
                .insert(key, value)
                .map_err(sled_error(operation))?;
            Ok(())
        })
        .await
    }

    /// Runs `write`, then waits until everything written so far is durable, both on a blocking
    /// thread: a sled insert may wait on its log, and a flush always waits on the disk. Not
    /// sled's `flush_async`: that runs the wait on sled's own small IO pool, and when every pool
    /// thread is waiting, the log writes they wait for sit queued behind them forever (seen
    /// with 16 transfers).
    async fn durably(
        &self,
        write: impl FnOnce(&Trees) -> Result<(), QueueError> + Send + 'static,
    ) -> Result<(), QueueError> {
        let trees = self.t()?;
        tokio::task::spawn_blocking(move || {
            write(&trees)?;
            trees.flush()
        })
        .await
        .expect("a store write does not panic")
    }
}

fn sled_error(operation: &'static str) -> impl Fn(sled::Error) -> QueueError {
    move |source| QueueError::Sled { operation, source }
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialise: plain structs with string keys")
}

fn decode<T: serde::de::DeserializeOwned>(
    kind: &'static str,
    bytes: &[u8],
) -> Result<T, QueueError> {
    serde_json::from_slice(bytes).map_err(|source| QueueError::Corrupt { kind, source })
}

/// Whether the database's file lock is held (by another process, or for a moment by the
/// threads of a database this process just closed).
fn lock_held(error: &sled::Error) -> bool {
    matches!(error, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// How long an open waits for a lock that a database closed just before may still hold.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens the database. A dropped sled database lets go of its file lock only once its
/// background threads finish, a moment later: a lock still held is tried again for
/// `LOCK_WAIT` (`reopen` depends on it), then reported.
fn open_db(dir: &Path) -> Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        let config = sled::Config::new().path(dir).cache_capacity(CACHE_BYTES);
        match config.open() {
            Err(error) if lock_held(&error) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            opened => return opened,
        }
    }
}

/// What a failure to open most likely means: only a held lock means another process.
fn open_hint(error: &sled::Error) -> &'static str {
    match error {
        error if lock_held(error) => " (another ferry process is using it)",
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
            " (no space left on its disk)"
        }
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
            " (permission denied: is it another user's?)"
        }
        sled::Error::Corruption { .. } | sled::Error::ReportableBug(_) => {
            " (it is damaged: move the folder aside to start afresh; every file is then uploaded again)"
        }
        _ => "",
    }
}

fn open_trees(dir: &Path, flushes: std::sync::Arc<AtomicU64>) -> Result<Trees, QueueError> {
    let open_error = |source: sled::Error| QueueError::Open {
        path: dir.to_path_buf(),
        hint: open_hint(&source),
        source,
    };
    let db = open_db(dir).map_err(open_error)?;
    let tree = |name: &str| db.open_tree(name).map_err(open_error);
    Ok(Trees {
        uploads: tree("uploads")?,
        parts: tree("upload_parts")?,
        jobs: tree("jobs")?,
        job_paths: tree("job_paths")?,
        ready: tree("ready")?,
        failed: tree("failed_jobs")?,
        uploaded: tree("uploaded")?,
        meta: tree("meta")?,
        hooks: tree("hook_deliveries")?,
        db,
        flushes,
    })
}
