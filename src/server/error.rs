//! The receiver's refusals. Every handler returns `Result<_, ApiError>`; an `ApiError` becomes
//! the protocol's error response (`{"error": {"code", "message"}}`) with its status, so a refusal
//! is always a well-formed answer, never a dropped connection or a panic.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::protocol::{ErrorBody, ErrorDetail};

/// A protocol error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Sent as `Retry-After` (seconds).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn upload_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "upload_not_found",
            "no open or recent upload session has this id; it may have expired",
        )
    }

    pub fn upload_not_open(state: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "upload_not_open",
            format!("the upload session is {state}"),
        )
    }

    /// A failure of the receiver itself (disk, permissions). Logged here with its cause; the
    /// client sees a retryable `500` without the receiver's paths.
    pub fn internal(context: &str, error: &dyn std::error::Error) -> Self {
        tracing::error!(error = %error, "{context}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
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
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient_storage",
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
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_sessions",
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
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}
