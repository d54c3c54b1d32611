//! The receiver's webhook (`ferry serve --webhook URL`): each completed upload is POSTed as a
//! JSON document, signed as the daemon's hooks are (`crate::hooks`), and tried again with
//! backoff when the endpoint fails.
//!
//! A post is kept in the storage folder (`Storage::record_webhook`) in the same step that
//! completes the upload, before the client hears of it, and forgotten once delivered. Memory
//! holds at most `HELD` posts (waiting for a slot or being tried): a post past that, or one
//! that failed a round of attempts, waits on disk for the sweep, which reads the oldest kept
//! posts at start and then every `rest` (ten minutes). So each completed upload is posted at
//! least once, across restarts and however long the endpoint is down; a post may come twice
//! after a crash, and `upload_id` tells them apart.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::metrics::WebhookMetrics;
use super::storage::Storage;
use crate::config::HookSpec;
use crate::hooks::Deliverer;
use crate::protocol::CompletedFile;
use crate::upload::RetryPolicy;

/// A round of attempts: from 1 s, doubling, at most a minute, with full jitter; about five
/// minutes in all.
const ROUND: RetryPolicy = RetryPolicy {
    max_attempts: 10,
    backoff_base: Duration::from_secs(1),
    backoff_max: Duration::from_secs(60),
};
/// Between two sweeps of the posts kept on disk.
const REST: Duration = Duration::from_secs(600);
/// Posts in flight at once: a backlog left from before a restart is not one burst.
const IN_FLIGHT: usize = 8;
/// Posts held in memory at once; the rest wait on disk.
const HELD: usize = 1024;

/// `ferry serve --webhook`: where completed uploads are told, and how a refused post is tried
/// again.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub hook: HookSpec,
    /// One round of attempts.
    pub round: RetryPolicy,
    /// Between two sweeps of the posts kept on disk.
    pub rest: Duration,
    /// Posts held in memory at once.
    pub held: usize,
}

impl WebhookConfig {
    /// Posts to `hook` in rounds of ten attempts over about five minutes, a post that failed
    /// one tried again by the sweep ten minutes on; at most 1,024 held in memory.
    pub fn new(hook: HookSpec) -> WebhookConfig {
        WebhookConfig {
            hook,
            round: ROUND,
            rest: REST,
            held: HELD,
        }
    }
}

/// Where completed uploads are told, and the client that tells them; cheap to clone.
#[derive(Clone)]
pub(crate) struct Webhook {
    config: Arc<WebhookConfig>,
    deliverer: Deliverer,
    storage: Storage,
    slots: Arc<Semaphore>,
    /// The upload ids of the posts held in memory.
    held: Arc<Mutex<HashSet<String>>>,
    /// Set when a post was left on disk for want of room; a delivery then wakes the sweep.
    spilled: Arc<AtomicBool>,
    sweep_now: Arc<Notify>,
    metrics: WebhookMetrics,
}

impl Webhook {
    pub(crate) fn new(config: WebhookConfig, storage: Storage, metrics: WebhookMetrics) -> Webhook {
        Webhook {
            config: Arc::new(config),
            deliverer: Deliverer::new(),
            storage,
            slots: Arc::new(Semaphore::new(IN_FLIGHT)),
            held: Arc::default(),
            spilled: Arc::default(),
            sweep_now: Arc::default(),
            metrics,
        }
    }

    /// The document posted for a completed upload.
    pub(crate) fn document(upload_id: &str, file: &CompletedFile) -> serde_json::Value {
        serde_json::json!({
            "event": "uploaded",
            "upload_id": upload_id,
            "workspace_id": file.workspace_id,
            "remote_path": file.path,
            "size": file.size,
            "sha256": file.sha256,
            "completed_at": file.completed_at,
        })
    }

    /// Until `stop`: posts the oldest kept posts not held, as many as there is room for, then
    /// rests (or is woken by a delivery, when posts were left on disk for want of room). The
    /// first sweep posts what an earlier run kept and did not deliver.
    pub(crate) async fn sweep(self, stop: CancellationToken) {
        loop {
            self.spilled.store(false, Ordering::Relaxed);
            let room = self.room();
            let kept = self.kept(room).await;
            if kept.len() >= room {
                // The room is full: more may wait on disk.
                self.spilled.store(true, Ordering::Relaxed);
            }
            if !kept.is_empty() {
                tracing::info!(count = kept.len(), "posting kept webhook posts");
            }
            for (upload_id, document) in kept {
                self.deliver(upload_id, document);
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.config.rest) => {}
                _ = self.sweep_now.notified() => {}
            }
        }
    }

    /// The oldest `room` posts kept on disk and not held.
    async fn kept(&self, room: usize) -> Vec<(String, serde_json::Value)> {
        let (storage, held) = (self.storage.clone(), self.held_ids());
        let listed = tokio::task::spawn_blocking(move || storage.pending_webhooks(&held, room));
        match listed.await {
            Ok(Ok((kept, _))) => kept,
            Ok(Err(error)) => {
                tracing::error!(%error, "cannot list the webhook posts kept");
                Vec::new()
            }
            Err(error) => {
                tracing::error!(%error, "listing the webhook posts kept failed");
                Vec::new()
            }
        }
    }

    /// Posts `document` in one round of attempts with backoff; whether it was delivered.
    async fn post(&self, document: &serde_json::Value, upload_id: &str) -> bool {
        let (config, round) = (&self.config, self.config.round);
        for attempt in 1..=round.max_attempts {
            let delivery = self.deliverer.deliver(&config.hook, "uploaded", document);
            let Err(error) = delivery.await else {
                return true;
            };
            self.metrics.attempts_failed.inc();
            let error = crate::error::chain(&error);
            if attempt == round.max_attempts {
                let rest = humantime::format_duration(config.rest).to_string();
                tracing::error!(upload_id, %error, attempts = attempt, "webhook not delivered; kept, and posted again by a sweep (every {rest})");
                return false;
            }
            let wait = round.delay(attempt, rand::random(), None);
            tracing::warn!(upload_id, %error, ?wait, "webhook not delivered; will retry");
            tokio::time::sleep(wait).await;
        }
        false
    }

    fn room(&self) -> usize {
        let held = self.held.lock().expect("held lock is never poisoned").len();
        self.config.held.saturating_sub(held)
    }

    fn held_ids(&self) -> HashSet<String> {
        self.held
            .lock()
            .expect("held lock is never poisoned")
            .clone()
    }

    /// Counts the posts kept on disk, for the `waiting` gauge: called before any upload can
    /// complete, which then counts its own (`completed`), as forgetting a delivered one does.
    pub(crate) async fn count_kept(&self) {
        let storage = self.storage.clone();
        let listed =
            tokio::task::spawn_blocking(move || storage.pending_webhooks(&HashSet::new(), 0));
        match listed.await {
            Ok(Ok((_, waiting))) => {
                self.metrics.waiting.set(waiting as i64);
            }
            Ok(Err(error)) => tracing::error!(%error, "cannot count the webhook posts kept"),
            Err(error) => tracing::error!(%error, "counting the webhook posts kept failed"),
        }
    }

    /// Forgets a delivered post, and counts it gone if it was still kept.
    async fn forget(&self, upload_id: &str) {
        let (storage, id) = (self.storage.clone(), upload_id.to_string());
        match tokio::task::spawn_blocking(move || storage.forget_webhook(&id)).await {
            Ok(Ok(true)) => {
                self.metrics.waiting.dec();
            }
            Ok(Ok(false)) => {}
            Ok(Err(error)) => {
                tracing::warn!(upload_id, %error, "cannot forget a delivered webhook post")
            }
            Err(error) => tracing::warn!(upload_id, %error, "forgetting a webhook post failed"),
        }
    }

    /// Delivers the post of an upload just completed (and kept).
    pub(crate) fn completed(&self, upload_id: String, document: serde_json::Value) {
        self.metrics.waiting.inc();
        self.deliver(upload_id, document);
    }

    /// Delivers a kept post in the background: one round of attempts, then it is forgotten
    /// if delivered, else left to the sweep. With `held` posts in memory already, it is left
    /// to the sweep at once, which the next delivery then wakes (the endpoint takes posts).
    fn deliver(&self, upload_id: String, document: serde_json::Value) {
        {
            let mut held = self.held.lock().expect("held lock is never poisoned");
            if held.len() >= self.config.held {
                self.spilled.store(true, Ordering::Relaxed);
                return;
            }
            if !held.insert(upload_id.clone()) {
                return;
            }
        }
        let webhook = self.clone();
        tokio::spawn(async move {
            let delivered = match webhook.slots.acquire().await {
                Ok(_slot) => webhook.post(&document, &upload_id).await,
                Err(_) => false,
            };
            if delivered {
                webhook.metrics.delivered.inc();
                webhook.forget(&upload_id).await;
            }
            let mut held = webhook.held.lock().expect("held lock is never poisoned");
            held.remove(&upload_id);
            if delivered && webhook.spilled.load(Ordering::Relaxed) {
                webhook.sweep_now.notify_one();
            }
        });
    }
}
