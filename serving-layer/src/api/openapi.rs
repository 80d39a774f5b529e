//! The OpenAPI document, generated from the handlers' annotations.

use super::error::ErrorBody;
use super::ops::{__path_healthz, __path_metrics, __path_readyz, __path_recompute, __path_status};
use super::query::{__path_series, __path_top, __path_word};
use axum::response::{IntoResponse, Response};
use axum::Json;
use utoipa::OpenApi;

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object))
)]
pub async fn openapi() -> Response {
    Json(ApiDoc::openapi()).into_response()
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Lambda serving layer",
        description = "Exact word counts merged from a batch view and realtime counts."
    ),
    paths(word, series, top, status, recompute, healthz, readyz, metrics, openapi),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;
