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

/// The refusals every route shares, made before any handler runs (see
/// `limit_request`): documented on every operation, so that a client (or
/// a schema-driven fuzzer) knows them.
struct SharedRefusals;

impl utoipa::Modify for SharedRefusals {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let refusal = |description: String| {
            let body = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build();
            ResponseBuilder::new()
                .description(description)
                .content("application/json", body)
                .build()
        };
        let shared = [
            (
                "413",
                "A declared body larger than `--max-body-bytes`".to_owned(),
            ),
            (
                "414",
                format!(
                    "The request target (path and query) is longer than {} bytes",
                    super::MAX_URI_BYTES
                ),
            ),
        ];
        for item in api.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ];
            for operation in operations.into_iter().flatten() {
                for (status, description) in &shared {
                    operation
                        .responses
                        .responses
                        .entry((*status).to_owned())
                        .or_insert_with(|| refusal(description.clone()).into());
                }
            }
        }
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
    modifiers(&BearerAuth, &SharedRefusals)
)]
pub struct ApiDoc;
