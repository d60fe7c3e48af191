//! Who is at the other end: the TCP peer, or the client a trusted proxy
//! names (`rate_limit.client_ip_header`).

use std::net::{IpAddr, SocketAddr};

use hyper::http::request::Parts;

use crate::{seats::limits::ClientKey, state::AppState};

/// The connection's peer address; the accept loop puts it into every
/// request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// The client's address: the last entry of the configured proxy header (the
/// address the trusted proxy saw), else the TCP peer.
pub fn client_key(state: &AppState, req: &Parts) -> Option<ClientKey> {
    let header = &state.settings.rate_limit.client_ip_header;
    if !header.is_empty() {
        let forwarded = req
            .headers
            .get_all(header.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .next_back()
            .and_then(|v| v.trim().parse::<IpAddr>().ok());
        if let Some(addr) = forwarded {
            return Some(ClientKey::new(addr));
        }
    }
    req.extensions
        .get::<Peer>()
        .map(|peer| ClientKey::new(peer.0.ip()))
}
