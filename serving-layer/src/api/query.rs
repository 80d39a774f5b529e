//! The query routes, `/v1/words/{word}`, `/v1/words/{word}/series` and
//! `/v1/top`, all-time or over an event-time range, and what every answer
//! says about freshness. Each handler reads the replica under its lock once,
//! so one answer never mixes two states.

use super::error::{ApiError, ErrorBody};
use super::schema::{
    BatchPart, RangeInfo, RealtimePart, SeriesAnswer, SeriesPoint, TopAnswer, WordAnswer,
};
use super::AppState;
use crate::health::Snapshot;
use crate::replica::Replica;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use lambda_core::window::{parse_time, Range, Window};
use lambda_core::Cut;
use serde::Deserialize;
use std::time::{Duration, UNIX_EPOCH};

#[derive(Debug, Deserialize)]
pub struct TopParams {
    k: Option<i64>,
    // Not a flattened `RangeParams`: flattening makes every value a
    // string, and `k` would no longer parse as a number.
    from: Option<String>,
    to: Option<String>,
}

/// An event-time range: `from` (RFC 3339 or ms since the epoch; default:
/// the epoch) and `to` (default: the end of the current window).
#[derive(Debug, Default, Deserialize)]
pub struct RangeParams {
    from: Option<String>,
    to: Option<String>,
}

impl RangeParams {
    /// The whole windows asked for, if a range was; a 400 when a time is
    /// unreadable. A range that holds no whole window (`to` rounds down to
    /// `from`'s window, or comes before it) is empty: it counts nothing.
    fn range(&self, replica: &Replica) -> Result<Option<Range>, ApiError> {
        let size = replica.windows().size;
        let (from, to) = (&self.from, &self.to);
        if from.is_none() && to.is_none() {
            return Ok(None);
        }
        let bad = |e: lambda_core::window::TimeError| ApiError::BadRequest(e.to_string());
        let from = from.as_deref().map_or(Ok(0), parse_time).map_err(bad)?;
        let to = match to {
            Some(t) => parse_time(t).map_err(bad)?,
            None => size.start_of(Window(size.window_of(now_ms()).0 + 1)),
        };
        let mut range = Range::rounded(size, from, to).unwrap_or_else(|| {
            let w = size.window_of(from);
            Range { from: w, to: w }
        });
        if let Some(horizon) = replica.horizon() {
            range.from = range.from.max(horizon).min(range.to);
        }
        Ok(Some(range))
    }
}

/// What a ranged answer says about its range.
fn range_info(replica: &Replica, range: Range) -> RangeInfo {
    let size = replica.windows().size;
    let (from_ms, to_ms) = range.millis(size);
    RangeInfo {
        from: rfc3339(from_ms),
        to: rfc3339(to_ms),
        from_ms,
        to_ms,
        window_ms: size.millis(),
        complete: replica.is_complete(range),
        late_events: replica.late_in(range),
    }
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

pub(crate) use common::now_ms;

/// A time in RFC 3339, clamped to what it can write (years 1970 to 9999).
pub(crate) fn rfc3339(ms: i64) -> String {
    let ms = ms.clamp(0, lambda_core::window::MAX_TIME);
    let t = UNIX_EPOCH + Duration::from_millis(ms as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

pub(crate) fn freshness(state: &AppState, replica: &Replica) -> Freshness {
    let health = state.health.snapshot();
    let view = replica.view();
    let computed = view.map(|v| v.manifest.header.computed_at_ms);
    let mut stale = Vec::new();
    let batch_stale = state.views.is_some() && health.batch_stale;
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
    params(
        ("word" = String, Path,
            description = "One word: letters and digits only (`char::is_alphanumeric`), at most 600 characters; looked up lowercased",
            min_length = 1, max_length = 600),
        ("from" = Option<String>, Query, pattern = r"^([0-9]{1,15}|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?)$", description = "Count over an event-time range from here: RFC 3339 or milliseconds since the epoch, rounded down to a window boundary (default: all time)"),
        ("to" = Option<String>, Query, pattern = r"^([0-9]{1,15}|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?)$", description = "Range end (exclusive), rounded down likewise; default: the end of the current window. A range without a whole window counts nothing"),
    ),
    responses(
        (status = 200, description = "The merged count and how fresh it is", body = WordAnswer),
        (status = 400, description = "Not UTF-8, longer than 600 characters, or an unreadable range", body = ErrorBody),
        (status = 404, description = "Not a word (it contains a character that separates words), so there is no count", body = ErrorBody),
        (status = 503, description = "Overloaded or timed out", body = ErrorBody),
    )
)]
pub async fn word(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<RangeParams>, QueryRejection>,
) -> Result<Json<WordAnswer>, ApiError> {
    let word = word_of(path)?;
    let Query(params) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let replica = state.replica.read_or_stop("the replica");
    let range = params.range(&replica)?;
    let merged = match range {
        None => replica.word(&word),
        Some(range) => replica.word_in(&word, range),
    };
    let range = range.map(|r| range_info(&replica, r));
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
        range,
    }))
}

/// One word's count per window over an event-time range (default: every
/// window kept).
#[utoipa::path(
    get,
    path = "/v1/words/{word}/series",
    params(
        ("word" = String, Path, description = "One word, as for `/v1/words/{word}`", min_length = 1, max_length = 600),
        ("from" = Option<String>, Query, pattern = r"^([0-9]{1,15}|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?)$", description = "Range start: RFC 3339 or milliseconds since the epoch, rounded down to a window boundary; before the epoch is the epoch"),
        ("to" = Option<String>, Query, pattern = r"^([0-9]{1,15}|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?)$", description = "Range end (exclusive), rounded down likewise; default: the end of the current window. A range without a whole window counts nothing"),
    ),
    responses(
        (status = 200, description = "The count per window", body = SeriesAnswer),
        (status = 400, description = "An unreadable time", body = ErrorBody),
        (status = 404, description = "Not a word", body = ErrorBody),
        (status = 503, description = "Overloaded or timed out", body = ErrorBody),
    )
)]
pub async fn series(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<RangeParams>, QueryRejection>,
) -> Result<Json<SeriesAnswer>, ApiError> {
    let word = word_of(path)?;
    let Query(params) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let replica = state.replica.read_or_stop("the replica");
    // Without a range: every window kept, up to the current one.
    let everything = RangeParams {
        from: Some("0".into()),
        to: None,
    };
    let range = match params.range(&replica)? {
        Some(range) => range,
        None => everything.range(&replica)?.expect("a `from` makes a range"),
    };
    let size = replica.windows().size;
    let windows = replica
        .series(&word, range)
        .into_iter()
        .map(|(w, m)| SeriesPoint {
            start: rfc3339(size.start_of(w)),
            start_ms: size.start_of(w),
            count: m.total(),
        })
        .collect();
    let range = range_info(&replica, range);
    let f = freshness(&state, &replica);
    drop(replica);
    Ok(Json(SeriesAnswer {
        word,
        range,
        windows,
        as_of: f.as_of,
        freshness_ms: f.freshness_ms,
        stale: f.stale,
    }))
}

/// The word of a `/v1/words/{word}` path: a 400 for a bad segment, a 404
/// for text that is not one word.
fn word_of(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
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
    Ok(word)
}

/// The exact merged top k.
#[utoipa::path(
    get,
    path = "/v1/top",
    params(
        ("k" = Option<i64>, Query, description = "How many words, 1 to 1000 (default 10)", minimum = 1, maximum = 1000),
        ("from" = Option<String>, Query, pattern = r"^([0-9]{1,15}|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?)$", description = "Rank over an event-time range from here: RFC 3339 or milliseconds since the epoch, rounded down to a window boundary (default: all time)"),
        ("to" = Option<String>, Query, pattern = r"^([0-9]{1,15}|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?)$", description = "Range end (exclusive), rounded down likewise; default: the end of the current window. A range without a whole window counts nothing"),
    ),
    responses(
        (status = 200, description = "The k most frequent words", body = TopAnswer),
        (status = 400, description = "k is not a whole number from 1 to 1000, or a time is unreadable", body = ErrorBody),
        (status = 503, description = "Overloaded or timed out", body = ErrorBody),
    )
)]
pub async fn top(
    State(state): State<AppState>,
    query: Result<Query<TopParams>, QueryRejection>,
) -> Result<Json<TopAnswer>, ApiError> {
    let bad_k = || ApiError::BadRequest(format!("k must be a whole number from 1 to {MAX_K}"));
    let Query(params) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let k = params.k.unwrap_or(10);
    if !(1..=MAX_K).contains(&k) {
        return Err(bad_k());
    }
    let mut replica = state.replica.read_or_stop("the replica");
    // The rankings take in what releases added since the last top-K (see
    // `Replica::rank_pending`); a release may come in between, hence the loop.
    while !replica.is_ranked() {
        drop(replica);
        state.replica.write_or_stop("the replica").rank_pending();
        replica = state.replica.read_or_stop("the replica");
    }
    let range = RangeParams {
        from: params.from,
        to: params.to,
    }
    .range(&replica)?;
    let ranked = state.top_cache.get(&replica, range, k as usize);
    let range = range.map(|r| range_info(&replica, r));
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
        range,
    }))
}
