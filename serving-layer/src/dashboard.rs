//! `GET /`: the live dashboard, one self-contained HTML page (inline CSS, JS
//! and SVG, no build step, no CDN) compiled into the binary, so it works
//! offline. It polls `/v1/status` and `/v1/top` and looks words up with
//! `/v1/words/{word}`.

use axum::http::header;
use axum::response::IntoResponse;

const PAGE: &str = include_str!("dashboard.html");

pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
}
