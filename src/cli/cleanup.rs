//! `ferry cleanup`: aborts orphaned S3 multipart uploads. Asks the running daemon (it owns the
//! store, whose sessions say which uploads are live); when none runs, opens the store itself.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bytesize::ByteSize;

use crate::cleanup::{Orphan, Outcome, Report, Request};
use crate::control::{self, Command, ControlError, Reply};
use crate::queue::Store;

/// Cleans up as `request` says; prints what it found (a table, or JSON). Fails when a remote
/// could not be examined or an abort failed, after cleaning all the rest.
pub async fn cleanup(
    config_flag: Option<&Path>,
    socket: Option<PathBuf>,
    request: Request,
    json: bool,
) -> Result<()> {
    let config = super::load_config(config_flag)?;
    let socket = super::socket_path(socket, config_flag)?;
    let report = match control::call(&socket, Command::Cleanup(request.clone())).await {
        Ok(Reply::Cleaned { orphans, unlisted }) => Report {
            orphans,
            unlisted,
            ..Report::default()
        },
        Ok(other) => anyhow::bail!("the daemon answered cleanup with {other:?}"),
        Err(ControlError::NotRunning { .. }) => without_daemon(&config, &request).await?,
        Err(error) => return Err(error.into()),
    };
    let orphans = &report.orphans;
    match json {
        true => crate::output::outln(&serde_json::to_string(orphans).expect("orphans serialise"))?,
        false => crate::output::out(&render(orphans, &request))?,
    }
    let mut problems: Vec<String> = report.unlisted.iter().map(|u| u.error.clone()).collect();
    let failed = orphans
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Failed(_)))
        .count();
    if failed > 0 {
        problems.push(format!("{failed} orphaned upload(s) could not be aborted"));
    }
    match problems.as_slice() {
        [] => Ok(()),
        [one] => anyhow::bail!("{one}"),
        many => anyhow::bail!("{} problems:\n  {}", many.len(), many.join("\n  ")),
    }
}

/// `cleanup::run` on the store opened here: no daemon holds it.
async fn without_daemon(config: &crate::config::Config, request: &Request) -> Result<Report> {
    let store_dir = config.daemon.data_dir.join("store");
    let opened = store_dir.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&opened))
        .await
        .expect("opening the store does not panic")
        .with_context(|| format!("cannot open the store in {}", store_dir.display()))?;
    Ok(crate::cleanup::run(&config.remotes, &store.sessions(), request).await?)
}

/// One line per orphan, then a summary.
fn render(orphans: &[Orphan], request: &Request) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for orphan in orphans {
        let verb = match &orphan.outcome {
            Outcome::Aborted => "aborted".to_string(),
            Outcome::WouldAbort => "would abort".to_string(),
            Outcome::Failed(error) => format!("failed ({error})"),
        };
        let _ = writeln!(
            out,
            "{verb}: {} {} (upload {}, started {}, {} parts, {})",
            orphan.remote,
            orphan.key,
            orphan.upload_id,
            orphan.initiated,
            orphan.parts,
            ByteSize(orphan.bytes).display().iec()
        );
    }
    let idle = humantime::format_duration(request.older_than);
    let _ = writeln!(
        out,
        "{} orphaned upload(s) idle for {idle} or more{}",
        orphans.len(),
        if request.dry_run {
            " (dry run: none aborted)"
        } else {
            ""
        }
    );
    out
}
