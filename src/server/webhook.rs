//! The receiver's webhook (`ferry serve --webhook URL`): each completed upload is POSTed as a
//! JSON document, signed as the daemon's hooks are (`crate::hooks`), and tried again with
//! backoff when the endpoint fails.
//!
//! A post is kept in the storage folder (`Storage::record_webhook`) in the same step that
//! completes the upload, before the client hears of it, and forgotten once delivered. A post
//! that fails a round of attempts rests (ten minutes) and goes round again, until delivered; a
//! receiver that stopped (or was killed) posts what it had not delivered when it starts again.
//! So each completed upload is posted at least once; a post may come twice after a crash, and
//! `upload_id` tells them apart.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

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
/// Between two rounds of a post that the endpoint keeps refusing.
const REST: Duration = Duration::from_secs(600);
/// Posts in flight at once: a backlog left from before a restart is not one burst.
const IN_FLIGHT: usize = 8;

/// `ferry serve --webhook`: where completed uploads are told, and how a refused post is tried
/// again.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub hook: HookSpec,
    /// One round of attempts.
    pub round: RetryPolicy,
    /// The wait after a round that failed, before the next.
    pub rest: Duration,
}

impl WebhookConfig {
    /// Posts to `hook` in rounds of ten attempts over about five minutes, ten minutes apart.
    pub fn new(hook: HookSpec) -> WebhookConfig {
        WebhookConfig {
            hook,
            round: ROUND,
            rest: REST,
        }
    }
}

/// Where completed uploads are told, and the client that tells them.
pub(crate) struct Webhook {
    config: Arc<WebhookConfig>,
    deliverer: Deliverer,
    storage: Storage,
    slots: Arc<Semaphore>,
}

impl Webhook {
    pub(crate) fn new(config: WebhookConfig, storage: Storage) -> Webhook {
        Webhook {
            config: Arc::new(config),
            deliverer: Deliverer::new(),
            storage,
            slots: Arc::new(Semaphore::new(IN_FLIGHT)),
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

    /// Posts, in the background, what an earlier run kept and did not deliver.
    pub(crate) async fn resume(&self) {
        let storage = self.storage.clone();
        let pending = tokio::task::spawn_blocking(move || storage.pending_webhooks()).await;
        match pending {
            Ok(Ok(pending)) => {
                if !pending.is_empty() {
                    tracing::info!(count = pending.len(), "posting webhooks kept from before");
                }
                for (upload_id, document) in pending {
                    self.deliver(upload_id, document);
                }
            }
            Ok(Err(error)) => tracing::error!(%error, "cannot list the webhook posts kept"),
            Err(error) => tracing::error!(%error, "listing the webhook posts kept failed"),
        }
    }

    /// Delivers a kept post in the background, in rounds until delivered, and forgets it
    /// then. A post rests between rounds without taking a slot.
    pub(crate) fn deliver(&self, upload_id: String, document: serde_json::Value) {
        let (config, deliverer) = (self.config.clone(), self.deliverer.clone());
        let (storage, slots) = (self.storage.clone(), self.slots.clone());
        tokio::spawn(async move {
            loop {
                let Ok(slot) = slots.acquire().await else {
                    return;
                };
                let delivered = post(&deliverer, &config, &document, &upload_id).await;
                drop(slot);
                if delivered {
                    break;
                }
                tokio::time::sleep(config.rest).await;
            }
            let id = upload_id.clone();
            let forgotten = tokio::task::spawn_blocking(move || storage.forget_webhook(&id)).await;
            if let Ok(Err(error)) = forgotten {
                tracing::warn!(upload_id, %error, "cannot forget a delivered webhook post");
            }
        });
    }
}

/// Posts `document` in one round of attempts with backoff; whether it was delivered.
async fn post(
    deliverer: &Deliverer,
    config: &WebhookConfig,
    document: &serde_json::Value,
    upload_id: &str,
) -> bool {
    let round = config.round;
    for attempt in 1..=round.max_attempts {
        let Err(error) = deliverer.deliver(&config.hook, "uploaded", document).await else {
            return true;
        };
        let error = crate::error::chain(&error);
        if attempt == round.max_attempts {
            let rest = humantime::format_duration(config.rest).to_string();
            tracing::error!(upload_id, %error, attempts = attempt, "webhook not delivered; kept, and posted again in {rest}");
            return false;
        }
        let wait = round.delay(attempt, rand::random(), None);
        tracing::warn!(upload_id, %error, ?wait, "webhook not delivered; will retry");
        tokio::time::sleep(wait).await;
    }
    false
}
