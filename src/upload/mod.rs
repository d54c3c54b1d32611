//! Uploading files: the `Backend` trait and its implementations, the engine that drives one
//! resumable session per file, part planning, retry policy and progress.
//!
//! Only the backends (`native`, later `s3` and `tus`) use reqwest; the engine speaks to them
//! through `backend::Backend` alone. Session records go through `queue::Store`.

pub mod backend;
pub mod engine;
pub mod native;
pub mod open;
pub mod planner;
pub mod progress;
pub mod retry;
pub mod source;

use std::path::PathBuf;
use std::time::Duration;

pub use backend::{Backend, BackendError};
pub use engine::{PlannerFactory, UploadJob, UploadReport, Uploader};
pub use native::{NativeBackend, NativeConfig};
pub use open::{Reach, Refusal};
pub use planner::{FixedPlanner, PartPlanner};
pub use progress::{Progress, ProgressSnapshot};
pub use retry::RetryPolicy;

use crate::queue::QueueError;

/// Default part size: large enough that per-request overhead is small on fast links, small
/// enough that a failed part costs little to resend on slow ones.
pub const DEFAULT_CHUNK_SIZE: u64 = 8 * 1024 * 1024;
/// Default parts in flight per file: enough to fill a loopback or LAN link.
pub const DEFAULT_PARALLEL_PARTS: usize = 4;
/// Default time a part may make no progress before its attempt is abandoned and retried.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How the engine uploads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadSettings {
    /// Desired part size (the planner may grow it to fit the remote's `max_parts`).
    pub chunk_size: u64,
    /// Parts of one file sent at once.
    pub parallel_parts: usize,
    /// Bytes of parts in flight at once; default `parallel_parts * chunk_size`.
    pub max_in_flight_bytes: Option<u64>,
    pub retry: RetryPolicy,
    /// A part attempt with no progress for this long is abandoned and retried.
    pub stall_timeout: Duration,
}

impl Default for UploadSettings {
    fn default() -> Self {
        UploadSettings {
            chunk_size: DEFAULT_CHUNK_SIZE,
            parallel_parts: DEFAULT_PARALLEL_PARTS,
            max_in_flight_bytes: None,
            retry: RetryPolicy::default(),
            stall_timeout: DEFAULT_STALL_TIMEOUT,
        }
    }
}

impl UploadSettings {
    pub fn in_flight_bytes(&self) -> u64 {
        self.max_in_flight_bytes
            .unwrap_or(self.chunk_size.saturating_mul(self.parallel_parts as u64))
    }

    /// A planner factory for these settings: fixed-size parts.
    pub fn planner(&self) -> PlannerFactory {
        let chunk_size = self.chunk_size;
        std::sync::Arc::new(move || Box::new(FixedPlanner { chunk_size }))
    }
}

/// Why a file was not uploaded. Each names the file; remote failures carry the request and the
/// remote's error code in their source.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("cannot open {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} vanished before it was uploaded")]
    Vanished { path: PathBuf },
    /// The path is there but is not a file Ferry may send (a link, a FIFO, another file).
    #[error("{path} was not uploaded: {refusal}")]
    Refused { path: PathBuf, refusal: Refusal },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("uploading {path} failed")]
    Remote {
        path: PathBuf,
        #[source]
        source: BackendError,
    },
    #[error("uploading {path} failed after {attempts} attempts")]
    RetriesExhausted {
        path: PathBuf,
        attempts: u32,
        #[source]
        source: BackendError,
    },
    #[error("gave up on {path} after {restarts} fresh sessions: {reason}")]
    Unstable {
        path: PathBuf,
        restarts: u32,
        reason: String,
    },
    #[error("the remote copy of {path} does not match: {detail}")]
    Verification { path: PathBuf, detail: String },
    #[error("the session store failed while uploading {path}")]
    Store {
        path: PathBuf,
        #[source]
        source: QueueError,
    },
}
