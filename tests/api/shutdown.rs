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

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_then_exits_zero() {
    let database = create_database().await;
    let url = database.url.clone();
    let settings = test_settings(&url);
    // Declared before the server, so dropped after it is killed.
    let _keys = Namespace::named(settings.redis.namespace.clone(), &redis_url());
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
