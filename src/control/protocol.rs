//! The control protocol: one request, one response per connection, each a frame of a 4-byte
//! big-endian length and a JSON body of at most `MAX_FRAME_BYTES`. Requests and responses carry
//! `version`; a request of another version is refused with `unsupported_version`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::queue::{Counts, JobId, JobRecord, JobState};

pub const PROTOCOL_VERSION: u32 = 1;
/// Largest frame either side accepts: a long job listing fits; a hostile length does not
/// allocate.
pub const MAX_FRAME_BYTES: u32 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub version: u32,
    #[serde(flatten)]
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    Status,
    Jobs {
        #[serde(default)]
        state: Option<JobState>,
        #[serde(default)]
        limit: Option<usize>,
    },
    Retry {
        ids: Vec<JobId>,
    },
    RetryFailed,
    Pause,
    Resume,
    Rescan,
    /// Abort orphaned multipart uploads (`ferry cleanup`).
    Cleanup(crate::cleanup::Request),
    /// Set every bandwidth limit (a rate or timetable as the configuration writes it) until
    /// the next reload or restart; without one, tell the limits in force (`ferry bwlimit`).
    BwLimit {
        #[serde(default)]
        bandwidth: Option<String>,
    },
    /// The job events after id `since`, waiting up to `wait_ms` for the first one (a long
    /// poll, as Syncthing's event API: `ferry events` asks again from the last id it saw). A
    /// long poll is answered 20 ms after the first new event, with every event come by then.
    Events {
        #[serde(default)]
        since: u64,
        #[serde(default)]
        wait_ms: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub version: u32,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok(Reply),
    Error { code: String, message: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// Boxed: a status is much larger than the other replies.
    Status(Box<StatusReply>),
    Jobs {
        jobs: Vec<JobRecord>,
        /// Hook deliveries not made yet (pending, or failed), oldest first, as many as jobs
        /// were asked for.
        #[serde(default)]
        hooks: Vec<HookDelivery>,
    },
    Retried {
        count: usize,
    },
    Done {
        message: String,
    },
    Cleaned {
        orphans: Vec<crate::cleanup::Orphan>,
        /// The remotes that could not be examined (none from a daemon that predates this).
        #[serde(default)]
        unlisted: Vec<crate::cleanup::Unlisted>,
    },
    /// Events in id order; `oldest` is the oldest id the daemon still holds, so a consumer
    /// whose `since` is older than `oldest - 1` knows it missed some.
    Events {
        events: Vec<Event>,
        oldest: u64,
    },
}

/// A hook delivery not made yet, for `ferry jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookDelivery {
    pub job_id: JobId,
    /// `uploaded` or `failed`: the outcome it tells.
    pub event: String,
    #[serde(with = "crate::local_path")]
    pub path: PathBuf,
    /// `pending` (to be tried, or tried again) or `failed` (waits for `ferry retry --failed`).
    pub state: String,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// One job event. Ids increase by one from event to event, from 1 at the daemon's start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: u64,
    /// Unix time in milliseconds.
    pub time_ms: u64,
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub job_id: JobId,
    #[serde(with = "crate::local_path")]
    pub path: PathBuf,
    /// The remote path (uploaded), or the reason (failed, retrying, dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A new job for a settled file.
    Queued,
    /// Its upload began.
    Started,
    /// Its upload completed and was verified.
    Uploaded,
    /// It failed until the user retries it.
    Failed,
    /// Its upload failed and will be tried again.
    Retrying,
    /// Its file vanished or was refused: forgotten.
    Dropped,
    /// A hook of its outcome was delivered.
    HookDelivered,
    /// A hook of its outcome failed too often; it waits for `ferry retry --failed`.
    HookFailed,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Queued => "queued",
            EventKind::Started => "started",
            EventKind::Uploaded => "uploaded",
            EventKind::Failed => "failed",
            EventKind::Retrying => "retrying",
            EventKind::Dropped => "dropped",
            EventKind::HookDelivered => "hook_delivered",
            EventKind::HookFailed => "hook_failed",
        }
    }
}

/// `ferry status --json`: `queue` holds the counts (DESIGN.md's contract).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    pub version: String,
    pub paused: bool,
    pub queue: Counts,
    pub active: Vec<ActiveTransfer>,
    pub watches: Vec<PathBuf>,
    /// The most recent failures, with their reasons.
    pub failed: Vec<FailedJob>,
    /// What the watcher is doing.
    pub intake: IntakeStatus,
    /// Each watch and how it is doing; `ferry status` exits 1 while one is not `watching`.
    #[serde(default)]
    pub watch_health: Vec<WatchStatus>,
    /// Why the store cannot take writes (e.g. "no space left on /var/lib/ferry/store");
    /// uploads wait meanwhile, and `ferry status` exits 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_problem: Option<String>,
    /// What each remote's planner chose and estimates.
    #[serde(default)]
    pub remotes: Vec<RemoteStatus>,
    /// Hook deliveries not made yet; `ferry status` exits 1 while one has failed.
    #[serde(default)]
    pub hooks: HooksStatus,
    /// Flushes of the store since start: each makes what was written durable (a sync on a
    /// disk); outcomes reported together share one.
    #[serde(default)]
    pub store_flushes: u64,
}

/// Hook deliveries waiting (`pending`: to be tried, or tried again after a failure) and
/// `failed` (tried too often: they wait for `ferry retry --failed`), with the failed ones'
/// reasons.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HooksStatus {
    pub pending: u64,
    pub failed: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<FailedJob>,
}

/// A remote's part size and parallelism, and the link estimates they come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteStatus {
    pub name: String,
    /// `native`, `s3` or `embedded`.
    #[serde(default)]
    pub kind: String,
    /// Where it stores: a URL and workspace, a bucket and prefix, or a folder.
    #[serde(default)]
    pub location: String,
    pub part_size: u64,
    pub parallel_parts: usize,
    /// Parts of this remote in flight now.
    pub in_flight: usize,
    /// Estimated bytes per second of the link; absent until a part was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput_bytes_per_sec: Option<u64>,
    /// Estimated fixed time per request (round trip and the receiver's work).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_trip_ms: Option<f64>,
    pub failures_per_gib: f64,
    /// A body size limit learned from the remote (413s, or connections cut at one size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part_size_cap: Option<u64>,
    /// The bandwidth limit its transfers draw from, as configured or set by `ferry bwlimit`
    /// (`off`: none); absent for a remote without a limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<String>,
    /// That limit's rate now, in bytes per second; absent while unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_now: Option<u64>,
    /// What the remote was seen to do otherwise than configured (a checksum, storage class
    /// or ACL it ignores), since the daemon started or reloaded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<String>,
}

/// One watch and how it is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchStatus {
    #[serde(with = "crate::local_path")]
    pub path: PathBuf,
    /// `watching`, `unreadable` (some folders cannot be read), `limited` (the inotify watch
    /// limit) or `missing` (the folder is gone).
    pub state: String,
    /// What is wrong and what Ferry does about it; empty while watching.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl StatusReply {
    /// The watches that are not fully watched.
    pub fn unhealthy_watches(&self) -> impl Iterator<Item = &WatchStatus> {
        self.watch_health
            .iter()
            .filter(|watch| watch.state != "watching")
    }
}

/// Files between the folders and the queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntakeStatus {
    /// Full scans of the watched folders completed since start (the start-up one first).
    pub scans: u64,
    /// Files waiting for their settle window.
    pub settling: u64,
    /// Settled files handed over to be queued, since start.
    pub found: u64,
    /// Of those, files checked against the queue and the upload index.
    pub checked: u64,
    /// The inotify watch limit left folders unwatched; they are rescanned periodically.
    #[serde(default)]
    pub watch_limited: bool,
    /// Times the file events overflowed their buffer since start (each answered by a rescan).
    #[serde(default)]
    pub overflows: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveTransfer {
    pub job_id: JobId,
    #[serde(with = "crate::local_path")]
    pub path: PathBuf,
    pub remote_path: String,
    pub size: u64,
    pub bytes_sent: u64,
    pub part_size: u64,
    pub throughput_bytes_per_sec: u64,
    /// Part attempts of this upload that failed so far (each retried).
    #[serde(default)]
    pub part_attempts_failed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedJob {
    pub job_id: JobId,
    #[serde(with = "crate::local_path")]
    pub path: PathBuf,
    pub error: String,
}

/// Framing failures.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the connection failed")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes is over the limit of {MAX_FRAME_BYTES}")]
    TooLarge(u32),
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
}

pub async fn write_frame<T: Serialize>(
    stream: &mut (impl AsyncWrite + Unpin),
    message: &T,
) -> Result<(), FrameError> {
    let body = serde_json::to_vec(message)?;
    let length = u32::try_from(body.len())
        .ok()
        .filter(|n| *n <= MAX_FRAME_BYTES)
        .ok_or(FrameError::TooLarge(u32::MAX))?;
    stream.write_all(&length.to_be_bytes()).await?;
    stream.write_all(&body).await?;
    stream.flush().await?;
    Ok(())
}

/// Reads one frame's bytes (not yet parsed).
pub async fn read_frame(stream: &mut (impl AsyncRead + Unpin)) -> Result<Vec<u8>, FrameError> {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).await?;
    let length = u32::from_be_bytes(length);
    if length > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(length));
    }
    let mut body = vec![0u8; length as usize];
    stream.read_exact(&mut body).await?;
    Ok(body)
}
