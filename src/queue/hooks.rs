//! Hook deliveries (tree `hook_deliveries`): each hook a job's outcome calls for, written in the
//! same step as that outcome (before the job's record; one flush makes both durable), kept
//! until it is delivered, and tried again after a failure until it has failed too often. What
//! to run and the document to send are the hooks module's, opaque here.

use serde::{Deserialize, Serialize};

use super::{JobId, QueueError, Store, decode, encode, sled_error};

/// A hook to deliver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// Assigned when it is added.
    #[serde(default)]
    pub id: u64,
    pub job_id: JobId,
    /// `uploaded` or `failed`.
    pub event: String,
    /// What to run (`config::HookSpec`, as JSON).
    pub hook: serde_json::Value,
    /// The document sent.
    pub payload: serde_json::Value,
    /// What to do once it is delivered (an `after_upload` that waits for the hook), as JSON.
    #[serde(default)]
    pub then: Option<serde_json::Value>,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub next_attempt_ms: u64,
    #[serde(default)]
    pub last_error: Option<String>,
    /// Tried too often: it waits for `ferry retry --failed`.
    #[serde(default)]
    pub failed: bool,
}

impl Delivery {
    /// The local path of the file the hook is about, as its document gives it.
    pub fn path(&self) -> std::path::PathBuf {
        self.payload["path"].as_str().unwrap_or_default().into()
    }
}

/// The deliveries: a view of the one sled database; cheap to clone.
#[derive(Clone)]
pub struct Deliveries {
    pub(super) store: Store,
}

impl Deliveries {
    /// Adds `delivery`, not flushed: the flush that makes the job's outcome (written next)
    /// durable makes it durable too. Blocking.
    pub fn add(&self, mut delivery: Delivery) -> Result<u64, QueueError> {
        let trees = self.store.t()?;
        delivery.id = trees
            .db
            .generate_id()
            .map_err(sled_error("number a hook"))?;
        trees
            .hooks
            .insert(delivery.id.to_be_bytes(), encode(&delivery))
            .map_err(sled_error("add a hook delivery"))?;
        Ok(delivery.id)
    }

    /// Every delivery, in the order they were added. Blocking: a scan (the tree holds only
    /// what is not delivered yet).
    pub fn all(&self) -> Result<Vec<Delivery>, QueueError> {
        self.first(usize::MAX)
    }

    /// The `limit` oldest deliveries, in the order they were added. Blocking.
    pub fn first(&self, limit: usize) -> Result<Vec<Delivery>, QueueError> {
        let mut found = Vec::new();
        for entry in self.store.t()?.hooks.iter().take(limit) {
            let (_, value) = entry.map_err(sled_error("scan hook deliveries"))?;
            found.push(decode::<Delivery>("hook delivery", &value)?);
        }
        Ok(found)
    }

    /// The deliveries added after the one numbered `id`, in order (ids only grow). Blocking: a
    /// scan of what is newer, which is usually nothing.
    pub fn after(&self, id: u64) -> Result<Vec<Delivery>, QueueError> {
        let mut found = Vec::new();
        let Some(next) = id.checked_add(1) else {
            return Ok(found);
        };
        for entry in self.store.t()?.hooks.range(next.to_be_bytes()..) {
            let (_, value) = entry.map_err(sled_error("scan hook deliveries"))?;
            found.push(decode::<Delivery>("hook delivery", &value)?);
        }
        Ok(found)
    }

    /// The delivery numbered `id`, if it is still waiting. Blocking.
    pub fn get(&self, id: u64) -> Result<Option<Delivery>, QueueError> {
        let found = self
            .store
            .t()?
            .hooks
            .get(id.to_be_bytes())
            .map_err(sled_error("read a hook delivery"))?;
        found
            .map(|value| decode::<Delivery>("hook delivery", &value))
            .transpose()
    }

    /// Writes `delivery` back (after an attempt). Blocking.
    pub fn update(&self, delivery: &Delivery) -> Result<(), QueueError> {
        self.store
            .t()?
            .hooks
            .insert(delivery.id.to_be_bytes(), encode(delivery))
            .map_err(sled_error("update a hook delivery"))?;
        Ok(())
    }

    /// Forgets a delivered hook, not flushed: durable after the next flush (the daemon's next
    /// group commit, or sled's own within half a second). A crash before it delivers the hook
    /// again, which at-least-once delivery allows; a flush per delivery woke all of sled's IO
    /// threads each time. Blocking.
    pub fn delivered(&self, id: u64) -> Result<(), QueueError> {
        self.store
            .t()?
            .hooks
            .remove(id.to_be_bytes())
            .map_err(sled_error("remove a hook delivery"))?;
        Ok(())
    }

    /// Makes failed deliveries due again (`ferry retry --failed`); returns how many. Blocking.
    pub fn retry_failed(&self, now: u64) -> Result<usize, QueueError> {
        let mut count = 0;
        for mut delivery in self.all()?.into_iter().filter(|d| d.failed) {
            (delivery.failed, delivery.attempts, delivery.next_attempt_ms) = (false, 0, now);
            self.update(&delivery)?;
            count += 1;
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_are_numbered_kept_in_order_and_forgotten_once_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let deliveries = store.deliveries();
        let delivery = |job_id| Delivery {
            id: 0,
            job_id,
            event: "uploaded".into(),
            hook: serde_json::json!({"exec": {"argv": ["true"], "timeout": "1s"}}),
            payload: serde_json::json!({"job_id": job_id}),
            then: None,
            attempts: 0,
            next_attempt_ms: 0,
            last_error: None,
            failed: false,
        };
        let first = deliveries.add(delivery(1)).unwrap();
        let second = deliveries.add(delivery(2)).unwrap();
        assert!(second > first);
        let newer = deliveries.after(first).unwrap();
        assert_eq!(newer.iter().map(|d| d.id).collect::<Vec<_>>(), [second]);
        assert!(deliveries.after(second).unwrap().is_empty());
        assert_eq!(deliveries.first(1).unwrap()[0].id, first);
        assert_eq!(deliveries.get(first).unwrap().unwrap().job_id, 1);
        let mut all = deliveries.all().unwrap();
        assert_eq!(all.iter().map(|d| d.job_id).collect::<Vec<_>>(), [1, 2]);
        all[0].failed = true;
        deliveries.update(&all[0]).unwrap();
        assert_eq!(deliveries.retry_failed(99).unwrap(), 1);
        assert_eq!(deliveries.all().unwrap()[0].next_attempt_ms, 99);
        deliveries.delivered(first).unwrap();
        drop(deliveries);
        drop(store);
        let reopened = Store::open(dir.path()).unwrap().deliveries().all().unwrap();
        assert_eq!(reopened.iter().map(|d| d.id).collect::<Vec<_>>(), [second]);
    }
}
