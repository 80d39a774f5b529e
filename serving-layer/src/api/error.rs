//! The one error type of the API, and the one body every error has:
//! `{"error": "..."}`.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use common::telemetry::limit::{Allowed, LogLimit};
use serde::Serialize;
use utoipa::ToSchema;

/// Every error answer's body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, and what to do about it where that is known.
    pub error: String,
}

#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    NotFound(String),
    MethodNotAllowed,
    /// Missing or wrong bearer token.
    Unauthorized,
    Forbidden(String),
    PayloadTooLarge(usize),
    /// The request target is longer than the limit (bytes).
    UriTooLong(usize),
    /// Overloaded, timed out, or a dependency is missing.
    Unavailable(String),
    /// The batch layer failed a forwarded request.
    BadGateway(String),
    /// Logged once here; the client only learns that it happened.
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn message(&self) -> String {
        match self {
            Self::BadRequest(m)
            | Self::NotFound(m)
            | Self::Forbidden(m)
            | Self::Unavailable(m)
            | Self::BadGateway(m) => m.clone(),
            Self::MethodNotAllowed => "method not allowed on this route".into(),
            Self::Unauthorized => "missing or wrong bearer token".into(),
            Self::PayloadTooLarge(max) => format!("request body larger than {max} bytes"),
            Self::UriTooLong(max) => format!("request target longer than {max} bytes"),
            Self::Internal(_) => "internal error".into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(detail) = &self {
            // One per request at worst: rate-limited.
            static LIMIT: LogLimit = LogLimit::new();
            if let Allowed::Log { suppressed } = LIMIT.allow() {
                tracing::error!(error = %detail, suppressed_since_last = suppressed, "Request failed.");
            }
        }
        let mut response = common::server::json_error(self.status(), self.message());
        if matches!(self, Self::Unauthorized) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
