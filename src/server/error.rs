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
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        (self.status, axum::Json(body)).into_response()
    }
}
