//! Turning failures into the one JSON error shape every response uses.

use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use courier_protocol::{ApiError, ErrorBody, ErrorCode};

/// A failed request: the stable error sent to the client, and for
/// [`ErrorCode::RateLimited`] how long the client should wait.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct Error {
    /// What the client sees in `{"error": {...}}`.
    pub error: ApiError,
    /// Sent as `Retry-After` (whole seconds, rounded up) when set.
    pub retry_after: Option<Duration>,
}

impl Error {
    /// An error with the code's default message.
    pub fn code(code: ErrorCode) -> Self {
        Error {
            error: ApiError::new(code),
            retry_after: None,
        }
    }

    /// An error with a specific message.
    pub fn with_message(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            error: ApiError::with_message(code, message),
            retry_after: None,
        }
    }

    /// A 429 telling the client when to come back.
    pub fn rate_limited(retry_after: Duration) -> Self {
        Error {
            error: ApiError::new(ErrorCode::RateLimited),
            retry_after: Some(retry_after),
        }
    }
}

impl From<ErrorCode> for Error {
    fn from(code: ErrorCode) -> Self {
        Error::code(code)
    }
}

impl From<ApiError> for Error {
    fn from(error: ApiError) -> Self {
        Error {
            error,
            retry_after: None,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.error.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(ErrorBody { error: self.error })).into_response();
        if let Some(wait) = self.retry_after {
            // Rounded up so a client that waits exactly this long is let in.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

impl From<JsonRejection> for Error {
    fn from(rejection: JsonRejection) -> Self {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Error::with_message(
                ErrorCode::PayloadTooLarge,
                "the request body is larger than the relay accepts",
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Error::with_message(
                ErrorCode::Malformed,
                "expected Content-Type: application/json",
            ),
            _ => Error::with_message(ErrorCode::Malformed, rejection.body_text()),
        }
    }
}

impl From<QueryRejection> for Error {
    fn from(rejection: QueryRejection) -> Self {
        Error::with_message(ErrorCode::Malformed, rejection.body_text())
    }
}

impl From<PathRejection> for Error {
    fn from(rejection: PathRejection) -> Self {
        Error::with_message(ErrorCode::Malformed, rejection.body_text())
    }
}

/// The result type of every handler.
pub type Result<T, E = Error> = std::result::Result<T, E>;
