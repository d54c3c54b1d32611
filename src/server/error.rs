//! The receiver's refusals. Every handler returns `Result<_, ApiError>`; an `ApiError` becomes
//! the protocol's error response (`{"error": {"code", "message"}}`) with its status, so a refusal
//! is always a well-formed answer, never a dropped connection or a panic.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::protocol::{ErrorBody, ErrorCode, ErrorDetail};

/// A protocol error response: a code of `protocol::ErrorCode`, sent with its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Sent as `Retry-After` (seconds).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    pub fn upload_not_found() -> Self {
        Self::new(
            ErrorCode::UploadNotFound,
            "no open or recent upload session has this id; it may have expired",
        )
    }

    pub fn upload_not_open(state: &str) -> Self {
        Self::new(
            ErrorCode::UploadNotOpen,
            format!("the upload session is {state}"),
        )
    }

    /// A failure of the receiver itself (disk, permissions). Logged here with its cause; the
    /// client sees a retryable `500` without the receiver's paths.
    pub fn internal(context: &str, error: &dyn std::error::Error) -> Self {
        tracing::error!(error = %error, "{context}");
        Self::new(
            ErrorCode::Internal,
            format!("the receiver failed to {context}; try again"),
        )
    }
}

impl ApiError {
    /// A failure writing to the receiver's disk: `507 insufficient_storage` when the disk (or
    /// the quota) is full, so a client stops and says so instead of retrying blindly;
    /// otherwise `internal`.
    pub fn storage(context: &str, error: &std::io::Error) -> Self {
        if matches!(
            error.raw_os_error(),
            Some(libc::ENOSPC) | Some(libc::EDQUOT)
        ) {
            tracing::error!(%error, "{context}: the storage folder is full");
            return Self::new(
                ErrorCode::InsufficientStorage,
                format!("the receiver's disk is full; could not {context}, and nothing was stored"),
            );
        }
        Self::internal(context, error)
    }
}

impl ApiError {
    /// `429`: the receiver holds as many open sessions as it allows.
    pub fn too_many_sessions(max: usize) -> Self {
        Self {
            retry_after: Some(TOO_MANY_SESSIONS_RETRY_AFTER),
            ..Self::new(
                ErrorCode::TooManySessions,
                format!(
                    "{max} upload sessions are open, the most this receiver allows; complete or abort some, or retry later"
                ),
            )
        }
    }
}

/// Seconds a client refused for too many open sessions is asked to wait: long enough for
/// uploads in progress to complete, short enough not to stall a queue.
const TOO_MANY_SESSIONS_RETRY_AFTER: u64 = 30;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str().to_string(),
                message: self.message,
            },
        };
        let status = StatusCode::from_u16(self.code.status())
            .expect("the protocol's statuses are valid HTTP statuses");
        let mut response = (status, axum::Json(body)).into_response();
        // For the refusals counter (`server::metrics`).
        response.extensions_mut().insert(self.code);
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}
