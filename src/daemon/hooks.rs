//! Delivering hooks, at least once: a job's outcome writes the deliveries its watch's hooks call
//! for in the same store step (see `worker::finish`); this task tries each due one, forgets it
//! once delivered (then applies an `after_upload` that waited for it), and otherwise tries it
//! again with capped exponential backoff, until `MAX_ATTEMPTS` have failed: then it waits for
//! `ferry retry --failed`, and `ferry status` reports it (exit code 1). Uploads never wait for
//! hooks.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::Daemon;
use crate::config::{AfterUpload, HookSpec};
use crate::control::EventKind;
use crate::hooks::Deliverer;
use crate::queue::jobs::now_ms;
use crate::queue::{Delivery, Fingerprint, JobRecord};
use crate::upload::RetryPolicy;

/// Attempts before a delivery waits for the user; with the backoff below, about an hour.
const MAX_ATTEMPTS: u32 = 16;
/// Backoff between attempts: from 1 s, doubling, at most 5 min, with full jitter.
const BACKOFF: RetryPolicy = RetryPolicy {
    max_attempts: MAX_ATTEMPTS,
    backoff_base: Duration::from_secs(1),
    backoff_max: Duration::from_secs(300),
};
/// Deliveries tried at once.
const AT_ONCE: usize = 8;
/// Longest the task sleeps without a wake-up.
const IDLE_RECHECK: Duration = Duration::from_secs(30);

/// An `after_upload` that waits for its `on_uploaded` hook: applied once that is delivered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Then {
    /// `None`: delete; else move into this folder.
    pub move_to: Option<PathBuf>,
    pub root: PathBuf,
    pub fingerprint: Fingerprint,
}

impl Then {
    pub(super) fn action(&self) -> AfterUpload {
        match &self.move_to {
            Some(folder) => AfterUpload::MoveTo(folder.clone()),
            None => AfterUpload::Delete,
        }
    }
}

/// What an uploaded or failed job's hooks are told.
pub(super) struct Told<'a> {
    pub job: &'a JobRecord,
    pub event: EventKind,
    pub size: Option<u64>,
    pub sha256: Option<&'a str>,
    pub metadata: &'a std::collections::BTreeMap<String, String>,
    pub started_ms: u64,
    pub error: Option<&'a str>,
}

/// The delivery of `hook` for what `told` says, to be written with the job's outcome.
pub(super) fn delivery(hook: &HookSpec, told: &Told<'_>, then: Option<Then>) -> Delivery {
    let job = told.job;
    let payload = serde_json::json!({
        "event": told.event.name(),
        "job_id": job.id,
        "path": job.path.to_string_lossy(),
        "remote": job.remote,
        "remote_path": job.remote_path,
        "size": told.size,
        "sha256": told.sha256,
        "metadata": told.metadata,
        "started_ms": told.started_ms,
        "finished_ms": now_ms(),
        "attempts": job.attempts + 1,
        "error": told.error,
    });
    Delivery {
        id: 0,
        job_id: job.id,
        event: told.event.name().to_string(),
        hook: serde_json::to_value(hook).expect("hooks serialise"),
        payload,
        then: then.map(|then| serde_json::to_value(then).expect("plain data serialises")),
        attempts: 0,
        next_attempt_ms: 0,
        last_error: None,
        failed: false,
    }
}

/// Delivers due hooks until `stop`; `daemon.hooks_wake` says new ones were written.
pub(super) async fn run(daemon: Arc<Daemon>, stop: CancellationToken) {
    let deliverer = crate::hooks::Deliverer::new();
    loop {
        let deliveries = daemon.store.deliveries();
        let found = daemon.on_store(move || deliveries.all()).await;
        let now = now_ms();
        let waiting = found.unwrap_or_default();
        let due: Vec<Delivery> = waiting
            .iter()
            .filter(|d| !d.failed && d.next_attempt_ms <= now)
            .cloned()
            .collect();
        if !due.is_empty() {
            // Every due one, AT_ONCE at a time; then read again: what was tried is now
            // delivered, or due later.
            for batch in due.chunks(AT_ONCE) {
                let mut tries = tokio::task::JoinSet::new();
                for delivery in batch.iter().cloned() {
                    tries.spawn(attempt(daemon.clone(), delivery, deliverer.clone()));
                }
                while tries.join_next().await.is_some() {}
            }
            continue;
        }
        let next = waiting
            .iter()
            .filter(|d| !d.failed)
            .map(|d| Duration::from_millis(d.next_attempt_ms.saturating_sub(now)))
            .min();
        let sleep = next.unwrap_or(IDLE_RECHECK).min(IDLE_RECHECK);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = daemon.hooks_wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// One attempt at `delivery`, and what follows from it.
async fn attempt(daemon: Arc<Daemon>, mut delivery: Delivery, deliverer: Deliverer) {
    let outcome = match serde_json::from_value::<HookSpec>(delivery.hook.clone()) {
        Ok(hook) => {
            let event = delivery.event.clone();
            deliverer
                .deliver(&hook, &event, &delivery.payload)
                .await
                .map_err(|error| crate::error::chain(&error))
        }
        Err(error) => Err(format!("cannot read the hook: {error}")),
    };
    let path = PathBuf::from(delivery.payload["path"].as_str().unwrap_or_default());
    match outcome {
        Ok(()) => delivered(&daemon, delivery, path).await,
        Err(error) => {
            delivery.attempts += 1;
            delivery.failed = delivery.attempts >= MAX_ATTEMPTS;
            let wait = BACKOFF.delay(delivery.attempts, rand::random(), None);
            delivery.next_attempt_ms = now_ms() + wait.as_millis() as u64;
            delivery.last_error = Some(error.clone());
            if delivery.failed {
                tracing::error!(job_id = delivery.job_id, %error, "hook failed; `ferry retry --failed` tries it again");
                let (id, detail) = (delivery.job_id, Some(error.clone()));
                daemon
                    .events
                    .record(EventKind::HookFailed, id, &path, detail);
            } else {
                tracing::warn!(job_id = delivery.job_id, %error, ?wait, "hook not delivered; will retry");
            }
            let deliveries = daemon.store.deliveries();
            let _ = daemon.on_store(move || deliveries.update(&delivery)).await;
        }
    }
}

/// A delivered hook: its waiting `after_upload` applied, then forgotten.
async fn delivered(daemon: &Arc<Daemon>, delivery: Delivery, path: PathBuf) {
    let then = delivery
        .then
        .clone()
        .and_then(|then| serde_json::from_value::<Then>(then).ok());
    if let Some(then) = then {
        let file = path.clone();
        let applied = tokio::task::spawn_blocking(move || {
            super::worker::after_upload(&then.action(), &file, &then.root, then.fingerprint)
        })
        .await
        .expect("after_upload does not panic");
        if let Err(error) = applied {
            tracing::warn!(path = %path.display(), %error, "after_upload could not be applied");
        }
    }
    let (id, job_id) = (delivery.id, delivery.job_id);
    let deliveries = daemon.store.deliveries();
    if daemon
        .on_store(move || deliveries.delivered(id))
        .await
        .is_ok()
    {
        tracing::info!(job_id, event = %delivery.event, "hook delivered");
        daemon
            .events
            .record(EventKind::HookDelivered, job_id, &path, None);
    }
}
