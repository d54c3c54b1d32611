//! The seam between the upload engine and a remote protocol.
//!
//! One trait, one implementation per protocol: `native` (PROTOCOL.md) now, S3 multipart and
//! tus 1.0 later. The shape fits all three without changing the engine:
//! - `create` returns the remote's part limits (S3: parts ≥ 5 MiB but the last, 10,000 parts;
//!   tus: `sequential`, one growing upload addressed by offset);
//! - `query` reports what the remote holds, as parts by number (native: the session's parts;
//!   S3: ListParts) or as a prefix of the file (tus: HEAD's `Upload-Offset`), so the engine
//!   resumes by reconciling (`Held`);
//! - `put_part` sends one part's byte range as a stream and returns its receipt (etag and, when
//!   the remote reports one, the CRC32C it computed);
//! - `complete` commits the manifest; `abort` discards the session.
//!
//! Contracts every backend keeps:
//! - **Complete is idempotent.** Completing a session that already completed with the same
//!   manifest returns the same file (a retry after a lost reply must not fail). A remote that
//!   cannot tell (S3 answers `NoSuchUpload` once an upload completed) is handled in `query`:
//!   after a lost reply the engine queries, and the backend reports `Completed` when the object
//!   is there with the expected size and checksum (a HEAD), `Gone` otherwise.
//! - **Refusals are typed.** Backends classify failures through `retry::classify_status` and
//!   turn the refusals the engine acts on into `Rejection`s; the engine never looks at a
//!   protocol's status codes or error strings.
//! - **Limits travel with the session.** `create` returns the `PartLimits` the session keeps,
//!   including `sequential` for remotes that take one growing upload.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;

use super::retry::ErrorClass;

/// The bytes of one part, streamed from the local file as the remote takes them.
pub struct PartBody {
    pub stream: Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>,
    /// Exact length of the stream, sent as Content-Length.
    pub len: u64,
    /// The checksums the backend asked for up front (`Backend::up_front`), of these bytes.
    pub sums: PartSums,
}

/// Checksums of a part a remote wants in its headers, so computed before the body is sent
/// (S3's `x-amz-checksum-crc32c`, `Content-MD5`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpFront {
    pub crc32c: bool,
    pub md5: bool,
}

impl UpFront {
    pub fn any(&self) -> bool {
        self.crc32c || self.md5
    }

    /// Whether `sums` has every checksum wanted (sums made before the remote asked for more
    /// do not).
    pub fn met_by(&self, sums: &PartSums) -> bool {
        (!self.crc32c || sums.crc32c.is_some()) && (!self.md5 || sums.md5.is_some())
    }
}

/// The checksums computed up front.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartSums {
    pub crc32c: Option<u32>,
    pub md5: Option<[u8; 16]>,
}

/// What a new session is for.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub remote_path: String,
    pub size: u64,
    pub mime_type: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// Known up front only when the caller already hashed the file; the engine otherwise
    /// hashes while uploading and gives the digest at complete.
    pub sha256: Option<String>,
    /// The file's modification time, nanoseconds since the Unix epoch, when the remote is to
    /// keep it (S3 stores it as rclone does, in `x-amz-meta-mtime`).
    pub mtime_ns: Option<i64>,
}

/// Part limits a remote imposes on a session (kept in the session record, so defined there).
pub use crate::queue::record::PartLimits;

/// A session the remote opened.
#[derive(Debug, Clone)]
pub struct RemoteSession {
    pub id: String,
    pub limits: PartLimits,
    pub expires_at: Option<String>,
}

/// Addresses an existing session (S3 needs the object key beside the upload id).
#[derive(Debug, Clone, Copy)]
pub struct SessionRef<'a> {
    pub id: &'a str,
    pub remote_path: &'a str,
}

/// One part to send: its number and byte range in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartSpec {
    pub number: u32,
    pub offset: u64,
    pub size: u64,
}

/// The remote's acknowledgement of a part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartReceipt {
    pub etag: String,
    /// CRC32C of the bytes the remote stored, when the protocol reports it.
    pub crc32c: Option<u32>,
}

/// A part the remote holds, as listed by `query`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePart {
    pub number: u32,
    pub size: u64,
    pub etag: String,
    pub crc32c: Option<u32>,
}

/// A file the remote made visible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    pub path: String,
    pub size: u64,
    pub sha256: Option<String>,
}

/// What an open session holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// Parts by number (native, S3's ListParts).
    Parts(Vec<RemotePart>),
    /// The file's first bytes, up to this offset, as one growing upload (tus's
    /// `Upload-Offset`). Such a backend's receipts carry the part's end offset, in decimal, as
    /// the etag; and it takes a part that begins before its offset by skipping the bytes it
    /// already holds.
    Prefix(u64),
}

/// What `query` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionStatus {
    Open {
        held: Held,
    },
    Completed {
        file: RemoteFile,
    },
    /// Expired, aborted or unknown: a new session is needed.
    Gone,
}

/// The manifest entry for `complete`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedPart {
    pub number: u32,
    pub etag: String,
    /// CRC32C of the part's bytes (S3 lists it again at complete).
    pub crc32c: Option<u32>,
}

/// The request a failure concerns, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Query,
    PutPart(u32),
    Complete,
    Abort,
    /// Listing a remote's open sessions (`ferry cleanup`).
    List,
    /// Sending a whole file in one request.
    PutFile,
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Operation::Create => write!(f, "init"),
            Operation::Query => write!(f, "session query"),
            Operation::PutPart(number) => write!(f, "upload of part {number}"),
            Operation::Complete => write!(f, "complete"),
            Operation::Abort => write!(f, "abort"),
            Operation::List => write!(f, "listing of open uploads"),
            Operation::PutFile => write!(f, "upload"),
        }
    }
}

/// A request, for messages: what it does, and the remote protocol's own name for it where
/// the protocol has one its users know (S3's `CreateMultipartUpload`, `UploadPart`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub operation: Operation,
    pub name: Option<Name>,
}

/// A protocol's name for a request: a thin reference (`&"UploadPart"`), so that a
/// `BackendError` stays small enough to return by value.
pub type Name = &'static &'static str;

impl Request {
    pub fn named(operation: Operation, name: Name) -> Request {
        let name = Some(name);
        Request { operation, name }
    }
}

impl From<Operation> for Request {
    fn from(operation: Operation) -> Request {
        Request {
            operation,
            name: None,
        }
    }
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.name, self.operation) {
            (Some(name), Operation::PutPart(number)) => write!(f, "{name} (part {number})"),
            (Some(name), _) => write!(f, "{name}"),
            (None, operation) => write!(f, "{operation}"),
        }
    }
}

/// A failed remote request. Messages name the request and, for refusals, the remote's code.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The request did not get an answer: refused, reset, timed out mid-way.
    #[error("{operation} to {endpoint} failed: {detail}")]
    Transport {
        operation: Request,
        endpoint: String,
        detail: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// No progress on a streaming request within the stall timeout.
    #[error("{operation} to {endpoint} stalled: no progress for {after:?}")]
    Stalled {
        operation: Request,
        endpoint: String,
        after: Duration,
    },
    /// The remote answered with an error status.
    #[error("{operation} refused by {endpoint}: {status} {code}: {message}")]
    Status {
        operation: Request,
        endpoint: String,
        status: u16,
        /// The remote's own word for it, shown as is (boxed: an error is returned by value,
        /// and kept small).
        code: Box<str>,
        message: String,
        retry_after: Option<Duration>,
        class: ErrorClass,
        /// What the refusal means, for the refusals the engine acts on.
        rejection: Option<Rejection>,
    },
    /// The remote acknowledged a part but reports a checksum of other bytes than were sent:
    /// they were damaged on the way, and sending the part again may cure it.
    #[error("{operation} to {endpoint}: the part arrived damaged: {problem}")]
    Damaged {
        operation: Request,
        endpoint: String,
        problem: String,
    },
    /// The remote stored the bytes without checking the checksum sent with them (a server
    /// without flexible checksums): sending them again with one it checks makes them safe.
    #[error("{operation} to {endpoint} was not checked: {problem}")]
    Unchecked {
        operation: Request,
        endpoint: String,
        problem: String,
    },
    /// The remote answered success with a reply that breaks the protocol.
    #[error("{operation}: {endpoint} sent an invalid reply: {problem}")]
    InvalidReply {
        operation: Request,
        endpoint: String,
        problem: String,
    },
    /// The server's TLS certificate is not trusted: waiting will not change that.
    #[error("{operation} to {endpoint} failed: the server's certificate is refused: {problem}")]
    Untrusted {
        operation: Request,
        endpoint: String,
        problem: String,
    },
    /// The backend cannot be set up (bad URL, TLS).
    #[error("remote {endpoint} cannot be used: {problem}")]
    Setup { endpoint: String, problem: String },
}

impl BackendError {
    /// Whether to retry, start over, or stop.
    pub fn class(&self) -> ErrorClass {
        match self {
            BackendError::Transport { .. }
            | BackendError::Stalled { .. }
            | BackendError::Damaged { .. }
            | BackendError::Unchecked { .. } => ErrorClass::Transient,
            BackendError::Status { class, .. } => *class,
            // A reply that breaks the protocol will break it again.
            BackendError::InvalidReply { .. } | BackendError::Setup { .. } => ErrorClass::Permanent,
            BackendError::Untrusted { .. } => ErrorClass::Permanent,
        }
    }

    /// The wait the remote asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            BackendError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// What the remote's refusal means, when the engine acts on it.
    pub fn rejection(&self) -> Option<Rejection> {
        match self {
            BackendError::Status { rejection, .. } => *rejection,
            _ => None,
        }
    }
}

/// A remote's refusal, in the engine's terms: each backend turns its protocol's codes (native
/// `manifest_mismatch`, S3 `InvalidPart`, …) into these, and the engine matches only these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The manifest names parts the remote does not hold as named (lost, or replaced by another
    /// version): re-sending those parts may cure it.
    ManifestMismatch,
    /// The assembled file's digest is not the one sent: the file changed, or a part is bad.
    DigestMismatch,
    /// A part other than the last is under the remote's minimum.
    PartTooSmall,
    /// The part does not start where the remote's upload ends (tus's 409): the engine
    /// queries again and resumes from the remote's offset.
    OffsetConflict { remote_offset: u64 },
}

/// A remote protocol. Implementations are cheap to share (`Arc<dyn Backend>`) and safe to call
/// concurrently: the engine sends several parts of one session at once.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// A short description for logs and messages, without secrets (e.g. the base URL).
    fn endpoint(&self) -> &str;

    /// A stable identity of the remote (URL and workspace or bucket): session records are
    /// keyed by it, so a record is never resumed against another remote.
    fn identity(&self) -> String;

    async fn create(&self, request: &CreateRequest) -> Result<RemoteSession, BackendError>;

    async fn query(&self, session: SessionRef<'_>) -> Result<SessionStatus, BackendError>;

    async fn put_part(
        &self,
        session: SessionRef<'_>,
        part: PartSpec,
        body: PartBody,
    ) -> Result<PartReceipt, BackendError>;

    /// `size` lets a backend scale its timeout: assembling a large file takes the remote a
    /// while.
    async fn complete(
        &self,
        session: SessionRef<'_>,
        parts: &[CompletedPart],
        sha256: &str,
        size: u64,
    ) -> Result<RemoteFile, BackendError>;

    async fn abort(&self, session: SessionRef<'_>) -> Result<(), BackendError>;

    /// Checksums `put_part` (to `session`) and `put_file` (no session) want computed before
    /// the body is sent. A session keeps those it was opened with, whatever the remote turned
    /// to since.
    fn up_front(&self, _session: Option<SessionRef<'_>>) -> UpFront {
        UpFront::default()
    }

    /// What the remote was seen to do otherwise than its configuration asks (a checksum, a
    /// storage class or an ACL it ignores), as `ferry status` shows it.
    fn notices(&self) -> Vec<String> {
        Vec::new()
    }

    /// `operation` as this remote's protocol names it, for the messages of failures the engine
    /// finds itself (a part that stalls or arrives damaged).
    fn request(&self, operation: Operation) -> Request {
        operation.into()
    }

    /// For a remote that takes a whole file in one request (S3's PutObject): the limits its
    /// sessions have. The engine sends a file whose first part would be the whole file with
    /// `put_file`: no session to open, record or complete.
    fn single_request(&self) -> Option<PartLimits> {
        None
    }

    /// Sends a whole file in one request (only called when `single_request` is `Some`).
    async fn put_file(
        &self,
        request: &CreateRequest,
        body: PartBody,
    ) -> Result<PartReceipt, BackendError> {
        let _ = (request, body);
        Err(BackendError::Setup {
            endpoint: self.endpoint().to_string(),
            problem: "this remote takes files only in sessions".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_meet_what_is_wanted_only_when_they_have_every_checksum() {
        let wanted = |crc32c, md5| UpFront { crc32c, md5 };
        let sums = |crc32c: Option<u32>, md5: Option<[u8; 16]>| PartSums { crc32c, md5 };
        let table = [
            (wanted(true, false), sums(Some(1), None), true),
            (wanted(false, true), sums(None, Some([2; 16])), true),
            // Made for CRC32C before the remote turned to MD5.
            (wanted(false, true), sums(Some(1), None), false),
            (wanted(true, true), sums(Some(1), None), false),
            (wanted(false, false), sums(None, None), true),
        ];
        for (wanted, sums, met) in table {
            assert_eq!(wanted.met_by(&sums), met, "{wanted:?} {sums:?}");
        }
    }
}
