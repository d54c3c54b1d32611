//! Deciding when a file has stopped changing. Pure: time and `stat` are inputs, so the rules
//! are tested by tables of event sequences.
//!
//! A path is ready once its settle window has passed since the last event for it and a stat
//! shows the same size, mtime and inode as at that event: no half-written file is queued. A
//! close-after-write shortens the wait to `CLOSE_CONFIRM`, still with an unchanged stat, since
//! a writer that closed its file is usually done with it.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::queue::Fingerprint;

/// How long a closed file must stay unchanged before it counts as settled early.
pub const CLOSE_CONFIRM: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
struct Pending {
    watch: usize,
    window: Duration,
    /// When the wait ends, unless another event comes.
    due: Instant,
    /// The stat seen at the last event (or check); `None` if it could not be taken.
    stat: Option<Fingerprint>,
}

/// A path that settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub path: PathBuf,
    pub watch: usize,
    pub fingerprint: Fingerprint,
}

/// Paths waiting to settle.
#[derive(Debug, Default)]
pub struct Settler {
    pending: HashMap<PathBuf, Pending>,
}

impl Settler {
    /// An event changed `path` at `now` (its stat then was `stat`): wait a full window again.
    pub fn touch(
        &mut self,
        path: &Path,
        watch: usize,
        window: Duration,
        now: Instant,
        stat: Option<Fingerprint>,
    ) {
        self.pending.insert(
            path.to_path_buf(),
            Pending {
                watch,
                window,
                due: now + window,
                stat,
            },
        );
    }

    /// A file found by a scan, last modified `age` ago: it waits only what is left of its window.
    pub fn found(
        &mut self,
        path: &Path,
        watch: usize,
        window: Duration,
        now: Instant,
        age: Duration,
        stat: Fingerprint,
    ) {
        if self.pending.contains_key(path) {
            return;
        }
        let due = now + window.saturating_sub(age);
        self.pending.insert(
            path.to_path_buf(),
            Pending {
                watch,
                window,
                due,
                stat: Some(stat),
            },
        );
    }

    /// The writer closed `path` at `now`: settle after `CLOSE_CONFIRM` if nothing changes.
    pub fn closed(&mut self, path: &Path, now: Instant, stat: Option<Fingerprint>) {
        if let Some(pending) = self.pending.get_mut(path) {
            pending.due = pending.due.min(now + CLOSE_CONFIRM.min(pending.window));
            pending.stat = stat;
        }
    }

    /// `path` is gone (removed, or renamed away).
    pub fn forget(&mut self, path: &Path) {
        self.pending.remove(path);
    }

    /// Forgets everything under `dir` (a folder moved away).
    pub fn forget_under(&mut self, dir: &Path) {
        self.pending.retain(|path, _| !path.starts_with(dir));
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The earliest time a path may settle.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.due).min()
    }

    /// Returns the paths that settled by `now`. A path whose stat moved since its last event
    /// waits a full window more; one that vanished or is not a file is dropped.
    pub fn poll(
        &mut self,
        now: Instant,
        stat: impl Fn(&Path) -> io::Result<Option<Fingerprint>>,
    ) -> Vec<Settled> {
        let due: Vec<PathBuf> = self
            .pending
            .iter()
            .filter(|(_, pending)| pending.due <= now)
            .map(|(path, _)| path.clone())
            .collect();
        let mut settled = Vec::new();
        for path in due {
            let pending = self.pending.get_mut(&path).expect("collected from the map");
            match stat(&path) {
                Ok(Some(current)) if pending.stat == Some(current) => {
                    let watch = pending.watch;
                    self.pending.remove(&path);
                    settled.push(Settled {
                        path,
                        watch,
                        fingerprint: current,
                    });
                }
                Ok(Some(current)) => {
                    pending.stat = Some(current);
                    pending.due = now + pending.window;
                }
                Ok(None) | Err(_) => {
                    self.pending.remove(&path);
                }
            }
        }
        settled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    fn fp(size: u64, mtime: i64) -> Fingerprint {
        Fingerprint {
            size,
            mtime_ns: mtime,
            inode: 1,
            device: 1,
        }
    }

    /// A fake filesystem: path → current stat.
    struct Files(RefCell<HashMap<PathBuf, Fingerprint>>);

    impl Files {
        fn set(&self, path: &str, stat: Fingerprint) {
            self.0.borrow_mut().insert(path.into(), stat);
        }
        fn get(&self, path: &str) -> Option<Fingerprint> {
            self.0.borrow().get(Path::new(path)).copied()
        }
        fn stat(&self) -> impl Fn(&Path) -> io::Result<Option<Fingerprint>> + '_ {
            |path| Ok(self.0.borrow().get(path).copied())
        }
    }

    enum Step {
        Write(&'static str, u64),
        Close(&'static str),
        Remove(&'static str),
        /// Advance the clock, poll, and expect these paths to settle.
        Wait(u64, &'static [&'static str]),
    }

    fn run(steps: &[Step]) {
        let window = Duration::from_millis(1000);
        let files = Files(RefCell::new(HashMap::new()));
        let mut settler = Settler::default();
        let start = Instant::now();
        let mut clock = 0u64;
        for (index, step) in steps.iter().enumerate() {
            let now = start + Duration::from_millis(clock);
            match step {
                Step::Write(path, size) => {
                    files.set(path, fp(*size, clock as i64));
                    settler.touch(Path::new(path), 0, window, now, files.get(path));
                }
                Step::Close(path) => settler.closed(Path::new(path), now, files.get(path)),
                Step::Remove(path) => {
                    files.0.borrow_mut().remove(Path::new(*path));
                    settler.forget(Path::new(path));
                }
                Step::Wait(ms, expected) => {
                    clock += ms;
                    let settled = settler.poll(start + Duration::from_millis(clock), files.stat());
                    let mut names: Vec<String> = settled
                        .iter()
                        .map(|s| s.path.display().to_string())
                        .collect();
                    names.sort();
                    assert_eq!(names, *expected, "step {index} at {clock} ms");
                }
            }
        }
    }

    #[test]
    fn a_file_settles_after_its_window() {
        run(&[
            Step::Write("a", 1),
            Step::Wait(999, &[]),
            Step::Wait(1, &["a"]),
            Step::Wait(5000, &[]),
        ]);
    }

    #[test]
    fn a_slow_writer_settles_once_after_its_last_write() {
        let mut steps = Vec::new();
        for size in 1..=6 {
            steps.push(Step::Write("slow", size * 100));
            steps.push(Step::Wait(500, &[]));
        }
        steps.push(Step::Wait(499, &[]));
        steps.push(Step::Wait(1, &["slow"]));
        run(&steps);
    }

    #[test]
    fn close_after_write_ends_the_wait_early() {
        run(&[
            Step::Write("c", 1),
            Step::Close("c"),
            Step::Wait(99, &[]),
            Step::Wait(1, &["c"]),
        ]);
    }

    #[test]
    fn a_change_without_an_event_restarts_the_window() {
        let window = Duration::from_millis(1000);
        let files = Files(RefCell::new(HashMap::new()));
        let mut settler = Settler::default();
        let now = Instant::now();
        files.set("q", fp(1, 1));
        settler.touch(Path::new("q"), 0, window, now, files.get("q"));
        files.set("q", fp(2, 2)); // written, but the event was lost (overflow)
        assert!(settler.poll(now + window, files.stat()).is_empty());
        assert_eq!(settler.poll(now + window * 2, files.stat()).len(), 1);
    }

    #[test]
    fn removed_and_vanished_files_never_settle() {
        run(&[
            Step::Write("gone", 1),
            Step::Remove("gone"),
            Step::Write("kept", 1),
            Step::Wait(1000, &["kept"]),
        ]);
        let mut settler = Settler::default();
        let now = Instant::now();
        settler.touch(Path::new("vanished"), 0, Duration::ZERO, now, None);
        assert!(settler.poll(now, |_| Ok(None)).is_empty());
        assert!(settler.is_empty());
    }

    #[test]
    fn old_files_found_by_a_scan_settle_at_once() {
        let mut settler = Settler::default();
        let now = Instant::now();
        let stat = fp(10, 5);
        settler.found(
            Path::new("old"),
            0,
            Duration::from_secs(1),
            now,
            Duration::from_secs(60),
            stat,
        );
        settler.found(
            Path::new("new"),
            0,
            Duration::from_secs(1),
            now,
            Duration::ZERO,
            stat,
        );
        let settled = settler.poll(now, |_| Ok(Some(stat)));
        assert_eq!(settled.len(), 1);
        assert_eq!(settled[0].path, PathBuf::from("old"));
    }
}
