//! The pieces every layer's HTTP server shares: binding, serving until the
//! shutdown token fires, the JSON error body, the Prometheus response and
//! the health answer.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Binds `addr` and returns the listener with the address it really got
/// (port 0 picks a free one).
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// How long a client may take to send a request's headers. A connection
/// that dribbles them (slowloris) is closed after this, so idle attackers
/// cannot pile up; a connection waiting for its next keep-alive request is
/// closed after the same time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long shutdown waits for open connections to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `app` over HTTP/1.1 until `token` is cancelled, then lets in-flight
/// requests finish (up to a few seconds). `name` labels log lines.
///
/// Hyper directly rather than `axum::serve`, which sets no timer and so no
/// header-read timeout.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    token: CancellationToken,
    name: &'static str,
) {
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        let stream = tokio::select! {
            _ = token.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, say: back off, keep serving
                    // the connections already open.
                    tracing::warn!(%error, server = name, "Cannot accept a connection.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, server = name, "Connection ended with an error.");
            }
        });
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            server = name,
            "Connections still open after the drain timeout; closing them."
        );
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

/// `GET /healthz` of a role: 200 while the process answers (liveness), with
/// `"status": "degraded"` and the reason while one of its durable writes
/// keeps failing (`/readyz` is 503 meanwhile).
pub fn healthz(stalls: &crate::retry::Stalls) -> Response {
    match stalls.reason() {
        None => Json(serde_json::json!({"status": "ok"})).into_response(),
        Some(reason) => {
            Json(serde_json::json!({"status": "degraded", "reason": reason})).into_response()
        }
    }
}
