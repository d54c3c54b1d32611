//! The store's health. A store operation that fails for want of disk (a full data folder, an
//! I/O error) puts the daemon in a failing state, logged once: nothing is claimed and nothing
//! is rescanned in a loop meanwhile. A recovery task reopens the store with backoff (sled
//! fails every operation after an I/O error until it is reopened) and probes it with a durable
//! write; once one succeeds, the daemon logs it, queues again the jobs whose outcome could not
//! be recorded, and rescans the watched folders for the files whose queueing failed.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Daemon;
use crate::queue::QueueError;

/// First wait before reopening a failing store; doubles up to `RECOVERY_MAX_WAIT`.
const RECOVERY_FIRST_WAIT: Duration = Duration::from_secs(1);
/// Longest wait between two recovery attempts: space freed is noticed within this.
const RECOVERY_MAX_WAIT: Duration = Duration::from_secs(15);

/// Whether the store takes writes, and why not.
#[derive(Default)]
pub(super) struct StoreHealth {
    problem: Mutex<Option<String>>,
    trouble: Notify,
}

impl StoreHealth {
    /// What is wrong with the store, if anything.
    pub(super) fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .expect("store health lock is never poisoned")
            .clone()
    }

    pub(super) fn is_failing(&self) -> bool {
        self.problem().is_some()
    }

    /// Notes a failed operation. Only storage failures count (not, say, an unreadable
    /// record); the first one is logged and wakes the recovery task.
    pub(super) fn failed(&self, error: &QueueError) {
        let Some(problem) = error.storage_problem() else {
            return;
        };
        let mut current = self
            .problem
            .lock()
            .expect("store health lock is never poisoned");
        if current.is_none() {
            tracing::error!(
                problem = %problem,
                "store: cannot write; uploads wait until it can (checked every {}s at most)",
                RECOVERY_MAX_WAIT.as_secs()
            );
            *current = Some(problem);
            self.trouble.notify_one();
        }
    }

    fn recovered(&self) {
        *self
            .problem
            .lock()
            .expect("store health lock is never poisoned") = None;
    }
}

/// Waits for trouble, then reopens the store until it takes writes again. Runs until `stop`.
pub(super) async fn recover(daemon: Arc<Daemon>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = daemon.store_health.trouble.notified() => {}
        }
        let mut wait = RECOVERY_FIRST_WAIT;
        while daemon.store_health.is_failing() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(RECOVERY_MAX_WAIT);
            let store = daemon.store.clone();
            let probed = tokio::task::spawn_blocking(move || {
                store.reopen()?;
                store.probe_write()
            })
            .await
            .expect("reopening the store does not panic");
            if probed.is_ok() {
                resume(&daemon).await;
            }
        }
    }
}

/// The store takes writes again: jobs whose outcome was lost go back to the queue, and the
/// folders are rescanned for files whose queueing failed.
async fn resume(daemon: &Arc<Daemon>) {
    let running: Vec<_> = daemon
        .active
        .lock()
        .expect("active lock is never poisoned")
        .keys()
        .copied()
        .collect();
    let queue = daemon.store.jobs();
    let requeued = tokio::task::spawn_blocking(move || {
        queue.requeue_active_except(&running, crate::queue::jobs::now_ms())
    })
    .await
    .expect("requeueing does not panic");
    match requeued {
        Ok(requeued) => {
            daemon.store_health.recovered();
            tracing::info!(requeued, path = %daemon.store.dir().display(), "store: writable again; resuming");
            daemon.request_rescan();
            daemon.wake.notify_one();
        }
        Err(error) => daemon.store_health.failed(&error),
    }
}
