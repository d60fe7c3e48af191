//! Hostile and malformed input: clear 4xx problem+json, nothing changed.

use std::time::Duration;

use reqwest::StatusCode;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::{assert_problem, spawn_app, spawn_app_with};

#[tokio::test]
async fn malformed_json_is_400() {
    let app = spawn_app().await;

    let response = app
        .post_raw(
            "/api/v1/auth/login",
            None,
            "application/json",
            r#"{"student_number": "#,
        )
        .await;

    assert_problem(response, StatusCode::BAD_REQUEST, "malformed_json").await;
}

#[tokio::test]
async fn an_unknown_field_is_400() {
    let app = spawn_app().await;

    let response = app
        .post_raw(
            "/api/v1/auth/login",
            None,
            "application/json",
            r#"{"student_number": "S1", "password": "x", "role": "admin"}"#,
        )
        .await;

    assert_problem(response, StatusCode::BAD_REQUEST, "unknown_field").await;
}

#[tokio::test]
async fn a_bad_uuid_in_the_path_or_body_is_400() {
    let app = spawn_app().await;
    let seeded = app.seed(0, 10).await;
    let admin = Some(seeded.admin_token.as_str());

    let in_path = app.get("/api/v1/sections/not-a-uuid", admin).await;
    let in_body = app
        .post(
            "/api/v1/admin/sections",
            admin,
            &serde_json::json!({
                "course_id": "nope", "semester_id": seeded.report.semester_id,
                "section_number": "1", "total_seats": 1
            }),
        )
        .await;

    assert_problem(in_path, StatusCode::BAD_REQUEST, "invalid_id").await;
    assert_problem(in_body, StatusCode::BAD_REQUEST, "invalid_body").await;
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415() {
    let app = spawn_app().await;

    let response = app
        .post_raw("/api/v1/auth/login", None, "text/plain", "hello")
        .await;

    assert_problem(
        response,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405_with_allow() {
    let app = spawn_app().await;

    let unknown = app.get("/api/v1/nothing-here", None).await;
    let wrong_method = app.get("/api/v1/auth/login", None).await;

    assert_problem(unknown, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(wrong_method.headers()["allow"], "POST");
    assert_problem(
        wrong_method,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
}

/// Sends raw bytes and reads whatever the server answers until it closes
/// the connection or `within` passes.
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8], within: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(within, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_declared_body_over_the_limit_is_413_without_reading_it() {
    let app = spawn_app().await;
    // Declares 100 MB but sends 10 bytes: an answer can only come if the
    // server decided from the header alone.
    let request = b"POST /api/v1/auth/login HTTP/1.1\r\nhost: x\r\n\
        content-type: application/json\r\ncontent-length: 100000000\r\n\r\n{\"a\":\"b\"}";

    let answer = raw_exchange(app.addr, request, Duration::from_secs(5)).await;

    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
}

#[tokio::test]
async fn a_chunked_body_growing_past_the_limit_is_413() {
    let app = spawn_app().await;
    let limit = app.settings.http.max_body_bytes;
    let chunk = "a".repeat(16 * 1024);
    let mut request = String::from(
        "POST /api/v1/auth/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\n\r\n",
    );
    for _ in 0..(limit / chunk.len() + 2) {
        request.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }

    let answer = raw_exchange(app.addr, request.as_bytes(), Duration::from_secs(5)).await;

    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_is_408_at_the_request_deadline() {
    let app = spawn_app_with(|s| s.http.request_timeout_ms = 500).await;
    app.wait_ready().await;
    // Announces 100 bytes and sends 10: the server waits for the other 90.
    let request = b"POST /api/v1/auth/login HTTP/1.1\r\nhost: x\r\n\
        content-type: application/json\r\ncontent-length: 100\r\n\r\n{\"a\": \"b\"}";

    let answer = raw_exchange(app.addr, request, Duration::from_secs(5)).await;

    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("content-type: application/problem+json"),
        "{answer}"
    );
    assert!(answer.contains(r#""code":"body_timeout""#), "{answer}");
}

#[tokio::test]
async fn a_client_too_slow_to_send_its_headers_is_disconnected() {
    let app = spawn_app().await;
    let timeout = app.settings.http.header_read_timeout();
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /live HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();

    let mut answer = Vec::new();
    let read = tokio::time::timeout(timeout * 3, stream.read_to_end(&mut answer)).await;

    assert!(
        read.is_ok(),
        "the server closed the connection within its header timeout"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(!answer.contains("200 OK"), "{answer}");
}

#[tokio::test]
async fn an_overlong_url_is_414() {
    let app = spawn_app().await;
    let long = format!(
        "/api/v1/sections/available?course_code={}",
        "A".repeat(app.settings.http.max_uri_bytes)
    );

    let response = app.get(&long, None).await;

    assert_problem(response, StatusCode::URI_TOO_LONG, "uri_too_long").await;
}

#[tokio::test]
async fn too_many_headers_are_refused() {
    let app = spawn_app().await;
    let mut request = String::from("GET /live HTTP/1.1\r\nhost: x\r\n");
    for i in 0..(app.settings.http.max_headers + 10) {
        request.push_str(&format!("x-h{i}: v\r\n"));
    }
    request.push_str("\r\n");

    let answer = raw_exchange(app.addr, request.as_bytes(), Duration::from_secs(5)).await;

    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
}
