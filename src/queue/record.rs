//! On-disk records kept in sled. Each carries a `version`; a record of an older version must keep
//! loading (a checked-in fixture proves it), so fields are only added, with defaults.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Current version of `UploadRecord` and `PartRecord`.
pub const RECORD_VERSION: u32 = 1;

/// Identifies one version of a local file: if any field changes, the content may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch (an i64 lasts until 2262).
    pub mtime_ns: i64,
    pub inode: u64,
    pub device: u64,
}

impl Fingerprint {
    pub fn of(metadata: &std::fs::Metadata) -> Fingerprint {
        use std::os::unix::fs::MetadataExt;
        Fingerprint {
            size: metadata.len(),
            mtime_ns: metadata
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(metadata.mtime_nsec()),
            inode: metadata.ino(),
            device: metadata.dev(),
        }
    }
}

/// Part limits a remote imposes on a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartLimits {
    pub min_part_size: u64,
    pub max_part_size: u64,
    pub max_parts: u32,
    /// Parts must arrive one after another, in order (tus); otherwise in parallel, any order.
    #[serde(default)]
    pub sequential: bool,
    /// Every part but the last must have the same size (Cloudflare R2; any S3 accepts it).
    #[serde(default)]
    pub uniform: bool,
}

/// A resumable upload session: enough to find the remote session again and to know whether the
/// local file is still the one being uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    pub version: u32,
    /// `Backend::identity` of the remote the session lives on.
    pub remote: String,
    pub remote_path: String,
    #[serde(with = "crate::local_path")]
    pub local_path: PathBuf,
    pub upload_id: String,
    pub fingerprint: Fingerprint,
    pub limits: PartLimits,
    #[serde(default)]
    pub expires_at: Option<String>,
    pub created_unix: u64,
}

/// One part of a session: planned (no etag yet) or acknowledged by the remote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRecord {
    pub version: u32,
    pub number: u32,
    pub offset: u64,
    pub size: u64,
    #[serde(default)]
    pub etag: Option<String>,
    #[serde(default)]
    pub crc32c: Option<u32>,
}

impl PartRecord {
    pub fn is_acknowledged(&self) -> bool {
        self.etag.is_some()
    }

    pub fn end(&self) -> u64 {
        self.offset + self.size
    }
}
