//! How a job changes: pure rules, time passed in, tested by a table. The job queue
//! (`jobs.rs`) reads a record, asks `apply` what becomes of it, and writes the answer with its
//! indexes; nothing here touches the store or reads the clock.

use super::jobs::{Candidate, JobId, JobRecord, JobState};
use super::record::{Fingerprint, RECORD_VERSION};

/// What happened to a job.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// A watch or scan reported its file (again).
    Reported {
        remote_path: &'a str,
        fingerprint: Fingerprint,
    },
    /// A worker took it.
    Claimed,
    /// Its upload of the file with `fingerprint` completed.
    Uploaded { fingerprint: Fingerprint },
    /// Its upload failed and is worth another attempt at `at` (Unix milliseconds).
    RetryLater { error: &'a str, at: u64 },
    /// Its upload failed until the user acts.
    Failed { error: &'a str },
    /// Its file is gone, or was not a file to send.
    Vanished,
    /// The user asked for failed jobs to be tried again.
    RetryAsked,
    /// The daemon stopped (or its store failed) while it ran.
    Interrupted,
}

/// What becomes of the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Nothing changes.
    Same,
    /// The job, changed (boxed: a record is large, and most answers are small).
    Write(Box<JobRecord>),
    /// The job is forgotten.
    Forget,
}

/// The rules. `now` is Unix milliseconds.
pub fn apply(job: &JobRecord, event: Event<'_>, now: u64) -> Next {
    let mut next = job.clone();
    next.updated_ms = now;
    match (job.state, event) {
        (JobState::Done, _) => return Next::Same,
        (
            _,
            Event::Reported {
                remote_path,
                fingerprint,
            },
        ) => return reported(job, remote_path, fingerprint, now),
        (JobState::Queued, Event::Claimed) => next.state = JobState::Active,
        (JobState::Active, Event::Uploaded { .. }) => {
            next.state = JobState::Done;
            next.dirty = false;
            next.last_error = None;
        }
        (JobState::Active, Event::RetryLater { error, at }) => {
            next.attempts += 1;
            next.last_error = Some(error.to_string());
            queue(&mut next, if job.dirty { now } else { at });
        }
        (JobState::Active, Event::Failed { error }) => {
            next.attempts += 1;
            next.last_error = Some(error.to_string());
            match job.dirty {
                true => queue(&mut next, now),
                false => next.state = JobState::Failed,
            }
        }
        (_, Event::Vanished) if job.dirty => queue(&mut next, now),
        (_, Event::Vanished) => return Next::Forget,
        (JobState::Failed, Event::RetryAsked) => {
            next.attempts = 0;
            queue(&mut next, now);
        }
        (JobState::Active, Event::Interrupted) => queue(&mut next, now),
        _ => return Next::Same,
    }
    Next::Write(Box::new(next))
}

/// A report of a job's file: an active job notes the change for afterwards; a queued or
/// failed one gets a prompt, fresh attempt, whatever failed before.
fn reported(job: &JobRecord, remote_path: &str, fingerprint: Fingerprint, now: u64) -> Next {
    let mut next = job.clone();
    next.updated_ms = now;
    next.fingerprint = Some(fingerprint);
    match job.state {
        // A scan that re-reports the file being uploaded changes nothing.
        JobState::Active if job.fingerprint == Some(fingerprint) => return Next::Same,
        JobState::Active => next.dirty = true,
        _ => {
            next.attempts = 0;
            next.remote_path = remote_path.to_string();
            queue(&mut next, now);
        }
    }
    Next::Write(Box::new(next))
}

fn queue(job: &mut JobRecord, at: u64) {
    job.state = JobState::Queued;
    job.next_attempt_ms = at;
    job.dirty = false;
}

/// Whether a job whose upload of `uploaded` completed must upload its file again: it changed
/// while it was being sent.
pub fn uploads_again(job: &JobRecord, uploaded: Fingerprint) -> bool {
    job.dirty && job.fingerprint != Some(uploaded)
}

/// A new queued job for a stable file, due now.
pub fn new_job(candidate: &Candidate, id: JobId, now: u64) -> JobRecord {
    JobRecord {
        version: RECORD_VERSION,
        id,
        path: candidate.path.clone(),
        watch_root: candidate.watch_root.clone(),
        remote: candidate.remote.clone(),
        remote_path: candidate.remote_path.clone(),
        state: JobState::Queued,
        attempts: 0,
        next_attempt_ms: now,
        last_error: None,
        enqueued_ms: now,
        updated_ms: now,
        dirty: false,
        fingerprint: Some(candidate.fingerprint),
    }
}

/// The job that uploads again a file that changed during its upload (`uploads_again`).
pub fn follow_up(job: &JobRecord, id: JobId, now: u64) -> JobRecord {
    JobRecord {
        id,
        state: JobState::Queued,
        attempts: 0,
        next_attempt_ms: now,
        enqueued_ms: now,
        updated_ms: now,
        dirty: false,
        last_error: None,
        ..job.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const NOW: u64 = 1_000;
    const LATER: u64 = 61_000;

    fn print(size: u64) -> Fingerprint {
        Fingerprint {
            size,
            mtime_ns: 1,
            inode: 2,
            device: 3,
        }
    }

    fn job(state: JobState, dirty: bool) -> JobRecord {
        JobRecord {
            version: RECORD_VERSION,
            id: 7,
            path: PathBuf::from("/w/a"),
            watch_root: PathBuf::from("/w"),
            remote: "main".into(),
            remote_path: "a".into(),
            state,
            attempts: 2,
            next_attempt_ms: 500,
            last_error: Some("before".into()),
            enqueued_ms: 10,
            updated_ms: 20,
            dirty,
            fingerprint: Some(print(1)),
        }
    }

    /// What a row expects: `None` for `Next::Same`; otherwise the state (`None` for forgotten),
    /// attempts, next attempt, dirty and the last error after the event.
    type Expected = Option<Option<(JobState, u32, u64, bool, Option<String>)>>;

    #[test]
    fn every_state_meets_every_event_as_the_rules_say() {
        use JobState::*;
        let reported = Event::Reported {
            remote_path: "b",
            fingerprint: print(9),
        };
        let same_report = Event::Reported {
            remote_path: "a",
            fingerprint: print(1),
        };
        let retry = Event::RetryLater {
            error: "503",
            at: LATER,
        };
        let failed = Event::Failed { error: "403" };
        let uploaded = Event::Uploaded {
            fingerprint: print(1),
        };
        let e = || Some("before".to_string());
        let error = |text: &str| Some(text.to_string());
        #[rustfmt::skip]
        let table: Vec<(JobState, bool, Event, Expected)> = vec![
            (Queued, false, reported, Some(Some((Queued, 0, NOW, false, e())))),
            (Failed, false, reported, Some(Some((Queued, 0, NOW, false, e())))),
            (Active, false, reported, Some(Some((Active, 2, 500, true, e())))),
            (Active, false, same_report, None),
            (Done, false, reported, None),
            (Queued, false, Event::Claimed, Some(Some((Active, 2, 500, false, e())))),
            (Active, false, Event::Claimed, None),
            (Failed, false, Event::Claimed, None),
            (Active, false, uploaded, Some(Some((Done, 2, 500, false, None)))),
            (Active, true, uploaded, Some(Some((Done, 2, 500, false, None)))),
            (Queued, false, uploaded, None),
            (Active, false, retry, Some(Some((Queued, 3, LATER, false, error("503"))))),
            (Active, true, retry, Some(Some((Queued, 3, NOW, false, error("503"))))),
            (Failed, false, retry, None),
            (Active, false, failed, Some(Some((Failed, 3, 500, false, error("403"))))),
            (Active, true, failed, Some(Some((Queued, 3, NOW, false, error("403"))))),
            (Queued, false, failed, None),
            (Active, false, Event::Vanished, Some(None)),
            (Queued, false, Event::Vanished, Some(None)),
            (Active, true, Event::Vanished, Some(Some((Queued, 2, NOW, false, e())))),
            (Failed, false, Event::RetryAsked, Some(Some((Queued, 0, NOW, false, e())))),
            (Queued, false, Event::RetryAsked, None),
            (Active, false, Event::RetryAsked, None),
            (Active, false, Event::Interrupted, Some(Some((Queued, 2, NOW, false, e())))),
            (Queued, false, Event::Interrupted, None),
            (Done, false, Event::Vanished, None),
        ];
        for (row, (state, dirty, event, expected)) in table.into_iter().enumerate() {
            let got = match apply(&job(state, dirty), event, NOW) {
                Next::Same => None,
                Next::Forget => Some(None),
                Next::Write(job) => {
                    assert_eq!(job.updated_ms, NOW, "row {row}: the change is dated");
                    Some(Some((
                        job.state,
                        job.attempts,
                        job.next_attempt_ms,
                        job.dirty,
                        job.last_error,
                    )))
                }
            };
            assert_eq!(
                got, expected,
                "row {row}: {state:?} dirty={dirty} {event:?}"
            );
        }
    }

    #[test]
    fn a_report_carries_the_new_name_and_file() {
        let Next::Write(next) = apply(
            &job(JobState::Failed, false),
            Event::Reported {
                remote_path: "renamed",
                fingerprint: print(5),
            },
            NOW,
        ) else {
            panic!("a failed job's file changed: it is queued again")
        };
        assert_eq!(next.remote_path, "renamed");
        assert_eq!(next.fingerprint, Some(print(5)));
    }

    #[test]
    fn only_a_file_that_changed_during_its_upload_is_uploaded_again() {
        let dirty = JobRecord {
            fingerprint: Some(print(5)),
            ..job(JobState::Active, true)
        };
        assert!(
            uploads_again(&dirty, print(1)),
            "the new version was not sent"
        );
        assert!(
            !uploads_again(&dirty, print(5)),
            "the version sent is the last reported"
        );
        assert!(!uploads_again(&job(JobState::Active, false), print(1)));
        let next = follow_up(&dirty, 8, NOW);
        assert_eq!(
            (
                next.id,
                next.state,
                next.attempts,
                next.next_attempt_ms,
                next.dirty
            ),
            (8, JobState::Queued, 0, NOW, false)
        );
        assert_eq!((next.path, next.fingerprint), (dirty.path, Some(print(5))));
    }
}
