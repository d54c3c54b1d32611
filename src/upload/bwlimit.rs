//! Bandwidth limits: a rate or a weekly timetable in the syntax rclone users write for
//! `--bwlimit` (`"10M"`, `"Mon-08:00,512k 18:00,off"`), and the token bucket every body of a
//! daemon (or of one remote) draws from.
//!
//! The rules are pure and take the time as an input: `Bandwidth::rate_at` a minute of the
//! week, `Bucket::reserve` an instant. `Limiter` joins them to the clocks. A chunk reserves its
//! bytes and then waits until the bucket has earned them, so parallel parts take turns chunk by
//! chunk (none starves) and the average stays at the rate; a timetable's change of rate, or
//! `ferry bwlimit`, applies from the next chunk.

use std::sync::Mutex;
use std::time::Duration;

// Tokio's clock: the same as std's in production, and pausable in tests.
use tokio::time::Instant;

/// How much a bucket may hold when nothing was sent for a while: a tenth of a second at the
/// rate, so an idle moment does not turn into a burst far above the limit.
const BURST_SECONDS: f64 = 0.1;
/// Pieces a limited chunk is cut into, at most, per second at the rate: at low rates a 256 KiB
/// chunk would otherwise take longer than the stall watchdog waits for progress.
const PIECES_PER_SECOND: u64 = 8;
/// The smallest piece worth a reservation.
const MIN_PIECE_BYTES: u64 = 16 * 1024;
const MINUTES_PER_DAY: u32 = 24 * 60;
const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// A bandwidth limit: none, one rate, or a weekly timetable.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Bandwidth {
    #[default]
    Unlimited,
    /// Bytes per second.
    Fixed(u64),
    /// From each minute of the week (Monday 00:00 is 0) the rate in bytes per second (`None`:
    /// unlimited), sorted; before the first, the last one of the week holds. `text` is the
    /// timetable as written.
    Timetable {
        text: String,
        slots: Vec<(u32, Option<u64>)>,
    },
}

impl std::fmt::Display for Bandwidth {
    /// As the configuration and `ferry bwlimit` take it back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bandwidth::Unlimited => f.write_str("off"),
            Bandwidth::Fixed(rate) => write!(f, "{}/s", bytesize::ByteSize(*rate).display().iec()),
            Bandwidth::Timetable { text, .. } => f.write_str(text),
        }
    }
}

impl Bandwidth {
    /// Reads a limit: `off`, a rate (`parse_rate`), or a timetable of space-separated
    /// `[Day-]HH:MM,RATE` entries; an entry without a day holds every day.
    pub fn parse(text: &str) -> Result<Bandwidth, String> {
        let text = text.trim();
        if !text.contains(',') {
            return Ok(match parse_rate(text)? {
                Some(rate) => Bandwidth::Fixed(rate),
                None => Bandwidth::Unlimited,
            });
        }
        let mut slots = Vec::new();
        for entry in text.split_whitespace() {
            let (when, rate) = entry
                .split_once(',')
                .ok_or_else(|| format!("timetable entry {entry:?} is not TIME,RATE"))?;
            let rate = parse_rate(rate)?;
            for minute in parse_when(when)? {
                slots.push((minute, rate));
            }
        }
        // Stable: of two entries for the same minute, the later one written holds.
        slots.sort_by_key(|(minute, _)| *minute);
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        Ok(Bandwidth::Timetable { text, slots })
    }

    /// The rate in bytes per second at `minute_of_week` (Monday 00:00 is 0); `None`: unlimited.
    pub fn rate_at(&self, minute_of_week: u32) -> Option<u64> {
        match self {
            Bandwidth::Unlimited => None,
            Bandwidth::Fixed(rate) => Some(*rate),
            Bandwidth::Timetable { slots, .. } => slots
                .iter()
                .rev()
                .find(|(from, _)| *from <= minute_of_week)
                .or(slots.last())
                .and_then(|(_, rate)| *rate),
        }
    }
}

/// Reads a rate in bytes per second as rclone users write it: `off` (`None`); a number of
/// KiB/s (`512`, rclone's unit); a number with a binary suffix `B K M G T` (`10M` is 10 MiB/s,
/// as in rclone); or a size such as `10MiB` or `1.5MB`. A trailing `/s` is allowed.
pub fn parse_rate(text: &str) -> Result<Option<u64>, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let size = text.strip_suffix("/s").unwrap_or(text);
    let bytes = match rclone_units(size) {
        Some(bytes) => bytes,
        None => size
            .parse::<bytesize::ByteSize>()
            .map_err(|_| format!("{text:?} is not a rate such as 10M, 512KiB/s or off"))?
            .as_u64(),
    };
    match bytes {
        0 => Err(format!(
            "{text:?} is a rate of zero; write off for no limit"
        )),
        bytes => Ok(Some(bytes)),
    }
}

/// `512` (KiB), `512k`, `10M`, `1.5G`: a number with at most one of rclone's binary suffixes.
fn rclone_units(text: &str) -> Option<u64> {
    let (number, unit) = match text.char_indices().last()? {
        (at, letter) if letter.is_ascii_alphabetic() => (&text[..at], letter),
        _ => (text, 'K'),
    };
    let exponent = "BKMGT".find(unit.to_ascii_uppercase())?;
    let value: f64 = number.parse().ok()?;
    (value.is_finite() && value >= 0.0).then(|| (value * 1024f64.powi(exponent as i32)) as u64)
}

/// `HH:MM` (every day) or `Day-HH:MM`: the minutes of the week the entry starts at.
fn parse_when(text: &str) -> Result<Vec<u32>, String> {
    let (day, time) = match text.split_once('-') {
        Some((day, time)) => {
            let index = DAYS
                .iter()
                .position(|name| name.eq_ignore_ascii_case(day))
                .ok_or_else(|| format!("{day:?} is not a day (Mon, Tue, ... Sun)"))?;
            (Some(index as u32), time)
        }
        None => (None, text),
    };
    let minute = time
        .split_once(':')
        .and_then(|(hours, minutes)| {
            Some((hours.parse::<u32>().ok()?, minutes.parse::<u32>().ok()?))
        })
        .filter(|(hours, minutes)| *hours < 24 && *minutes < 60 && time.len() == 5)
        .map(|(hours, minutes)| hours * 60 + minutes)
        .ok_or_else(|| format!("{time:?} is not a time of day such as 08:00"))?;
    Ok(match day {
        Some(day) => vec![day * MINUTES_PER_DAY + minute],
        None => (0..7).map(|day| day * MINUTES_PER_DAY + minute).collect(),
    })
}

/// The local minute of the week (Monday 00:00 is 0) at `now`, for timetables in local time.
pub fn local_minute_of_week(now: std::time::SystemTime) -> u32 {
    let seconds = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs()) as libc::time_t;
    // SAFETY: localtime_r writes only into the tm we pass; a zeroed tm is a valid start.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&seconds, &mut tm);
        tm
    };
    // tm_wday counts from Sunday.
    let day = (tm.tm_wday as u32 + 6) % 7;
    day * MINUTES_PER_DAY + tm.tm_hour as u32 * 60 + tm.tm_min as u32
}

/// A token bucket that lets its balance go below zero: a reservation is granted at once and
/// waited for after, so each sender waits its turn and nothing is refused.
#[derive(Debug)]
struct Bucket {
    balance: f64,
    updated: Instant,
    /// The rate in force since `updated` (0: none yet).
    rate: f64,
}

impl Bucket {
    fn new(now: Instant) -> Bucket {
        Bucket {
            balance: 0.0,
            updated: now,
            rate: 0.0,
        }
    }

    /// Reserves `bytes` at `rate` bytes per second at `now`; returns how long to wait before
    /// sending them. The time since the last reservation earns at the rate then in force.
    fn reserve(&mut self, bytes: u64, rate: u64, now: Instant) -> Duration {
        let rate = rate as f64;
        let earning = if self.rate > 0.0 { self.rate } else { rate };
        let earned = now.saturating_duration_since(self.updated).as_secs_f64() * earning;
        self.balance = (self.balance + earned).min(rate * BURST_SECONDS);
        (self.updated, self.rate) = (now, rate);
        self.balance -= bytes as f64;
        match self.balance < 0.0 {
            true => Duration::from_secs_f64(-self.balance / rate),
            false => Duration::ZERO,
        }
    }
}

/// A bandwidth limit in force: the configured one (or the one `ferry bwlimit` set), and the
/// bucket that every body it covers draws from.
#[derive(Debug)]
pub struct Limiter {
    bandwidth: Mutex<Bandwidth>,
    bucket: Mutex<Bucket>,
}

impl Limiter {
    pub fn new(bandwidth: Bandwidth) -> Limiter {
        Limiter {
            bandwidth: Mutex::new(bandwidth),
            bucket: Mutex::new(Bucket::new(Instant::now())),
        }
    }

    /// Replaces the limit (a reload, `ferry bwlimit`); it applies from the next chunk.
    pub fn set(&self, bandwidth: Bandwidth) {
        *self
            .bandwidth
            .lock()
            .expect("bandwidth lock is never poisoned") = bandwidth;
    }

    pub fn bandwidth(&self) -> Bandwidth {
        self.bandwidth
            .lock()
            .expect("bandwidth lock is never poisoned")
            .clone()
    }

    /// The rate now, in bytes per second; `None`: unlimited.
    pub fn rate_now(&self) -> Option<u64> {
        let bandwidth = self
            .bandwidth
            .lock()
            .expect("bandwidth lock is never poisoned");
        match &*bandwidth {
            Bandwidth::Unlimited => None,
            Bandwidth::Fixed(rate) => Some(*rate),
            timetable => timetable.rate_at(local_minute_of_week(std::time::SystemTime::now())),
        }
    }

    /// The largest piece a chunk should be cut into now: small enough that pieces flow several
    /// times a second at the rate; `None` when unlimited.
    pub fn piece_bytes(&self) -> Option<u64> {
        self.rate_now()
            .map(|rate| (rate / PIECES_PER_SECOND).max(MIN_PIECE_BYTES))
    }

    /// Waits until `bytes` may be sent under the limit in force.
    pub async fn acquire(&self, bytes: u64) {
        let Some(rate) = self.rate_now() else {
            return;
        };
        let wait = self
            .bucket
            .lock()
            .expect("bucket lock is never poisoned")
            .reserve(bytes, rate, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

impl Default for Limiter {
    /// No limit (yet).
    fn default() -> Limiter {
        Limiter::new(Bandwidth::Unlimited)
    }
}

#[cfg(test)]
mod tests;
