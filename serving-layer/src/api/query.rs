//! The query routes, `/v1/words/{word}` and `/v1/top`, and what every
//! answer says about freshness. Each handler reads the replica under its
//! lock once, so one answer never mixes two states.

use super::error::{ApiError, ErrorBody};
use super::schema::{BatchPart, RealtimePart, TopAnswer, WordAnswer};
use super::AppState;
use crate::health::Snapshot;
use crate::replica::Replica;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use common::sync::ReadWriteOrStop;
use lambda_core::Cut;
use serde::Deserialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Deserialize)]
pub struct TopParams {
    k: Option<i64>,
}

pub const MAX_K: i64 = 1000;

/// What every answer says about freshness, read once per request.
pub(crate) struct Freshness {
    /// The health facts it was derived from.
    pub(crate) health: Snapshot,
    pub(crate) batch: BatchPart,
    pub(crate) realtime: RealtimePart,
    pub(crate) as_of: Cut,
    pub(crate) freshness_ms: u64,
    pub(crate) stale: Vec<String>,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

pub(crate) fn freshness(state: &AppState, replica: &Replica) -> Freshness {
    let health = state.health.snapshot();
    let view = replica.view();
    let computed = view.map(|v| v.manifest.header.computed_at_ms);
    let mut stale = Vec::new();
    let batch_stale = state.batch_url.is_some() && health.batch_stale;
    if batch_stale {
        stale.push("batch".to_owned());
    }
    if health.realtime_stale {
        stale.push("realtime".to_owned());
    }
    Freshness {
        batch: BatchPart {
            count: None,
            version: view.map(|v| v.version()),
            cut: view.map(|v| v.cut().clone()).unwrap_or_default(),
            computed_at: computed.map(rfc3339),
            age_ms: computed.map(|t| (now_ms() - t).max(0) as u64),
            stale: batch_stale,
        },
        realtime: RealtimePart {
            count: None,
            as_of: replica.realtime_as_of().clone(),
            stale: health.realtime_stale,
        },
        as_of: replica.as_of(),
        freshness_ms: health.freshness.as_millis() as u64,
        stale,
        health,
    }
}

/// The longest word `/v1/words/{word}` looks up (characters). Longer words
/// are still counted, and listed by `/v1/top`.
pub const MAX_WORD_CHARS: usize = 600;

/// The merged count of one word.
#[utoipa::path(
    get,
    path = "/v1/words/{word}",
    params(("word" = String, Path,
        description = "One word: letters and digits only (`char::is_alphanumeric`), at most 600 characters; looked up lowercased",
        min_length = 1, max_length = 600)),
    responses(
        (status = 200, description = "The merged count and how fresh it is", body = WordAnswer),
        (status = 400, description = "Not UTF-8, or longer than 600 characters", body = ErrorBody),
        (status = 404, description = "Not a word (it contains a character that separates words), so there is no count", body = ErrorBody),
        (status = 503, description = "Overloaded or timed out", body = ErrorBody),
    )
)]
pub async fn word(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<WordAnswer>, ApiError> {
    let Path(raw) = path.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if raw.chars().count() > MAX_WORD_CHARS {
        return Err(ApiError::BadRequest(format!(
            "a word is at most {MAX_WORD_CHARS} characters"
        )));
    }
    // Strict: the segment must be a word as it stands, not text that
    // contains one (`%20word` is not the word `word`).
    let word = raw
        .chars()
        .all(char::is_alphanumeric)
        .then(|| lambda_core::tokenizer::single_word(&raw))
        .flatten()
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "`{}` is not a word (letters and digits only), so it has no count",
                raw.chars().take(100).collect::<String>()
            ))
        })?;
    let replica = state.replica.read_or_stop("the replica");
    let merged = replica.word(&word);
    let mut f = freshness(&state, &replica);
    drop(replica);
    f.batch.count = Some(merged.batch);
    f.realtime.count = Some(merged.realtime);
    Ok(Json(WordAnswer {
        word,
        count: merged.total(),
        batch: f.batch,
        realtime: f.realtime,
        as_of: f.as_of,
        freshness_ms: f.freshness_ms,
        stale: f.stale,
    }))
}

/// The exact merged top k.
#[utoipa::path(
    get,
    path = "/v1/top",
    params(("k" = Option<i64>, Query, description = "How many words, 1 to 1000 (default 10)", minimum = 1, maximum = 1000)),
    responses(
        (status = 200, description = "The k most frequent words", body = TopAnswer),
        (status = 400, description = "k is not a whole number from 1 to 1000", body = ErrorBody),
        (status = 503, description = "Overloaded or timed out", body = ErrorBody),
    )
)]
pub async fn top(
    State(state): State<AppState>,
    query: Result<Query<TopParams>, QueryRejection>,
) -> Result<Json<TopAnswer>, ApiError> {
    let bad_k = || ApiError::BadRequest(format!("k must be a whole number from 1 to {MAX_K}"));
    let Query(params) = query.map_err(|_| bad_k())?;
    let k = params.k.unwrap_or(10);
    if !(1..=MAX_K).contains(&k) {
        return Err(bad_k());
    }
    let replica = state.replica.read_or_stop("the replica");
    let ranked = state.top_cache.get(&replica, MAX_K as usize);
    let f = freshness(&state, &replica);
    drop(replica);
    Ok(Json(TopAnswer {
        k: k as u32,
        words: ranked.iter().take(k as usize).cloned().collect(),
        batch: f.batch,
        realtime: f.realtime,
        as_of: f.as_of,
        freshness_ms: f.freshness_ms,
        stale: f.stale,
    }))
}
