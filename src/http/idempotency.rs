//! Idempotency keys (SPEC §7, after the IETF Idempotency-Key draft).
//!
//! Scoped to (student, key); the fingerprint is the SHA-256 of the canonical
//! request. Same key and body: the stored answer again, with
//! `Idempotent-Replayed: true`. Same key, other body: 422. Same key while
//! the first request runs: 409. Answers 429 and 5xx are not stored, so a
//! retry runs again. Records live 24 h.

use std::future::Future;

use http_body_util::BodyExt;
use hyper::{header, http::request::Parts, Response, StatusCode};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{ApiError, ApiResult};
use crate::{
    domain::hex,
    metrics::IDEMPOTENT_REPLAYS,
    seats::idempotency::{Claim, Record},
    state::AppState,
};

/// Longest accepted key.
const MAX_KEY_CHARS: usize = 255;
pub const HEADER: &str = "idempotency-key";

/// SHA-256 of `parts` joined by newlines, as hex.
pub fn fingerprint(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
        hasher.update(b"\n");
    }
    hex(&hasher.finalize())
}

/// The request's key: the header, or the body field; both must agree.
pub fn key_of(parts: &Parts, from_body: Option<String>) -> Result<Option<String>, ApiError> {
    let from_header = match parts.headers.get(HEADER) {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    ApiError::bad_request(
                        "invalid_idempotency_key",
                        "Idempotency-Key must be visible ASCII",
                    )
                })?
                .to_string(),
        ),
        None => None,
    };
    let key = match (from_header, from_body) {
        (Some(h), Some(b)) if h != b => {
            return Err(ApiError::unprocessable(
                "idempotency_key_mismatch",
                "the Idempotency-Key header and the idempotency_key field differ",
            ))
        }
        (Some(h), _) => Some(h),
        (None, b) => b,
    };
    if let Some(k) = &key {
        let len = k.chars().count();
        if len == 0 || len > MAX_KEY_CHARS || k.chars().any(char::is_control) {
            return Err(ApiError::bad_request(
                "invalid_idempotency_key",
                format!("an idempotency key is 1 to {MAX_KEY_CHARS} printable characters"),
            ));
        }
    }
    Ok(key)
}

fn replay(status: &str, body: String) -> ApiResult {
    let status = status
        .parse::<u16>()
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    metrics::counter!(IDEMPOTENT_REPLAYS).increment(1);
    let content_type = if status.is_success() {
        "application/json"
    } else {
        "application/problem+json"
    };
    Ok(Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header("idempotent-replayed", "true")
        .body(super::Body::from(body))
        .expect("static headers are valid"))
}

/// Runs `work` at most once per (student, key); without a key, just runs it.
pub async fn run<F>(
    state: &AppState,
    student: Uuid,
    key: Option<String>,
    fingerprint: String,
    work: F,
) -> ApiResult
where
    F: Future<Output = ApiResult>,
{
    let Some(key) = key else { return work.await };
    let redis = &state.redis;
    let record = redis.idempotency_record(student, &key);
    let running_ttl = state.settings.api.idempotency_running_ttl_secs;
    match redis.claim(&record, &fingerprint, running_ttl).await? {
        Claim::New => {}
        Claim::Mismatch => {
            return Err(ApiError::unprocessable(
                "idempotency_key_reused",
                "this idempotency key was used with a different request",
            ))
        }
        Claim::InFlight => {
            return Err(ApiError::Conflict {
                code: "idempotency_in_flight",
                detail: "a request with this idempotency key is still being processed".into(),
            })
        }
        Claim::Done { status, body } => return replay(&status, body),
    }
    let response = work.await.unwrap_or_else(ApiError::into_response);
    let status = response.status();
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        release(state, &record).await;
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    if let Err(e) = redis.complete(&record, status.as_u16(), &bytes).await {
        // The answer stands; a retry with this key will run again (and be
        // answered already_enrolled), which is still safe.
        tracing::warn!(error = %e, "failed to store an idempotent answer");
        release(state, &record).await;
    }
    Ok(Response::from_parts(parts, super::Body::from(bytes)))
}

/// Frees a claim whose answer is not kept; if Redis cannot be told, the
/// claim lapses after `api.idempotency_running_ttl_secs`.
async fn release(state: &AppState, record: &Record) {
    if let Err(e) = state.redis.release(record).await {
        tracing::warn!(error = %e, "failed to release an idempotency claim");
    }
}
