//! Routing: the route table (path → route, method → handler, the rate limit
//! it charges), 405 with `Allow`, request deadline, request id and span, and
//! the request metrics.

use std::{
    convert::Infallible,
    sync::{Arc, LazyLock},
    time::Instant,
};

use hyper::{body::Incoming, header::HeaderValue, http::request::Parts, Method, Request, Response};
use tracing::Instrument;

use super::{
    accounts, admin, auth,
    body::BodyWait,
    catalog, docs,
    limits::{self, Charge},
    live, openapi, operations, page, path_id, probes, registration, rules, students, ApiError,
    ApiResult, Body,
};
use crate::{
    metrics::{HTTP_DURATION, HTTP_IN_FLIGHT, HTTP_REQUESTS},
    state::AppState,
};

/// Declares the route table from one line per method of a route:
/// `Name METHOD "template" charge => handler call`.
///
/// The template is in matchit's `{id}` syntax, which is also OpenAPI's, so
/// the one string is the matcher's pattern, the metrics' `route` label and
/// the key of docs/openapi.json's `paths`. The charge is the rate-limit class
/// ([`Charge`]'s variant, or `Free` for none). The head `|state, req, body,
/// id|` names what the handler calls may use; `id` is the `{id}` segment.
///
/// A macro rather than a list of function pointers: every handler's future
/// has its own type, and one generated `match` over them dispatches without
/// boxing a future per request.
macro_rules! routes {
    (@charge Free) => { None };
    (@charge $class:ident) => { Some(Charge::$class) };
    (
        |$state:ident, $req:ident, $body:ident, $id:ident|
        $( $name:ident $method:ident $template:literal $charge:ident => $call:expr, )+
    ) => {
        /// A line of the table: which handler [`call`] runs.
        #[derive(Clone, Copy)]
        enum Handler { $( $name, )+ }

        /// The table's lines, in declaration order.
        static ENDPOINTS: &[Endpoint] = &[$(
            Endpoint {
                handler: Handler::$name,
                method: Method::$method,
                template: $template,
                charge: routes!(@charge $charge),
            },
        )+];

        /// Runs the handler of a resolved, allowed and charged request.
        async fn call(
            handler: Handler,
            $state: &AppState,
            $req: &Parts,
            $body: Incoming,
            $id: &str,
        ) -> ApiResult {
            match handler { $( Handler::$name => $call, )+ }
        }
    };
}

// Probes and metrics are free: orchestrators and Prometheus poll them, from
// inside the network (which listener answers which route: `audience`). A GET
// also answers HEAD.
routes! {
    |state, req, body, id|
    Live                 GET   "/live"                               Free  => probes::live(),
    Ready                GET   "/ready"                              Free  => probes::ready(state).await,
    Health               GET   "/health"                             Free  => probes::health(state).await,
    Metrics              GET   "/metrics"                            Free  => probes::metrics(state).await,
    OpenApi              GET   "/api/v1/openapi.json"                Api   => openapi::document(req),
    Docs                 GET   "/docs"                               Api   => docs::page(req),
    DocsRedoc            GET   "/docs/redoc.standalone.js"           Api   => docs::redoc(req),
    App                  GET   "/app"                                Api   => page::page(req),
    AppScript            GET   "/app/app.js"                         Api   => page::script(req),
    AppStyle             GET   "/app/app.css"                        Api   => page::style(req),
    Login                POST  "/api/v1/auth/login"                  Login => auth::login(state, req, body).await,
    Register             POST  "/api/v1/register"                    Api   => registration::register(state, req, body).await,
    RegisterDrop         POST  "/api/v1/register/drop"               Api   => registration::drop(state, req, body).await,
    Semesters            GET   "/api/v1/semesters"                   Api   => catalog::semesters(state, req).await,
    Semester             GET   "/api/v1/semesters/{id}"              Api   => catalog::semester(state, req, path_id(id)?).await,
    SemesterSections     GET   "/api/v1/semesters/{id}/sections"     Api   => catalog::semester_sections(state, req, path_id(id)?).await,
    SectionsAvailable    GET   "/api/v1/sections/available"          Api   => catalog::available(state, req).await,
    Section              GET   "/api/v1/sections/{id}"               Api   => catalog::section(state, req, path_id(id)?).await,
    SectionEvents        GET   "/api/v1/sections/{id}/events"        Api   => live::section(state, req, path_id(id)?).await,
    Me                   GET   "/api/v1/me"                          Api   => students::me(state, req).await,
    StudentRegistrations GET   "/api/v1/students/{id}/registrations" Api   => students::registrations(state, req, students::student_of(state, req, id)?).await,
    StudentWaitlist      GET   "/api/v1/students/{id}/waitlist"      Api   => students::waitlist(state, req, students::student_of(state, req, id)?).await,
    StudentEvents        GET   "/api/v1/students/{id}/events"        Api   => live::student(state, req, students::student_of(state, req, id)?).await,
    AdminSemesters       POST  "/api/v1/admin/semesters"             Api   => admin::create_semester(state, req, body).await,
    AdminCourses         POST  "/api/v1/admin/courses"               Api   => admin::create_course(state, req, body).await,
    AdminSections        POST  "/api/v1/admin/sections"              Api   => admin::create_section(state, req, body).await,
    AdminSection         PATCH "/api/v1/admin/sections/{id}"         Api   => admin::update_section(state, req, body, path_id(id)?).await,
    AdminStudents        POST  "/api/v1/admin/students"              Api   => admin::create_students(state, req, body).await,
    AdminStudent         GET   "/api/v1/admin/students/{id}"         Api   => accounts::get(state, req, path_id(id)?).await,
    AdminStudentChange   PATCH "/api/v1/admin/students/{id}"         Api   => accounts::patch(state, req, body, path_id(id)?).await,
    AdminStudentDelete   DELETE "/api/v1/admin/students/{id}"        Api   => accounts::delete(state, req, path_id(id)?).await,
    AdminStudentRevoke   POST  "/api/v1/admin/students/{id}/revoke-tokens" Api => accounts::revoke_tokens(state, req, path_id(id)?).await,
    AdminSemesterRules   GET   "/api/v1/admin/semesters/{id}/rules"  Api   => rules::semester_rules(state, req, path_id(id)?).await,
    AdminSemesterRulesSet PUT  "/api/v1/admin/semesters/{id}/rules"  Api   => rules::set_semester_rules(state, req, body, path_id(id)?).await,
    AdminPriorityAssign  POST  "/api/v1/admin/semesters/{id}/priority-groups/assign" Api => rules::assign_group(state, req, body, path_id(id)?).await,
    AdminCourseRules     GET   "/api/v1/admin/courses/{id}/rules"    Api   => rules::course_rules(state, req, path_id(id)?).await,
    AdminCourseRulesSet  PUT   "/api/v1/admin/courses/{id}/rules"    Api   => rules::set_course_rules(state, req, body, path_id(id)?).await,
    AdminSectionMeetings GET   "/api/v1/admin/sections/{id}/meetings" Api  => rules::section_meetings(state, req, path_id(id)?).await,
    AdminSectionMeetingsSet PUT "/api/v1/admin/sections/{id}/meetings" Api => rules::set_section_meetings(state, req, body, path_id(id)?).await,
    AdminCompleted       POST  "/api/v1/admin/completed-courses"     Api   => rules::import_completed(state, req, body).await,
    AdminCreditLimit     PUT   "/api/v1/admin/students/{id}/credit-limit" Api => rules::set_credit_limit(state, req, body, path_id(id)?).await,
    AdminPermits         GET   "/api/v1/admin/students/{id}/permits" Api   => rules::permits(state, req, path_id(id)?).await,
    AdminPermitGrant     POST  "/api/v1/admin/students/{id}/permits" Api   => rules::grant_permit(state, req, body, path_id(id)?).await,
    AdminPermitRevoke    POST  "/api/v1/admin/students/{id}/permits/revoke" Api => rules::revoke_permit(state, req, body, path_id(id)?).await,
    AdminStudentList     GET   "/api/v1/admin/students"              Api   => operations::students(state, req).await,
    AdminSectionRoster   GET   "/api/v1/admin/sections/{id}/roster"  Api   => operations::roster(state, req, path_id(id)?).await,
    AdminSectionWaitlist GET   "/api/v1/admin/sections/{id}/waitlist" Api  => operations::waitlist(state, req, path_id(id)?).await,
    AdminSectionReconcile GET  "/api/v1/admin/sections/{id}/reconcile" Api => operations::reconcile(state, req, path_id(id)?).await,
    AdminDeadLetters     GET   "/api/v1/admin/dead-letters"          Api   => operations::dead_letters(state, req).await,
    AdminDeadLetterRetry POST  "/api/v1/admin/dead-letters/{id}/retry" Api => operations::retry(state, req, operations::dead_letter_id(id)?).await,
    AdminDeadLetterDismiss POST "/api/v1/admin/dead-letters/{id}/dismiss" Api => operations::dismiss(state, req, body, operations::dead_letter_id(id)?).await,
    AdminPersistence     GET   "/api/v1/admin/persistence"           Api   => operations::persistence(state, req).await,
}

/// Who a route is for, which decides the listeners that answer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Audience {
    /// The API's clients: the public listener.
    Clients,
    /// Orchestrators' cheap probes (`/live`, `/ready`): every listener.
    Probes,
    /// Operators (`/metrics`, the detailed `/health`): unauthenticated and
    /// costly, so the metrics listener alone when there is one.
    Operators,
}

/// The audience of a handler. A route not named here is the clients'.
fn audience(handler: Handler) -> Audience {
    match handler {
        Handler::Live | Handler::Ready => Audience::Probes,
        Handler::Health | Handler::Metrics => Audience::Operators,
        _ => Audience::Clients,
    }
}

/// What a listener answers: a route of another audience is not found there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serves {
    /// Every route: the public listener when `http.metrics_port` is unset.
    Everything,
    /// The API and the probes: the public listener beside a metrics listener.
    Api,
    /// `/metrics`, `/health` and the probes: the metrics listener.
    Metrics,
}

impl Serves {
    fn reaches(self, audience: Audience) -> bool {
        match self {
            Serves::Everything => true,
            Serves::Api => audience != Audience::Operators,
            Serves::Metrics => audience != Audience::Clients,
        }
    }
}

/// One method of one route, as declared in the table.
struct Endpoint {
    handler: Handler,
    method: Method,
    template: &'static str,
    /// The rate limits charged once the method is allowed; `None` for free.
    charge: Option<Charge>,
}

/// A template with every method it answers.
struct Route {
    template: &'static str,
    /// The same for all its methods.
    audience: Audience,
    endpoints: Vec<&'static Endpoint>,
    /// The `Allow` of its 405s: its methods in declaration order, HEAD after
    /// GET (GET's handler answers it).
    allow: String,
}

impl Route {
    /// The endpoint answering `method`; HEAD is answered by GET's handler
    /// (`handle` drops the body) unless the route declares HEAD itself.
    fn endpoint(&self, method: &Method) -> Option<&'static Endpoint> {
        let declared =
            |method: &Method| self.endpoints.iter().copied().find(|e| e.method == *method);
        match declared(method) {
            None if *method == Method::HEAD => declared(&Method::GET),
            found => found,
        }
    }
}

/// `Allow`'s value for a route's endpoints.
fn allow(endpoints: &[&Endpoint]) -> String {
    let head_declared = endpoints.iter().any(|e| e.method == Method::HEAD);
    let mut methods = Vec::with_capacity(endpoints.len() + 1);
    for endpoint in endpoints {
        methods.push(endpoint.method.as_str());
        if endpoint.method == Method::GET && !head_declared {
            methods.push(Method::HEAD.as_str());
        }
    }
    methods.join(", ")
}

/// The table grouped by template, and the matcher over the templates; built
/// once, on the first request (or the first test that routes).
struct Table {
    routes: Vec<Route>,
    /// Template → index into `routes`.
    matcher: matchit::Router<usize>,
}

static TABLE: LazyLock<Table> = LazyLock::new(|| {
    let mut routes: Vec<Route> = Vec::new();
    for endpoint in ENDPOINTS {
        match routes.iter_mut().find(|r| r.template == endpoint.template) {
            Some(route) => {
                assert!(
                    route.endpoints.iter().all(|e| e.method != endpoint.method),
                    "{} {} is declared twice",
                    endpoint.method,
                    endpoint.template
                );
                assert!(
                    route.audience == audience(endpoint.handler),
                    "{}: every method of a route has the same audience",
                    endpoint.template
                );
                route.endpoints.push(endpoint);
            }
            None => routes.push(Route {
                template: endpoint.template,
                audience: audience(endpoint.handler),
                endpoints: vec![endpoint],
                allow: String::new(),
            }),
        }
    }
    let mut matcher = matchit::Router::new();
    for (index, route) in routes.iter_mut().enumerate() {
        route.allow = allow(&route.endpoints);
        if let Err(e) = matcher.insert(route.template, index) {
            panic!("{} cannot be routed: {e}", route.template);
        }
        // Handlers are given the `{id}` segment only; a parameter of another
        // name would reach them as an empty id.
        let params = matcher.at(route.template).map(|m| m.params.len());
        let ids = matcher
            .at(route.template)
            .map(|m| m.params.get("id").is_some());
        assert!(
            params.is_ok() && params == ids.map(usize::from),
            "{}: `{{id}}` is the only path parameter handlers are given",
            route.template
        );
    }
    Table { routes, matcher }
});

/// A path's route, with its `{id}` segment when the template has one.
#[derive(Clone, Copy)]
struct Matched<'p> {
    route: &'static Route,
    id: Option<&'p str>,
}

/// The route of a path. A trailing slash is ignored ("/x/" is "/x"); the
/// root and the empty path are no route. matchit borrows the segment from
/// the path; it allocates only where a segment may be static or a parameter
/// (`/sections/available` beside `/sections/{id}`), a short list to backtrack.
fn resolve(path: &str) -> Option<Matched<'_>> {
    let path = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    let found = TABLE.matcher.at(path).ok()?;
    Some(Matched {
        route: &TABLE.routes[*found.value],
        id: found.params.get("id"),
    })
}

/// Every route's template with the methods it allows (as in `Allow`): what
/// the OpenAPI document (docs/openapi.json) must describe, no more, no less.
pub fn route_templates() -> Vec<(&'static str, &'static str)> {
    TABLE
        .routes
        .iter()
        .map(|route| (route.template, route.allow.as_str()))
        .collect()
}

/// Counts a request in [`HTTP_IN_FLIGHT`] while it is alive. hyper drops a
/// request's future when its client disconnects; a decrement written after
/// the handler's `.await` would then never run, and the gauge would creep up
/// with every abandoned request. `Drop` runs either way.
struct InFlight(metrics::Gauge);

impl InFlight {
    fn enter() -> Self {
        let gauge = metrics::gauge!(HTTP_IN_FLIGHT);
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
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

/// The trace and parent ids of a W3C `traceparent` header
/// (`00-<32 hex>-<16 hex>-<2 hex>`) and its sampled flag, when it is one
/// (all-zero ids are invalid, and so is version ff).
fn traceparent(parts: &Parts) -> Option<(&str, &str, bool)> {
    let value = parts.headers.get("traceparent")?.to_str().ok()?;
    let mut fields = value.split('-');
    let (version, trace, parent, flags) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let zero = |s: &str| s.bytes().all(|b| b == b'0');
    let valid = hex(version, 2)
        && version != "ff"
        && (version != "00" || fields.next().is_none())
        && hex(trace, 32)
        && !zero(trace)
        && hex(parent, 16)
        && !zero(parent)
        && hex(flags, 2);
    let sampled = u8::from_str_radix(flags, 16).is_ok_and(|f| f & 1 == 1);
    valid.then_some((trace, parent, sampled))
}

/// Makes `span` continue the caller's trace when traces are exported
/// (`telemetry`): its parent is the caller's span, and the caller's
/// sampling decision stands. Without the exporter this does nothing.
fn continue_trace(span: &tracing::Span, trace: &str, parent: &str, sampled: bool) {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let (Ok(trace), Ok(parent)) = (TraceId::from_hex(trace), SpanId::from_hex(parent)) else {
        return;
    };
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let caller = SpanContext::new(trace, parent, flags, true, TraceState::default());
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(caller));
}

/// The service function: never fails, every error is an HTTP answer. A
/// route this listener does not serve is answered as no route at all.
pub async fn handle(
    state: Arc<AppState>,
    serves: Serves,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    let method = parts.method.clone();
    let rid = request_id(&parts);
    // The route borrows the path; the limiter may add to the request's
    // extensions, so the route is resolved from a (reference-counted) copy.
    let uri = parts.uri.clone();
    let matched = resolve(uri.path()).filter(|m| serves.reaches(m.route.audience));
    let template = matched.map_or("unmatched", |m| m.route.template);
    let exporting = !state.settings.log.otlp_endpoint.is_empty();
    let span = tracing::info_span!(
        "request",
        id = rid.to_str().unwrap_or(""),
        method = %method,
        route = template,
        student = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        parent_id = tracing::field::Empty,
    );
    if let Some((trace, parent, sampled)) = traceparent(&parts) {
        span.record("trace_id", tracing::field::display(trace));
        span.record("parent_id", tracing::field::display(parent));
        if exporting {
            continue_trace(&span, trace, parent, sampled);
        }
    }
    let in_flight = InFlight::enter();
    let deadline = state.settings.http.request_timeout();
    let body_wait = BodyWait::default();
    parts.extensions.insert(body_wait.clone());
    let result = async {
        match tokio::time::timeout(deadline, dispatch(&state, matched, &mut parts, body)).await {
            Ok(result) => result,
            // The client did not send the body it announced in time.
            Err(_) if body_wait.waiting() => Err(ApiError::BodyTimeout),
            Err(_) => Err(ApiError::Unavailable {
                code: "request_timeout",
                detail: "the request took too long; retry shortly",
                retry_after_secs: 1,
            }),
        }
    }
    .instrument(span.clone())
    .await;
    drop(in_flight);
    if let Some(principal) = parts.extensions.get::<crate::auth::Principal>() {
        span.record("student", tracing::field::display(principal.student_id));
    }
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
    let latency_ms = (elapsed * 1e6).round() / 1e3;
    if exporting {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        span.set_attribute("http.response.status_code", i64::from(status.as_u16()));
    }
    if status.is_server_error() {
        span.in_scope(|| tracing::warn!(status = status.as_u16(), latency_ms, "request failed"));
    } else if state.settings.log.requests
        // Probes and scrapes come every few seconds from machines and say
        // nothing about users: DEBUG, so they cost /live nothing either.
        && matched.is_none_or(|m| m.route.audience == Audience::Clients)
    {
        span.in_scope(|| tracing::info!(status = status.as_u16(), latency_ms, "request"));
    } else {
        span.in_scope(|| tracing::debug!(status = status.as_u16(), latency_ms, "request"));
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
    matched: Option<Matched<'_>>,
    req: &mut Parts,
    body: Incoming,
) -> ApiResult {
    let limit = state.settings.http.max_uri_bytes;
    let target = req.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > limit {
        return Err(ApiError::UriTooLong { limit });
    }
    // hyper parses more lines than this (`server::parser_max_headers`), so
    // that the answer is ours and carries a problem body.
    let limit = state.settings.http.max_headers;
    if req.headers.len() > limit {
        return Err(ApiError::TooManyHeaders { limit });
    }
    let Some(Matched { route, id }) = matched else {
        return Err(ApiError::NotFound("no such route".into()));
    };
    let Some(endpoint) = route.endpoint(&req.method) else {
        return Err(ApiError::MethodNotAllowed {
            allow: &route.allow,
        });
    };
    if let Some(charge) = endpoint.charge {
        limits::admit(state, req, charge).await?;
    }
    call(endpoint.handler, state, req, body, id.unwrap_or_default()).await
}

#[cfg(test)]
mod tests {
    use std::{
        future::Future,
        task::{Context, Poll, Waker},
    };

    #[test]
    fn a_w3c_traceparent_is_read_and_anything_else_ignored() {
        let parts = |value: &str| {
            Request::builder()
                .header("traceparent", value)
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        let good = parts("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(
            super::traceparent(&good),
            Some(("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", true))
        );
        let unsampled = parts("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert_eq!(
            super::traceparent(&unsampled).map(|t| t.2),
            Some(false),
            "the caller's sampling decision is read"
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(super::traceparent(&parts(bad)), None, "{bad}");
        }
        let later = parts("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future");
        assert!(
            super::traceparent(&later).is_some(),
            "a later version may add fields"
        );
    }

    use super::*;

    /// What a path resolves to: its route's template and its `{id}`.
    fn resolved(path: &str) -> Option<(&'static str, Option<&str>)> {
        resolve(path).map(|m| (m.route.template, m.id))
    }

    #[test]
    fn paths_resolve_to_their_routes() {
        let id = "0190f1c4-7e2a-7000-8000-000000000000";
        assert_eq!(resolved("/live"), Some(("/live", None)));
        assert_eq!(
            resolved("/api/v1/semesters/"),
            Some(("/api/v1/semesters", None))
        );
        assert_eq!(
            resolved(&format!("/api/v1/semesters/{id}/sections")),
            Some(("/api/v1/semesters/{id}/sections", Some(id)))
        );
        assert_eq!(
            resolved("/api/v1/sections/available"),
            Some(("/api/v1/sections/available", None))
        );
        assert_eq!(
            resolved("/api/v1/sections/x"),
            Some(("/api/v1/sections/{id}", Some("x")))
        );
        assert_eq!(resolved("/"), None);
        assert_eq!(resolved(""), None);
        assert_eq!(resolved("/api/v1"), None);
        assert_eq!(resolved("/api/v1/semesters/a/b/c/d"), None);
        assert_eq!(resolved("/live/x"), None);
        assert_eq!(resolved("//live"), None);
    }

    #[test]
    fn every_declared_endpoint_is_reached_by_its_template_and_method() {
        // The table is the only list of routes: what the matcher and the
        // method check reach is exactly what was declared.
        for declared in ENDPOINTS {
            let route = resolve(declared.template)
                .expect("a template resolves")
                .route;
            let reached = route
                .endpoint(&declared.method)
                .expect("its method is allowed");
            assert!(std::ptr::eq(reached, declared), "{}", declared.template);
        }
        let endpoints: usize = TABLE.routes.iter().map(|r| r.endpoints.len()).sum();
        assert_eq!(endpoints, ENDPOINTS.len());
    }

    #[test]
    fn head_is_answered_by_get_and_allowed_with_it() {
        let get = resolve("/api/v1/semesters").unwrap().route;
        assert!(std::ptr::eq(
            get.endpoint(&Method::HEAD).unwrap(),
            get.endpoint(&Method::GET).unwrap()
        ));
        assert_eq!(get.allow, "GET, HEAD");
        let post = resolve("/api/v1/register").unwrap().route;
        assert!(post.endpoint(&Method::HEAD).is_none());
        assert!(post.endpoint(&Method::GET).is_none());
        assert_eq!(post.allow, "POST");
    }

    #[test]
    fn every_template_resolves_back_to_its_route() {
        for route in &TABLE.routes {
            let matched = resolve(route.template).expect("a template resolves");
            assert!(std::ptr::eq(matched.route, route), "{}", route.template);
            let id = route.template.contains("{id}").then_some("{id}");
            assert_eq!(matched.id, id, "{}", route.template);
        }
        let templates: Vec<_> = route_templates().into_iter().map(|(t, _)| t).collect();
        let unique: std::collections::BTreeSet<_> = templates.iter().collect();
        assert_eq!(unique.len(), templates.len(), "{templates:?}");
        assert!(route_templates().contains(&("/api/v1/openapi.json", "GET, HEAD")));
        assert!(route_templates().contains(&("/api/v1/admin/sections/{id}", "PATCH")));
    }

    #[test]
    fn operators_routes_leave_the_public_listener_only_when_a_metrics_listener_serves_them() {
        let audience_of = |path: &str| resolve(path).unwrap().route.audience;
        for path in ["/metrics", "/health"] {
            assert!(Serves::Everything.reaches(audience_of(path)), "{path}");
            assert!(!Serves::Api.reaches(audience_of(path)), "{path}");
            assert!(Serves::Metrics.reaches(audience_of(path)), "{path}");
        }
        for path in ["/live", "/ready"] {
            for serves in [Serves::Everything, Serves::Api, Serves::Metrics] {
                assert!(serves.reaches(audience_of(path)), "{path} {serves:?}");
            }
        }
        for path in ["/api/v1/register", "/api/v1/openapi.json"] {
            assert!(Serves::Api.reaches(audience_of(path)), "{path}");
            assert!(!Serves::Metrics.reaches(audience_of(path)), "{path}");
        }
    }

    /// The gauge's value as the recorder would export it.
    fn in_flight(handle: &metrics_exporter_prometheus::PrometheusHandle) -> Option<f64> {
        handle.render().lines().find_map(|line| {
            let value = line.strip_prefix(HTTP_IN_FLIGHT)?.strip_prefix(' ')?;
            value.parse().ok()
        })
    }

    #[test]
    fn a_request_dropped_before_it_completes_leaves_the_in_flight_gauge() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            // A request whose handler never finishes, as when the client
            // disconnects mid-request and hyper drops the future.
            let mut request = Box::pin(async {
                let _in_flight = InFlight::enter();
                std::future::pending::<()>().await;
            });
            let polled = request
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()));
            assert_eq!(polled, Poll::Pending);
            assert_eq!(in_flight(&handle), Some(1.0));
            drop(request);
        });
        assert_eq!(in_flight(&handle), Some(0.0));
    }

    proptest::proptest! {
        /// Any path resolves to a route or to nothing, never a panic, and a
        /// resolved route's template never carries the caller's text.
        #[test]
        fn any_path_resolves_without_panicking(path in "(/[a-z0-9%._~-]{0,12}){0,8}/?") {
            if let Some(matched) = resolve(&path) {
                proptest::prop_assert!(matched.route.template.starts_with('/'));
                proptest::prop_assert!(!matched.route.endpoints.is_empty());
            }
        }
    }
}
