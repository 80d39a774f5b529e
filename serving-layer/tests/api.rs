//! The router in-process (`oneshot`, no socket): every endpoint, every error,
//! auth, load shedding and timeouts.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use common::sync::FairRwLock;
use http_body_util::BodyExt;
use lambda_core::realtime::RealtimeUpsert;
use lambda_core::view::{BatchView, ViewOrigin};
use lambda_core::{BucketSize, Cut};
use serde_json::Value;
use serving_layer::api::{router, AppState, Limits};
use serving_layer::health::Health;
use serving_layer::metrics::ServingMetrics;
use serving_layer::replica::{LoadedView, Replica};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tower::ServiceExt;

const SIZE: u64 = 10;

fn loaded_view(version: u64, cut: Cut, words: &[(&str, u64)]) -> LoadedView {
    let words = words.iter().map(|(w, c)| ((*w).into(), *c)).collect();
    let origin = ViewOrigin {
        computed_at_ms: 1_700_000_000_000,
        ..ViewOrigin::new(version, cut, BucketSize::new(SIZE).expect("positive"))
    };
    LoadedView::unstored(BatchView::build(origin, words))
}

/// A replica with batch view v1 (cut 20 on partition 0) and realtime counts
/// above it: "lambda" 5 + 3 = 8 overtakes "batch" 6, "speed" is realtime only.
fn replica() -> Arc<FairRwLock<Replica>> {
    let mut r = Replica::new(BucketSize::new(SIZE).expect("positive"));
    r.swap_view(Arc::new(loaded_view(
        1,
        [(0, 20)].into_iter().collect(),
        &[("lambda", 5), ("batch", 6), ("view", 1)],
    )));
    let upserts =
        [("lambda", 2, 3), ("speed", 2, 2), ("batch", 1, 99)].map(|(word, bucket, count)| {
            RealtimeUpsert {
                word: word.into(),
                partition: 0,
                bucket,
                count,
            }
        });
    let counts = r.resolve(&upserts);
    r.apply(counts, [(0, 25)].into_iter().collect());
    Arc::new(FairRwLock::new(r))
}

struct App {
    router: Router,
    state: AppState,
}

fn app_with(
    replica: Arc<FairRwLock<Replica>>,
    token: Option<&str>,
    batch_url: Option<String>,
    timeout: Duration,
) -> App {
    app_with_timeouts(replica, token, batch_url, timeout, timeout)
}

fn app_with_timeouts(
    replica: Arc<FairRwLock<Replica>>,
    token: Option<&str>,
    batch_url: Option<String>,
    timeout: Duration,
    admin_timeout: Duration,
) -> App {
    let batch =
        batch_url.map(|url| Arc::new(common::http::Bases::parse(&url).expect("a batch URL")));
    let state = AppState::new(
        replica,
        Arc::new(Health::new(Duration::from_secs(5))),
        Arc::new(ServingMetrics::default()),
        token.map(Arc::from),
        batch.clone(),
        batch.map(common::views::ViewSource::Batch),
        Arc::new(Notify::new()),
        Limits {
            concurrency: Arc::new(Semaphore::new(8)),
            timeout,
            admin_timeout,
            max_body_bytes: 1024,
        },
    );
    App {
        router: router(state.clone()),
        state,
    }
}

fn app() -> App {
    app_with(replica(), None, None, Duration::from_secs(5))
}

async fn send(router: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = router.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.to_str().unwrap_or("").starts_with("application/json"));
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body = if is_json {
        serde_json::from_slice(&bytes).expect("JSON body")
    } else {
        Value::String(String::from_utf8_lossy(&bytes).into_owned())
    };
    (status, body)
}

async fn get(router: &Router, uri: &str) -> (StatusCode, Value) {
    send(
        router,
        Request::get(uri).body(Body::empty()).expect("request"),
    )
    .await
}

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode) {
    assert_eq!(status, expected, "{body}");
    let message = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {body}"));
    assert!(!message.is_empty());
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{body}");
}

#[tokio::test]
async fn a_word_is_normalised_and_merged_with_its_freshness() {
    let app = app();
    let (status, body) = get(&app.router, "/v1/words/LAMBDA").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["word"], "lambda");
    assert_eq!(body["count"], 8);
    assert_eq!(body["batch"]["count"], 5);
    assert_eq!(body["batch"]["version"], 1);
    assert_eq!(body["batch"]["cut"], serde_json::json!({"0": 20}));
    assert_eq!(body["batch"]["computed_at"], "2023-11-14T22:13:20.000Z");
    assert_eq!(body["realtime"]["count"], 3);
    assert_eq!(body["as_of"], serde_json::json!({"0": 25}));
    assert!(body["freshness_ms"].is_u64());
    // Not configured with a batch layer: only realtime can be stale.
    assert!(body["stale"].as_array().is_some());

    // The realtime bucket below the cut (bucket 1) is the batch view's.
    let (_, body) = get(&app.router, "/v1/words/batch").await;
    assert_eq!(
        (body["count"].as_u64(), body["realtime"]["count"].as_u64()),
        (Some(6), Some(0))
    );
    let (_, body) = get(&app.router, "/v1/words/speed").await;
    assert_eq!(body["count"], 2);
    let (_, body) = get(&app.router, "/v1/words/caf%C3%A9").await;
    assert_eq!(
        (body["word"].as_str(), body["count"].as_u64()),
        (Some("café"), Some(0))
    );
}

#[tokio::test]
async fn a_path_that_is_not_a_word_is_a_404_and_bad_input_a_400() {
    let app = app();
    for path in [
        "/v1/words/two%20words",
        "/v1/words/%21%21%21",
        "/v1/words/a-b",
        "/v1/words/%20word",
    ] {
        let (status, body) = get(&app.router, path).await;
        assert_error(status, &body, StatusCode::NOT_FOUND);
    }
    let too_long = format!("/v1/words/{}", "a".repeat(601));
    for path in ["/v1/words/%FF%FE", too_long.as_str()] {
        let (status, body) = get(&app.router, path).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST);
    }
    let longest = format!("/v1/words/{}", "a".repeat(600));
    assert_eq!(get(&app.router, &longest).await.0, StatusCode::OK);
}

#[tokio::test]
async fn top_is_exact_after_realtime_reorders_the_batch_ranking() {
    let app = app();
    let (status, body) = get(&app.router, "/v1/top?k=3").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["k"], 3);
    assert_eq!(
        body["words"],
        serde_json::json!([
            {"word": "lambda", "count": 8},
            {"word": "batch", "count": 6},
            {"word": "speed", "count": 2},
        ])
    );
    assert_eq!(body["batch"]["version"], 1);
    assert!(body["batch"].get("count").is_none());
    let (_, body) = get(&app.router, "/v1/top").await;
    assert_eq!(body["k"], 10);
    assert_eq!(body["words"].as_array().map(Vec::len), Some(4));
}

/// The top-K cache answers smaller k from a larger one and computes again
/// for a larger k, and a realtime change makes it compute again.
#[tokio::test]
async fn every_k_gets_its_exact_top_k_whatever_was_asked_before() {
    let words: Vec<(String, u64)> = (0..40).map(|i| (format!("w{i:02}"), 100 - i)).collect();
    let refs: Vec<(&str, u64)> = words.iter().map(|(w, c)| (w.as_str(), *c)).collect();
    let replica = Arc::new(FairRwLock::new(Replica::new(
        BucketSize::new(SIZE).expect("positive"),
    )));
    replica
        .write_or_stop("the replica")
        .swap_view(Arc::new(loaded_view(
            1,
            [(0, 20)].into_iter().collect(),
            &refs,
        )));
    let app = app_with(Arc::clone(&replica), None, None, Duration::from_secs(5));
    let top = |body: &Value| -> Vec<(String, u64)> {
        body["words"]
            .as_array()
            .expect("words")
            .iter()
            .map(|w| {
                (
                    w["word"].as_str().expect("word").to_owned(),
                    w["count"].as_u64().expect("count"),
                )
            })
            .collect()
    };
    for k in [3, 25, 12, 40, 1, 1000] {
        let (status, body) = get(&app.router, &format!("/v1/top?k={k}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(top(&body), words[..k.min(40)].to_vec(), "k={k}");
    }
    // "w39" (61) overtakes every other word through realtime counts.
    {
        let mut r = replica.write_or_stop("the replica");
        let upserts = [RealtimeUpsert {
            word: "w39".into(),
            partition: 0,
            bucket: 2,
            count: 50,
        }];
        let counts = r.resolve(&upserts);
        r.apply(counts, [(0, 25)].into_iter().collect());
    }
    let (_, body) = get(&app.router, "/v1/top?k=2").await;
    assert_eq!(
        top(&body),
        [("w39".to_owned(), 111), ("w00".to_owned(), 100)]
    );
}

#[tokio::test]
async fn k_out_of_range_or_not_a_number_is_a_400() {
    let app = app();
    for q in [
        "k=0",
        "k=1001",
        "k=-1",
        "k=abc",
        "k=1.5",
        "k=99999999999999999999",
    ] {
        let (status, body) = get(&app.router, &format!("/v1/top?{q}")).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST);
    }
    let (status, _) = get(&app.router, "/v1/top?k=1000").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn unknown_routes_wrong_methods_and_big_bodies_get_json_errors() {
    let app = app();
    let (status, body) = get(&app.router, "/v2/nothing").await;
    assert_error(status, &body, StatusCode::NOT_FOUND);
    let (status, body) = get(&app.router, "/v1/words/").await;
    assert_error(status, &body, StatusCode::NOT_FOUND);
    let (status, body) = send(
        &app.router,
        Request::builder()
            .method(Method::DELETE)
            .uri("/v1/top")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_error(status, &body, StatusCode::METHOD_NOT_ALLOWED);
    let (status, body) = send(
        &app.router,
        Request::post("/v1/admin/recompute")
            .header(header::CONTENT_LENGTH, "4096")
            .body(Body::from(vec![b'x'; 4096]))
            .expect("request"),
    )
    .await;
    assert_error(status, &body, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn status_health_readiness_metrics_openapi_and_dashboard_answer() {
    let app = app();
    let (status, body) = get(&app.router, "/v1/status").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ready"], true);
    assert_eq!(body["batch"]["version"], 1);
    assert_eq!(body["realtime"]["as_of"], serde_json::json!({"0": 25}));
    assert_eq!(body["realtime"]["entries"], 2);

    let (status, body) = get(&app.router, "/healthz").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, _) = get(&app.router, "/readyz").await;
    assert_eq!(status, StatusCode::OK);
    let empty = app_with(
        Arc::new(FairRwLock::new(Replica::new(
            BucketSize::new(SIZE).expect("positive"),
        ))),
        None,
        None,
        Duration::from_secs(5),
    );
    let (status, body) = get(&empty.router, "/readyz").await;
    assert_error(status, &body, StatusCode::SERVICE_UNAVAILABLE);

    let (status, body) = get(&app.router, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let text = body.as_str().expect("text");
    assert!(
        text.contains("lambda_serving_requests_total{route=\"/v1/status\",status=\"2xx\"} 1"),
        "{text}"
    );
    assert!(text.contains(
        "lambda_serving_request_duration_seconds_bucket{route=\"/healthz\",le=\"+Inf\"} 1"
    ));
    assert!(text.contains("lambda_serving_batch_version 1"));
    assert!(text.contains("lambda_dead_letter_records"));

    let (status, doc) = get(&app.router, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/v1/words/{word}",
        "/v1/top",
        "/v1/status",
        "/v1/admin/recompute",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"].get("WordAnswer").is_some());
    // Every operation documents the refusals made before any handler runs.
    let paths = doc["paths"].as_object().expect("paths");
    for (path, item) in paths {
        for (method, operation) in item.as_object().expect("path item") {
            for status in ["413", "414"] {
                assert!(
                    operation["responses"].get(status).is_some(),
                    "{method} {path} does not document {status}"
                );
            }
        }
    }
    let long = format!(
        "/v1/words/{}/series",
        "a".repeat(::serving_layer::api::MAX_URI_BYTES)
    );
    let (status, body) = get(&app.router, &long).await;
    assert_eq!(status, StatusCode::URI_TOO_LONG, "{body}");

    let (status, page) = get(&app.router, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.as_str().is_some_and(|p| p.contains("<title>Lambda")));
}

fn recompute(token: Option<&str>) -> Request<Body> {
    let mut r = Request::post("/v1/admin/recompute");
    if let Some(t) = token {
        r = r.header(header::AUTHORIZATION, t);
    }
    r.body(Body::empty()).expect("request")
}

/// A stand-in batch layer that checks the forwarded token and answers with
/// a manifest.
async fn fake_batch(expected_auth: &'static str) -> String {
    slow_fake_batch(expected_auth, Duration::ZERO).await
}

/// [`fake_batch`], answering after `delay` (a recompute takes a while).
async fn slow_fake_batch(expected_auth: &'static str, delay: Duration) -> String {
    use axum::routing::post;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let manifest = loaded_view(7, [(0, 40)].into_iter().collect(), &[]).manifest;
    let app = Router::new().route(
        "/recompute",
        post(move |headers: axum::http::HeaderMap| async move {
            tokio::time::sleep(delay).await;
            if headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                == Some(expected_auth)
            {
                (
                    StatusCode::OK,
                    axum::Json(serde_json::to_value(&manifest).expect("json")),
                )
            } else {
                (
                    StatusCode::UNAUTHORIZED,
                    axum::Json(serde_json::json!({"error": "token"})),
                )
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr.to_string()
}

#[tokio::test]
async fn admin_recompute_needs_the_right_token() {
    // Without a configured token the endpoint is disabled, whatever is sent.
    let (status, body) = send(&app().router, recompute(Some("Bearer anything"))).await;
    assert_error(status, &body, StatusCode::FORBIDDEN);

    let batch = fake_batch("Bearer s3cret").await;
    let app = app_with(
        replica(),
        Some("s3cret"),
        Some(batch),
        Duration::from_secs(10),
    );
    for wrong in [
        None,
        Some("Bearer wrong"),
        Some("s3cret"),
        Some("Basic s3cret"),
        Some("Bearer s3cre"),
    ] {
        let response = app
            .router
            .clone()
            .oneshot(recompute(wrong))
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{wrong:?}");
        assert_eq!(
            response
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok()),
            Some("Bearer")
        );
    }
    let (status, body) = send(&app.router, recompute(Some("Bearer s3cret"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 7);
    assert_eq!(body["cut"], serde_json::json!({"0": 40}));
    // No puller runs in this test, so the new view is not loaded here.
    assert_eq!(body["loaded"], false);
    // A mode is checked before anything is forwarded.
    let bad = Request::post("/v1/admin/recompute?mode=sometimes")
        .header(header::AUTHORIZATION, "Bearer s3cret")
        .body(Body::empty())
        .expect("request");
    let (status, body) = send(&app.router, bad).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("full")),
        "{body}"
    );
}

/// A recompute takes as long as the history it recounts: the admin
/// endpoint has a timeout of its own, not the queries'.
#[tokio::test]
async fn a_recompute_may_outlive_the_queries_timeout() {
    let batch = slow_fake_batch("Bearer s3cret", Duration::from_millis(500)).await;
    let app = app_with_timeouts(
        replica(),
        Some("s3cret"),
        Some(batch),
        Duration::from_millis(100),
        Duration::from_secs(30),
    );
    let (status, body) = send(&app.router, recompute(Some("Bearer s3cret"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 7);
}

#[tokio::test]
async fn saturated_requests_are_shed_with_503() {
    let app = app();
    let permits = Arc::clone(&app.state.limits.concurrency)
        .acquire_many_owned(8)
        .await
        .expect("semaphore open");
    let (status, body) = get(&app.router, "/v1/words/lambda").await;
    assert_error(status, &body, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body["error"]
        .as_str()
        .is_some_and(|e| e.contains("overloaded")));
    drop(permits);
    let (status, _) = get(&app.router, "/v1/words/lambda").await;
    assert_eq!(status, StatusCode::OK);
    let (_, metrics) = get(&app.router, "/metrics").await;
    assert!(metrics
        .as_str()
        .is_some_and(|m| m.contains("lambda_serving_shed_total 1")));
}

#[tokio::test]
async fn a_request_that_takes_too_long_is_answered_503() {
    // A "batch layer" that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let app = app_with(replica(), Some("t"), Some(addr), Duration::from_millis(200));
    let (status, body) = send(&app.router, recompute(Some("Bearer t"))).await;
    assert_error(status, &body, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("timed out")),
        "{body}"
    );
    drop(silent);
}
