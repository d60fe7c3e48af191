//! The dev-only test kit, shared by the integration tests (`tests/api`) and
//! the load tool (`benches/load`): a TCP fault proxy, child processes (the
//! registrar binary, a private redis-server, a private Redis Cluster of
//! six), and private stores (a PostgreSQL database and a Redis namespace,
//! on a server or a cluster, that remove themselves).
//!
//! Each binary includes this folder with `#[path]`, so the project stays one
//! crate; the kit reads no environment of its own, its callers say where the
//! stores are (`TEST_*` for the tests, `BENCH_*` for the load tool). Set-up
//! that fails panics with what is missing, as a test's set-up does; teardown
//! (every guard's `Drop`) never panics, it reports on stderr.

// Each of the two binaries uses its own part of the kit (the tests alone a
// private Redis, a fixed port, a reset...; the load tool alone a longer
// patience), so each sees the other's part as unused.
#![allow(dead_code)]

pub mod child;
pub mod cluster;
pub mod database;
pub mod namespace;
pub mod proxy;

use std::net::{SocketAddr, TcpListener};

/// A free TCP port on loopback (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The host and port of a `postgres://` or `redis://` URL (`default_port`
/// when it names none), resolved: what a [`proxy::Proxy`] forwards to.
pub async fn address_of(url: &str, default_port: u16) -> SocketAddr {
    let (_, host) = authority(url);
    let host = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:{default_port}")
    };
    tokio::net::lookup_host(&host)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("the host of a store URL resolves ({host})"))
}

/// The same URL reaching 127.0.0.1:`port` instead (a proxy): scheme,
/// credentials and path are kept.
pub fn via_port(url: &str, port: u16) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (credentials, _) = authority(url);
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    format!("{scheme}://{credentials}127.0.0.1:{port}{path}")
}

/// The credentials (with their `@`, or empty) and the `host[:port]` of a URL.
fn authority(url: &str) -> (&str, &str) {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    }
}
