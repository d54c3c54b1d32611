//! The daemon's job events (`ferry events`): an in-memory log of the latest `CAPACITY` events,
//! each with an id one above the last, and a long poll for the ones after an id. Nothing here
//! is durable: ids start again from 1 when the daemon starts, as Syncthing's do.
//!
//! A long poll answers with the events of `GATHER` together: a busy daemon records a few
//! events per file, hundreds a second, and answering each as it comes cost a follower's
//! daemon a connection per event (a quarter of the daemon's CPU while 2,000 small files went
//! out, `benches/s3.rs`).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::control::{Event, EventKind};
use crate::queue::JobId;
use crate::queue::jobs::now_ms;

/// Events kept for consumers that fall behind: at a few per file, the last few thousand files.
const CAPACITY: usize = 10_000;
/// Most events one answer carries (a frame stays small).
const MOST_PER_ANSWER: usize = 1_000;
/// How long after the first event it holds a long poll waits for more before it answers.
const GATHER: Duration = Duration::from_millis(20);

#[derive(Debug, Default)]
pub(super) struct EventLog {
    /// Each event with the moment it was recorded.
    events: Mutex<VecDeque<(Instant, Event)>>,
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
        let id = events.back().map_or(1, |(_, last)| last.id + 1);
        if events.len() == CAPACITY {
            events.pop_front();
        }
        let event = Event {
            id,
            time_ms: now_ms(),
            kind,
            job_id,
            path: path.to_path_buf(),
            detail,
        };
        events.push_back((Instant::now(), event));
        drop(events);
        self.added.notify_waiters();
    }

    /// The events after `since`, and the oldest id held (0 before the first event). With a
    /// `wait`, a long poll: waits up to `wait` for the first event, and answers once the
    /// first it holds is `GATHER` old (or its answer is full), with those come since.
    pub(super) async fn after(&self, since: u64, wait: Duration) -> (Vec<Event>, u64) {
        let deadline = Instant::now() + wait;
        loop {
            // Armed before looking, so an event added in between is not missed.
            let added = self.added.notified();
            let (found, oldest, first_at) = self.read(since);
            let full = found.len() >= MOST_PER_ANSWER;
            match first_at {
                Some(_) if full || wait.is_zero() => return (found, oldest),
                Some(first_at) => {
                    tokio::time::sleep_until(first_at + GATHER).await;
                    let (found, oldest, _) = self.read(since);
                    return (found, oldest);
                }
                None if Instant::now() >= deadline => return (found, oldest),
                None => {
                    if tokio::time::timeout_at(deadline, added).await.is_err() {
                        let (found, oldest, _) = self.read(since);
                        return (found, oldest);
                    }
                }
            }
        }
    }

    /// The events after `since` (at most an answer's worth), the oldest id held, and when the
    /// first of them was recorded.
    fn read(&self, since: u64) -> (Vec<Event>, u64, Option<Instant>) {
        let events = self.events.lock().expect("events lock is never poisoned");
        let oldest = events.front().map_or(0, |(_, first)| first.id);
        let mut after = events
            .iter()
            .skip_while(|(_, event)| event.id <= since)
            .take(MOST_PER_ANSWER)
            .peekable();
        let first_at = after.peek().map(|(at, _)| *at);
        let after = after.map(|(_, event)| event.clone()).collect();
        (after, oldest, first_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On tokio's paused clock: ids follow one another, a reader gets what came after its id,
    /// a waiting reader is woken by the next event and answered `GATHER` later with those
    /// recorded meanwhile, and one with nothing new gets an empty answer when its wait ends.
    #[tokio::test(start_paused = true)]
    async fn readers_get_the_events_after_their_id_and_wait_for_the_next() {
        let log = std::sync::Arc::new(EventLog::default());
        assert_eq!(log.after(0, Duration::ZERO).await, (Vec::new(), 0));
        log.record(EventKind::Queued, 7, Path::new("/w/a"), None);
        log.record(EventKind::Started, 7, Path::new("/w/a"), None);
        let (events, oldest) = log.after(0, Duration::ZERO).await;
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
            tokio::time::sleep(GATHER / 2).await;
            writer.record(EventKind::Queued, 8, Path::new("/w/b"), None);
            tokio::time::sleep(GATHER).await;
            writer.record(EventKind::Started, 8, Path::new("/w/b"), None);
        });
        let started = Instant::now();
        let (events, _) = log.after(2, Duration::from_secs(5)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(2) + GATHER);
        let ids: Vec<(u64, EventKind)> = events.iter().map(|e| (e.id, e.kind)).collect();
        assert_eq!(ids, [(3, EventKind::Uploaded), (4, EventKind::Queued)]);
        let (events, _) = log.after(4, Duration::from_secs(5)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(2) + GATHER * 5 / 2);
        assert_eq!(events[0].id, 5);
        let (events, _) = log.after(5, Duration::from_secs(5)).await;
        assert!(events.is_empty());
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(7) + GATHER * 5 / 2,
            "the whole wait"
        );
    }

    /// A reader that fell behind is answered at once with what it missed.
    #[tokio::test(start_paused = true)]
    async fn a_reader_behind_is_answered_at_once() {
        let log = EventLog::default();
        log.record(EventKind::Queued, 1, Path::new("/w/a"), None);
        tokio::time::sleep(GATHER).await;
        log.record(EventKind::Started, 1, Path::new("/w/a"), None);
        let started = Instant::now();
        let (events, _) = log.after(0, Duration::from_secs(5)).await;
        assert_eq!((events.len(), started.elapsed()), (2, Duration::ZERO));
    }
}
