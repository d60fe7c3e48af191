//! Hostile and malformed input: clear 4xx problem+json, nothing changed.

use std::time::Duration;

use reqwest::StatusCode;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use registrar::http::server::parser_max_headers;

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
    // hyper closes it without an answer (README, "Answers without a
    // problem body").
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(answer, "", "closed without an answer");
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

/// A request for /live with `lines` header lines in all.
fn with_header_lines(lines: usize) -> Vec<u8> {
    let mut request = String::from("GET /live HTTP/1.1\r\nhost: x\r\n");
    for i in 1..lines {
        request.push_str(&format!("x-h{i}: v\r\n"));
    }
    request.push_str("\r\n");
    request.into_bytes()
}

#[tokio::test]
async fn more_header_lines_than_max_headers_are_431_problem_json() {
    let app = spawn_app().await;
    let limit = app.settings.http.max_headers;

    let at_limit = raw_exchange(app.addr, &with_header_lines(limit), Duration::from_secs(1)).await;
    let over = raw_exchange(
        app.addr,
        &with_header_lines(limit + 1),
        Duration::from_secs(1),
    )
    .await;

    assert!(at_limit.starts_with("HTTP/1.1 200"), "{at_limit}");
    let (head, body) = over.split_once("\r\n\r\n").expect("a whole answer");
    assert!(head.starts_with("HTTP/1.1 431"), "{over}");
    assert!(
        head.contains("content-type: application/problem+json"),
        "{head}"
    );
    let problem: serde_json::Value = serde_json::from_str(body).expect("a problem body");
    assert_eq!(problem["status"], 431);
    assert_eq!(problem["code"], "too_many_headers");
}

/// What hyper answers itself, before any request reaches the router: these
/// cannot carry a problem body (README, "Answers without a problem body").
/// hyper 1.x writes a bare status line with `content-length: 0` and
/// `connection: close` and closes; a test, so that a change shows.
#[tokio::test]
async fn what_hyper_answers_itself_is_a_bare_status_and_a_closed_connection() {
    let app = spawn_app().await;
    let parser_limit = parser_max_headers(app.settings.http.max_headers);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a malformed request line",
            b"GET /live HTTP/1.1 extra\r\nhost: x\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "a method that is no token",
            b"G(T /live HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "an unknown HTTP version",
            b"GET /live HTTP/9.9\r\nhost: x\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "a malformed header line",
            b"GET /live HTTP/1.1\r\nho st: x\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "a Content-Length that is no number",
            b"POST /api/v1/auth/login HTTP/1.1\r\nhost: x\r\ncontent-length: abc\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "a TLS ClientHello (https to the plain port)",
            vec![
                0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
            ],
            "400",
        ),
        (
            "bytes that are not HTTP",
            b"\x00\x01hello\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "more header lines than hyper parses",
            with_header_lines(parser_limit + 1),
            "431",
        ),
        (
            "a head larger than hyper's read buffer",
            format!(
                "GET /live HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
                "a".repeat(500_000)
            )
            .into_bytes(),
            "431",
        ),
        (
            "a request target longer than hyper accepts",
            format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(70_000)).into_bytes(),
            "414",
        ),
    ];
    for (case, request, status) in cases {
        let answer = raw_exchange(app.addr, &request, Duration::from_secs(5)).await;
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("{case}: a whole answer, got {answer:?}"));
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{case}: {head}"
        );
        assert!(head.contains("content-length: 0"), "{case}: {head}");
        assert!(head.contains("connection: close"), "{case}: {head}");
        assert!(
            body.is_empty(),
            "{case}: closed after the head, got {body:?}"
        );
    }

    // An HTTP/2 preface (h2c with prior knowledge; this server speaks
    // HTTP/1.1 only) is closed without any answer.
    let h2 = raw_exchange(
        app.addr,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(h2, "");

    // Just under hyper's limits the answers are the router's, with a body.
    let long_target = format!("/live?{}", "a".repeat(10_000));
    let ours = app.get(&long_target, None).await;
    assert_problem(ours, StatusCode::URI_TOO_LONG, "uri_too_long").await;
    let ours = raw_exchange(
        app.addr,
        &with_header_lines(parser_limit),
        Duration::from_secs(1),
    )
    .await;
    assert!(ours.contains(r#""code":"too_many_headers""#), "{ours}");
}
