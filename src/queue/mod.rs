//! The durable store. Only this module touches sled (it calls itself beta; one owner keeps the
//! blast radius small). It keeps the daemon's job queue and upload index (`jobs`) and the
//! records of resumable upload sessions.
//!
//! Durability: every `*_durable` method returns only after `Db::flush`, sled's durability
//! point, so a record that was acknowledged survives a kill -9. Keys are big-endian so that a
//! session's parts scan in part-number order. Scans are blocking and belong in `spawn_blocking`.

pub mod jobs;
pub mod record;
mod summary;

use std::path::{Path, PathBuf};

pub use jobs::{Candidate, Counts, Enqueued, IndexEntry, JobId, JobRecord, JobState};
pub use record::{Fingerprint, PartLimits, PartRecord, RECORD_VERSION, UploadRecord};

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
    counts: std::sync::Mutex<Counts>,
    /// What `summary` found lost when the store was last opened.
    damage: std::sync::Mutex<Option<String>>,
}

/// The sled database and its trees.
struct Trees {
    db: sled::Db,
    uploads: sled::Tree,
    parts: sled::Tree,
    jobs: sled::Tree,
    job_paths: sled::Tree,
    ready: sled::Tree,
    uploaded: sled::Tree,
    meta: sled::Tree,
}

/// How long `reopen` waits for operations in progress to let go of the old database.
const REOPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Store {
    /// Opens (creating) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store, QueueError> {
        let store = Store {
            shared: std::sync::Arc::new(Shared {
                dir: dir.to_path_buf(),
                trees: std::sync::RwLock::new(Some(std::sync::Arc::new(open_trees(dir)?))),
                counts: Default::default(),
                damage: Default::default(),
            }),
        };
        store.recover_and_check()?;
        Ok(store)
    }

    /// Repairs the indexes and recounts (`recover`), then compares with the last checkpoint.
    fn recover_and_check(&self) -> Result<(), QueueError> {
        let counts = self.recover()?;
        *self.lock() = counts;
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
            done: self.lock().done,
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
        let trees = std::sync::Arc::new(open_trees(&self.shared.dir)?);
        *slot() = Some(trees);
        self.recover_and_check()
    }

    /// Writes and flushes a small record: whether the store can take writes now. Blocking.
    pub fn probe_write(&self) -> Result<(), QueueError> {
        let t = self.t()?;
        t.meta
            .insert("probe", &jobs::now_ms().to_be_bytes())
            .map_err(sled_error("write probe"))?;
        t.db.flush().map_err(sled_error("flush"))?;
        Ok(())
    }

    /// The folder the store lives in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Loads a session record and its parts (sorted by number). Blocking: a prefix scan.
    pub fn load_upload(
        &self,
        key: &str,
    ) -> Result<Option<(UploadRecord, Vec<PartRecord>)>, QueueError> {
        let Some(bytes) = self
            .t()?
            .uploads
            .get(key)
            .map_err(sled_error("read upload"))?
        else {
            return Ok(None);
        };
        let record: UploadRecord = decode("upload", &bytes)?;
        let mut parts = Vec::new();
        for entry in self.t()?.parts.scan_prefix(part_prefix(key)) {
            let (_, value) = entry.map_err(sled_error("scan parts"))?;
            parts.push(decode::<PartRecord>("part", &value)?);
        }
        Ok(Some((record, parts)))
    }

    /// Saves a new session record and waits until it is durable.
    pub async fn save_upload_durable(
        &self,
        key: &str,
        record: &UploadRecord,
    ) -> Result<(), QueueError> {
        let (key, record) = (key.to_string(), encode(record));
        self.durably(move |trees| {
            trees
                .uploads
                .insert(key, record)
                .map_err(sled_error("save upload"))?;
            Ok(())
        })
        .await
    }

    /// Notes a part about to be sent. Not flushed: if it is lost in a crash, the part was not
    /// acknowledged yet and is planned again; later flushes carry it along.
    pub fn plan_part(&self, key: &str, part: &PartRecord) -> Result<(), QueueError> {
        self.t()?
            .parts
            .insert(part_key(key, part.number), encode(part))
            .map_err(sled_error("plan part"))?;
        Ok(())
    }

    /// Records an acknowledged part and waits until it is durable.
    pub async fn acknowledge_part_durable(
        &self,
        key: &str,
        part: &PartRecord,
    ) -> Result<(), QueueError> {
        let (key, value) = (part_key(key, part.number), encode(part));
        self.durably(move |trees| {
            trees
                .parts
                .insert(key, value)
                .map_err(sled_error("plan part"))?;
            Ok(())
        })
        .await
    }

    /// Removes a session record and its parts, durably. Blocking: a prefix scan.
    ///
    /// The record goes first: a crash before its parts are gone leaves orphans, which the next
    /// open removes, never a record missing its parts.
    pub fn remove_upload(&self, key: &str) -> Result<(), QueueError> {
        self.t()?
            .uploads
            .remove(key)
            .map_err(sled_error("remove upload"))?;
        for part in self.t()?.parts.scan_prefix(part_prefix(key)).keys() {
            self.t()?
                .parts
                .remove(part.map_err(sled_error("scan parts"))?)
                .map_err(sled_error("remove parts"))?;
        }
        self.t()?.db.flush().map_err(sled_error("flush"))?;
        Ok(())
    }

    /// Removes parts whose session record is gone (see `remove_upload`). Blocking: a scan.
    fn remove_orphan_parts(&self) -> Result<(), QueueError> {
        for part in self.t()?.parts.iter().keys() {
            let part = part.map_err(sled_error("scan parts"))?;
            let session = &part[..part.len().saturating_sub(PART_SUFFIX)];
            if !self
                .t()?
                .uploads
                .contains_key(session)
                .map_err(sled_error("read upload"))?
            {
                self.t()?
                    .parts
                    .remove(part)
                    .map_err(sled_error("remove parts"))?;
            }
        }
        Ok(())
    }

    /// Makes everything written so far durable. Blocking.
    pub fn flush_blocking(&self) -> Result<(), QueueError> {
        self.t()?.db.flush().map_err(sled_error("flush"))?;
        Ok(())
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
            trees.db.flush().map_err(sled_error("flush"))?;
            Ok(())
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

/// A part's key is its session's key, a 0 byte, and the part number (4 bytes, big-endian).
const PART_SUFFIX: usize = 5;

fn part_prefix(key: &str) -> Vec<u8> {
    let mut prefix = key.as_bytes().to_vec();
    prefix.push(0);
    prefix
}

fn part_key(key: &str, number: u32) -> Vec<u8> {
    let mut bytes = part_prefix(key);
    bytes.extend_from_slice(&number.to_be_bytes());
    bytes
}

/// What a failure to open most likely means: only a held lock means another process.
fn open_hint(error: &sled::Error) -> &'static str {
    match error {
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            " (another ferry process is using it)"
        }
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

fn open_trees(dir: &Path) -> Result<Trees, QueueError> {
    let open_error = |source: sled::Error| QueueError::Open {
        path: dir.to_path_buf(),
        hint: open_hint(&source),
        source,
    };
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(CACHE_BYTES)
        .open()
        .map_err(open_error)?;
    let tree = |name: &str| db.open_tree(name).map_err(open_error);
    Ok(Trees {
        uploads: tree("uploads")?,
        parts: tree("upload_parts")?,
        jobs: tree("jobs")?,
        job_paths: tree("job_paths")?,
        ready: tree("ready")?,
        uploaded: tree("uploaded")?,
        meta: tree("meta")?,
        db,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::record::PartLimits;

    fn upload_record() -> UploadRecord {
        UploadRecord {
            version: RECORD_VERSION,
            remote: "native http://127.0.0.1:1 ws".into(),
            remote_path: "a/b.bin".into(),
            local_path: "/tmp/b.bin".into(),
            upload_id: "up_1".into(),
            fingerprint: Fingerprint {
                size: 10,
                mtime_ns: 1,
                inode: 2,
                device: 3,
            },
            limits: PartLimits {
                min_part_size: 1,
                max_part_size: 10,
                max_parts: 10,
                sequential: false,
            },
            expires_at: None,
            created_unix: 0,
        }
    }

    fn part(number: u32, etag: Option<&str>) -> PartRecord {
        PartRecord {
            version: RECORD_VERSION,
            number,
            offset: u64::from(number - 1) * 4,
            size: 4,
            etag: etag.map(str::to_owned),
            crc32c: None,
        }
    }

    #[tokio::test]
    async fn records_survive_reopen_in_part_order_and_are_removed_whole() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .save_upload_durable("k", &upload_record())
                .await
                .unwrap();
            // 256 sorts before 2 as text; big-endian keys keep numeric order.
            for number in [256, 2, 1] {
                store
                    .acknowledge_part_durable("k", &part(number, Some("e")))
                    .await
                    .unwrap();
            }
            store
                .save_upload_durable("other", &upload_record())
                .await
                .unwrap();
            store.plan_part("other", &part(1, None)).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let (record, parts) = store.load_upload("k").unwrap().unwrap();
        assert_eq!(record, upload_record());
        let numbers: Vec<u32> = parts.iter().map(|p| p.number).collect();
        assert_eq!(numbers, vec![1, 2, 256]);
        store.remove_upload("k").unwrap();
        assert!(store.load_upload("k").unwrap().is_none());
        assert_eq!(
            store
                .t()
                .unwrap()
                .parts
                .scan_prefix(part_prefix("k"))
                .count(),
            0
        );
        assert_eq!(
            store
                .t()
                .unwrap()
                .parts
                .scan_prefix(part_prefix("other"))
                .count(),
            1
        );
    }

    /// Many durable writes at once, as many parallel parts make: each must return. (sled's
    /// `flush_async` waited on sled's own IO pool and hung here once the pool was full.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_durable_writes_all_return() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut writers = tokio::task::JoinSet::new();
        for writer in 0..32 {
            let store = store.clone();
            writers.spawn(async move {
                let key = format!("k{writer}");
                store
                    .save_upload_durable(&key, &upload_record())
                    .await
                    .unwrap();
                for number in 1..=20 {
                    store
                        .acknowledge_part_durable(&key, &part(number, Some("e")))
                        .await
                        .unwrap();
                }
            });
        }
        let all = async {
            while let Some(joined) = writers.join_next().await {
                joined.unwrap();
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(60), all)
            .await
            .expect("every durable write returns");
        assert_eq!(store.t().unwrap().parts.len(), 32 * 20);
    }

    #[test]
    fn version_1_records_still_load() {
        let upload: UploadRecord =
            serde_json::from_str(include_str!("../../tests/fixtures/upload-record-v1.json"))
                .unwrap();
        assert_eq!(upload.version, 1);
        assert_eq!(upload.fingerprint.size, 209_715_200);
        let part: PartRecord =
            serde_json::from_str(include_str!("../../tests/fixtures/part-record-v1.json")).unwrap();
        assert_eq!(part.number, 3);
        assert!(part.is_acknowledged());
    }
}
