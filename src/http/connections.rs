//! The per-address cap on open connections
//! (`http.max_connections_per_address`): one client address cannot hold
//! every one of `http.max_connections` and starve the others.
//!
//! Addresses are grouped as the rate limits group them
//! ([`crate::seats::limits::ClientKey`]): an IPv6 /64 is one client (one
//! host or home usually owns a whole /64) and an IPv4-mapped IPv6 address is
//! its IPv4 address. A connection beyond its group's cap is answered at once
//! with a small 429 and closed ([`refuse`]), without taking a connection slot.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::BodyExt;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::ApiError;
use crate::seats::limits::address_group;

/// Open connections per client group. An entry exists only while its group
/// has a connection open, so the map never outgrows the open connections.
pub struct AddressCounts {
    /// Connections one group may hold at once.
    cap: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl AddressCounts {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap,
            open: Mutex::default(),
        })
    }

    /// Counts a new connection from `peer`, or refuses it (None) when its
    /// group already holds the cap. The count drops with the returned slot.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<AddressSlot> {
        let group = address_group(peer);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(group).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            counts: self.clone(),
            group,
        })
    }

    /// Groups with a connection open (for tests of the bound).
    #[cfg(test)]
    fn groups(&self) -> usize {
        self.open.lock().unwrap().len()
    }
}

/// One admitted connection of a group; dropping it (the connection ended)
/// gives its place back.
pub struct AddressSlot {
    counts: Arc<AddressCounts>,
    group: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.group) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.group);
            }
        }
    }
}

/// How long a refused connection may take: writing the answer (a few hundred
/// bytes, which fit in any socket buffer) and reading what the client had
/// sent until it closes. A client that neither reads nor closes is cut then.
pub const REFUSAL_DEADLINE: Duration = Duration::from_secs(1);

/// Bytes of the client's request read and discarded before closing. Closing
/// a socket with unread input makes the kernel send a reset, which can
/// destroy the answer before the client reads it; reading the request head
/// first lets the answer arrive.
const REFUSAL_DRAIN_BYTES: usize = 16 * 1024;

/// The refusal, serialised once: an HTTP/1.1 429 with a problem+json body,
/// `Retry-After` and `Connection: close`.
static REFUSAL: LazyLock<Bytes> = LazyLock::new(|| {
    let response = ApiError::TooManyRequests {
        code: "too_many_connections",
        detail: "this client address has too many connections open; \
                 close some or retry after the number of seconds in Retry-After",
        retry_after_secs: 1,
    }
    .into_response();
    let status = response.status();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    for (name, value) in response.headers() {
        let value = value.to_str().expect("the problem's headers are ASCII");
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = response
        .into_body()
        .collect()
        .now_or_never()
        .expect("a full body is ready at once")
        .expect("a full body cannot fail")
        .to_bytes();
    head.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&body);
    Bytes::from(bytes)
});

/// Answers a connection beyond its address's cap with [`REFUSAL`] and
/// closes it, within [`REFUSAL_DEADLINE`].
pub async fn refuse(mut stream: TcpStream) {
    let answer = async {
        stream.write_all(&REFUSAL).await?;
        stream.shutdown().await?;
        let mut drained = 0;
        let mut buf = [0u8; 1024];
        while drained < REFUSAL_DRAIN_BYTES {
            match stream.read(&mut buf).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<(), std::io::Error>(())
    };
    if let Ok(Err(e)) = tokio::time::timeout(REFUSAL_DEADLINE, answer).await {
        tracing::debug!(error = %e, "could not answer a refused connection");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_group_at_its_cap_is_refused_until_one_of_its_connections_ends() {
        let counts = AddressCounts::new(2);
        let first = counts.admit(ip("2001:db8:1:2::1")).unwrap();
        let _second = counts.admit(ip("2001:db8:1:2::2")).unwrap();

        assert!(counts.admit(ip("2001:db8:1:2::3")).is_none(), "same /64");
        let other = counts.admit(ip("2001:db8:1:3::1"));
        assert!(other.is_some(), "another /64 has its own count");
        drop(first);
        assert!(counts.admit(ip("2001:db8:1:2::3")).is_some());
    }

    #[test]
    fn a_group_leaves_the_map_when_its_last_connection_ends() {
        let counts = AddressCounts::new(3);
        let slots: Vec<_> = (1..=3)
            .map(|i| counts.admit(ip(&format!("10.0.0.{i}"))).unwrap())
            .collect();
        assert_eq!(counts.groups(), 3);

        drop(slots);

        assert_eq!(counts.groups(), 0);
    }

    #[test]
    fn the_refusal_is_a_complete_http_answer_with_a_problem_body() {
        let text = std::str::from_utf8(&REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();

        assert!(
            head.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
            "{head}"
        );
        assert!(
            head.contains("content-type: application/problem+json"),
            "{head}"
        );
        assert!(head.contains("retry-after: 1"), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(problem["status"], 429);
        assert_eq!(problem["code"], "too_many_connections");
    }
}
