//! Wire types of the native chunked upload protocol (`docs/protocol.md`), shared by both ends:
//! the `native` backend serialises requests and parses replies with them, and `ferry serve`
//! does the reverse. Keeping one definition means the two ends cannot drift apart silently.
//!
//! Field names are the protocol's contract; unknown fields in requests are ignored (serde's
//! default), as the protocol requires.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Every error code the protocol defines (`docs/protocol.md`), with its HTTP status. The
/// receiver answers only these; the client turns them into what it acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidRequest,
    Unauthorized,
    Forbidden,
    TooLarge,
    RequestTooLarge,
    TooManySessions,
    InsufficientStorage,
    InvalidPartNumber,
    ChecksumMismatch,
    UploadNotFound,
    UploadNotOpen,
    LengthRequired,
    PartTooLarge,
    RequestTimeout,
    IncompleteBody,
    ManifestMismatch,
    PartTooSmall,
    Sha256Mismatch,
    PathConflict,
    FileNotFound,
    NotFound,
    MethodNotAllowed,
    Internal,
}

/// Each code's name on the wire and its status: the one table both directions use.
const ERROR_CODES: &[(ErrorCode, &str, u16)] = &[
    (ErrorCode::InvalidRequest, "invalid_request", 400),
    (ErrorCode::Unauthorized, "unauthorized", 401),
    (ErrorCode::Forbidden, "forbidden", 403),
    (ErrorCode::TooLarge, "too_large", 413),
    (ErrorCode::RequestTooLarge, "request_too_large", 413),
    (ErrorCode::TooManySessions, "too_many_sessions", 429),
    (ErrorCode::InsufficientStorage, "insufficient_storage", 507),
    (ErrorCode::InvalidPartNumber, "invalid_part_number", 400),
    (ErrorCode::ChecksumMismatch, "checksum_mismatch", 400),
    (ErrorCode::UploadNotFound, "upload_not_found", 404),
    (ErrorCode::UploadNotOpen, "upload_not_open", 409),
    (ErrorCode::LengthRequired, "length_required", 411),
    (ErrorCode::PartTooLarge, "part_too_large", 413),
    (ErrorCode::RequestTimeout, "request_timeout", 408),
    (ErrorCode::IncompleteBody, "incomplete_body", 400),
    (ErrorCode::ManifestMismatch, "manifest_mismatch", 400),
    (ErrorCode::PartTooSmall, "part_too_small", 400),
    (ErrorCode::Sha256Mismatch, "sha256_mismatch", 422),
    (ErrorCode::PathConflict, "path_conflict", 409),
    (ErrorCode::FileNotFound, "file_not_found", 404),
    (ErrorCode::NotFound, "not_found", 404),
    (ErrorCode::MethodNotAllowed, "method_not_allowed", 405),
    (ErrorCode::Internal, "internal", 500),
];

impl ErrorCode {
    fn entry(self) -> &'static (ErrorCode, &'static str, u16) {
        ERROR_CODES
            .iter()
            .find(|(code, _, _)| *code == self)
            .expect("every code is in the table")
    }

    /// The code's name on the wire (`manifest_mismatch`).
    pub fn as_str(self) -> &'static str {
        self.entry().1
    }

    /// The HTTP status the code is sent with.
    pub fn status(self) -> u16 {
        self.entry().2
    }

    /// The code named `text`, if the protocol defines it.
    pub fn parse(text: &str) -> Option<ErrorCode> {
        ERROR_CODES
            .iter()
            .find(|(_, name, _)| *name == text)
            .map(|(code, _, _)| *code)
    }
}

/// Most metadata entries a file may carry.
pub const MAX_METADATA_ENTRIES: usize = 64;
/// Longest metadata key or value, in bytes.
pub const MAX_METADATA_BYTES: usize = 1024;

/// Checks metadata against the protocol's limits: the receiver refuses more, and `config`
/// refuses a watch's at load.
pub fn check_metadata(entries: &BTreeMap<String, String>) -> Result<(), String> {
    if entries.len() > MAX_METADATA_ENTRIES {
        return Err(format!(
            "metadata has {} entries, over the limit of {MAX_METADATA_ENTRIES}",
            entries.len()
        ));
    }
    for (key, value) in entries {
        if key.len() > MAX_METADATA_BYTES || value.len() > MAX_METADATA_BYTES {
            return Err(format!(
                "metadata entry '{}' is over {MAX_METADATA_BYTES} bytes",
                key.chars().take(64).collect::<String>()
            ));
        }
    }
    Ok(())
}

/// Header carrying the 1-based part number of a `PUT .../parts`.
pub const PART_NUMBER_HEADER: &str = "fastio-part-number";
/// Header carrying a part's byte offset in the file (v1.1, optional): a receiver writes parts
/// of any sizes in place with it. Receivers of v1 ignore it.
pub const PART_OFFSET_HEADER: &str = "fastio-part-offset";
/// Header carrying the base64 of the big-endian CRC32C of a part's body.
pub const CHECKSUM_HEADER: &str = "fastio-checksum-crc32c";

/// `POST /v1/uploads/chunked/init` request body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InitRequest {
    pub filename: String,
    pub total_size: u64,
    pub workspace_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The file's modification time (RFC 3339 in UTC, up to nanoseconds), which the received
    /// file keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<String>,
}

/// `201` reply to init.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InitResponse {
    pub upload_id: String,
    pub expires_at: String,
    pub min_part_size: u64,
    pub max_part_size: u64,
    pub max_parts: u32,
}

/// One stored part, as returned by a part upload and listed by a session query.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartInfo {
    pub part_number: u32,
    pub size: u64,
    pub etag: String,
    /// Base64 of the big-endian CRC32C of the stored bytes.
    pub crc32c: String,
}

/// Lifecycle state of a session on the receiver.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Open,
    Completed,
    Aborted,
}

/// `GET /v1/uploads/chunked/{upload_id}` reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionInfo {
    pub upload_id: String,
    pub state: SessionState,
    pub filename: String,
    pub workspace_id: String,
    pub total_size: u64,
    pub expires_at: String,
    pub parts: Vec<PartInfo>,
    pub file: Option<CompletedFile>,
}

/// One entry of a complete request's manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestPart {
    pub part_number: u32,
    pub etag: String,
}

/// `POST /v1/uploads/chunked/{upload_id}/complete` request body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CompleteRequest {
    pub parts: Vec<ManifestPart>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// The file a successful complete made visible.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CompletedFile {
    pub workspace_id: String,
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub completed_at: String,
}

/// `200` reply to complete.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CompleteResponse {
    pub file: CompletedFile,
}

/// `GET /v1/workspaces/{workspace_id}/files/{path}` reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileMetadata {
    pub workspace_id: String,
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub completed_at: String,
    #[serde(default)]
    pub mime_type: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<String>,
}

/// `GET /v1/health` reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    pub status: String,
    pub version: String,
}

/// Body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The `error` member of an error response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// Encodes a CRC32C the way the protocol carries it: base64 of the 4 big-endian bytes.
pub fn encode_crc32c(crc: u32) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
}

/// Decodes a protocol CRC32C; `None` when it is not base64 of exactly 4 bytes.
pub fn decode_crc32c(text: &str) -> Option<u32> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    let array: [u8; 4] = bytes.try_into().ok()?;
    Some(u32::from_be_bytes(array))
}

/// Checks a workspace id: `[A-Za-z0-9_-]{1,64}`.
pub fn check_workspace_id(id: &str) -> Result<(), String> {
    let valid_chars = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if id.is_empty() || id.len() > 64 || !valid_chars {
        return Err("workspace_id must match [A-Za-z0-9_-]{1,64}".into());
    }
    Ok(())
}

/// Checks that `url` can be a receiver's base URL: absolute, http or https.
pub fn check_base_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|error| format!("not a valid URL: {error}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("the URL must start with http:// or https://".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code the enum names is documented in `docs/protocol.md` with its status, and
    /// every `` `NNN some_code` `` the document names is in the enum: the two cannot drift.
    #[test]
    fn the_error_codes_are_exactly_the_documented_ones() {
        let doc = include_str!("../docs/protocol.md");
        for (code, name, status) in ERROR_CODES {
            let documented = format!("`{status} {name}`");
            assert!(
                doc.contains(&documented),
                "{documented} is not in docs/protocol.md"
            );
            assert_eq!(ErrorCode::parse(name), Some(*code));
        }
        let mut rest = doc;
        while let Some(start) = rest.find('`') {
            let after = &rest[start + 1..];
            let Some(end) = after.find('`') else { break };
            let quoted = &after[..end];
            if let Some((status, name)) = quoted.split_once(' ')
                && status.len() == 3
                && status.bytes().all(|b| b.is_ascii_digit())
                && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            {
                let code = ErrorCode::parse(name).unwrap_or_else(|| {
                    panic!("docs/protocol.md names `{quoted}`, unknown to ErrorCode")
                });
                assert_eq!(code.status().to_string(), status, "{quoted}");
            }
            rest = &after[end + 1..];
        }
    }

    #[test]
    fn crc32c_round_trips_and_rejects_wrong_lengths() {
        for crc in [0, 1, 0xdead_beef, u32::MAX] {
            assert_eq!(decode_crc32c(&encode_crc32c(crc)), Some(crc));
        }
        // The protocol's example: CRC32C of "123456789" is 0xe3069283.
        assert_eq!(encode_crc32c(crc32c::crc32c(b"123456789")), "4waSgw==");
        assert_eq!(decode_crc32c("AAAA"), None, "3 bytes");
        assert_eq!(decode_crc32c("not base64!"), None);
    }

    #[test]
    fn init_request_ignores_unknown_fields_and_defaults_optionals() {
        let parsed: InitRequest = serde_json::from_str(
            r#"{"filename":"a.txt","total_size":3,"workspace_id":"ws","extra":true}"#,
        )
        .unwrap();
        assert_eq!(parsed.filename, "a.txt");
        assert!(parsed.metadata.is_empty());
        assert_eq!(parsed.sha256, None);
    }
}
