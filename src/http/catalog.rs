//! Catalog reads: semesters and sections, for any authenticated user.

use std::sync::Arc;

use hyper::{http::request::Parts, StatusCode};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{auth::authenticate, body, json, openapi::conditional, ApiError, ApiResult};
use crate::{
    catalog::{
        self as catalog_index, IndexedSection, Page, PageKey, PageQuery, SemesterIndex, SortKey,
    },
    seats::LiveCounts,
    state::AppState,
    store::catalog,
};

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
            section.seats_offered = live.seats_offered as i32;
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SectionsQuery {
    limit: Option<i64>,
    cursor: Option<String>,
    course_code: Option<String>,
    department: Option<String>,
    open: Option<bool>,
}

/// Sections whose live counts one `open=true` page reads at most while it
/// skips full ones: a page may then hold fewer rows than `limit`, and its
/// `next_cursor` goes on from where it stopped.
const OPEN_SCAN: usize = 2_000;

/// How a repeat read is told to revalidate: the ETag makes that a 304.
const PAGE_CACHE_CONTROL: &str = "private, no-cache";

/// The longest course code a filter accepts (admin input allows 32).
const MAX_COURSE_CODE: usize = 64;

/// A text filter from the query, trimmed; `None` when absent or empty.
/// PostgreSQL refuses a NUL in text (a 500), and no catalogue field holds a
/// control character: such a filter is refused as malformed, and so is one
/// longer than any value could be.
pub(super) fn filter_text(
    name: &str,
    value: Option<String>,
    max: usize,
) -> Result<Option<String>, ApiError> {
    let Some(value) = value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
    else {
        return Ok(None);
    };
    if value.contains(char::is_control) || value.chars().count() > max {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("{name} must be at most {max} characters without control characters"),
        ));
    }
    Ok(Some(value))
}

/// A page size from the query: `api.default_page_size` when absent, at
/// most `api.max_page_size`.
pub(super) fn page_limit(state: &AppState, limit: Option<i64>) -> Result<i64, ApiError> {
    let api = &state.settings.api;
    let limit = limit.unwrap_or(api.default_page_size);
    if !(1..=api.max_page_size).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be between 1 and {}", api.max_page_size),
        ));
    }
    Ok(limit)
}

fn page_query(state: &AppState, req: &Parts) -> Result<PageQuery, ApiError> {
    let q: SectionsQuery = body::query(req.uri.query())?;
    let limit = page_limit(state, q.limit)?;
    let after = match q.cursor.filter(|c| !c.is_empty()) {
        None => None,
        Some(cursor) => Some(SortKey::from_cursor(&cursor).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                "cursor is not one this API answered: pass `next_cursor` back unchanged",
            )
        })?),
    };
    Ok(PageQuery {
        limit: limit as usize,
        after,
        course_code: filter_text("course_code", q.course_code, MAX_COURSE_CODE)?
            .map(|c| c.to_uppercase()),
        department: filter_text("department", q.department, 100)?.map(|d| d.to_lowercase()),
        open: q.open.unwrap_or(false),
    })
}

/// The semester's sections, from the cache or PostgreSQL; `None` if there
/// is no such semester.
async fn semester_index(
    state: &AppState,
    id: Uuid,
) -> Result<Option<Arc<SemesterIndex>>, ApiError> {
    let cache = &state.catalog_cache;
    if let Some(index) = cache.get(&cache.semesters, id) {
        return Ok(Some(index));
    }
    // One reload at a time; who waited finds the fresh index.
    let _reloading = match state.settings.api.catalog_cache_ms {
        0 => None,
        _ => Some(cache.refresh.lock().await),
    };
    if let Some(index) = cache.get(&cache.semesters, id) {
        return Ok(Some(index));
    }
    let db = state.read_db.get().await?;
    if catalog::semester_by_id(&db, id).await?.is_none() {
        return Ok(None);
    }
    let index = Arc::new(SemesterIndex::new(
        catalog::sections_of_semester(&db, id).await?,
    ));
    cache.put(&cache.semesters, id, index.clone());
    Ok(Some(index))
}

/// Selects and encodes one page. The second value says whether Redis
/// answered (a page of persisted counts is not shared).
async fn build_page(state: &AppState, index: &SemesterIndex, q: &PageQuery) -> (Page, bool) {
    let mut rows: Vec<(&IndexedSection, Option<LiveCounts>)> = Vec::with_capacity(q.limit);
    let mut matching = index.matching(index.start(q.after.as_ref()), q);
    let mut last_examined = None;
    let mut read = 0;
    let mut redis_up = true;
    while rows.len() < q.limit && !(q.open && read >= OPEN_SCAN) {
        let want = if q.open {
            q.limit.max(100)
        } else {
            q.limit - rows.len()
        };
        let chunk: Vec<(usize, &IndexedSection)> = matching.by_ref().take(want).collect();
        if chunk.is_empty() {
            break;
        }
        read += chunk.len();
        let ids: Vec<Uuid> = chunk.iter().map(|(_, row)| row.section.id).collect();
        let counts = match redis_up {
            true => state.redis.live_counts(&ids).await.unwrap_or_else(|e| {
                tracing::debug!(error = %e, "live counts unavailable; showing persisted counts");
                redis_up = false;
                vec![None; ids.len()]
            }),
            false => vec![None; ids.len()],
        };
        for ((at, row), live) in chunk.into_iter().zip(counts) {
            if rows.len() == q.limit {
                break;
            }
            last_examined = Some(at);
            if q.open && catalog_index::seats_available(row, live.as_ref()) <= 0 {
                continue;
            }
            rows.push((row, live));
        }
    }
    let next = last_examined
        .filter(|at| index.matching(at + 1, q).next().is_some())
        .map(|at| index.row(at).key());
    (Page::new(catalog_index::encode_page(&rows, next)), redis_up)
}

fn page_response(req: &Parts, page: Page) -> ApiResult {
    conditional(req, page.etag, PAGE_CACHE_CONTROL, page.body)
}

/// `GET /semesters/{id}/sections`: a page of the semester's sections with
/// live counts. An answered page is shared for `api.live_counts_cache_ms`,
/// so a browsing storm costs Redis one read per page per interval.
pub async fn semester_sections(state: &AppState, req: &Parts, id: Uuid) -> ApiResult {
    authenticate(state, req)?;
    let key = PageKey {
        semester: id,
        query: page_query(state, req)?,
    };
    let cache = &state.catalog_cache;
    if let Some(page) = cache.page(&key) {
        return page_response(req, page);
    }
    let Some(index) = semester_index(state, id).await? else {
        return Err(ApiError::not_found("semester"));
    };
    let (page, live) = build_page(state, &index, &key.query).await;
    if live {
        cache.put_page(key, page.clone());
    }
    page_response(req, page)
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
    let limit = page_limit(state, q.limit)?;
    let offset = q.offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::bad_request(
            "invalid_query",
            "offset must not be negative",
        ));
    }
    let filter = catalog::AvailableFilter {
        semester_id: q.semester_id,
        course_code: filter_text("course_code", q.course_code, MAX_COURSE_CODE)?,
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
