//! The sd_notify protocol: `READY=1` once the daemon listens, a `STATUS=` line as the queue
//! changes, `WATCHDOG=1` while the daemon answers, `RELOADING=1` around a reload and
//! `STOPPING=1` at shutdown. Every call is a no-op unless systemd set `NOTIFY_SOCKET`.

use std::time::Duration;

use bytesize::ByteSize;
use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::control::StatusReply;
use crate::daemon::Probe;

/// How often the status line is refreshed when there is no watchdog asking for more.
const STATUS_EVERY: Duration = Duration::from_secs(1);

fn send(states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, "cannot notify the service manager");
    }
}

/// The daemon is up: the queue is open, the watches armed, the socket listening.
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// The daemon is stopping (SIGTERM or SIGINT).
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// A reload begins; `ready` ends it. systemd 253 and later want the monotonic time with it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// The one-line summary systemd shows in `systemctl status`.
pub fn status_line(status: &StatusReply) -> String {
    let queue = &status.queue;
    let rate: u64 = status
        .active
        .iter()
        .map(|transfer| transfer.throughput_bytes_per_sec)
        .sum();
    let mut line = format!(
        "{} queued, {} active, {} failed, {} done",
        queue.queued, queue.active, queue.failed, queue.done
    );
    if rate > 0 {
        line.push_str(&format!(", {}/s", ByteSize(rate).display().iec()));
    }
    if status.paused {
        line.push_str(", paused");
    }
    if let Some(problem) = &status.store_problem {
        line.push_str(&format!(", store: {problem}"));
    }
    for watch in status.unhealthy_watches() {
        line.push_str(&format!(", {} {}", watch.state, watch.path.display()));
    }
    line
}

/// Keeps the status line current and, when systemd runs a watchdog (`WATCHDOG_USEC`), pings it
/// at half its interval, but only after the daemon answered a status query: a daemon whose
/// queue or runtime is stuck stops pinging, and systemd restarts it. Runs until `shutdown`.
pub async fn supervise(probe: Probe, shutdown: CancellationToken) {
    let watchdog = sd_notify::watchdog_enabled();
    let every = watchdog.map_or(STATUS_EVERY, |limit| (limit / 2).min(STATUS_EVERY));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shown = String::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let status = match tokio::time::timeout(every, probe.status()).await {
            Ok(Ok(status)) => status,
            Ok(Err(error)) => {
                tracing::warn!(error = %crate::error::chain(&error), "the daemon cannot read its queue; not pinging the watchdog");
                continue;
            }
            Err(_) => {
                tracing::warn!(after = ?every, "the daemon did not answer a status query; not pinging the watchdog");
                continue;
            }
        };
        let line = status_line(&status);
        match (watchdog.is_some(), line != shown) {
            (true, true) => send(&[NotifyState::Watchdog, NotifyState::Status(&line)]),
            (true, false) => send(&[NotifyState::Watchdog]),
            (false, true) => send(&[NotifyState::Status(&line)]),
            (false, false) => {}
        }
        shown = line;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::{ActiveTransfer, IntakeStatus, WatchStatus};
    use crate::queue::Counts;

    #[test]
    fn the_status_line_names_counts_rate_pause_and_unhealthy_watches() {
        let mut status = StatusReply {
            version: "0".into(),
            paused: false,
            queue: Counts {
                queued: 3,
                active: 1,
                failed: 0,
                done: 12,
            },
            active: vec![ActiveTransfer {
                job_id: 1,
                path: "/w/a".into(),
                remote_path: "a".into(),
                size: 10 << 20,
                bytes_sent: 1 << 20,
                part_size: 8 << 20,
                throughput_bytes_per_sec: 3 << 20,
                part_attempts_failed: 0,
            }],
            watches: Vec::new(),
            remotes: Vec::new(),
            hooks: Default::default(),
            store_flushes: 0,
            failed: Vec::new(),
            intake: IntakeStatus::default(),
            watch_health: vec![WatchStatus {
                path: "/w".into(),
                state: "watching".into(),
                detail: String::new(),
            }],
            store_problem: None,
        };
        assert_eq!(
            status_line(&status),
            "3 queued, 1 active, 0 failed, 12 done, 3.0 MiB/s"
        );
        status.active.clear();
        status.paused = true;
        assert_eq!(
            status_line(&status),
            "3 queued, 1 active, 0 failed, 12 done, paused"
        );
        status.watch_health[0].state = "missing".into();
        assert_eq!(
            status_line(&status),
            "3 queued, 1 active, 0 failed, 12 done, paused, missing /w"
        );
    }
}
