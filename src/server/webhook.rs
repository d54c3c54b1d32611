//! The receiver's webhook (`ferry serve --webhook URL`): each completed upload is POSTed as a
//! JSON document, signed as the daemon's hooks are (`crate::hooks`), and tried again with
//! backoff when the endpoint fails.
//!
//! A post is kept in the storage folder (`Storage::record_webhook`) in the same step that
//! completes the upload, before the client hears of it, and forgotten once delivered. A
//! receiver that stopped (or was killed) posts what it had not delivered when it starts again,
//! as it does a post that failed every attempt. So each completed upload is posted at least
//! once; a post may come twice after a crash, and `upload_id` tells them apart.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::storage::Storage;
use crate::config::HookSpec;
use crate::hooks::Deliverer;
use crate::protocol::CompletedFile;
use crate::upload::RetryPolicy;

/// From 1 s, doubling, at most a minute, with full jitter; about five minutes in all.
const BACKOFF: RetryPolicy = RetryPolicy {
    max_attempts: 10,
    backoff_base: Duration::from_secs(1),
    backoff_max: Duration::from_secs(60),
};
/// Posts in flight at once: a backlog left from before a restart is not one burst.
const IN_FLIGHT: usize = 8;

/// Where completed uploads are told, and the client that tells them.
pub(crate) struct Webhook {
    hook: HookSpec,
    deliverer: Deliverer,
    storage: Storage,
    slots: Arc<Semaphore>,
}

impl Webhook {
    pub(crate) fn new(hook: HookSpec, storage: Storage) -> Webhook {
        Webhook {
            hook,
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

    /// Delivers a kept post in the background, and forgets it once delivered. One that fails
    /// every attempt stays kept, for the next start.
    pub(crate) fn deliver(&self, upload_id: String, document: serde_json::Value) {
        let (hook, deliverer) = (self.hook.clone(), self.deliverer.clone());
        let (storage, slots) = (self.storage.clone(), self.slots.clone());
        tokio::spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            if !post(&deliverer, &hook, &document, &upload_id).await {
                return;
            }
            let id = upload_id.clone();
            let forgotten = tokio::task::spawn_blocking(move || storage.forget_webhook(&id)).await;
            if let Ok(Err(error)) = forgotten {
                tracing::warn!(upload_id, %error, "cannot forget a delivered webhook post");
            }
        });
    }
}

/// Posts `document` with backoff; whether it was delivered.
async fn post(
    deliverer: &Deliverer,
    hook: &HookSpec,
    document: &serde_json::Value,
    upload_id: &str,
) -> bool {
    for attempt in 1..=BACKOFF.max_attempts {
        let Err(error) = deliverer.deliver(hook, "uploaded", document).await else {
            return true;
        };
        let error = crate::error::chain(&error);
        if attempt == BACKOFF.max_attempts {
            tracing::error!(upload_id, %error, attempts = attempt, "webhook not delivered; kept, and posted again when the receiver restarts");
            return false;
        }
        let wait = BACKOFF.delay(attempt, rand::random(), None);
        tracing::warn!(upload_id, %error, ?wait, "webhook not delivered; will retry");
        tokio::time::sleep(wait).await;
    }
    false
}
