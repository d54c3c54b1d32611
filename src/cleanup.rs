//! Orphaned multipart uploads: uploads under an S3 remote's prefix that no local session owns
//! and that have been idle for a while (a session forgotten after a crash, a file deleted
//! before it finished, another tool's leftovers). Their parts cost money until aborted.
//! `ferry cleanup` and the daemon's periodic pass (`[daemon] orphan_cleanup`) both run `run`.
//!
//! An upload is left alone when a session in the store owns it, or when it was started or
//! last received a part within `older_than` (a `ferry push` in progress, or another daemon
//! sharing the prefix). An abort is checked with ListParts and repeated while parts still
//! appear: a part in flight may land after the abort.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::config::RemoteConfig;
use crate::queue::{QueueError, Sessions};
use crate::upload::retry::ErrorClass;
use crate::upload::s3::{OpenUpload, S3Backend, SessionId};
use crate::upload::{Backend, BackendError};

/// Aborts of one upload before giving up on parts that keep landing.
const ABORT_ROUNDS: usize = 3;
/// Uploads examined (and aborted) at once: a bucket left with thousands of orphans is cleaned
/// in minutes, not hours, at a distant server's latency.
const AT_ONCE: usize = 8;

/// What to clean.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// One remote, or every S3 remote.
    pub remote: Option<String>,
    /// Idle time after which an upload no session owns is an orphan.
    #[serde(with = "humantime_serde")]
    pub older_than: Duration,
    /// List the orphans without aborting them.
    pub dry_run: bool,
}

/// An orphan found, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orphan {
    pub remote: String,
    pub key: String,
    pub upload_id: String,
    pub initiated: String,
    pub parts: usize,
    pub bytes: u64,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Aborted,
    /// `--dry-run`.
    WouldAbort,
    Failed(String),
}

/// What a cleanup found: the orphans, the remotes whose uploads it listed, and those it could
/// not examine. One remote that cannot be listed (unreachable, no ListMultipartUploads, no
/// permission to list) does not keep the others from being cleaned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub orphans: Vec<Orphan>,
    pub listed: Vec<String>,
    pub unlisted: Vec<Unlisted>,
}

/// A remote whose uploads could not be listed, and why (the error chain).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unlisted {
    pub remote: String,
    pub error: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("no S3 remote named {0:?} in the configuration")]
    NoSuchRemote(String),
    #[error(
        "remote {0:?} is a native remote: it has no uploads to list, and its receiver discards \
         a session neither completed nor aborted when the session expires (`ferry serve \
         --session-ttl`, 24h by default)"
    )]
    Native(String),
    #[error("cannot read the local sessions")]
    Store(#[source] QueueError),
    #[error("cannot list the uploads of remote {remote}")]
    Remote {
        remote: String,
        #[source]
        source: BackendError,
    },
}

/// Finds the orphans of the S3 remotes `request` names and aborts them (unless a dry run).
/// A remote that cannot be examined is reported and the next one cleaned all the same.
pub async fn run(
    remotes: &BTreeMap<String, RemoteConfig>,
    sessions: &Sessions,
    request: &Request,
) -> Result<Report, CleanupError> {
    let chosen: Vec<(&String, &crate::upload::S3Config)> = remotes
        .iter()
        .filter(|(name, _)| request.remote.as_ref().is_none_or(|wanted| wanted == *name))
        .filter_map(|(name, remote)| match remote {
            RemoteConfig::S3(s3) => Some((name, &**s3)),
            _ => None,
        })
        .collect();
    if let (Some(wanted), true) = (&request.remote, chosen.is_empty()) {
        return Err(match remotes.get(wanted) {
            Some(_) => CleanupError::Native(wanted.clone()),
            None => CleanupError::NoSuchRemote(wanted.clone()),
        });
    }
    let mut report = Report::default();
    for (name, config) in chosen {
        match clean_remote(name, config, sessions, request).await {
            Ok(orphans) => {
                report.orphans.extend(orphans);
                report.listed.push(name.clone());
            }
            Err(error) => report.unlisted.push(Unlisted {
                remote: name.clone(),
                error: crate::error::chain(&error),
            }),
        }
    }
    Ok(report)
}

/// The orphans of the remote `name`, aborted unless a dry run. Nothing is aborted unless the
/// local sessions were read: they say which uploads are live.
async fn clean_remote(
    name: &str,
    config: &crate::upload::S3Config,
    sessions: &Sessions,
    request: &Request,
) -> Result<Vec<Orphan>, CleanupError> {
    let failed = |source| CleanupError::Remote {
        remote: name.to_string(),
        source,
    };
    let backend = S3Backend::new(config).map_err(failed)?;
    let owned = owned_uploads(sessions, &backend.identity()).await?;
    let uploads = backend.open_uploads().await.map_err(failed)?;
    let unowned = uploads
        .into_iter()
        .filter(|u| !owned.contains(&u.upload_id));
    let examined: Vec<Option<Orphan>> = futures_util::stream::iter(unowned)
        .map(|upload| examine(&backend, name, upload, request))
        .buffered(AT_ONCE)
        .collect()
        .await;
    Ok(examined.into_iter().flatten().collect())
}

/// The UploadIds the local sessions of a remote own.
async fn owned_uploads(
    sessions: &Sessions,
    identity: &str,
) -> Result<BTreeSet<String>, CleanupError> {
    let (sessions, identity) = (sessions.clone(), identity.to_string());
    let records = tokio::task::spawn_blocking(move || sessions.of_remote(&identity))
        .await
        .expect("reading the store does not panic")
        .map_err(CleanupError::Store)?;
    Ok(records
        .iter()
        .filter_map(|record| SessionId::parse(&record.upload_id))
        .map(|id| id.upload_id.to_string())
        .collect())
}

/// The orphan `upload` is, when it has been idle for `older_than`; aborted unless a dry run.
async fn examine(
    backend: &S3Backend,
    remote: &str,
    upload: OpenUpload,
    request: &Request,
) -> Option<Orphan> {
    let activity = match backend.activity(&upload).await {
        Ok(activity) => activity,
        // Finished or aborted since it was listed.
        Err(error) if error.class() == ErrorClass::SessionGone => return None,
        Err(error) => {
            tracing::warn!(key = %upload.key, error = %crate::error::chain(&error), "cannot list the parts of an upload; left alone");
            return None;
        }
    };
    let now = jiff::Timestamp::now();
    let last = [Some(upload.initiated.as_str()), activity.latest.as_deref()]
        .into_iter()
        .flatten()
        .filter_map(|text| text.parse::<jiff::Timestamp>().ok())
        .max()?;
    if !idle_for(last, now, request.older_than) {
        return None;
    }
    let outcome = match request.dry_run {
        true => Outcome::WouldAbort,
        false => abort(backend, &upload).await,
    };
    Some(Orphan {
        remote: remote.to_string(),
        key: upload.key,
        upload_id: upload.upload_id,
        initiated: upload.initiated,
        parts: activity.parts,
        bytes: activity.bytes,
        outcome,
    })
}

/// Whether something last active at `last` has been idle for `older_than` at `now`.
fn idle_for(last: jiff::Timestamp, now: jiff::Timestamp, older_than: Duration) -> bool {
    let idle = now.duration_since(last);
    idle.is_positive() && idle.unsigned_abs() >= older_than
}

/// Aborts `upload` until ListParts finds it gone (parts in flight may land after an abort).
async fn abort(backend: &S3Backend, upload: &OpenUpload) -> Outcome {
    for _ in 0..ABORT_ROUNDS {
        if let Err(error) = backend.abort_upload(upload).await {
            return Outcome::Failed(crate::error::chain(&error));
        }
        match backend.activity(upload).await {
            Err(error) if error.class() == ErrorClass::SessionGone => return Outcome::Aborted,
            Ok(activity) if activity.parts == 0 => return Outcome::Aborted,
            Ok(_) => continue,
            Err(error) => return Outcome::Failed(crate::error::chain(&error)),
        }
    }
    Outcome::Failed(format!("parts kept landing after {ABORT_ROUNDS} aborts"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_is_an_orphan_once_idle_for_the_threshold() {
        let at = |text: &str| text.parse::<jiff::Timestamp>().unwrap();
        let day = Duration::from_secs(24 * 3600);
        let cases = [
            ("2026-11-24T10:00:00Z", "2026-11-25T10:00:00Z", true),
            ("2026-11-24T10:00:01Z", "2026-11-25T10:00:00Z", false),
            ("2026-11-20T00:00:00Z", "2026-11-25T10:00:00Z", true),
            // A clock ahead of ours: not idle.
            ("2026-11-26T00:00:00Z", "2026-11-25T10:00:00Z", false),
        ];
        for (last, now, expected) in cases {
            assert_eq!(
                idle_for(at(last), at(now), day),
                expected,
                "{last} at {now}"
            );
        }
    }
}
