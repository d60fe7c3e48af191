//! The real binary as a child process, stopped with SIGTERM.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use registrar::{seed, store};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::{create_database, free_port, redis_url, test_settings, PASSWORD};

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(database_url: &str, namespace: &str) -> Server {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_registrar"))
        .arg("serve")
        .env("APP_ENV", "test")
        .env(
            "APP_CONFIG_DIR",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config"),
        )
        .env("APP__HTTP__PORT", port.to_string())
        .env("APP__DATABASE__URL", database_url)
        .env("APP__REDIS__URL", redis_url())
        .env("APP__REDIS__NAMESPACE", namespace)
        .stdout(Stdio::null())
        .spawn()
        .expect("the registrar binary starts");
    Server { child, port }
}

async fn wait_until_live(port: u16) {
    for _ in 0..250 {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/live")).await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the server did not come up on port {port}");
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill is available");
    assert!(status.success());
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_then_exits_zero() {
    let database = create_database().await;
    let url = database.url.clone();
    let settings = test_settings(&url);
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
    let mut server = start_server(&url, &settings.redis.namespace);
    wait_until_live(server.port).await;

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

    sigterm(&server.child);
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", server.port))
            .await
            .is_err()
        {
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
    let status = tokio::task::spawn_blocking(move || {
        let status = server.child.wait();
        (status, server)
    })
    .await
    .unwrap()
    .0
    .unwrap();

    assert!(refused, "new connections are refused once shutdown began");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("access_token"), "{answer}");
    assert_eq!(status.code(), Some(0), "clean exit after draining");
}
