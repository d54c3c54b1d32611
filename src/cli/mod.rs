//! The commands behind the binary's subcommands, apart from argument parsing: starting the
//! daemon, the client commands that talk to it over the control socket, `serve` and `push`
//! (their checks, tokens and defaults), and the one signal handler (`signals`).

pub mod check;
pub mod cleanup;
pub mod push;
pub mod serve;
pub mod signals;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use bytesize::ByteSize;
use tokio_util::sync::CancellationToken;

use crate::UsageError;
use crate::config::{self, Config, ConfigError, Defaults, RemoteConfig};
use crate::control::protocol::{ActiveTransfer, HookDelivery};
use crate::control::{self, Command, RemoteStatus, Reply, StatusReply};
use crate::daemon::Reload;
use crate::output::{out, outln, outln_best_effort};
use crate::queue::{JobId, JobRecord, JobState};
use crate::service::notify;
use crate::upload::bwlimit::Bandwidth;
use signals::{Asked, Signals};

/// Refresh interval of `ferry status --watch`.
const WATCH_REFRESH: Duration = Duration::from_secs(1);
/// How long one `ferry events` poll waits for news (the daemon caps it below its socket's
/// exchange timeout).
const EVENTS_POLL: Duration = Duration::from_secs(5);

/// Loads the configuration the way every command finds it (`--config`, `$FERRY_CONFIG`, the
/// platform file, else the built-in default). Problems are usage errors (exit code 2).
pub fn load_config(flag: Option<&Path>) -> Result<Config> {
    let defaults = Defaults::from_platform().map_err(|e| UsageError(e.to_string()))?;
    let env = std::env::var_os("FERRY_CONFIG").map(PathBuf::from);
    let path = config::locate(flag, env, &defaults);
    config::load(path.as_deref(), &defaults).map_err(|error| match error {
        ConfigError::Invalid { .. } | ConfigError::Read { .. } | ConfigError::NoHome => {
            UsageError(crate::error::chain(&error)).into()
        }
    })
}

/// `load_config`, then the checks against the file system (`config::check_paths`) that a
/// configuration must pass to be run: for `ferry run`, `ferry config check` and a reload.
pub fn load_runnable_config(flag: Option<&Path>) -> Result<Config> {
    load_checked_config(flag, config::check_paths)
}

/// `load_config`, then `check`; the problems it finds are usage errors.
pub fn load_checked_config(
    flag: Option<&Path>,
    check: fn(&Config) -> Vec<config::Problem>,
) -> Result<Config> {
    let config = load_config(flag)?;
    let problems = check(&config);
    if problems.is_empty() {
        return Ok(config);
    }
    let error = ConfigError::Invalid {
        path: config.source.clone().unwrap_or_default(),
        problems,
    };
    Err(UsageError(crate::error::chain(&error)).into())
}

/// Adds `077` to the process's umask: everything `ferry run` and `ferry serve` create (the
/// data folder, the store, the socket, received files and their folders) is readable by the
/// user they run as alone, as the systemd units' `UMask=0077` also says. A received file is
/// never more open than that, whatever the mode of its source.
pub fn private_umask() {
    // SAFETY: umask only swaps the process's file-creation mask; it cannot fail.
    unsafe {
        let current = libc::umask(0o077);
        libc::umask(current | 0o077);
    }
}

/// The configured remote `name` (`--remote NAME`), with the name borrowed from `config`; a
/// name it does not have is a usage error listing those it has.
pub fn remote_named<'a>(config: &'a Config, name: &str) -> Result<(&'a str, &'a RemoteConfig)> {
    if let Some((name, remote)) = config.remotes.get_key_value(name) {
        return Ok((name, remote));
    }
    let known: Vec<&str> = config.remotes.keys().map(String::as_str).collect();
    Err(UsageError(format!(
        "--remote {name}: no such remote in the configuration (it has: {})",
        known.join(", ")
    ))
    .into())
}

/// `ferry run`: the daemon in the foreground until SIGTERM or SIGINT; SIGHUP reloads. Under
/// systemd (`Type=notify`) it reports readiness, status, reloads and shutdown, and feeds the
/// watchdog.
pub async fn run(flag: Option<PathBuf>, config: Config) -> Result<()> {
    let shutdown = CancellationToken::new();
    let (reload_sender, reloads) = tokio::sync::mpsc::channel(1);
    let mut signals = Signals::install(true)?;
    let signals = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            while signals.next().await == Asked::Reload {
                reload(flag.as_deref(), &reload_sender).await;
            }
            notify::stopping();
            shutdown.cancel();
        })
    };
    let supervising = shutdown.child_token();
    let result = crate::daemon::run(config, shutdown, reloads, |started| {
        for watch in &started.watches {
            outln_best_effort(&format!("watching {}", watch.display()));
        }
        if let Some((url, storage)) = &started.receiver {
            outln_best_effort(&format!(
                "uploading to the embedded receiver at {url}, storing in {}",
                storage.display()
            ));
        }
        outln_best_effort(&format!("control socket {}", started.socket.display()));
        let _ = std::io::stdout().flush();
        notify::ready();
        tokio::spawn(notify::supervise(started.probe.clone(), supervising));
    })
    .await;
    signals.abort();
    Ok(result?)
}

/// SIGHUP: reads the configuration again and hands it to the daemon; an invalid one is
/// logged and the running one kept.
async fn reload(flag: Option<&Path>, daemon: &tokio::sync::mpsc::Sender<Reload>) {
    tracing::info!("SIGHUP: reloading the configuration");
    notify::reloading();
    match load_runnable_config(flag) {
        Ok(config) => {
            let (applied, taken) = tokio::sync::oneshot::channel();
            if daemon.send(Reload { config, applied }).await.is_ok() {
                let _ = taken.await;
            }
        }
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "the new configuration is invalid; keeping the running one")
        }
    }
    notify::ready();
}

/// The control socket to use: `--socket`, else the configuration's.
pub fn socket_path(socket: Option<PathBuf>, config_flag: Option<&Path>) -> Result<PathBuf> {
    match socket {
        Some(socket) => Ok(socket),
        None => Ok(load_config(config_flag)?.daemon.socket),
    }
}

/// `ferry status`.
pub async fn status(socket: &Path, json: bool, watch: bool) -> Result<()> {
    loop {
        let Reply::Status(status) = control::call(socket, Command::Status).await? else {
            anyhow::bail!("the daemon answered status with something else");
        };
        if json {
            outln(&serde_json::to_string(&status)?)?;
        } else {
            if watch && std::io::stdout().is_terminal() {
                out("\x1b[2J\x1b[H")?; // clear the screen, cursor home
            }
            out(&render_status(&status))?;
        }
        if !watch {
            return degraded(&status);
        }
        std::io::stdout().flush()?;
        tokio::time::sleep(WATCH_REFRESH).await;
    }
}

/// Like `systemctl status` for a degraded unit, the exit code says it too (1): the store
/// refuses writes, a watch cannot watch, a hook failed too often, or a job failed.
fn degraded(status: &StatusReply) -> Result<()> {
    if let Some(problem) = &status.store_problem {
        anyhow::bail!("store: {problem}");
    }
    if let Some(unhealthy) = status.unhealthy_watches().next() {
        anyhow::bail!("watch {} is {}", unhealthy.path.display(), unhealthy.state);
    }
    if status.hooks.failed > 0 {
        anyhow::bail!(
            "{} hook delivery(ies) failed: `ferry retry --failed` tries them again",
            status.hooks.failed
        );
    }
    if status.queue.failed > 0 {
        anyhow::bail!(
            "{} job(s) failed: `ferry jobs --state failed` shows why, `ferry retry --failed` queues them again",
            status.queue.failed
        );
    }
    Ok(())
}

/// The human summary of a status reply.
pub fn render_status(status: &StatusReply) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let q = &status.queue;
    let state = if status.paused { "paused" } else { "running" };
    let _ = writeln!(
        out,
        "ferry {} {state}: {} queued, {} active, {} failed, {} done",
        status.version, q.queued, q.active, q.failed, q.done
    );
    if let Some(problem) = &status.store_problem {
        let _ = writeln!(
            out,
            "  store: {problem}; uploads wait until it takes writes"
        );
    }
    render_intake(&mut out, status);
    for transfer in &status.active {
        let _ = writeln!(out, "  {}", describe_transfer(transfer));
    }
    for remote in &status.remotes {
        let _ = writeln!(out, "  {}", describe_remote(remote));
    }
    let hooks = &status.hooks;
    if hooks.pending > 0 || hooks.failed > 0 {
        let _ = writeln!(
            out,
            "  hooks: {} pending, {} failed",
            hooks.pending, hooks.failed
        );
    }
    for failed in status.failed.iter().chain(&hooks.failures) {
        let _ = writeln!(
            out,
            "  failed #{} {}: {}",
            failed.job_id,
            failed.path.display(),
            failed.error
        );
    }
    out
}

/// The watched folders' lines, and what is still settling or being queued.
fn render_intake(out: &mut String, status: &StatusReply) {
    use std::fmt::Write as _;
    for watch in &status.watch_health {
        let path = watch.path.display();
        let _ = match watch.state.as_str() {
            "watching" => writeln!(out, "  watching {path}"),
            state => writeln!(out, "  {state} {path}: {}", watch.detail),
        };
    }
    let intake = &status.intake;
    let unchecked = intake.found.saturating_sub(intake.checked);
    if intake.scans == 0 || intake.settling > 0 || unchecked > 0 {
        let scan = if intake.scans == 0 { "scanning, " } else { "" };
        let settling = intake.settling;
        let _ = writeln!(
            out,
            "  {scan}{settling} files settling, {unchecked} being queued"
        );
    }
}

/// One upload's line: a progress bar, its part size, speed and retried part attempts.
fn describe_transfer(transfer: &ActiveTransfer) -> String {
    let fraction = transfer.bytes_sent as f64 / transfer.size.max(1) as f64;
    let filled = ((fraction * 20.0).round() as usize).min(20);
    let retried = match transfer.part_attempts_failed {
        0 => String::new(),
        count => format!(", {count} part attempts retried"),
    };
    format!(
        "#{} {} [{}{}] {:>3.0}% of {}, {} parts, {}/s{retried}",
        transfer.job_id,
        transfer.remote_path,
        "=".repeat(filled),
        " ".repeat(20 - filled),
        fraction * 100.0,
        ByteSize(transfer.size).display().iec(),
        ByteSize(transfer.part_size).display().iec(),
        ByteSize(transfer.throughput_bytes_per_sec).display().iec(),
    )
}

/// One remote's line: its part size and parallelism, and what they come from; under it, what
/// the remote was seen to ignore.
fn describe_remote(remote: &RemoteStatus) -> String {
    let kind = match remote.kind.is_empty() {
        true => String::new(),
        false => format!(" ({} {})", remote.kind, remote.location),
    };
    let mut line = format!(
        "remote {}{kind}: parts of {}, {} in flight (now {})",
        remote.name,
        ByteSize(remote.part_size).display().iec(),
        remote.parallel_parts,
        remote.in_flight
    );
    if let (Some(rate), Some(rtt)) = (remote.throughput_bytes_per_sec, remote.round_trip_ms) {
        line += &format!(
            "; link {}/s, {rtt:.0} ms per request, {:.1} failures/GiB",
            ByteSize(rate).display().iec(),
            remote.failures_per_gib
        );
    }
    if let Some(cap) = remote.part_size_cap {
        line += &format!("; parts kept under {}", ByteSize(cap).display().iec());
    }
    match (&remote.bandwidth, remote.bandwidth_now) {
        (Some(limit), Some(now)) if *limit != Bandwidth::Fixed(now).to_string() => {
            let now = ByteSize(now).display().iec();
            line += &format!("; bandwidth limit {limit} (now {now}/s)");
        }
        (Some(limit), Some(_)) => line += &format!("; bandwidth limit {limit}"),
        (Some(limit), None) if limit != "off" => {
            line += &format!("; bandwidth limit {limit} (now off)");
        }
        _ => {}
    }
    for notice in &remote.notices {
        line += &format!("\n    {notice}");
    }
    line
}

/// `ferry jobs`: the jobs, then the hook deliveries not made yet (with `--json`, the jobs
/// alone, as ever; `ferry status --json` counts the deliveries).
pub async fn jobs(socket: &Path, state: Option<JobState>, json: bool) -> Result<()> {
    let Reply::Jobs { jobs, hooks } =
        control::call(socket, Command::Jobs { state, limit: None }).await?
    else {
        anyhow::bail!("the daemon answered jobs with something else");
    };
    if json {
        outln(&serde_json::to_string(&jobs)?)?;
        return Ok(());
    }
    outln(&format!(
        "{:>8}  {:<7}  {:>8}  PATH",
        "ID", "STATE", "ATTEMPTS"
    ))?;
    for job in &jobs {
        outln(&job_line(job))?;
    }
    if !hooks.is_empty() {
        outln(&format!(
            "\n{:>8}  {:<8}  {:<7}  {:>8}  PATH",
            "JOB", "HOOK", "STATE", "ATTEMPTS"
        ))?;
    }
    for hook in &hooks {
        outln(&hook_line(hook))?;
    }
    Ok(())
}

/// A job as a row of `ferry jobs`: id, state, attempts, path, and its last error.
fn job_line(job: &JobRecord) -> String {
    let state = serde_json::to_value(job.state)
        .ok()
        .and_then(|state| state.as_str().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    format!(
        "{:>8}  {:<7}  {:>8}  {}{}",
        job.id,
        state,
        job.attempts,
        job.path.display(),
        last_error(job.last_error.as_deref())
    )
}

/// A hook delivery as a row of `ferry jobs`: job, hook, state, attempts, path, last error.
fn hook_line(hook: &HookDelivery) -> String {
    format!(
        "{:>8}  {:<8}  {:<7}  {:>8}  {}{}",
        hook.job_id,
        hook.event,
        hook.state,
        hook.attempts,
        hook.path.display(),
        last_error(hook.last_error.as_deref())
    )
}

fn last_error(error: Option<&str>) -> String {
    error.map(|e| format!("  ({e})")).unwrap_or_default()
}

/// `ferry retry`.
pub async fn retry(socket: &Path, ids: Vec<JobId>, all_failed: bool) -> Result<()> {
    let command = if all_failed {
        Command::RetryFailed
    } else {
        Command::Retry { ids }
    };
    let Reply::Retried { count } = control::call(socket, command).await? else {
        anyhow::bail!("the daemon answered retry with something else");
    };
    outln(&format!("{count} failed job(s) queued again"))?;
    Ok(())
}

/// `ferry events`: follows the daemon's job events after id `since` (0: from the oldest it
/// holds), a line each (or a JSON object each), until the daemon stops or the reader goes away.
/// A gap in the ids (the consumer fell behind the daemon's log) is said on standard error.
pub async fn events(socket: &Path, since: u64, json: bool) -> Result<()> {
    let mut last = since;
    loop {
        let wait_ms = EVENTS_POLL.as_millis() as u64;
        let command = Command::Events {
            since: last,
            wait_ms,
        };
        let Reply::Events { events, oldest } = control::call(socket, command).await? else {
            anyhow::bail!("the daemon answered events with something else");
        };
        if last > 0 && oldest > last + 1 {
            let missed = format!("missed events {} to {}", last + 1, oldest - 1);
            crate::output::errln(&format!(
                "warning: {missed}: the daemon keeps the latest only"
            ));
        }
        for event in events {
            match json {
                true => outln(&serde_json::to_string(&event)?)?,
                false => outln(&render_event(&event))?,
            }
            last = event.id;
        }
        std::io::stdout().flush()?;
    }
}

/// One event as a line: id, time, type, job, path, and its remote path or reason.
fn render_event(event: &crate::control::Event) -> String {
    let time = jiff::Timestamp::from_millisecond(event.time_ms as i64)
        .map(|time| time.to_string())
        .unwrap_or_default();
    let detail = match (&event.detail, event.kind) {
        (Some(remote), crate::control::EventKind::Uploaded) => format!(" -> {remote}"),
        (Some(reason), _) => format!(": {reason}"),
        (None, _) => String::new(),
    };
    format!(
        "{} {time} {} #{} {}{detail}",
        event.id,
        event.kind.name(),
        event.job_id,
        event.path.display()
    )
}

/// `ferry pause`, `resume`, `rescan`.
pub async fn simple(socket: &Path, command: Command) -> Result<()> {
    match control::call(socket, command).await? {
        Reply::Done { message } => outln(&message)?,
        other => anyhow::bail!("unexpected reply {other:?}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_in_progress_is_one_line_with_its_bar() {
        let transfer = |bytes_sent, part_attempts_failed| ActiveTransfer {
            job_id: 7,
            path: PathBuf::from("/outbox/a.jpg"),
            remote_path: "photos/a.jpg".into(),
            size: 10 << 20,
            bytes_sent,
            part_size: 5 << 20,
            throughput_bytes_per_sec: 1 << 20,
            part_attempts_failed,
        };
        let cases = [
            (
                0,
                0,
                "#7 photos/a.jpg [                    ]   0% of 10.0 MiB, 5.0 MiB parts, 1.0 MiB/s",
            ),
            (
                5 << 20,
                2,
                "#7 photos/a.jpg [==========          ]  50% of 10.0 MiB, 5.0 MiB parts, 1.0 MiB/s, 2 part attempts retried",
            ),
            (
                10 << 20,
                0,
                "#7 photos/a.jpg [====================] 100% of 10.0 MiB, 5.0 MiB parts, 1.0 MiB/s",
            ),
        ];
        for (sent, failed, expected) in cases {
            assert_eq!(describe_transfer(&transfer(sent, failed)), expected);
        }
    }
}
