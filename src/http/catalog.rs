//! Catalog reads: semesters and sections, for any authenticated user.

use std::sync::Arc;

use hyper::{http::request::Parts, StatusCode};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{auth::authenticate, body, json, ApiError, ApiResult};
use crate::{seats::LiveCounts, state::AppState, store::catalog};

#[derive(Serialize)]
struct List<T> {
    items: Vec<T>,
}

/// Replaces PostgreSQL's persisted counts with Redis's live ones where Redis
/// has the section. If Redis is away the persisted counts stay (`live: false`).
pub async fn overlay_live(state: &AppState, sections: &mut [catalog::Section]) {
    let ids: Vec<Uuid> = sections.iter().map(|s| s.id).collect();
    match state.redis.live_counts(&ids).await {
        Ok(counts) => apply_live(sections, &counts),
        Err(e) => tracing::debug!(error = %e, "live counts unavailable; showing persisted counts"),
    }
}

fn apply_live(sections: &mut [catalog::Section], counts: &[Option<LiveCounts>]) {
    for (section, live) in sections.iter_mut().zip(counts) {
        if let Some(live) = live {
            section.total_seats = live.capacity as i32;
            section.enrolled = live.enrolled as i32;
            section.seats_available = live.seats_available as i32;
            section.waitlist_length = live.waitlist_length as i32;
            section.live = true;
        }
    }
}

pub async fn semesters(state: &AppState, req: &Parts) -> ApiResult {
    authenticate(state, req)?;
    let db = state.read_db.get().await?;
    let items = catalog::semesters(&db).await?;
    json(StatusCode::OK, &List { items })
}

pub async fn semester(state: &AppState, req: &Parts, id: Uuid) -> ApiResult {
    authenticate(state, req)?;
    let db = state.read_db.get().await?;
    match catalog::semester_by_id(&db, id).await? {
        Some(semester) => json(StatusCode::OK, &semester),
        None => Err(ApiError::not_found("semester")),
    }
}

async fn sections_of(
    state: &AppState,
    id: Uuid,
) -> Result<Option<Arc<Vec<catalog::Section>>>, ApiError> {
    let cache = &state.catalog_cache;
    if let Some(items) = cache.get(&cache.semesters, id) {
        return Ok(Some(items));
    }
    let db = state.read_db.get().await?;
    if catalog::semester_by_id(&db, id).await?.is_none() {
        return Ok(None);
    }
    let items = Arc::new(catalog::sections_of_semester(&db, id).await?);
    cache.put(&cache.semesters, id, items.clone());
    Ok(Some(items))
}

pub async fn semester_sections(state: &AppState, req: &Parts, id: Uuid) -> ApiResult {
    authenticate(state, req)?;
    let Some(items) = sections_of(state, id).await? else {
        return Err(ApiError::not_found("semester"));
    };
    let mut items = items.as_ref().clone();
    // A full semester's counts cost four Redis commands per section; under a
    // browsing storm one read serves every request for `live_ttl`.
    let cache = &state.catalog_cache;
    let counts = match cache.get_within(&cache.live, id, cache.live_ttl) {
        Some(counts) if counts.len() == items.len() => Some(counts),
        _ => {
            let ids: Vec<Uuid> = items.iter().map(|s| s.id).collect();
            match state.redis.live_counts(&ids).await {
                Ok(counts) => {
                    let counts = Arc::new(counts);
                    if !cache.live_ttl.is_zero() {
                        cache.put(&cache.live, id, counts.clone());
                    }
                    Some(counts)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "live counts unavailable; showing persisted counts");
                    None
                }
            }
        }
    };
    if let Some(counts) = counts {
        apply_live(&mut items, &counts);
    }
    json(StatusCode::OK, &List { items })
}

pub async fn section(state: &AppState, req: &Parts, id: Uuid) -> ApiResult {
    authenticate(state, req)?;
    let cache = &state.catalog_cache;
    let mut section = match cache.get(&cache.sections, id) {
        Some(section) => section,
        None => {
            let db = state.read_db.get().await?;
            let Some(section) = catalog::section_by_id(&db, id).await? else {
                return Err(ApiError::not_found("section"));
            };
            cache.put(&cache.sections, id, section.clone());
            section
        }
    };
    overlay_live(state, std::slice::from_mut(&mut section)).await;
    json(StatusCode::OK, &section)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AvailableQuery {
    semester_id: Option<Uuid>,
    course_code: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

pub async fn available(state: &AppState, req: &Parts) -> ApiResult {
    authenticate(state, req)?;
    let q: AvailableQuery = body::query(req.uri.query())?;
    let api = &state.settings.api;
    let limit = q.limit.unwrap_or(api.default_page_size);
    if !(1..=api.max_page_size).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be between 1 and {}", api.max_page_size),
        ));
    }
    let offset = q.offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::bad_request(
            "invalid_query",
            "offset must not be negative",
        ));
    }
    // PostgreSQL refuses a NUL in text (a 500), and no course code has a
    // control character: refuse the filter as malformed instead.
    if q.course_code
        .as_deref()
        .is_some_and(|c| c.contains(char::is_control))
    {
        return Err(ApiError::bad_request(
            "invalid_query",
            "course_code must not contain control characters",
        ));
    }
    let filter = catalog::AvailableFilter {
        semester_id: q.semester_id,
        course_code: q.course_code.filter(|c| !c.is_empty()),
        limit,
        offset,
    };
    let db = state.read_db.get().await?;
    let mut items = catalog::available_sections(&db, &filter).await?;
    drop(db);
    overlay_live(state, &mut items).await;
    // PostgreSQL lags Redis: a section it still shows open may be full now.
    items.retain(|s| s.seats_available > 0);
    json(StatusCode::OK, &List { items })
}
