//! `ferry config check`: validates the configuration and prints what it means; with
//! `--connect`, also opens and aborts an upload at each remote (or the one `--remote` names),
//! so wrong keys, a missing bucket or an untrusted certificate show before the daemon runs.

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;

use crate::config::{self, Config, RemoteConfig};
use crate::output::{out, outln};
use crate::remotes::Probe;
use crate::upload::{Backend, S3Backend};

/// Said of a file without a `[[watch]]` when its remotes are checked.
const NO_WATCH: &str = "# no [[watch]]: `ferry run` refuses this file; `ferry push --remote` and `ferry cleanup` use its remotes";

/// Which remotes to connect to (`--connect`, `--remote NAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connect {
    None,
    /// Every remote (the embedded receiver, which runs only with the daemon, is said so).
    Every,
    Only(String),
}

/// Prints the effective configuration; with `connect`, then a comment line for each remote
/// reached (and what it was seen to ignore). Fails naming every remote that could not be used.
/// A file of remotes alone, which `ferry run` refuses, is connection-checked as `ferry push
/// --remote` and `ferry cleanup` use it, with a line saying the daemon would not run it.
pub async fn config_check(flag: Option<&Path>, connect: Connect) -> Result<()> {
    let config = match connect {
        Connect::None => super::load_runnable_config(flag)?,
        _ => super::load_checked_config(flag, config::path_problems)?,
    };
    out(&config.render())?;
    if connect != Connect::None && config::no_watch(&config).is_some() {
        outln(NO_WATCH)?;
    }
    let names = match &connect {
        Connect::None => return Ok(()),
        Connect::Every => config.remotes.keys().map(String::as_str).collect(),
        Connect::Only(name) => vec![super::remote_named(&config, name)?.0],
    };
    let mut failed = Vec::new();
    for name in names {
        match connect_to(&config, name).await {
            Ok(lines) => outln(&lines)?,
            Err(error) => failed.push(format!("remotes.{name}: {error}")),
        }
    }
    if failed.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "{} remote(s) cannot take uploads:\n  {}",
        failed.len(),
        failed.join("\n  ")
    )
}

/// Opens and aborts an upload at the remote `name`; the lines saying so, or the error chain.
/// The embedded receiver is the daemon's own and runs only with it: nothing to connect to.
/// An S3 remote's one backend (its keys asked for once) also tries the listing of cleanup.
async fn connect_to(config: &Config, name: &str) -> Result<String, String> {
    let chain = |error: crate::upload::BackendError| crate::error::chain(&error);
    let remote = &config.remotes[name];
    let s3 = match remote {
        RemoteConfig::S3(s3) => Some(Arc::new(S3Backend::new(s3).map_err(chain)?)),
        _ => None,
    };
    let backend = match &s3 {
        Some(s3) => Some(s3.clone() as Arc<dyn Backend>),
        None => crate::remotes::backend(name, remote, None).map_err(chain)?,
    };
    let Some(backend) = backend else {
        return Ok(format!(
            "# remotes.{name}: the daemon's embedded receiver, started with it: nothing to connect to"
        ));
    };
    let path = format!(".ferry-check-{:016x}", rand::random::<u64>());
    let mut probe = crate::remotes::probe(backend.as_ref(), &path)
        .await
        .map_err(chain)?;
    if let Some(s3) = &s3 {
        probe.notices.extend(unlistable(s3).await);
    }
    Ok(reached(name, backend.endpoint(), &probe))
}

/// Why orphan cleanup (`ferry cleanup`, `[daemon] orphan_cleanup`) could not list the open
/// uploads of an S3 remote that takes uploads: a key without `s3:ListBucketMultipartUploads`, a
/// server without the call.
async fn unlistable(backend: &S3Backend) -> Option<String> {
    let error = backend.may_list_uploads().await.err()?;
    let error = crate::error::chain(&error);
    Some(format!(
        "orphan cleanup cannot list the open uploads: {error}"
    ))
}

/// `# remotes.NAME: ...` saying where an upload was opened and aborted, and a line for each
/// thing the remote ignores.
fn reached(name: &str, endpoint: &str, probe: &Probe) -> String {
    let mut text = format!(
        "# remotes.{name}: opened and aborted an upload of {:?} at {endpoint} in {} ms",
        probe.remote_path,
        probe.elapsed.as_millis()
    );
    for notice in &probe.notices {
        text.push_str(&format!("\n#   {notice}"));
    }
    text
}
