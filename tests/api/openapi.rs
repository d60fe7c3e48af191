//! The OpenAPI document (docs/openapi.json) against the implementation: it is
//! served as it is in the repository, it is OpenAPI 3.1, and it describes
//! exactly the routes and methods the router has, so a route cannot be added
//! or changed without documenting it. scripts/schemathesis.sh checks the
//! answers themselves against the document.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::{header, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{assert_problem, spawn_app};

const DOCUMENT: &str = include_str!("../../docs/openapi.json");

const HTTP_METHODS: [&str; 8] = [
    "get", "head", "post", "put", "patch", "delete", "options", "trace",
];

fn document() -> Value {
    serde_json::from_str(DOCUMENT).expect("docs/openapi.json is JSON")
}

#[tokio::test]
async fn the_served_document_is_the_repository_file_and_can_be_revalidated() {
    let app = spawn_app().await;
    let url = app.url("/api/v1/openapi.json");

    let response = app.get("/api/v1/openapi.json", None).await;

    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    assert!(headers.contains_key(header::CACHE_CONTROL), "{headers:?}");
    let etag = headers
        .get(header::ETAG)
        .expect("an ETag")
        .to_str()
        .unwrap()
        .to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    assert!(response.text().await.unwrap() == DOCUMENT);

    let revalidated = app
        .http
        .get(&url)
        .header(header::IF_NONE_MATCH, format!("W/{etag}"))
        .send()
        .await
        .unwrap();
    assert_eq!(revalidated.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(revalidated.headers()[header::ETAG], etag.as_str());
    assert!(revalidated.bytes().await.unwrap().is_empty());

    let stale = app
        .http
        .get(&url)
        .header(header::IF_NONE_MATCH, "\"an-older-version\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::OK);

    let head = app.http.head(&url).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()[header::ETAG], etag.as_str());
    assert!(head.bytes().await.unwrap().is_empty());
}

#[test]
fn the_document_is_openapi_3_1_and_describes_exactly_the_routers_routes() {
    let doc = document();
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1."), "openapi = {version:?}");

    let documented: BTreeMap<String, BTreeSet<String>> = doc["paths"]
        .as_object()
        .expect("paths is an object")
        .iter()
        .map(|(path, item)| {
            let methods = item
                .as_object()
                .expect("a path item is an object")
                .keys()
                .filter(|k| HTTP_METHODS.contains(&k.as_str()))
                .map(|k| k.to_uppercase())
                .collect();
            (path.clone(), methods)
        })
        .collect();
    let routed: BTreeMap<String, BTreeSet<String>> = registrar::http::router::route_templates()
        .into_iter()
        .map(|(template, allow)| {
            let methods = allow.split(", ").map(str::to_string).collect();
            (template.to_string(), methods)
        })
        .collect();

    assert_eq!(
        documented, routed,
        "docs/openapi.json and the router disagree (left: documented, right: routed)"
    );
}

/// Every `$ref` points at something, and every operation says what its
/// success looks like: a broken reference would make tools skip or reject
/// the document.
#[test]
fn every_reference_resolves_and_every_operation_has_a_success_response() {
    let doc = document();
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for reference in refs {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{reference} is not a local reference"));
        assert!(
            doc.pointer(pointer).is_some(),
            "{reference} does not resolve"
        );
    }
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{method} {path} documents no success"
            );
            assert!(
                operation["operationId"].is_string(),
                "{method} {path} has no operationId"
            );
        }
    }
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get("$ref") {
                out.push(reference.clone());
            }
            map.values().for_each(|v| collect_refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// Text with a NUL and dates before 4713 BC are valid JSON that PostgreSQL
/// refuses; they were answered 500 until the handlers refused them first.
/// Each now gets the 4xx the document lists.
#[tokio::test]
async fn values_postgres_cannot_store_get_the_documented_4xx() {
    let app = spawn_app().await;
    let seeded = app.seed(1, 5).await;
    let admin = Some(seeded.admin_token.as_str());

    let login = app.login("S000\u{0}0001", "whatever-password").await;
    assert_problem(login, StatusCode::UNAUTHORIZED, "invalid_credentials").await;

    let available = app
        .get("/api/v1/sections/available?course_code=CS%00101", admin)
        .await;
    assert_problem(available, StatusCode::BAD_REQUEST, "invalid_query").await;

    let student = json!([{
        "student_number": "N0001",
        "name": "Nul Email",
        "email": "nul\u{0}@example.com",
        "password": "long-enough-password",
    }]);
    let created = app.post("/api/v1/admin/students", admin, &student).await;
    assert_problem(
        created,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;

    let semester = json!({
        "name": "Ancient",
        "start_date": "-5000-01-01",
        "end_date": "2030-01-31",
        "registration_start": "2029-12-01T00:00:00Z",
        "registration_end": "2029-12-31T00:00:00Z",
    });
    let created = app.post("/api/v1/admin/semesters", admin, &semester).await;
    assert_problem(
        created,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;

    // The same bodies with storable values go through: the refusals above
    // are about the values, not the shape.
    let student = json!([{
        "student_number": "N0001",
        "name": "Plain Email",
        "email": "plain@example.com",
        "password": "long-enough-password",
    }]);
    let created = app.post("/api/v1/admin/students", admin, &student).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let semester = json!({
        "name": "Modern",
        "start_date": "2030-01-01",
        "end_date": "2030-01-31",
        "registration_start": "2029-12-01T00:00:00Z",
        "registration_end": "2029-12-31T00:00:00Z",
    });
    let created = app.post("/api/v1/admin/semesters", admin, &semester).await;
    assert_eq!(created.status(), StatusCode::CREATED);
}

/// `/docs` renders the served document with the vendored Redoc: the page
/// names the document and the script, and both are this server's.
#[tokio::test]
async fn the_api_reference_page_and_its_renderer_are_served_without_a_cdn() {
    let app = crate::helpers::spawn_app().await;
    let page = app.get("/docs", None).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(
        page.headers()[header::CONTENT_TYPE],
        "text/html; charset=utf-8"
    );
    let policy = page.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_string();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    let html = page.text().await.unwrap();
    assert!(
        html.contains(r#"spec-url="/api/v1/openapi.json""#),
        "{html}"
    );
    assert!(
        html.contains(r#"<script src="/docs/redoc.standalone.js">"#),
        "{html}"
    );
    assert!(!html.contains("https://"), "nothing from elsewhere: {html}");

    let script = app.get("/docs/redoc.standalone.js", None).await;
    assert_eq!(script.status(), StatusCode::OK);
    assert!(script.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    let etag = script.headers()[header::ETAG].clone();
    let body = script.bytes().await.unwrap();
    let vendored = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/redoc/redoc.standalone.js"),
    )
    .unwrap();
    assert_eq!(body.len(), vendored.len());
    let again = app
        .http
        .get(app.url("/docs/redoc.standalone.js"))
        .header(header::IF_NONE_MATCH, etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
}

/// The page renders in a real browser under its own content security
/// policy: headless Chromium (Debian package chromium; `bash
/// scripts/services.sh --with-binaries` installs it) runs Redoc, which
/// fetches the document and lays out every operation.
#[tokio::test]
async fn the_api_reference_renders_in_a_headless_browser() {
    let app = crate::helpers::spawn_app().await;
    let profile = tempfile_dir("docs-browser");
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(90),
        tokio::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--virtual-time-budget=20000",
                &format!("--user-data-dir={}", profile.display()),
                "--dump-dom",
                &app.url("/docs"),
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium finished within 90 s")
    .expect("chromium runs (Debian package chromium)");
    let _ = std::fs::remove_dir_all(&profile);
    let dom = String::from_utf8_lossy(&output.stdout);
    // Summaries of operations, as Redoc lays them out from the document.
    for summary in [
        "Accounts, paged and searched",
        "Liveness: the process answers",
    ] {
        assert!(
            dom.contains(summary),
            "{summary:?} not rendered; chromium said: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
