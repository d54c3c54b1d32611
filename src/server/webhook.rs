//! The receiver's webhook (`ferry serve --webhook URL`): each completed upload is POSTed as a
//! JSON document, signed as the daemon's hooks are (`crate::hooks`), and tried again with
//! backoff when the endpoint fails. Attempts are kept in memory: what a stopped receiver had
//! not delivered is lost, which the log says.

use std::time::Duration;

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

/// Where completed uploads are told, and the client that tells them.
pub(crate) struct Webhook {
    hook: HookSpec,
    deliverer: Deliverer,
}

impl Webhook {
    pub(crate) fn new(hook: HookSpec) -> Webhook {
        Webhook {
            hook,
            deliverer: Deliverer::new(),
        }
    }

    /// Tells the webhook of a completed upload, in the background.
    pub(crate) fn completed(&self, upload_id: &str, file: &CompletedFile) {
        let document = serde_json::json!({
            "event": "uploaded",
            "upload_id": upload_id,
            "workspace_id": file.workspace_id,
            "remote_path": file.path,
            "size": file.size,
            "sha256": file.sha256,
            "completed_at": file.completed_at,
        });
        let (hook, deliverer) = (self.hook.clone(), self.deliverer.clone());
        tokio::spawn(async move {
            for attempt in 1..=BACKOFF.max_attempts {
                let Err(error) = deliverer.deliver(&hook, "uploaded", &document).await else {
                    return;
                };
                let error = crate::error::chain(&error);
                if attempt == BACKOFF.max_attempts {
                    tracing::error!(%error, attempts = attempt, "webhook not delivered; giving up");
                    return;
                }
                let wait = BACKOFF.delay(attempt, rand::random(), None);
                tracing::warn!(%error, ?wait, "webhook not delivered; will retry");
                tokio::time::sleep(wait).await;
            }
        });
    }
}
