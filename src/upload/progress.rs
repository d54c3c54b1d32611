//! Live progress of one upload, shared between the engine (writer) and whoever shows it: the
//! push progress bar now, `ferry status` later. Plain atomics: readers never block the engine.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one file's upload. All in bytes unless named otherwise.
#[derive(Debug, Default)]
pub struct Progress {
    total: AtomicU64,
    /// Already held by the remote when this run started (resumed parts).
    resumed: AtomicU64,
    /// Acknowledged by the remote during this run.
    acknowledged: AtomicU64,
    /// Streamed in attempts not yet acknowledged (drops back when an attempt fails).
    in_flight: AtomicU64,
    part_size: AtomicU64,
    /// Part attempts that failed (and were retried, or ended the upload); a count.
    failed_attempts: AtomicU64,
}

/// A consistent-enough copy of the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgressSnapshot {
    pub total: u64,
    pub resumed: u64,
    pub acknowledged: u64,
    pub in_flight: u64,
    /// Size of the part most recently planned.
    pub part_size: u64,
}

impl ProgressSnapshot {
    /// Bytes the remote has or is receiving, for a progress bar.
    pub fn position(&self) -> u64 {
        self.resumed
            .saturating_add(self.acknowledged)
            .saturating_add(self.in_flight)
            .min(self.total)
    }
}

impl Progress {
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            total: self.total.load(Ordering::Relaxed),
            resumed: self.resumed.load(Ordering::Relaxed),
            acknowledged: self.acknowledged.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            part_size: self.part_size.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn start(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        self.resumed.store(0, Ordering::Relaxed);
        self.acknowledged.store(0, Ordering::Relaxed);
        self.in_flight.store(0, Ordering::Relaxed);
    }

    pub(crate) fn add_resumed(&self, bytes: u64) {
        self.resumed.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn add_in_flight(&self, bytes: u64) {
        self.in_flight.fetch_add(bytes, Ordering::Relaxed);
    }

    /// An attempt that streamed `streamed` bytes failed: those bytes no longer count.
    pub(crate) fn attempt_failed(&self, streamed: u64) {
        self.take_in_flight(streamed);
        self.failed_attempts.fetch_add(1, Ordering::Relaxed);
    }

    /// Part attempts that failed so far, over every run of this upload.
    pub fn failed_attempts(&self) -> u64 {
        self.failed_attempts.load(Ordering::Relaxed)
    }

    /// An attempt that streamed `streamed` bytes was acknowledged for a part of `size` bytes.
    pub(crate) fn part_acknowledged(&self, streamed: u64, size: u64) {
        self.take_in_flight(streamed);
        self.acknowledged.fetch_add(size, Ordering::Relaxed);
    }

    /// Removes bytes from `in_flight`, never below zero: a part of an attempt that `start`
    /// already reset (the session started over) may report late.
    fn take_in_flight(&self, bytes: u64) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                Some(now.saturating_sub(bytes))
            });
    }

    pub(crate) fn set_part_size(&self, bytes: u64) {
        self.part_size.store(bytes, Ordering::Relaxed);
    }
}
