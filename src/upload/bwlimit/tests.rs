use super::*;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
/// Minutes of the week for a day (0 is Monday) and a time.
fn at(day: u32, hours: u32, minutes: u32) -> u32 {
    day * MINUTES_PER_DAY + hours * 60 + minutes
}

#[test]
fn rates_read_as_rclone_users_write_them() {
    let cases: &[(&str, Option<u64>)] = &[
        ("off", None),
        ("OFF", None),
        ("512", Some(512 * KIB)),
        ("512k", Some(512 * KIB)),
        ("512K", Some(512 * KIB)),
        ("10M", Some(10 * MIB)),
        ("10M/s", Some(10 * MIB)),
        ("1.5G", Some(1536 * MIB)),
        ("100B", Some(100)),
        ("10MiB", Some(10 * MIB)),
        ("10MiB/s", Some(10 * MIB)),
        ("512KiB", Some(512 * KIB)),
        ("10MB", Some(10_000_000)),
    ];
    for (text, expected) in cases {
        assert_eq!(parse_rate(text), Ok(*expected), "{text}");
    }
    for bad in ["0", "0M", "fast", "-1M", "", "10X"] {
        let error = parse_rate(bad).unwrap_err();
        assert!(error.contains(&format!("{bad:?}")), "{bad}: {error}");
    }
}

#[test]
fn a_timetable_switches_rate_at_each_boundary_and_wraps_around_the_week() {
    let office = Bandwidth::parse("Mon-08:00,512KiB 18:00,off").unwrap();
    let daily = Bandwidth::parse("08:00,512k 12:00,10M 13:00,512k 18:00,30M 23:00,off").unwrap();
    let cases: &[(&Bandwidth, u32, Option<u64>)] = &[
        // Before Monday's first entry, the last one of the week (Sunday 18:00) holds.
        (&office, at(0, 7, 59), None),
        (&office, at(0, 8, 0), Some(512 * KIB)),
        (&office, at(0, 17, 59), Some(512 * KIB)),
        (&office, at(0, 18, 0), None),
        // Tuesday has no 08:00 entry of its own: Monday 18:00's `off` still holds.
        (&office, at(1, 9, 0), None),
        (&daily, at(0, 0, 30), None),
        (&daily, at(0, 8, 0), Some(512 * KIB)),
        (&daily, at(2, 12, 30), Some(10 * MIB)),
        (&daily, at(4, 13, 0), Some(512 * KIB)),
        (&daily, at(6, 22, 59), Some(30 * MIB)),
        (&daily, at(6, 23, 59), None),
        (&Bandwidth::Fixed(MIB), at(3, 3, 3), Some(MIB)),
        (&Bandwidth::Unlimited, at(3, 3, 3), None),
    ];
    for (bandwidth, minute, expected) in cases {
        assert_eq!(
            bandwidth.rate_at(*minute),
            *expected,
            "{bandwidth:?} at {minute}"
        );
    }
}

#[test]
fn a_single_rate_or_off_is_not_a_timetable_and_bad_entries_are_named() {
    assert_eq!(Bandwidth::parse("10M"), Ok(Bandwidth::Fixed(10 * MIB)));
    assert_eq!(Bandwidth::parse(" off "), Ok(Bandwidth::Unlimited));
    // Shown as the configuration takes it back.
    for (text, shown) in [
        ("10M", "10.0 MiB/s"),
        ("off", "off"),
        ("Mon-08:00,512k   18:00,off", "Mon-08:00,512k 18:00,off"),
    ] {
        let bandwidth = Bandwidth::parse(text).unwrap();
        assert_eq!(bandwidth.to_string(), shown);
        assert_eq!(Bandwidth::parse(shown), Ok(bandwidth));
    }
    for (bad, named) in [
        ("25:00,1M", "\"25:00\""),
        ("8:00,1M", "\"8:00\""),
        ("Xyz-08:00,1M", "\"Xyz\""),
        ("08:00,fast", "\"fast\""),
        ("08:00", "\"08:00\""),
    ] {
        let error = Bandwidth::parse(bad).unwrap_err();
        assert!(error.contains(named), "{bad}: {error}");
    }
}

#[test]
fn the_bucket_keeps_the_average_at_the_rate_and_an_idle_spell_buys_only_a_small_burst() {
    let start = Instant::now();
    let mut bucket = Bucket::new(start);
    let second = Duration::from_secs(1);
    // From empty, 1 MiB at 1 MiB/s waits a second; three reserved at once wait in turn.
    assert_eq!(bucket.reserve(MIB, MIB, start), second);
    assert_eq!(bucket.reserve(MIB, MIB, start), 2 * second);
    assert_eq!(bucket.reserve(MIB, MIB, start), 3 * second);
    // Ten idle seconds later the bucket holds a tenth of a second, not ten.
    let later = start + 13 * second;
    let wait = bucket.reserve(MIB, MIB, later);
    assert!((wait.as_secs_f64() - 0.9).abs() < 1e-6, "{wait:?}");
    // A slower rate from the moment that reservation was paid: the next one pays at the new
    // rate, and the time before the change counted at the old one.
    let wait = bucket.reserve(MIB / 2, MIB / 2, later + wait);
    assert!((wait.as_secs_f64() - 1.0).abs() < 1e-6, "{wait:?}");
}

/// On tokio's paused clock: 40 pieces of 256 KiB at 2 MiB/s from two senders at once take five
/// virtual seconds, and `set` takes effect from the next piece.
#[tokio::test(start_paused = true)]
async fn parallel_senders_share_the_rate_and_a_new_limit_applies_at_once() {
    let limiter = std::sync::Arc::new(Limiter::new(Bandwidth::Fixed(2 * MIB)));
    let started = Instant::now();
    let senders: Vec<_> = (0..2)
        .map(|_| {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    limiter.acquire(256 * KIB).await;
                }
                Instant::now()
            })
        })
        .collect();
    let mut finished = Vec::new();
    for sender in senders {
        finished.push(sender.await.unwrap() - started);
    }
    for elapsed in &finished {
        let seconds = elapsed.as_secs_f64();
        // Both finish near the end: neither was starved while the other went first.
        assert!((4.8..=5.01).contains(&seconds), "{finished:?}");
    }
    limiter.set(Bandwidth::Unlimited);
    let before = Instant::now();
    limiter.acquire(100 * MIB).await;
    assert_eq!(Instant::now(), before, "no wait once unlimited");
    assert_eq!(limiter.piece_bytes(), None);
    limiter.set(Bandwidth::Fixed(MIB));
    assert_eq!(limiter.piece_bytes(), Some(128 * KIB));
}
