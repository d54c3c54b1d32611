//! Delivering hooks, at least once: a job's outcome writes the deliveries its watch's hooks call
//! for in the same store step (see `worker::finish`); this task tries each due one, forgets it
//! once delivered (then applies an `after_upload` that waited for it), and otherwise tries it
//! again with capped exponential backoff, until `MAX_ATTEMPTS` have failed: then it waits for
//! `ferry retry --failed`, and `ferry status` reports it (exit code 1). Uploads never wait for
//! hooks.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::Daemon;
use crate::config::{AfterUpload, HookSpec};
use crate::control::EventKind;
use crate::control::protocol::{FailedJob, HooksStatus};
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

/// The deliveries waiting, by when each is due. Built from one read of the store, then kept
/// in step: new ones are read by number (numbers only grow), and each one tried is put back
/// with its next time unless it was delivered or has failed. So a backlog that the endpoint
/// keeps refusing costs a look at the few that are due, not a read of all of them each time;
/// and `ferry status` reads its counts from here, not from the store.
#[derive(Debug, Default)]
struct Schedule {
    due: std::collections::BTreeSet<(u64, u64)>,
    /// How many wait for `ferry retry --failed`, and the oldest of them (by number) as
    /// status shows them: at most `STATUS_FAILED_SHOWN`, however many failed.
    failed: usize,
    failures: std::collections::BTreeMap<u64, FailedJob>,
    /// The highest delivery number read.
    seen: u64,
}

impl Schedule {
    /// Takes in `delivery`: due at its time, or failed.
    fn add(&mut self, delivery: &Delivery) {
        self.seen = self.seen.max(delivery.id);
        match delivery.failed {
            true => {
                self.failed += 1;
                self.failures.insert(delivery.id, failure(delivery));
                if self.failures.len() > super::STATUS_FAILED_SHOWN {
                    self.failures.pop_last();
                }
            }
            false => {
                self.due.insert((delivery.next_attempt_ms, delivery.id));
            }
        }
    }

    /// What status shows, with `trying` deliveries taken out and being tried.
    fn status(&self, trying: usize) -> HooksStatus {
        HooksStatus {
            pending: (self.due.len() + trying) as u64,
            failed: self.failed as u64,
            failures: self.failures.values().cloned().collect(),
        }
    }

    /// Up to `limit` deliveries due at `now`, earliest first, taken out.
    fn take_due(&mut self, now: u64, limit: usize) -> Vec<u64> {
        let mut taken = Vec::new();
        while taken.len() < limit {
            match self.due.first() {
                Some(&(at, id)) if at <= now => {
                    self.due.pop_first();
                    taken.push(id);
                }
                _ => break,
            }
        }
        taken
    }

    /// How long until the next delivery is due, if one waits.
    fn wait(&self, now: u64) -> Option<Duration> {
        let (at, _) = self.due.first()?;
        Some(Duration::from_millis(at.saturating_sub(now)))
    }
}

/// How status shows a delivery that failed.
fn failure(delivery: &Delivery) -> FailedJob {
    FailedJob {
        job_id: delivery.job_id,
        path: delivery.path(),
        error: format!(
            "{} hook: {}",
            delivery.event,
            delivery.last_error.as_deref().unwrap_or_default()
        ),
    }
}

/// Delivers due hooks until `stop`. `daemon.hooks_wake` says new ones were written; with
/// `daemon.hooks_reread` set (`ferry retry --failed`), every waiting one is read again.
pub(super) async fn run(daemon: Arc<Daemon>, stop: CancellationToken) {
    let deliverer = crate::hooks::Deliverer::new();
    let mut schedule: Option<Schedule> = None;
    loop {
        if daemon.hooks_reread.swap(false, Ordering::Relaxed) {
            schedule = None;
        }
        schedule = read(&daemon, schedule).await;
        let Some(known) = schedule.as_mut() else {
            // The store cannot be read now: try again later.
            let wait = tokio::time::sleep(IDLE_RECHECK);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = daemon.hooks_wake.notified() => {}
                _ = wait => {}
            }
            continue;
        };
        let due = known.take_due(now_ms(), AT_ONCE);
        publish(&daemon, known.status(due.len()));
        if !due.is_empty() {
            deliver(&daemon, known, due, &deliverer).await;
            continue;
        }
        let sleep = known
            .wait(now_ms())
            .unwrap_or(IDLE_RECHECK)
            .min(IDLE_RECHECK);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = daemon.hooks_wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// Attempts the deliveries `due` at once; those to try again go back in `known`.
async fn deliver(daemon: &Arc<Daemon>, known: &mut Schedule, due: Vec<u64>, deliverer: &Deliverer) {
    let mut tries = tokio::task::JoinSet::new();
    for id in due {
        tries.spawn(attempt(daemon.clone(), id, deliverer.clone()));
    }
    while let Some(tried) = tries.join_next().await {
        if let Ok(Some(again)) = tried {
            known.add(&again);
        }
    }
}

/// Tells `ferry status` and `/metrics` what waits.
fn publish(daemon: &Daemon, status: HooksStatus) {
    *daemon
        .hooks_status
        .lock()
        .expect("hooks status lock is never poisoned") = status;
}

/// `schedule` with the deliveries added since it was read; every waiting one when there is
/// none yet. `None` when the store cannot be read.
async fn read(daemon: &Daemon, schedule: Option<Schedule>) -> Option<Schedule> {
    let deliveries = daemon.store.deliveries();
    let seen = schedule.as_ref().map(|known| known.seen);
    let found = daemon
        .on_store(move || match seen {
            Some(seen) => deliveries.after(seen),
            None => deliveries.all(),
        })
        .await
        .ok()?;
    let mut schedule = schedule.unwrap_or_default();
    for delivery in &found {
        schedule.add(delivery);
    }
    Some(schedule)
}

/// One attempt at the delivery numbered `id`, and what follows from it; the delivery, when
/// it waits for another attempt.
async fn attempt(daemon: Arc<Daemon>, id: u64, deliverer: Deliverer) -> Option<Delivery> {
    let deliveries = daemon.store.deliveries();
    let mut delivery = daemon.on_store(move || deliveries.get(id)).await.ok()??;
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
    let path = delivery.path();
    match outcome {
        Ok(()) => {
            delivered(&daemon, delivery, path).await;
            None
        }
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
            let kept = delivery.clone();
            let _ = daemon.on_store(move || deliveries.update(&kept)).await;
            Some(delivery)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(id: u64, at: u64, failed: bool) -> Delivery {
        Delivery {
            id,
            job_id: id,
            event: "uploaded".into(),
            hook: serde_json::Value::Null,
            payload: serde_json::Value::Null,
            then: None,
            attempts: 0,
            next_attempt_ms: at,
            last_error: failed.then(|| "refused".to_string()),
            failed,
        }
    }

    #[test]
    fn the_schedule_hands_out_what_is_due_earliest_first_and_counts_the_failed_apart() {
        let mut schedule = Schedule::default();
        for (id, at, failed) in [
            (1, 500, false),
            (2, 100, false),
            (3, 50, true),
            (4, 100, false),
        ] {
            schedule.add(&waiting(id, at, failed));
        }
        assert_eq!(schedule.seen, 4);
        let status = schedule.status(0);
        assert_eq!((status.pending, status.failed), (3, 1));
        assert_eq!(status.failures[0].job_id, 3);
        assert_eq!(status.failures[0].error, "uploaded hook: refused");
        // (now, limit) -> taken, then the wait until the next one
        let steps: [(u64, usize, &[u64], Option<u64>); 4] = [
            (99, 8, &[], Some(1)),
            (100, 1, &[2], Some(0)),
            (100, 8, &[4], Some(400)),
            (600, 8, &[1], None),
        ];
        for (now, limit, taken, wait) in steps {
            assert_eq!(schedule.take_due(now, limit), taken, "at {now}");
            let wait = wait.map(Duration::from_millis);
            assert_eq!(schedule.wait(now), wait, "at {now}");
        }
        // Being tried, they are still pending.
        assert_eq!(schedule.status(3).pending, 3);
        // Tried and put back for later.
        schedule.add(&waiting(2, 2_000, false));
        assert_eq!(schedule.take_due(1_999, 8), Vec::<u64>::new());
        assert_eq!(schedule.take_due(2_000, 8), [2]);
        // However many fail, status keeps the oldest few.
        for id in 100..200 {
            schedule.add(&waiting(id, 0, true));
        }
        let status = schedule.status(0);
        assert_eq!(status.failed, 101);
        let shown: Vec<u64> = status.failures.iter().map(|f| f.job_id).collect();
        let oldest: Vec<u64> = [3].into_iter().chain(100..).take(shown.len()).collect();
        assert_eq!(
            (shown.len(), shown),
            (crate::daemon::STATUS_FAILED_SHOWN, oldest)
        );
        // Retried by `ferry retry --failed` (a fresh read): no longer failed.
        let mut fresh = Schedule::default();
        fresh.add(&waiting(3, 50, false));
        assert_eq!((fresh.status(0).pending, fresh.status(0).failed), (1, 0));
    }
}
