//! The controller against simulated links: each test names the behaviour and drives the
//! controller with the parts a link of known rate, fixed time and failures would produce.

use super::*;

const GIB: u64 = 1024 * MIB;

fn limits() -> Limits {
    Limits {
        min_size: 256 * KIB,
        max_size: 256 * MIB,
        initial_size: 8 * MIB,
        max_parallel: 16,
        initial_parallel: 4,
        in_flight_bytes: 4 * GIB,
        fixed_parallel: false,
    }
}

/// A link: `rate` bytes per second shared by the parts in flight, `fixed` seconds per
/// request; a reset after every `reset_every` bytes sent (0: never); bodies over `body_limit`
/// cut after that many bytes (0: no limit).
#[derive(Clone, Copy)]
struct Link {
    rate: f64,
    fixed: f64,
    reset_every: u64,
    body_limit: u64,
}

impl Link {
    fn clean(rate: f64, fixed: f64) -> Link {
        Link {
            rate,
            fixed,
            reset_every: 0,
            body_limit: 0,
        }
    }
}

/// Sends `parts` parts through `link`, one observation each; returns the sizes chosen.
fn drive(controller: &mut Controller, link: Link, parts: usize) -> Vec<u64> {
    let mut sent_total = 0u64;
    let mut next_reset = link.reset_every;
    let mut sizes = Vec::new();
    for _ in 0..parts {
        let size = controller.part_size();
        let in_flight = controller.parallel_parts();
        sizes.push(size);
        let mut sent = size;
        let mut outcome = Outcome::Acknowledged;
        if link.body_limit > 0 && size > link.body_limit {
            sent = link.body_limit;
            outcome = Outcome::Failed { busy: false };
        }
        if link.reset_every > 0 && sent_total + sent >= next_reset {
            sent = next_reset - sent_total;
            next_reset += link.reset_every;
            outcome = Outcome::Failed { busy: false };
        }
        sent_total += sent;
        let seconds = link.fixed + sent as f64 * in_flight as f64 / link.rate;
        controller.observe(&Observation {
            size,
            sent,
            elapsed: Duration::from_secs_f64(seconds),
            outcome,
            in_flight,
        });
    }
    sizes
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

#[test]
fn on_a_steady_link_the_size_converges_and_then_holds_still() {
    // (rate, fixed time, expected size in MiB within ±35%): the size puts the fixed time at
    // about 5% of a part.
    let table = [
        (125e6, 0.002, 4.5),   // LAN
        (12.5e6, 0.080, 18.0), // WAN
        (6.25e6, 0.300, 34.0), // intercontinental
    ];
    for (rate, fixed, expected) in table {
        let mut controller = Controller::new(limits(), None);
        let sizes = drive(&mut controller, Link::clean(rate, fixed), 80);
        let settled = &sizes[60..];
        assert!(
            settled.iter().all(|&s| s == settled[0]),
            "rate {rate}: no oscillation once settled: {settled:?}"
        );
        let size = mib(settled[0]);
        assert!(
            (size / expected - 1.0).abs() < 0.35,
            "rate {rate} fixed {fixed}: {size:.1} MiB, expected about {expected}"
        );
    }
}

#[test]
fn fast_success_grows_the_size_at_most_doubling_per_part() {
    let mut controller = Controller::new(limits(), None);
    let sizes = drive(&mut controller, Link::clean(12.5e6, 0.080), 12);
    assert!(sizes.last() > sizes.first(), "{sizes:?}");
    for pair in sizes.windows(2) {
        assert!(pair[1] <= pair[0] * 2, "{sizes:?}");
    }
}

#[test]
fn failures_shrink_the_size_toward_the_cheapest_loss() {
    // 2.5 MB/s, 50 ms fixed, a reset every 5 MB: s* = sqrt(2 · 125 kB · 5 MB) ≈ 1.1 MB.
    let mut flaky = Link::clean(2.5e6, 0.050);
    flaky.reset_every = 5_000_000;
    let mut controller = Controller::new(limits(), None);
    let sizes = drive(&mut controller, flaky, 120);
    let late = mib(sizes[100..].iter().sum::<u64>() / 20);
    assert!(
        (0.5..2.5).contains(&late),
        "around 1 MiB, not the 8 MiB it started at: {late:.2}"
    );
    let estimates = controller.estimates();
    assert!(estimates.failures_per_gib > 50.0, "{estimates:?}");
}

#[test]
fn a_body_limit_caps_the_size_below_it_and_is_probed_slowly() {
    // A proxy that cuts every body after 100 MiB, on a link that would like larger parts.
    let mut proxied = Link::clean(125e6, 0.300);
    proxied.body_limit = 100 * MIB;
    let mut controller = Controller::new(limits(), None);
    let sizes = drive(&mut controller, proxied, 60);
    let cap = controller.estimates().cap.expect("a cap is learned");
    assert!((64 * MIB..100 * MIB).contains(&cap), "cap {}", mib(cap));
    let failed_after_cap = sizes[40..].iter().filter(|&&s| s > 100 * MIB).count();
    assert!(failed_after_cap <= 1, "probes are rare: {sizes:?}");

    // A 413 caps at once, below the refused size.
    let mut refused = Controller::new(limits(), None);
    refused.observe(&Observation {
        size: 32 * MIB,
        sent: 0,
        elapsed: Duration::from_millis(50),
        outcome: Outcome::TooLarge,
        in_flight: 1,
    });
    assert!(refused.part_size() < 32 * MIB);
    assert!(refused.estimates().cap.is_some());
}

#[test]
fn random_resets_do_not_look_like_a_body_limit() {
    let mut controller = Controller::new(limits(), None);
    // Cuts spread widely: 3, 7, 1.5 and 5 MiB into 8 MiB parts.
    for sent in [3 * MIB, 7 * MIB, 3 * MIB / 2, 5 * MIB] {
        controller.observe(&Observation {
            size: 8 * MIB,
            sent,
            elapsed: Duration::from_secs(1),
            outcome: Outcome::Failed { busy: false },
            in_flight: 1,
        });
    }
    assert_eq!(controller.estimates().cap, None);
}

#[test]
fn a_link_that_changes_is_followed_within_a_few_parts() {
    let mut controller = Controller::new(limits(), None);
    drive(&mut controller, Link::clean(12.5e6, 0.080), 60);
    let fast = controller.part_size();
    let sizes = drive(&mut controller, Link::clean(1.25e6, 0.080), 40);
    let slow = *sizes.last().unwrap();
    assert!(
        slow * 4 < fast,
        "fast {} MiB, slow {} MiB",
        mib(fast),
        mib(slow)
    );
}

#[test]
fn sizes_stay_within_the_configured_bounds() {
    let bounded = Limits {
        min_size: MIB,
        max_size: 4 * MIB,
        ..limits()
    };
    for link in [Link::clean(125e6, 0.300), Link::clean(1e5, 0.001)] {
        let mut controller = Controller::new(bounded, None);
        let sizes = drive(&mut controller, link, 40);
        assert!(
            sizes.iter().all(|&s| (MIB..=4 * MIB).contains(&s)),
            "{sizes:?}"
        );
    }
    let fixed = Limits {
        min_size: 16 * MIB,
        max_size: 16 * MIB,
        initial_size: 16 * MIB,
        ..limits()
    };
    let mut controller = Controller::new(fixed, None);
    let sizes = drive(&mut controller, Link::clean(1e6, 0.5), 10);
    assert!(
        sizes.iter().all(|&s| s == 16 * MIB),
        "a fixed size stays fixed"
    );
}

#[test]
fn a_huge_file_still_fits_the_remotes_part_numbers() {
    use crate::upload::planner::{PlanContext, fit};
    let mut controller = Controller::new(limits(), None);
    drive(&mut controller, Link::clean(125e6, 0.002), 40);
    let limits = crate::queue::PartLimits {
        min_part_size: 5 * MIB,
        max_part_size: 5 * GIB,
        max_parts: 10_000,
        sequential: false,
        uniform: false,
    };
    // 40 TiB: 10,000 parts of 4 GiB and more, within S3's 5 GiB.
    let file_size = 40 * 1024 * GIB;
    let (mut offset, mut number) = (0, 1);
    while offset < file_size {
        let plan = PlanContext {
            offset,
            file_size,
            next_number: number,
            limits,
        };
        offset += fit(controller.part_size(), &plan);
        number += 1;
    }
    assert!(number - 1 <= 10_000, "{} parts", number - 1);
}

#[test]
fn parallelism_covers_a_long_fat_pipe_and_backs_off_when_congested() {
    // Parts capped at 2 MiB on a link whose fixed time carries 1.9 MB: more in flight.
    let small_parts = Limits {
        max_size: 2 * MIB,
        initial_parallel: 1,
        ..limits()
    };
    let mut controller = Controller::new(small_parts, None);
    drive(&mut controller, Link::clean(6.25e6, 0.300), 30);
    let covering = controller.parallel_parts();
    assert!(covering >= 2, "parallel {covering}");
    controller.observe(&Observation {
        size: 2 * MIB,
        sent: MIB,
        elapsed: Duration::from_secs(60),
        outcome: Outcome::Stalled,
        in_flight: covering,
    });
    assert!(controller.parallel_parts() < covering, "halved on a stall");
    let bounded = Limits {
        max_parallel: 2,
        ..small_parts
    };
    let mut controller = Controller::new(bounded, None);
    drive(&mut controller, Link::clean(6.25e6, 0.600), 30);
    assert_eq!(
        controller.parallel_parts(),
        2,
        "capped by the configured maximum"
    );
}

#[test]
fn what_was_learned_survives_a_restart() {
    let mut controller = Controller::new(limits(), None);
    drive(&mut controller, Link::clean(12.5e6, 0.080), 40);
    let kept = serde_json::to_string(controller.learned()).unwrap();
    let restored = Controller::new(limits(), Some(serde_json::from_str(&kept).unwrap()));
    assert_eq!(restored.part_size(), controller.part_size());
    assert_eq!(restored.parallel_parts(), controller.parallel_parts());
    assert_ne!(restored.part_size(), limits().initial_size);
}
