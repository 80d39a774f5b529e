//! The pieces every layer's HTTP server shares: binding, serving until the
//! shutdown token fires, the JSON error body and the Prometheus response.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Binds `addr` and returns the listener with the address it really got
/// (port 0 picks a free one).
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serves `app` until `token` is cancelled, then finishes in-flight requests.
/// `name` labels the log line if the server fails.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    token: CancellationToken,
    name: &'static str,
) {
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await
    {
        tracing::error!(%error, server = name, "HTTP server failed.");
    }
}

/// The one error body: `{"error": "..."}` with `status`.
pub fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// A Prometheus text-format response.
pub fn prometheus(text: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
