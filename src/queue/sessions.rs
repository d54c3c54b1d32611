//! The records of resumable upload sessions, one per file being uploaded: the remote's session
//! id and every part planned or acknowledged (trees `uploads` and `upload_parts`). The engine
//! keeps them; it never sees the job queue.

use super::record::{PartRecord, UploadRecord};
use super::{QueueError, Store, decode, encode, sled_error};

/// The session store: a view of the one sled database; cheap to clone.
#[derive(Clone)]
pub struct Sessions {
    pub(super) store: Store,
}

impl Sessions {
    /// Loads a session record and its parts (sorted by number). Blocking: a prefix scan.
    pub fn load(&self, key: &str) -> Result<Option<(UploadRecord, Vec<PartRecord>)>, QueueError> {
        let Some(bytes) = self
            .store
            .t()?
            .uploads
            .get(key)
            .map_err(sled_error("read upload"))?
        else {
            return Ok(None);
        };
        let record: UploadRecord = decode("upload", &bytes)?;
        let mut parts = Vec::new();
        for entry in self.store.t()?.parts.scan_prefix(part_prefix(key)) {
            let (_, value) = entry.map_err(sled_error("scan parts"))?;
            parts.push(decode::<PartRecord>("part", &value)?);
        }
        Ok(Some((record, parts)))
    }

    /// Saves a new session record and waits until it is durable.
    pub async fn save_durable(&self, key: &str, record: &UploadRecord) -> Result<(), QueueError> {
        let (key, record) = (key.as_bytes().to_vec(), encode(record));
        self.store
            .insert_durably(|trees| &trees.uploads, key, record, "save upload")
            .await
    }

    /// Notes a part about to be sent. Not flushed: if it is lost in a crash, the part was not
    /// acknowledged yet and is planned again; later flushes carry it along.
    pub fn plan_part(&self, key: &str, part: &PartRecord) -> Result<(), QueueError> {
        self.store
            .t()?
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
        self.store
            .insert_durably(|trees| &trees.parts, key, value, "acknowledge part")
            .await
    }

    /// Removes a session record and its parts, durably. Blocking: a prefix scan.
    ///
    /// The record goes first: a crash before its parts are gone leaves orphans, which the next
    /// open removes, never a record missing its parts.
    pub fn remove(&self, key: &str) -> Result<(), QueueError> {
        self.store
            .t()?
            .uploads
            .remove(key)
            .map_err(sled_error("remove upload"))?;
        for part in self.store.t()?.parts.scan_prefix(part_prefix(key)).keys() {
            self.store
                .t()?
                .parts
                .remove(part.map_err(sled_error("scan parts"))?)
                .map_err(sled_error("remove parts"))?;
        }
        self.store.t()?.flush()
    }

    /// The sessions recorded for the remote `identity`. Blocking: a scan of the records.
    pub fn of_remote(&self, identity: &str) -> Result<Vec<UploadRecord>, QueueError> {
        let mut found = Vec::new();
        for entry in self.store.t()?.uploads.iter() {
            let (_, value) = entry.map_err(sled_error("scan uploads"))?;
            let record: UploadRecord = decode("upload", &value)?;
            if record.remote == identity {
                found.push(record);
            }
        }
        Ok(found)
    }

    /// What a remote's planner learned, kept by `save_learned`. Blocking.
    pub fn learned<T: serde::de::DeserializeOwned>(
        &self,
        remote: &str,
    ) -> Result<Option<T>, QueueError> {
        match self
            .store
            .t()?
            .meta
            .get(learned_key(remote))
            .map_err(sled_error("read learned"))?
        {
            Some(bytes) => decode("learned", &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Keeps what a remote's planner learned. Not flushed: losing the latest in a crash costs
    /// a few parts of learning again. Blocking.
    pub fn save_learned<T: serde::Serialize>(
        &self,
        remote: &str,
        learned: &T,
    ) -> Result<(), QueueError> {
        self.store
            .t()?
            .meta
            .insert(learned_key(remote), encode(learned))
            .map_err(sled_error("save learned"))?;
        Ok(())
    }

    /// Removes parts whose session record is gone (see `remove`). Blocking: a scan.
    pub(super) fn remove_orphan_parts(&self) -> Result<(), QueueError> {
        for part in self.store.t()?.parts.iter().keys() {
            let part = part.map_err(sled_error("scan parts"))?;
            let session = &part[..part.len().saturating_sub(PART_SUFFIX)];
            if !self
                .store
                .t()?
                .uploads
                .contains_key(session)
                .map_err(sled_error("read upload"))?
            {
                self.store
                    .t()?
                    .parts
                    .remove(part)
                    .map_err(sled_error("remove parts"))?;
            }
        }
        Ok(())
    }
}

/// A part's key is its session's key, a 0 byte, and the part number (4 bytes, big-endian).
const PART_SUFFIX: usize = 5;

/// The key of what the planner of `remote` (a backend's identity) learned.
fn learned_key(remote: &str) -> Vec<u8> {
    let mut key = b"learned\0".to_vec();
    key.extend_from_slice(remote.as_bytes());
    key
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::record::PartLimits;
    use crate::queue::{Fingerprint, RECORD_VERSION};

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
                uniform: false,
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
            let store = Store::open(dir.path()).unwrap().sessions();
            store.save_durable("k", &upload_record()).await.unwrap();
            // 256 sorts before 2 as text; big-endian keys keep numeric order.
            for number in [256, 2, 1] {
                store
                    .acknowledge_part_durable("k", &part(number, Some("e")))
                    .await
                    .unwrap();
            }
            store.save_durable("other", &upload_record()).await.unwrap();
            store.plan_part("other", &part(1, None)).unwrap();
        }
        let store = Store::open(dir.path()).unwrap().sessions();
        let (record, parts) = store.load("k").unwrap().unwrap();
        assert_eq!(record, upload_record());
        let numbers: Vec<u32> = parts.iter().map(|p| p.number).collect();
        assert_eq!(numbers, vec![1, 2, 256]);
        store.remove("k").unwrap();
        assert!(store.load("k").unwrap().is_none());
        let parts_of = |key| {
            store
                .store
                .t()
                .unwrap()
                .parts
                .scan_prefix(part_prefix(key))
                .count()
        };
        assert_eq!(parts_of("k"), 0);
        assert_eq!(parts_of("other"), 1);
    }

    /// Many durable writes at once, as many parallel parts make: each must return. (sled's
    /// `flush_async` waited on sled's own IO pool and hung here once the pool was full.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_durable_writes_all_return() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap().sessions();
        let mut writers = tokio::task::JoinSet::new();
        for writer in 0..32 {
            let store = store.clone();
            writers.spawn(async move {
                let key = format!("k{writer}");
                store.save_durable(&key, &upload_record()).await.unwrap();
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
        assert_eq!(store.store.t().unwrap().parts.len(), 32 * 20);
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
