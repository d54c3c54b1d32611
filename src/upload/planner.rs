//! Part sizing and parallelism. The engine asks a `PartPlanner` for each next part's size and
//! how many parts to keep in flight, and tells it how every attempt went; `fit` then bends the
//! size to the remote's limits. `Planner` is the real one: one per remote, shared by every
//! file going there, around the pure `controller::Controller` (a fixed size or parallelism is
//! a controller with a range of one). What it learned is kept in the store by the engine.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::backend::PartLimits;
use super::controller::{self, Controller, Estimates, Learned};

pub use super::controller::{Observation, Outcome};

/// Where the plan stands when the next part is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanContext {
    /// Offset of the part to size.
    pub offset: u64,
    pub file_size: u64,
    /// Number the part will get; numbers `next_number..=max_parts` are still free.
    pub next_number: u32,
    pub limits: PartLimits,
}

/// Chooses part sizes and parallelism. Shared by the parts (and files) it plans for.
pub trait PartPlanner: Send + Sync {
    /// The size this planner would like for the next part; `fit` enforces the limits.
    fn desired_size(&self, context: &PlanContext) -> u64;

    /// Parts to keep in flight.
    fn parallel_parts(&self) -> usize {
        usize::MAX
    }

    /// An attempt at a part starts; returns the parts in flight, itself included. Every
    /// `begin` is followed by one `observe` or `abandon`.
    fn begin(&self) -> usize {
        1
    }

    /// How the attempt begun last went.
    fn observe(&self, _observation: &Observation) {}

    /// An attempt ended for a reason that says nothing of the link (a local read failed).
    fn abandon(&self) {}

    /// A request without a body took this long (its time is the link's fixed time).
    fn observe_request(&self, _elapsed: std::time::Duration) {}

    /// The part size it would choose now; parts far larger that keep failing make the engine
    /// start the file over (`u64::MAX`: never).
    fn size_now(&self) -> u64 {
        u64::MAX
    }

    /// What it learned, to keep in the store; `None` for planners that do not learn.
    fn learned(&self) -> Option<Learned> {
        None
    }

    /// Starts from what an earlier run learned.
    fn restore(&self, _learned: Learned) {}

    /// Its current choices and estimates, and the parts in flight now.
    fn estimates(&self) -> Option<(Estimates, usize)> {
        None
    }
}

/// Every part `chunk_size` bytes (for tests of the engine's layout).
#[derive(Debug, Clone, Copy)]
pub struct FixedPlanner {
    pub chunk_size: u64,
}

impl PartPlanner for FixedPlanner {
    fn desired_size(&self, _context: &PlanContext) -> u64 {
        self.chunk_size
    }
}

/// The planner of one remote: the controller, and the parts in flight.
#[derive(Debug)]
pub struct Planner {
    controller: Mutex<Controller>,
    in_flight: AtomicUsize,
}

impl Planner {
    pub fn new(limits: controller::Limits) -> Planner {
        Planner {
            controller: Mutex::new(Controller::new(limits, None)),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn controller(&self) -> std::sync::MutexGuard<'_, Controller> {
        self.controller
            .lock()
            .expect("no code panics holding the controller")
    }
}

impl PartPlanner for Planner {
    fn desired_size(&self, _context: &PlanContext) -> u64 {
        self.controller().part_size()
    }

    fn parallel_parts(&self) -> usize {
        self.controller().parallel_parts()
    }

    fn begin(&self) -> usize {
        self.in_flight.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn observe(&self, observation: &Observation) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let mut controller = self.controller();
        let before = (controller.part_size(), controller.parallel_parts());
        controller.observe(observation);
        let after = (controller.part_size(), controller.parallel_parts());
        if after != before {
            let estimates = controller.estimates();
            tracing::debug!(
                ?observation,
                ?estimates,
                part_size = after.0,
                parallel_parts = after.1,
                "part size or parallelism changed"
            );
        }
    }

    fn abandon(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    fn observe_request(&self, elapsed: std::time::Duration) {
        self.controller().observe_request(elapsed);
    }

    fn size_now(&self) -> u64 {
        self.controller().part_size()
    }

    /// Starts from what an earlier run learned, unless this run has learned something itself.
    fn restore(&self, learned: Learned) {
        let mut controller = self.controller();
        if controller.learned().observations == 0 {
            *controller = Controller::new(controller.limits(), Some(learned));
        }
    }

    fn learned(&self) -> Option<Learned> {
        Some(self.controller().learned().clone())
    }

    fn estimates(&self) -> Option<(Estimates, usize)> {
        let estimates = self.controller().estimates();
        Some((estimates, self.in_flight.load(Ordering::Relaxed)))
    }
}

/// Bends a desired size to the remote's limits: at least `min_part_size`, at most
/// `max_part_size`, large enough that the rest of the file fits in the part numbers left, and no
/// larger than what remains. An empty file is one empty part.
pub fn fit(desired: u64, context: &PlanContext) -> u64 {
    let remaining = context.file_size.saturating_sub(context.offset);
    let numbers_left = context
        .limits
        .max_parts
        .saturating_sub(context.next_number)
        .saturating_add(1)
        .max(1);
    let needed_for_count = remaining.div_ceil(u64::from(numbers_left));
    desired
        .max(context.limits.min_part_size)
        .max(needed_for_count)
        .min(context.limits.max_part_size)
        .min(remaining)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn context(offset: u64, file_size: u64, next_number: u32, max_parts: u32) -> PlanContext {
        PlanContext {
            offset,
            file_size,
            next_number,
            limits: PartLimits {
                min_part_size: 256 * 1024,
                max_part_size: 64 * MIB,
                max_parts,
                sequential: false,
                uniform: false,
            },
        }
    }

    #[test]
    fn fit_table() {
        let cases = [
            // (desired, offset, file_size, next_number, max_parts, expected)
            (8 * MIB, 0, 0, 1, 10_000, 0), // empty file: one empty part
            (8 * MIB, 0, 1, 1, 10_000, 1), // tiny file: all of it
            (8 * MIB, 0, 100 * MIB, 1, 10_000, 8 * MIB), // the wish stands
            (8 * MIB, 96 * MIB, 100 * MIB, 13, 10_000, 4 * MIB), // last part: the rest
            (1024, 0, 100 * MIB, 1, 10_000, 256 * 1024), // raised to min_part_size
            (1024 * MIB, 0, 100 * MIB, 1, 10_000, 64 * MIB), // capped at max_part_size
            (8 * MIB, 0, 100 * MIB, 1, 5, 20 * MIB), // grown to fit 5 parts
            (8 * MIB, 40 * MIB, 100 * MIB, 4, 5, 30 * MIB), // 60 MiB left, numbers 4 and 5
            (8 * MIB, 40 * MIB, 100 * MIB, 5, 5, 60 * MIB), // last number takes all
        ];
        for (desired, offset, file_size, next_number, max_parts, expected) in cases {
            let got = fit(desired, &context(offset, file_size, next_number, max_parts));
            assert_eq!(got, expected, "desired {desired} at {offset}/{file_size}");
        }
    }

    #[test]
    fn fixed_plan_covers_a_file_within_max_parts() {
        let planner = FixedPlanner { chunk_size: MIB };
        let (file_size, max_parts) = (1000 * MIB + 7, 100);
        let (mut offset, mut number) = (0, 1);
        while offset < file_size {
            let plan = context(offset, file_size, number, max_parts);
            let size = fit(planner.desired_size(&plan), &plan);
            assert!(size > 0);
            offset += size;
            number += 1;
        }
        assert_eq!(offset, file_size);
        assert!(number - 1 <= max_parts, "used {} parts", number - 1);
    }
}
