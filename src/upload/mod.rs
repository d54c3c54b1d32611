//! Uploading files: the `Backend` trait and its implementations, the engine that drives one
//! resumable session per file, part planning, retry policy and progress.
//!
//! Only the backends (`native`, later `s3` and `tus`) use reqwest; the engine speaks to them
//! through `backend::Backend` alone. Session records go through `queue::Store`.

pub mod backend;
pub mod bwlimit;
pub mod controller;
pub mod engine;
pub mod http;
pub mod native;
pub mod open;
pub mod planner;
pub mod progress;
pub mod retry;
pub mod s3;
pub mod source;

use std::path::PathBuf;
use std::time::Duration;

pub use backend::{Backend, BackendError};
pub use engine::{PartSizes, UploadJob, UploadReport, Uploader};
pub use native::{NativeBackend, NativeConfig};
pub use open::{Reach, Refusal};
pub use planner::{FixedPlanner, PartPlanner, Planner};
pub use progress::{Progress, ProgressSnapshot};
pub use retry::RetryPolicy;
pub use s3::{S3Backend, S3Config};

use crate::queue::QueueError;

/// The default fixed part size: large enough that per-request overhead is small on fast
/// links, small enough that a failed part costs little to resend on slow ones.
pub const DEFAULT_CHUNK_SIZE: u64 = 8 * 1024 * 1024;
/// The part size `auto` starts from before it has learned anything about a remote: small, so
/// that a bad link does not sink the first parts; it doubles per part on a good one.
pub const AUTO_INITIAL_CHUNK_SIZE: u64 = 1024 * 1024;
/// The smallest and largest part `auto` chooses by default.
pub const DEFAULT_CHUNK_SIZE_MIN: u64 = 256 * 1024;
pub const DEFAULT_CHUNK_SIZE_MAX: u64 = 256 * 1024 * 1024;
/// The parts in flight `auto` starts from, and the default fixed number.
pub const DEFAULT_PARALLEL_PARTS: usize = 4;
/// The most parts in flight `auto` chooses by default.
pub const DEFAULT_PARALLEL_PARTS_MAX: usize = 16;
/// Bytes of parts in flight at once with `auto` sizes, unless configured.
pub const DEFAULT_AUTO_IN_FLIGHT_BYTES: u64 = 512 * 1024 * 1024;
/// Default time a part may make no progress before its attempt is abandoned and retried.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A part size: learned from the link (`auto`, the default), or fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkSize {
    Auto,
    Fixed(u64),
}

/// Parts of a file in flight: learned from the link (`auto`, the default), or fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartsInFlight {
    Auto,
    Fixed(usize),
}

/// How the engine uploads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadSettings {
    /// Part size (the planner may grow it to fit the remote's `max_parts`).
    pub chunk_size: ChunkSize,
    /// Bounds of an `auto` part size.
    pub chunk_size_min: u64,
    pub chunk_size_max: u64,
    /// Parts of one file sent at once.
    pub parallel_parts: PartsInFlight,
    /// Bound of an `auto` number of parts in flight.
    pub parallel_parts_max: usize,
    /// Bytes of parts in flight at once; default: fixed size times fixed parallelism, or
    /// `DEFAULT_AUTO_IN_FLIGHT_BYTES`.
    pub max_in_flight_bytes: Option<u64>,
    pub retry: RetryPolicy,
    /// A part attempt with no progress for this long is abandoned and retried.
    pub stall_timeout: Duration,
}

impl Default for UploadSettings {
    fn default() -> Self {
        UploadSettings {
            chunk_size: ChunkSize::Auto,
            chunk_size_min: DEFAULT_CHUNK_SIZE_MIN,
            chunk_size_max: DEFAULT_CHUNK_SIZE_MAX,
            parallel_parts: PartsInFlight::Auto,
            parallel_parts_max: DEFAULT_PARALLEL_PARTS_MAX,
            max_in_flight_bytes: None,
            retry: RetryPolicy::default(),
            stall_timeout: DEFAULT_STALL_TIMEOUT,
        }
    }
}

impl UploadSettings {
    pub fn in_flight_bytes(&self) -> u64 {
        match (
            self.max_in_flight_bytes,
            self.chunk_size,
            self.parallel_parts,
        ) {
            (Some(bytes), ..) => bytes,
            (None, ChunkSize::Fixed(size), PartsInFlight::Fixed(parts)) => {
                size.saturating_mul(parts as u64)
            }
            (None, ..) => DEFAULT_AUTO_IN_FLIGHT_BYTES,
        }
    }

    /// What the planner may choose from.
    pub fn controller_limits(&self) -> controller::Limits {
        let (min_size, max_size, initial_size) = match self.chunk_size {
            ChunkSize::Auto => (
                self.chunk_size_min,
                self.chunk_size_max.max(self.chunk_size_min),
                AUTO_INITIAL_CHUNK_SIZE.clamp(self.chunk_size_min, self.chunk_size_max.max(1)),
            ),
            ChunkSize::Fixed(size) => (size, size, size),
        };
        let (max_parallel, initial_parallel, fixed_parallel) = match self.parallel_parts {
            PartsInFlight::Auto => {
                let max = self.parallel_parts_max.max(1);
                (max, DEFAULT_PARALLEL_PARTS.min(max), false)
            }
            PartsInFlight::Fixed(parts) => (parts.max(1), parts.max(1), true),
        };
        controller::Limits {
            min_size,
            max_size,
            initial_size,
            max_parallel,
            initial_parallel,
            in_flight_bytes: self.in_flight_bytes(),
            fixed_parallel,
        }
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
