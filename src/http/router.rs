//! Routing: path → [`Route`], method check (405 with `Allow`), request
//! deadline, request id and span, and the request metrics.

use std::{convert::Infallible, sync::Arc, time::Instant};

use hyper::{body::Incoming, header::HeaderValue, http::request::Parts, Method, Request, Response};
use tracing::Instrument;

use super::{
    admin, auth, catalog, limits, path_id, probes, registration, students, ApiError, ApiResult,
    Body,
};
use crate::{
    metrics::{HTTP_DURATION, HTTP_IN_FLIGHT, HTTP_REQUESTS},
    state::AppState,
};

/// Every route the service knows, with its path parameters still as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Live,
    Ready,
    Health,
    Metrics,
    OpenApi,
    Login,
    Register,
    RegisterDrop,
    Semesters,
    Semester(&'a str),
    SemesterSections(&'a str),
    SectionsAvailable,
    Section(&'a str),
    StudentRegistrations(&'a str),
    StudentWaitlist(&'a str),
    AdminSemesters,
    AdminCourses,
    AdminSections,
    AdminSection(&'a str),
    AdminStudents,
}

impl<'a> Route<'a> {
    fn resolve(path: &'a str) -> Option<Self> {
        let path = path
            .strip_suffix('/')
            .filter(|p| !p.is_empty())
            .unwrap_or(path);
        let mut parts = path.split('/').skip(1);
        let segments: [Option<&str>; 6] = std::array::from_fn(|_| parts.next());
        if parts.next().is_some() {
            return None;
        }
        use Route::*;
        Some(match segments {
            [Some("live"), None, ..] => Live,
            [Some("ready"), None, ..] => Ready,
            [Some("health"), None, ..] => Health,
            [Some("metrics"), None, ..] => Metrics,
            [Some("api"), Some("v1"), Some(a), b, c, None] => match (a, b, c) {
                ("openapi.json", None, None) => OpenApi,
                ("auth", Some("login"), None) => Login,
                ("register", None, None) => Register,
                ("register", Some("drop"), None) => RegisterDrop,
                ("semesters", None, None) => Semesters,
                ("semesters", Some(id), None) => Semester(id),
                ("semesters", Some(id), Some("sections")) => SemesterSections(id),
                ("sections", Some("available"), None) => SectionsAvailable,
                ("sections", Some(id), None) => Section(id),
                ("students", Some(id), Some("registrations")) => StudentRegistrations(id),
                ("students", Some(id), Some("waitlist")) => StudentWaitlist(id),
                ("admin", Some("semesters"), None) => AdminSemesters,
                ("admin", Some("courses"), None) => AdminCourses,
                ("admin", Some("sections"), None) => AdminSections,
                ("admin", Some("sections"), Some(id)) => AdminSection(id),
                ("admin", Some("students"), None) => AdminStudents,
                _ => return None,
            },
            _ => return None,
        })
    }

    /// The route's template: the `route` label of the metrics (bounded cardinality).
    fn template(&self) -> &'static str {
        match self {
            Route::Live => "/live",
            Route::Ready => "/ready",
            Route::Health => "/health",
            Route::Metrics => "/metrics",
            Route::OpenApi => "/api/v1/openapi.json",
            Route::Login => "/api/v1/auth/login",
            Route::Register => "/api/v1/register",
            Route::RegisterDrop => "/api/v1/register/drop",
            Route::Semesters => "/api/v1/semesters",
            Route::Semester(_) => "/api/v1/semesters/{id}",
            Route::SemesterSections(_) => "/api/v1/semesters/{id}/sections",
            Route::SectionsAvailable => "/api/v1/sections/available",
            Route::Section(_) => "/api/v1/sections/{id}",
            Route::StudentRegistrations(_) => "/api/v1/students/{id}/registrations",
            Route::StudentWaitlist(_) => "/api/v1/students/{id}/waitlist",
            Route::AdminSemesters => "/api/v1/admin/semesters",
            Route::AdminCourses => "/api/v1/admin/courses",
            Route::AdminSections => "/api/v1/admin/sections",
            Route::AdminSection(_) => "/api/v1/admin/sections/{id}",
            Route::AdminStudents => "/api/v1/admin/students",
        }
    }

    /// The rate limits the route charges; probes and metrics charge none
    /// (orchestrators and Prometheus poll them, from inside the network).
    fn charge(&self) -> Option<limits::Charge> {
        match self {
            Route::Live | Route::Ready | Route::Health | Route::Metrics => None,
            Route::Login => Some(limits::Charge::Login),
            _ => Some(limits::Charge::Api),
        }
    }

    fn allowed(&self) -> (&'static [Method], &'static str) {
        match self {
            Route::AdminSection(_) => (&[Method::PATCH], "PATCH"),
            Route::Login
            | Route::Register
            | Route::RegisterDrop
            | Route::AdminSemesters
            | Route::AdminCourses
            | Route::AdminSections
            | Route::AdminStudents => (&[Method::POST], "POST"),
            _ => (&[Method::GET, Method::HEAD], "GET, HEAD"),
        }
    }
}

impl Route<'static> {
    /// One of every route, with the template's `{id}` as its path parameter.
    /// The unit test `every_route_is_listed_once` fails to compile when a
    /// variant is added without being listed here.
    const ALL: [Route<'static>; 20] = [
        Route::Live,
        Route::Ready,
        Route::Health,
        Route::Metrics,
        Route::OpenApi,
        Route::Login,
        Route::Register,
        Route::RegisterDrop,
        Route::Semesters,
        Route::Semester("{id}"),
        Route::SemesterSections("{id}"),
        Route::SectionsAvailable,
        Route::Section("{id}"),
        Route::StudentRegistrations("{id}"),
        Route::StudentWaitlist("{id}"),
        Route::AdminSemesters,
        Route::AdminCourses,
        Route::AdminSections,
        Route::AdminSection("{id}"),
        Route::AdminStudents,
    ];
}

/// Every route's template with the methods it allows (as in `Allow`): what
/// the OpenAPI document (docs/openapi.json) must describe, no more, no less.
pub fn route_templates() -> Vec<(&'static str, &'static str)> {
    Route::ALL
        .iter()
        .map(|route| (route.template(), route.allowed().1))
        .collect()
}

/// Longest client-supplied request id echoed back; longer ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 64;

fn request_id(parts: &Parts) -> HeaderValue {
    parts
        .headers
        .get("x-request-id")
        .filter(|v| {
            v.len() <= MAX_REQUEST_ID_LEN
                && !v.is_empty()
                && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
        })
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
                .expect("a UUID is a valid header value")
        })
}

/// The service function: never fails, every error is an HTTP answer.
pub async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    let method = parts.method.clone();
    let rid = request_id(&parts);
    // The route borrows the path; the limiter may add to the request's
    // extensions, so the route is resolved from a (reference-counted) copy.
    let uri = parts.uri.clone();
    let route = Route::resolve(uri.path());
    let template = route.map_or("unmatched", |r| r.template());
    let span = tracing::info_span!(
        "request",
        id = rid.to_str().unwrap_or(""),
        method = %method,
        route = template
    );
    metrics::gauge!(HTTP_IN_FLIGHT).increment(1.0);
    let deadline = state.settings.http.request_timeout();
    let result = async {
        match tokio::time::timeout(deadline, dispatch(&state, route, &mut parts, body)).await {
            Ok(result) => result,
            Err(_) => Err(ApiError::Unavailable {
                code: "request_timeout",
                detail: "the request took too long; retry shortly",
                retry_after_secs: 1,
            }),
        }
    }
    .instrument(span.clone())
    .await;
    metrics::gauge!(HTTP_IN_FLIGHT).decrement(1.0);
    let mut response = result.unwrap_or_else(|e| span.in_scope(|| e.into_response()));
    if method == Method::HEAD {
        *response.body_mut() = Body::default();
    }
    let status = response.status();
    let elapsed = started.elapsed().as_secs_f64();
    let labels = [
        ("route", template),
        ("method", method_label(&method)),
        ("status", status_label(status)),
    ];
    metrics::counter!(HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(HTTP_DURATION, &labels).record(elapsed);
    if status.is_server_error() {
        span.in_scope(|| tracing::warn!(status = status.as_u16(), elapsed, "request failed"));
    } else {
        span.in_scope(|| tracing::debug!(status = status.as_u16(), elapsed, "request done"));
    }
    response.headers_mut().insert("x-request-id", rid);
    Ok(response)
}

/// Metrics label for the status code, without allocating.
fn status_label(status: hyper::StatusCode) -> &'static str {
    const CODES: &[(u16, &str)] = &[
        (200, "200"),
        (201, "201"),
        (304, "304"),
        (204, "204"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (405, "405"),
        (408, "408"),
        (409, "409"),
        (413, "413"),
        (414, "414"),
        (415, "415"),
        (422, "422"),
        (429, "429"),
        (431, "431"),
        (500, "500"),
        (503, "503"),
    ];
    CODES
        .iter()
        .find(|(code, _)| *code == status.as_u16())
        .map_or("other", |(_, label)| label)
}

/// Metrics label for the method, bounded to the standard set.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

async fn dispatch(
    state: &AppState,
    route: Option<Route<'_>>,
    req: &mut Parts,
    body: Incoming,
) -> ApiResult {
    let limit = state.settings.http.max_uri_bytes;
    let target = req.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > limit {
        return Err(ApiError::UriTooLong { limit });
    }
    let Some(route) = route else {
        return Err(ApiError::NotFound("no such route".into()));
    };
    let (methods, allow) = route.allowed();
    if !methods.contains(&req.method) {
        return Err(ApiError::MethodNotAllowed { allow });
    }
    if let Some(charge) = route.charge() {
        limits::admit(state, req, charge).await?;
    }
    let req = &*req;
    match route {
        Route::Live => probes::live(),
        Route::Ready => probes::ready(state).await,
        Route::Health => probes::health(state).await,
        Route::Metrics => probes::metrics(state),
        Route::OpenApi => super::openapi::document(req),
        Route::Login => auth::login(state, req, body).await,
        Route::Register => registration::register(state, req, body).await,
        Route::RegisterDrop => registration::drop(state, req, body).await,
        Route::Semesters => catalog::semesters(state, req).await,
        Route::Semester(id) => catalog::semester(state, req, path_id(id)?).await,
        Route::SemesterSections(id) => catalog::semester_sections(state, req, path_id(id)?).await,
        Route::SectionsAvailable => catalog::available(state, req).await,
        Route::Section(id) => catalog::section(state, req, path_id(id)?).await,
        Route::StudentRegistrations(id) => students::registrations(state, req, path_id(id)?).await,
        Route::StudentWaitlist(id) => students::waitlist(state, req, path_id(id)?).await,
        Route::AdminSemesters => admin::create_semester(state, req, body).await,
        Route::AdminCourses => admin::create_course(state, req, body).await,
        Route::AdminSections => admin::create_section(state, req, body).await,
        Route::AdminSection(id) => admin::update_section(state, req, body, path_id(id)?).await,
        Route::AdminStudents => admin::create_students(state, req, body).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_to_their_routes() {
        let id = "0190f1c4-7e2a-7000-8000-000000000000";
        assert_eq!(Route::resolve("/live"), Some(Route::Live));
        assert_eq!(Route::resolve("/api/v1/semesters/"), Some(Route::Semesters));
        assert_eq!(
            Route::resolve(&format!("/api/v1/semesters/{id}/sections")),
            Some(Route::SemesterSections(id))
        );
        assert_eq!(
            Route::resolve("/api/v1/sections/available"),
            Some(Route::SectionsAvailable)
        );
        assert_eq!(
            Route::resolve("/api/v1/sections/x"),
            Some(Route::Section("x"))
        );
        assert_eq!(Route::resolve("/"), None);
        assert_eq!(Route::resolve("/api/v1"), None);
        assert_eq!(Route::resolve("/api/v1/semesters/a/b/c/d"), None);
        assert_eq!(Route::resolve("/live/x"), None);
        assert_eq!(Route::resolve("//live"), None);
    }

    #[test]
    fn every_route_is_listed_once() {
        // No wildcard: a new variant must be given a place in `Route::ALL`.
        fn index(route: Route<'_>) -> usize {
            match route {
                Route::Live => 0,
                Route::Ready => 1,
                Route::Health => 2,
                Route::Metrics => 3,
                Route::OpenApi => 4,
                Route::Login => 5,
                Route::Register => 6,
                Route::RegisterDrop => 7,
                Route::Semesters => 8,
                Route::Semester(_) => 9,
                Route::SemesterSections(_) => 10,
                Route::SectionsAvailable => 11,
                Route::Section(_) => 12,
                Route::StudentRegistrations(_) => 13,
                Route::StudentWaitlist(_) => 14,
                Route::AdminSemesters => 15,
                Route::AdminCourses => 16,
                Route::AdminSections => 17,
                Route::AdminSection(_) => 18,
                Route::AdminStudents => 19,
            }
        }
        for (i, route) in Route::ALL.iter().enumerate() {
            assert_eq!(index(*route), i, "{route:?} is out of place in Route::ALL");
        }
    }

    #[test]
    fn every_template_resolves_back_to_its_route() {
        for route in Route::ALL {
            assert_eq!(Route::resolve(route.template()), Some(route));
        }
        let templates: Vec<_> = route_templates().into_iter().map(|(t, _)| t).collect();
        let unique: std::collections::BTreeSet<_> = templates.iter().collect();
        assert_eq!(unique.len(), templates.len(), "{templates:?}");
        assert!(route_templates().contains(&("/api/v1/openapi.json", "GET, HEAD")));
        assert!(route_templates().contains(&("/api/v1/admin/sections/{id}", "PATCH")));
    }

    proptest::proptest! {
        /// Any path resolves to a route or to nothing, never a panic, and a
        /// resolved route's template never carries the caller's text.
        #[test]
        fn any_path_resolves_without_panicking(path in "(/[a-z0-9%._~-]{0,12}){0,8}/?") {
            if let Some(route) = Route::resolve(&path) {
                proptest::prop_assert!(route.template().starts_with('/'));
                proptest::prop_assert!(!route.allowed().0.is_empty());
            }
        }
    }
}
