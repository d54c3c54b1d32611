//! The chunk controller: how large the next part should be and how many parts to keep in
//! flight, from what the parts sent so far to one remote observed. Pure: observations in,
//! decisions out, no clock and no I/O, so every rule is tested by tables. `planner.rs` shares
//! one controller between every file going to a remote and keeps what it learned.
//!
//! The model. A part of `s` bytes costs a fixed per-request time `a` (round trip, the
//! receiver's work) plus its bytes at the link's rate `r`; a failure after part of the body
//! throws those bytes away. Per byte the expected cost is about `a·r/s + λ·s/2`, with `λ` the
//! failures per byte sent, least at `s* = sqrt(2·a·r/λ)`. With no failures seen, parts grow
//! until the fixed time is at most `OVERHEAD_SHARE` of a part's time. Parts in flight cover the
//! link during the fixed time: `1 + a·r/s`, and never fewer than the initial number but under
//! congestion. `1/r` comes from a decaying least-squares fit of each part's time against its
//! bytes times the parts in flight (parts share the link); `a` from requests without a body
//! (creating a session), else from the fit. The fit starts again when parts keep missing its
//! prediction, so a link that changes is followed within a few parts.
//!
//! A remote that refuses large bodies (413, or a proxy closing the connection after about the
//! same number of bytes again and again, where random resets would be spread out) gets a cap
//! below that size, probed upward slowly. Sizes move geometrically, half way to the target per
//! part and within a band, so that a steady link does not make them oscillate.

use std::time::Duration;

use serde::{Deserialize, Serialize};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// The share of a part's time the fixed per-request cost may take when nothing fails.
const OVERHEAD_SHARE: f64 = 0.05;
/// Weight of the newest observation in every estimate (about the last ten parts count).
const DECAY: f64 = 0.1;
/// A target within this ratio of the current size leaves it alone (no dithering).
const DEADBAND: f64 = 0.15;
/// Most a size moves in one step: doubles, or halves.
const STEP: f64 = 2.0;
/// Sizes are multiples of this.
const QUANTUM: u64 = 64 * KIB;
/// The fixed cost assumed before any is measured.
const PRIOR_OVERHEAD: f64 = 0.010;
/// Bytes of clean sending assumed before any is measured, so that one early failure does not
/// collapse the size.
const PRIOR_CLEAN_BYTES: f64 = 8.0 * MIB as f64;
/// Cuts within this ratio of each other look like a limit, not chance.
const CUT_TOLERANCE: f64 = 0.1;
/// Successes at a cap before it is raised by `CAP_PROBE`.
const CAP_PATIENCE: u32 = 16;
const CAP_PROBE: f64 = 1.25;
/// Parts in a row off the fit by more than `SURPRISE` times before it starts again.
const SURPRISES: u32 = 3;
const SURPRISE: f64 = 2.0;
/// Version of `Learned`, kept in the store.
pub const LEARNED_VERSION: u32 = 1;

/// What the controller may choose from: part sizes in `[min_size, max_size]`, at most
/// `max_parallel` parts in flight; `initial_*` before anything is learned. A fixed size or
/// parallelism is a range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub min_size: u64,
    pub max_size: u64,
    pub initial_size: u64,
    pub max_parallel: usize,
    pub initial_parallel: usize,
    /// Bytes of parts in flight at most: parallelism never exceeds it over the part size.
    pub in_flight_bytes: u64,
    /// Keep `max_parallel` parts in flight whatever is learned.
    pub fixed_parallel: bool,
}

/// How one attempt at a part ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The remote acknowledged the part.
    Acknowledged,
    /// A transient failure (reset, 5xx): `busy` when the remote said it was overloaded (503,
    /// 429), which is congestion rather than loss.
    Failed { busy: bool },
    /// No progress for the stall timeout: congestion.
    Stalled,
    /// Refused as too large (413).
    TooLarge,
}

/// One attempt at a part, as the engine saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    pub size: u64,
    /// Bytes of the body that went out before the attempt ended.
    pub sent: u64,
    pub elapsed: Duration,
    pub outcome: Outcome,
    /// Parts of this remote in flight while it ran, itself included.
    pub in_flight: usize,
}

/// What the controller has learned about a remote: kept in the store, restored at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Learned {
    pub version: u32,
    /// The part size chosen now.
    pub size: u64,
    /// Parts to keep in flight (fractional: it rises by steps).
    pub parallel: f64,
    /// Decaying sums of the fit of a part's time `y` against its link bytes `x`.
    fit: Fit,
    /// The fixed time last measured, seconds: kept while the sizes seen are too alike to
    /// measure it again.
    overhead: f64,
    /// The fixed time measured directly on requests without a body (session create, query),
    /// seconds, decaying; preferred to the fit's, which parts sharing the link blur.
    #[serde(default)]
    request_time: Option<f64>,
    /// Parts in a row that took far longer or shorter than the fit predicts: the link
    /// changed, and after `SURPRISES` the fit starts again from the new parts.
    #[serde(default)]
    surprises: u32,
    /// Decaying failures and bytes sent (failures per byte: `λ`).
    failures: f64,
    bytes: f64,
    /// A body limit learned: parts stay below it.
    pub cap: Option<u64>,
    successes_at_cap: u32,
    cap_patience: u32,
    /// The cap before the last probe raised it: a cut above it while probing is the limit
    /// again, at once.
    probed_from: Option<u64>,
    /// Bytes sent when recent connections closed mid-body (newest last, at most four).
    cuts: Vec<u64>,
    pub observations: u64,
}

/// Exponentially weighted least squares of `y = a + b·x`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
struct Fit {
    w: f64,
    x: f64,
    y: f64,
    xx: f64,
    xy: f64,
}

impl Fit {
    fn add(&mut self, x: f64, y: f64) {
        let keep = 1.0 - DECAY;
        self.w = self.w * keep + 1.0;
        self.x = self.x * keep + x;
        self.y = self.y * keep + y;
        self.xx = self.xx * keep + x * x;
        self.xy = self.xy * keep + x * y;
    }

    /// The seconds per link byte, given the fixed time `a`.
    fn solve_with(&self, a: f64) -> Option<f64> {
        if self.w < 0.5 {
            return None;
        }
        let (mean_x, mean_y) = (self.x / self.w, self.y / self.w);
        Some(((mean_y - a.min(mean_y)) / mean_x.max(1.0)).max(1e-12))
    }

    /// `(a, b, measured)`: the fixed time and the seconds per link byte, once there is data.
    /// When the sizes seen do not vary enough to separate the two, `a` is `prior` and
    /// `measured` false.
    fn solve(&self, prior: f64) -> Option<(f64, f64, bool)> {
        if self.w < 0.5 {
            return None;
        }
        let (mean_x, mean_y) = (self.x / self.w, self.y / self.w);
        let var_x = self.xx / self.w - mean_x * mean_x;
        let cov = self.xy / self.w - mean_x * mean_y;
        let spread = var_x.max(0.0).sqrt() / mean_x.max(1.0);
        let measured = spread > 0.1 && cov > 0.0;
        let a = match measured {
            true => mean_y - cov / var_x * mean_x,
            false => prior,
        }
        .clamp(0.0, mean_y);
        let b = ((mean_y - a) / mean_x.max(1.0)).max(1e-12);
        Some((a, b, measured))
    }
}

/// Sizes and parallelism for one remote.
#[derive(Debug, Clone)]
pub struct Controller {
    limits: Limits,
    learned: Learned,
}

/// The controller's current view, for status and logs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimates {
    pub part_size: u64,
    pub parallel_parts: usize,
    /// Bytes per second the link carries, all parts together.
    pub throughput: Option<f64>,
    /// The fixed per-request time (round trip and the receiver's work), seconds.
    pub round_trip: Option<f64>,
    /// Failures per GiB sent.
    pub failures_per_gib: f64,
    pub cap: Option<u64>,
}

impl Controller {
    /// A controller starting from `learned` (what an earlier run kept), or from the limits'
    /// initial choices.
    pub fn new(limits: Limits, learned: Option<Learned>) -> Controller {
        let learned = learned
            .filter(|l| l.version == LEARNED_VERSION)
            .unwrap_or_else(|| Learned {
                version: LEARNED_VERSION,
                size: limits.initial_size,
                parallel: limits.initial_parallel as f64,
                fit: Fit::default(),
                overhead: PRIOR_OVERHEAD,
                request_time: None,
                surprises: 0,
                failures: 0.0,
                bytes: 0.0,
                cap: None,
                successes_at_cap: 0,
                cap_patience: CAP_PATIENCE,
                probed_from: None,
                cuts: Vec::new(),
                observations: 0,
            });
        Controller { limits, learned }
    }

    /// The size to give the next part (before the remote's limits: `planner::fit`).
    pub fn part_size(&self) -> u64 {
        let ceiling = self
            .learned
            .cap
            .unwrap_or(u64::MAX)
            .min(self.limits.max_size);
        self.learned
            .size
            .clamp(self.limits.min_size, ceiling.max(self.limits.min_size))
    }

    /// Parts to keep in flight.
    pub fn parallel_parts(&self) -> usize {
        let by_bytes = (self.limits.in_flight_bytes / self.part_size().max(1)).max(1) as usize;
        let chosen = match self.limits.fixed_parallel {
            true => self.limits.max_parallel,
            false => self.learned.parallel.round() as usize,
        };
        chosen
            .clamp(1, self.limits.max_parallel.max(1))
            .min(by_bytes)
    }

    pub fn learned(&self) -> &Learned {
        &self.learned
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn estimates(&self) -> Estimates {
        let fit = self.link();
        Estimates {
            part_size: self.part_size(),
            parallel_parts: self.parallel_parts(),
            throughput: fit.map(|(_, b, _)| 1.0 / b),
            round_trip: fit.map(|(a, ..)| a),
            failures_per_gib: self.failure_rate() * (1024.0 * MIB as f64),
            cap: self.learned.cap,
        }
    }

    /// Failures per byte sent.
    fn failure_rate(&self) -> f64 {
        self.learned.failures / (self.learned.bytes + PRIOR_CLEAN_BYTES * decayed_prior(self))
    }

    /// Learns the fixed time from a request without a body (creating a session, say): its
    /// whole time is the round trip and the remote's work.
    pub fn observe_request(&mut self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let learned = &mut self.learned;
        learned.request_time = Some(match learned.request_time {
            Some(before) => before * (1.0 - 3.0 * DECAY) + seconds * 3.0 * DECAY,
            None => seconds,
        });
    }

    /// The fixed time and seconds per link byte: the fit's, with the fixed time measured on
    /// requests without a body when there is one.
    fn link(&self) -> Option<(f64, f64, bool)> {
        let fit = &self.learned.fit;
        match self.learned.request_time {
            Some(fixed) => fit.solve_with(fixed).map(|b| (fixed, b, false)),
            None => fit.solve(self.learned.overhead),
        }
    }

    /// Learns from one attempt and moves the size and parallelism.
    pub fn observe(&mut self, seen: &Observation) {
        let learned = &mut self.learned;
        learned.observations += 1;
        learned.failures *= 1.0 - DECAY;
        learned.bytes = learned.bytes * (1.0 - DECAY) + seen.sent as f64;
        match seen.outcome {
            Outcome::Acknowledged => {
                self.acknowledged(seen);
                self.steer();
                self.steer_parallel();
                return;
            }
            Outcome::TooLarge => self.limit_at(seen.size),
            Outcome::Stalled | Outcome::Failed { busy: true } => {
                learned.failures += 1.0;
                learned.parallel = (learned.parallel / 2.0).max(1.0);
            }
            Outcome::Failed { busy: false } => {
                learned.failures += 1.0;
                self.cut_at(seen);
            }
        }
        self.steer();
    }

    fn acknowledged(&mut self, seen: &Observation) {
        // A part larger than the cuts went through: they were chance, not a body limit.
        if let Some(&smallest) = self.learned.cuts.iter().min()
            && seen.size as f64 > smallest as f64 * (1.0 + CUT_TOLERANCE)
        {
            self.learned.cuts.clear();
        }
        let link_bytes = seen.size as f64 * seen.in_flight.max(1) as f64;
        let seconds = seen.elapsed.as_secs_f64();
        self.notice_change(link_bytes, seconds);
        self.learned.fit.add(link_bytes, seconds);
        if let Some(cap) = self.learned.cap
            && seen.size * 10 >= cap * 9
        {
            self.learned.successes_at_cap += 1;
            if self.learned.successes_at_cap >= self.learned.cap_patience {
                self.learned.cap = Some(quantize((cap as f64 * CAP_PROBE) as u64));
                self.learned.probed_from = Some(cap);
                self.learned.successes_at_cap = 0;
            }
        }
    }

    /// Starts the fit again when parts keep taking far longer or shorter than it predicts: the
    /// link changed (Wi-Fi to Ethernet, an evening's congestion), and old parts would hold
    /// the estimates back for many parts.
    fn notice_change(&mut self, link_bytes: f64, seconds: f64) {
        let Some((a, b, _)) = self.link() else {
            return;
        };
        let ratio = seconds / (a + b * link_bytes).max(1e-6);
        let learned = &mut self.learned;
        match !(1.0 / SURPRISE..=SURPRISE).contains(&ratio) {
            true => learned.surprises += 1,
            false => learned.surprises = 0,
        }
        if learned.surprises >= SURPRISES {
            learned.fit = Fit::default();
            learned.surprises = 0;
        }
    }

    /// A connection closed mid-body: chance, unless it keeps happening after the same number
    /// of bytes while the parts are larger than that (a proxy's body limit).
    fn cut_at(&mut self, seen: &Observation) {
        if seen.sent == 0 || seen.sent >= seen.size {
            return;
        }
        if self
            .learned
            .probed_from
            .is_some_and(|before| seen.size > before)
        {
            self.limit_at(seen.sent);
            return;
        }
        let cuts = &mut self.learned.cuts;
        cuts.push(seen.sent);
        if cuts.len() > 4 {
            cuts.remove(0);
        }
        let alike = cuts
            .iter()
            .filter(|&&other| {
                (other as f64 - seen.sent as f64).abs() <= seen.sent as f64 * CUT_TOLERANCE
            })
            .count();
        if alike >= 3 && seen.size as f64 > seen.sent as f64 * (1.0 + CUT_TOLERANCE) {
            self.limit_at(seen.sent);
            self.learned.cuts.clear();
        }
    }

    /// Caps parts below `failing` bytes; a cap hit again waits twice as long to be probed.
    fn limit_at(&mut self, failing: u64) {
        let learned = &mut self.learned;
        let below = quantize((failing as f64 * 0.8) as u64).max(self.limits.min_size);
        if learned.cap.is_some_and(|cap| cap > below) {
            learned.cap_patience = learned.cap_patience.saturating_mul(2);
        }
        learned.cap = Some(learned.cap.map_or(below, |cap| cap.min(below)));
        learned.successes_at_cap = 0;
        learned.probed_from = None;
        learned.size = learned.size.min(below);
    }

    /// Moves the size half way (geometrically) toward the model's target.
    fn steer(&mut self) {
        let Some((a, b, measured)) = self.link() else {
            return;
        };
        if measured {
            self.learned.overhead = a;
        }
        let overhead_bytes = a / b;
        let target = self.target_size(overhead_bytes);
        let current = self.part_size() as f64;
        let ratio = target / current;
        if (ratio - 1.0).abs() > DEADBAND {
            let step = ratio.sqrt().clamp(1.0 / STEP, STEP);
            self.learned.size = quantize((current * step) as u64);
        }
        self.learned.size = self.part_size();
    }

    /// After a part went through: parallelism moves toward what covers the link during the
    /// fixed time (the bandwidth-delay product in parts, plus the one sending) and at least the
    /// initial number, up by half a part, down by a quarter. Congestion (stalls, 503s) halves
    /// it in `observe`.
    fn steer_parallel(&mut self) {
        let Some((a, b, _)) = self.link() else {
            return;
        };
        // Never below the initial number but for congestion: connections are often slower
        // one by one than the link (TCP windows, proxies), which the model does not see.
        let covering = 1.0 + (a / b / self.part_size() as f64).ceil();
        let wanted = covering.max(self.limits.initial_parallel as f64);
        let parallel = &mut self.learned.parallel;
        *parallel = match *parallel < wanted {
            true => (*parallel + 0.5).min(wanted),
            false => wanted.max(*parallel - 0.25),
        };
    }

    fn target_size(&self, overhead_bytes: f64) -> f64 {
        let clean = overhead_bytes * (1.0 - OVERHEAD_SHARE) / OVERHEAD_SHARE;
        let lambda = self.failure_rate();
        let target = match lambda > 0.0 {
            true => clean.min((2.0 * overhead_bytes / lambda).sqrt()),
            false => clean,
        };
        target.max(self.limits.min_size as f64)
    }
}

/// How much of the clean prior still counts: it fades as real bytes are seen.
fn decayed_prior(controller: &Controller) -> f64 {
    (1.0 - DECAY).powf(controller.learned.observations.min(1000) as f64)
}

fn quantize(size: u64) -> u64 {
    (size / QUANTUM).max(1) * QUANTUM
}

#[cfg(test)]
mod tests;
