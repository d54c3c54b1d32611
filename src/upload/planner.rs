//! Part sizing. The engine asks a `PartPlanner` for each next part's size and tells it how each
//! part went; `fit` then bends the wish to the remote's limits. Today's planner is fixed
//! (`chunk_size`); an adaptive one (throughput, latency, failures) plugs in behind the same
//! trait without the engine or its callers changing.

use std::time::Duration;

use super::backend::PartLimits;

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

/// How one part went, for planners that learn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartObservation {
    pub size: u64,
    /// From the first byte sent to the acknowledgement of the successful attempt.
    pub elapsed: Duration,
    /// Attempts it took, 1 when the first succeeded.
    pub attempts: u32,
}

/// Chooses part sizes for one file.
pub trait PartPlanner: Send {
    /// The size this planner would like for the next part; `fit` enforces the limits.
    fn desired_size(&mut self, context: &PlanContext) -> u64;

    /// Feedback after each acknowledged part.
    fn observe(&mut self, _observation: &PartObservation) {}
}

/// Every part `chunk_size` bytes.
#[derive(Debug, Clone, Copy)]
pub struct FixedPlanner {
    pub chunk_size: u64,
}

impl PartPlanner for FixedPlanner {
    fn desired_size(&mut self, _context: &PlanContext) -> u64 {
        self.chunk_size
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
        let mut planner = FixedPlanner { chunk_size: MIB };
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
