//! The daemon's job events (`ferry events`): an in-memory log of the latest `CAPACITY` events,
//! each with an id one above the last, and a long poll for the ones after an id. Nothing here
//! is durable: ids start again from 1 when the daemon starts, as Syncthing's do.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

use crate::control::{Event, EventKind};
use crate::queue::JobId;
use crate::queue::jobs::now_ms;

/// Events kept for consumers that fall behind: at a few per file, the last few thousand files.
const CAPACITY: usize = 10_000;
/// Most events one answer carries (a frame stays small).
const MOST_PER_ANSWER: usize = 1_000;

#[derive(Debug, Default)]
pub(super) struct EventLog {
    events: Mutex<VecDeque<Event>>,
    /// Woken at every new event.
    added: Notify,
}

impl EventLog {
    /// Adds an event about `job_id` and its file.
    pub(super) fn record(
        &self,
        kind: EventKind,
        job_id: JobId,
        path: &Path,
        detail: Option<String>,
    ) {
        let mut events = self.events.lock().expect("events lock is never poisoned");
        let id = events.back().map_or(1, |last| last.id + 1);
        if events.len() == CAPACITY {
            events.pop_front();
        }
        events.push_back(Event {
            id,
            time_ms: now_ms(),
            kind,
            job_id,
            path: path.to_path_buf(),
            detail,
        });
        drop(events);
        self.added.notify_waiters();
    }

    /// The events after `since`, waiting up to `wait` for one if there are none yet; and the
    /// oldest id held (0 before the first event).
    pub(super) async fn after(&self, since: u64, wait: Duration) -> (Vec<Event>, u64) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Armed before looking, so an event added in between is not missed.
            let added = self.added.notified();
            let found = self.read(since);
            if !found.0.is_empty() || tokio::time::Instant::now() >= deadline {
                return found;
            }
            if tokio::time::timeout_at(deadline, added).await.is_err() {
                return self.read(since);
            }
        }
    }

    fn read(&self, since: u64) -> (Vec<Event>, u64) {
        let events = self.events.lock().expect("events lock is never poisoned");
        let oldest = events.front().map_or(0, |first| first.id);
        let after: Vec<Event> = events
            .iter()
            .skip_while(|event| event.id <= since)
            .take(MOST_PER_ANSWER)
            .cloned()
            .collect();
        (after, oldest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On tokio's paused clock: ids follow one another, a reader gets what came after its id,
    /// a waiting reader is woken by the next event, and one with nothing new gets an empty
    /// answer when its wait ends.
    #[tokio::test(start_paused = true)]
    async fn readers_get_the_events_after_their_id_and_wait_for_the_next() {
        let log = std::sync::Arc::new(EventLog::default());
        assert_eq!(log.after(0, Duration::ZERO).await, (Vec::new(), 0));
        log.record(EventKind::Queued, 7, Path::new("/w/a"), None);
        log.record(EventKind::Started, 7, Path::new("/w/a"), None);
        let (events, oldest) = log.after(0, Duration::from_secs(5)).await;
        let ids: Vec<u64> = events.iter().map(|event| event.id).collect();
        assert_eq!((ids, oldest), (vec![1, 2], 1));
        assert_eq!(
            log.after(1, Duration::ZERO).await.0[0].kind,
            EventKind::Started
        );

        let writer = log.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            writer.record(EventKind::Uploaded, 7, Path::new("/w/a"), Some("a".into()));
        });
        let started = tokio::time::Instant::now();
        let (events, _) = log.after(2, Duration::from_secs(5)).await;
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(2),
            "woken by the event"
        );
        assert_eq!((events[0].id, events[0].kind), (3, EventKind::Uploaded));
        let (events, _) = log.after(3, Duration::from_secs(5)).await;
        assert!(events.is_empty());
        assert_eq!(started.elapsed(), Duration::from_secs(7), "the whole wait");
    }
}
