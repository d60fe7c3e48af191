//! The real binary as a child process, stopped with SIGTERM.

use std::time::Duration;

use registrar::{seed, store};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    helpers::{create_database, redis_url, test_settings, PASSWORD},
    kit::{child::Launch, free_port, namespace::Namespace},
};

/// A migrated database with one student, one section of one seat, and the
/// settings and Redis namespace for a server on it (the namespace's keys go
/// when it is dropped: keep it until the server is gone).
async fn one_student() -> (
    crate::kit::database::Database,
    registrar::config::Settings,
    Namespace,
) {
    let database = create_database().await;
    let settings = test_settings(&database.url);
    let keys = Namespace::named(settings.redis.namespace.clone(), &redis_url());
    let pool = store::pool(&settings.database).unwrap();
    store::migrate::run(&mut pool.get().await.unwrap())
        .await
        .unwrap();
    seed::seed(
        &pool,
        &seed::SeedOptions {
            students: 1,
            courses: 1,
            sections_per_course: 1,
            seats: 1,
            waitlist: 0,
            password: PASSWORD.into(),
            admin_password: PASSWORD.into(),
        },
        |_, _| {},
    )
    .await
    .unwrap();
    pool.close();
    (database, settings, keys)
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_then_exits_zero() {
    let (database, settings, _keys) = one_student().await;
    let url = database.url.clone();
    let metrics_port = free_port();
    let server = Launch::new("test", &url, &redis_url(), &settings.redis.namespace)
        .env("APP__HTTP__METRICS_PORT", metrics_port.to_string())
        .spawn();
    server.wait_live().await;
    let metrics_live = reqwest::get(format!("http://127.0.0.1:{metrics_port}/live"))
        .await
        .expect("the metrics listener answers");
    assert_eq!(metrics_live.status(), reqwest::StatusCode::OK);

    // A login whose body is only half sent: the request is in flight.
    let body = format!(r#"{{"student_number":"S0000001","password":"{PASSWORD}"}}"#);
    let (first, rest) = body.split_at(10);
    let mut stream = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let head = format!(
        "POST /api/v1/auth/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{first}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    server.sigterm();
    let mut refused = false;
    for _ in 0..100 {
        let public = TcpStream::connect(("127.0.0.1", server.port)).await;
        let metrics = TcpStream::connect(("127.0.0.1", metrics_port)).await;
        if public.is_err() && metrics.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stream.write_all(rest.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the in-flight request is answered and the connection closed")
        .unwrap();
    let status = server.wait_exit().await;

    assert!(
        refused,
        "new connections are refused on both listeners once shutdown began"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("access_token"), "{answer}");
    assert_eq!(status.code(), Some(0), "clean exit after draining");
}

/// The real binary logs one INFO line per request, as plain text when its
/// stdout is a file: method, route template, status, latency, request id,
/// the student once authenticated, and the trace id of a W3C traceparent.
#[tokio::test]
async fn every_request_is_one_plain_log_line_with_its_student_and_trace() {
    let (database, settings, _keys) = one_student().await;
    let url = database.url.clone();
    let log = std::env::temp_dir().join(format!("registrar-log-{}", uuid::Uuid::new_v4()));
    let server = Launch::new("test", &url, &redis_url(), &settings.redis.namespace)
        .env("APP__LOG__LEVEL", "info")
        .log_to(&log)
        .spawn();
    server.wait_ready().await;
    let http = reqwest::Client::new();
    let login: serde_json::Value = http
        .post(server.url("/api/v1/auth/login"))
        .json(&serde_json::json!({"student_number": seed::student_number(1), "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().unwrap();
    let student = login["student_id"].as_str().unwrap();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let answer = http
        .get(server.url("/api/v1/students/me/registrations"))
        .bearer_auth(token)
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .header("x-request-id", "log-line-test-1")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::OK);
    server.sigterm();
    assert!(server.wait_exit().await.success());
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::remove_file(&log).unwrap();
    assert!(
        !text.contains('\u{1b}'),
        "no colour codes in a file:\n{text}"
    );
    let line = text
        .lines()
        .find(|l| l.contains("log-line-test-1"))
        .unwrap_or_else(|| panic!("the request's line:\n{text}"));
    for part in [
        " INFO ",
        "method=GET",
        "route=\"/api/v1/students/{id}/registrations\"",
        "status=200",
        "latency_ms=",
        &format!("student={student}"),
        &format!("trace_id={trace}"),
    ] {
        assert!(line.contains(part), "{part:?} in {line}");
    }
    assert!(!line.contains(token), "no token in the log: {line}");
}

/// A collector of OTLP/HTTP exports on a free port: every request body it
/// receives, in order (answered 200 with an empty response message).
async fn collector() -> (
    u16,
    tokio::sync::mpsc::UnboundedReceiver<(String, bytes::Bytes)>,
) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let body = req.into_body().collect().await?.to_bytes();
                            let _ = tx.send((path, body));
                            Ok::<_, hyper::Error>(
                                hyper::Response::builder()
                                    .header("content-type", "application/x-protobuf")
                                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (port, rx)
}

/// With `log.otlp_endpoint` set, the real binary exports each request's
/// span as an OpenTelemetry trace: a request that names its caller's span
/// in a W3C traceparent continues that trace (same trace id, the caller's
/// span as parent), with the route template and the status; the resource
/// names the service. What is still queued at SIGTERM is sent before exit.
#[tokio::test]
async fn request_spans_are_exported_over_otlp_and_continue_the_callers_trace() {
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value::Value,
    };
    use prost::Message;

    let (database, settings, _keys) = one_student().await;
    let (port, mut exports) = collector().await;
    let server = Launch::new(
        "test",
        &database.url,
        &redis_url(),
        &settings.redis.namespace,
    )
    .env("APP__LOG__LEVEL", "info")
    .env(
        "APP__LOG__OTLP_ENDPOINT",
        format!("http://127.0.0.1:{port}/v1/traces"),
    )
    .spawn();
    server.wait_ready().await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let answer = reqwest::Client::new()
        .get(server.url("/api/v1/openapi.json"))
        .header("traceparent", format!("00-{trace}-{caller}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::OK);
    // The batch exporter waits up to 5 s before sending; SIGTERM sends now.
    server.sigterm();
    assert!(server.wait_exit().await.success());

    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let text = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v
        .as_ref()
        .and_then(|v| v.value.as_ref())
    {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        other => format!("{other:?}"),
    };
    let mut seen = Vec::new();
    while let Ok(Some((path, body))) =
        tokio::time::timeout(Duration::from_secs(10), exports.recv()).await
    {
        assert_eq!(path, "/v1/traces");
        let request = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
        for resource in request.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .map(|a| text(&a.value));
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let attributes: std::collections::HashMap<String, String> = span
                        .attributes
                        .iter()
                        .map(|a| (a.key.clone(), text(&a.value)))
                        .collect();
                    seen.push((
                        service.clone(),
                        span.name.clone(),
                        hex(&span.trace_id),
                        hex(&span.parent_span_id),
                        attributes,
                    ));
                }
            }
        }
        if seen.iter().any(|s| s.2 == trace) {
            break;
        }
    }
    let (service, name, _, parent, attributes) = seen
        .iter()
        .find(|s| s.2 == trace)
        .unwrap_or_else(|| panic!("a span of the caller's trace among {seen:#?}"));
    assert_eq!(service.as_deref(), Some("registrar"));
    assert_eq!(name, "request");
    assert_eq!(parent, caller, "the caller's span is the parent");
    assert_eq!(
        attributes.get("route").map(String::as_str),
        Some("/api/v1/openapi.json")
    );
    assert_eq!(attributes.get("method").map(String::as_str), Some("GET"));
    assert_eq!(
        attributes
            .get("http.response.status_code")
            .map(String::as_str),
        Some("200")
    );
}
