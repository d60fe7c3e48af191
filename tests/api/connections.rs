//! Many connections against the real binary: thousands held idle cost
//! bounded memory and stop nobody else; connections beyond
//! `http.max_connections` wait in the kernel backlog instead of failing; an
//! idle keep-alive connection cannot hold a slot forever; and one address
//! cannot hold them all (`http.max_connections_per_address`).

use std::{net::SocketAddr, time::Duration};

use futures_util::future::join_all;
use registrar::domain::Role;
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

use crate::{
    helpers::{eventually, spawn_app_with},
    processes::seeded,
};

/// Open file descriptors of a process (its sockets among them).
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Connections waiting in the accept queue of the listener on `port`: for
/// a listening socket, /proc/net/tcp reports that queue as `rx_queue`.
fn accept_queue(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local_port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
        // State 0A is LISTEN.
        if local_port != port || *fields.get(3)? != "0A" {
            return None;
        }
        u64::from_str_radix(fields.get(4)?.split(':').nth(1)?, 16).ok()
    })
}

/// The soft limit on open files of this process, raised to the hard limit
/// when it is below `wanted` (the server, a child, inherits it).
fn ensure_fd_limit(wanted: u64) -> u64 {
    let limits = || -> (u64, u64) {
        let text = std::fs::read_to_string("/proc/self/limits").unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .expect("an open files limit");
        let mut numbers = line.split_whitespace().filter_map(|w| {
            w.parse::<u64>()
                .ok()
                .or((w == "unlimited").then_some(u64::MAX))
        });
        (numbers.next().unwrap(), numbers.next().unwrap())
    };
    let (soft, hard) = limits();
    if soft < wanted && hard > soft {
        let hard_text = if hard == u64::MAX {
            "unlimited".to_string()
        } else {
            hard.to_string()
        };
        let _ = std::process::Command::new("prlimit")
            .arg(format!("--pid={}", std::process::id()))
            .arg(format!("--nofile={hard_text}:{hard_text}"))
            .status();
    }
    limits().0
}

/// Reads one whole answer with a small body (probes) off a raw connection.
async fn read_answer(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the server closed before answering");
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
    }
}

const LIVE: &[u8] = b"GET /live HTTP/1.1\r\nhost: x\r\n\r\n";

/// Idle connections held open at once.
const IDLE: usize = 3_000;

/// Per-connection budget: hyper allocates an 8 KiB read buffer and an 8 KiB
/// write buffer per HTTP/1 connection, plus its connection state (~1 KiB),
/// the spawned task and the socket's registration with the reactor (a few
/// hundred bytes each): ~18 KiB if every page were touched. 64 KiB leaves
/// room for allocator slack, and still means 10,000 idle connections (the
/// default `http.max_connections`) fit in ~640 MiB at worst.
const BUDGET_KIB_PER_CONNECTION: u64 = 64;

#[tokio::test]
async fn thousands_of_idle_connections_cost_bounded_memory_and_the_server_still_answers() {
    let fd_limit = ensure_fd_limit(IDLE as u64 + 1_000);
    assert!(
        fd_limit >= IDLE as u64 + 500,
        "the open files limit ({fd_limit}) is too low for {IDLE} connections"
    );
    let s = seeded(2, 1, 10, 0).await;
    // Idle connections are closed after the header read timeout (it also
    // bounds keep-alive idleness); long enough here to hold them all.
    let server = s
        .launch()
        .env("APP__HTTP__HEADER_READ_TIMEOUT_MS", "120000")
        // All of them come from 127.0.0.1: lift the per-address cap.
        .env("APP__HTTP__MAX_CONNECTIONS_PER_ADDRESS", "10000")
        .spawn();
    server.wait_ready().await;
    let pid = server.pid();
    let http = reqwest::Client::new();
    // Warm up: the runtime's workers, the pools and the allocator have
    // seen real requests before the baseline is read.
    for _ in 0..50 {
        assert!(http
            .get(server.url("/live"))
            .send()
            .await
            .unwrap()
            .status()
            .is_success());
    }
    let fds_before = open_fds(pid);
    let rss_before = server.rss_kib().expect("VmRSS in /proc/<pid>/status");

    let mut held = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let mut stream = TcpStream::connect(("127.0.0.1", server.port))
            .await
            .unwrap();
        if i % 2 == 0 {
            // Half of them started a request and stalled mid request line.
            stream.write_all(b"GET /api/v1/sem").await.unwrap();
        }
        held.push(stream);
    }
    assert!(
        eventually(Duration::from_secs(60), || async {
            open_fds(pid) >= fds_before + IDLE
        })
        .await,
        "the server accepted every connection ({} of {IDLE})",
        open_fds(pid).saturating_sub(fds_before)
    );
    let rss_after = server.rss_kib().expect("VmRSS in /proc/<pid>/status");
    let per_connection = rss_after.saturating_sub(rss_before) as f64 / IDLE as f64;
    eprintln!(
        "{IDLE} idle connections: RSS {rss_before} -> {rss_after} KiB, {per_connection:.1} KiB each"
    );
    assert!(
        per_connection <= BUDGET_KIB_PER_CONNECTION as f64,
        "{per_connection:.1} KiB per idle connection (budget {BUDGET_KIB_PER_CONNECTION})"
    );

    // While they are held, others are served: the probe and a registration.
    let live = http.get(server.url("/live")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    let token = s.tokens.mint(s.students[0], Role::Student, true);
    let answer = http
        .post(server.url("/api/v1/register"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "section_ids": [s.sections[0]] }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["results"][0]["status"], "enrolled", "{body}");

    // The held connections are still open (nothing was dropped to cope).
    let mut probe = [0u8; 1];
    for stream in held.iter().step_by(97) {
        assert!(
            matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a held connection is still open and silent"
        );
    }
    drop(held);
    assert!(
        eventually(Duration::from_secs(30), || async {
            open_fds(pid) < fds_before + IDLE / 10
        })
        .await,
        "the server released the closed connections"
    );
}

#[tokio::test]
async fn connections_beyond_max_connections_wait_for_a_slot_instead_of_failing() {
    const MAX: usize = 20;
    let s = seeded(1, 1, 1, 0).await;
    let mut server = s
        .launch()
        .env("APP__HTTP__MAX_CONNECTIONS", "20")
        .env("APP__HTTP__HEADER_READ_TIMEOUT_MS", "120000")
        .spawn();
    server.wait_ready().await;
    let port = server.port;
    let mut held = Vec::new();
    for _ in 0..MAX {
        held.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    assert!(
        eventually(Duration::from_secs(30), || async {
            accept_queue(port) == Some(0)
        })
        .await,
        "the server accepted the first {MAX} connections"
    );

    // One more: the kernel completes the handshake (backlog), the server
    // does not take it while every slot is held.
    let mut waiting = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .expect("a connection beyond the limit is not refused");
    waiting.write_all(LIVE).await.unwrap();
    let mut byte = [0u8; 1];
    assert!(
        eventually(Duration::from_secs(30), || async {
            accept_queue(port) == Some(1)
        })
        .await,
        "the connection beyond the limit waits in the accept queue"
    );
    let early = tokio::time::timeout(Duration::from_millis(500), waiting.read(&mut byte)).await;
    assert!(
        early.is_err(),
        "no answer (and no reset) while all {MAX} slots are held: {early:?}"
    );
    assert_eq!(accept_queue(port), Some(1), "still not accepted");

    // One held connection closes: the waiting one gets its slot and answer.
    drop(held.pop());
    let answer = tokio::time::timeout(Duration::from_secs(30), read_answer(&mut waiting))
        .await
        .expect("the waiting connection is served once a slot frees");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        server.is_running(),
        "the server survived the excess connection"
    );
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_so_they_cannot_hold_slots() {
    const MAX: usize = 4;
    let s = seeded(1, 1, 1, 0).await;
    // The test configuration's header read timeout (1 s) also bounds how
    // long a kept-alive connection may sit idle between requests.
    let server = s.launch().env("APP__HTTP__MAX_CONNECTIONS", "4").spawn();
    server.wait_ready().await;

    // Every slot taken by a client that made one request, kept the
    // connection alive, and then went silent.
    let mut idle = Vec::new();
    for _ in 0..MAX {
        let mut stream = TcpStream::connect(("127.0.0.1", server.port))
            .await
            .unwrap();
        stream.write_all(LIVE).await.unwrap();
        let answer = read_answer(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(!answer.to_ascii_lowercase().contains("connection: close"));
        idle.push(stream);
    }

    // A newcomer is still served without any idle client letting go...
    let mut newcomer = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    newcomer.write_all(LIVE).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(30), read_answer(&mut newcomer))
        .await
        .expect("an idle keep-alive connection gave up its slot");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // ...because the server closed the idle ones.
    for stream in &mut idle {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
            .await
            .expect("the server closes an idle keep-alive connection");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "closed, not answered: {read:?}"
        );
    }
}

/// A connection to `server` from the loopback address `from` (all of
/// 127.0.0.0/8 is loopback on Linux, so each is another client address).
async fn connect_from(from: [u8; 4], server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("a loopback address to connect from");
    socket.connect(server).await.unwrap()
}

/// Everything the server sends on `stream` until it closes it, or None if
/// it sends nothing and keeps it open for `within`.
async fn answer_or_silence(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut answer = Vec::new();
    match tokio::time::timeout(within, stream.read_to_end(&mut answer)).await {
        Ok(_) => Some(String::from_utf8_lossy(&answer).into_owned()),
        Err(_) if answer.is_empty() => None,
        Err(_) => Some(String::from_utf8_lossy(&answer).into_owned()),
    }
}

/// The value of `registrar_http_connections_refused_total` on a /metrics page.
fn refused_total(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("registrar_http_connections_refused_total "))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn one_address_cannot_hold_every_connection_and_its_excess_is_refused_at_once() {
    const PER_ADDRESS: usize = 4;
    const MAX: usize = 16;
    // More than every slot: without the per-address cap this address alone
    // would hold all of them, and the others would wait in the backlog.
    const GREEDY: usize = MAX + 8;
    let app = spawn_app_with(|s| {
        s.http.max_connections = MAX;
        s.http.max_connections_per_address = PER_ADDRESS;
        // Idle connections are not closed for the length of the test, so
        // only the cap can make room.
        s.http.header_read_timeout_ms = 120_000;
    })
    .await;
    app.wait_ready().await;
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    let refused_before = refused_total(&metrics);

    // 127.0.0.1 opens many connections and sends nothing on them.
    let mut greedy = Vec::with_capacity(GREEDY);
    for _ in 0..GREEDY {
        greedy.push(connect_from([127, 0, 0, 1], app.addr).await);
    }
    let outcomes = join_all(
        greedy
            .iter_mut()
            .map(|stream| answer_or_silence(stream, Duration::from_secs(3))),
    )
    .await;
    let held = outcomes.iter().filter(|o| o.is_none()).count();
    let refusals: Vec<&String> = outcomes.iter().flatten().collect();

    // At most the cap is held (the test client's own kept-alive connection
    // from 127.0.0.1 may be one of them); every other one got the refusal
    // and was closed.
    assert!(held <= PER_ADDRESS, "{held} connections held");
    assert!(refusals.len() >= GREEDY - PER_ADDRESS, "{}", refusals.len());
    for answer in &refusals {
        let (head, body) = answer.split_once("\r\n\r\n").expect("a whole answer");
        assert!(head.starts_with("HTTP/1.1 429 "), "{answer}");
        let head = head.to_ascii_lowercase();
        assert!(
            head.contains("content-type: application/problem+json"),
            "{head}"
        );
        assert!(head.contains("retry-after: "), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        let problem: Value = serde_json::from_str(body).expect("a problem+json body");
        assert_eq!(problem["code"], "too_many_connections", "{problem}");
    }

    // Another address is answered promptly while 127.0.0.1 holds its share.
    let mut other = connect_from([127, 0, 0, 2], app.addr).await;
    other.write_all(LIVE).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), read_answer(&mut other))
        .await
        .expect("another address is not starved");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Once 127.0.0.1 lets its connections go, it is served again.
    drop(greedy);
    let served_again = eventually(Duration::from_secs(10), || async {
        let mut stream = connect_from([127, 0, 0, 1], app.addr).await;
        if stream
            .write_all(b"GET /live HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .is_err()
        {
            return false;
        }
        let answer = answer_or_silence(&mut stream, Duration::from_secs(2)).await;
        answer.is_some_and(|a| a.starts_with("HTTP/1.1 200"))
    })
    .await;
    assert!(
        served_again,
        "the address's count fell when its connections closed"
    );
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        refused_total(&metrics) >= refused_before + refusals.len() as u64,
        "every refusal is counted"
    );
}
