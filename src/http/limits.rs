//! The rate limits at the HTTP boundary: whose buckets a request charges,
//! and the 429 it gets when one is empty. The buckets themselves are in
//! [`crate::seats::limits`].

use std::net::{IpAddr, SocketAddr};

use hyper::http::request::Parts;

use super::{auth, error::retry_after_secs, ApiError};
use crate::{
    domain::Role,
    metrics::{RATE_LIMITED, RATE_LIMIT_ERRORS},
    seats::limits::{ClientKey, Verdict},
    state::AppState,
};

/// The connection's peer address; the accept loop puts it into every
/// request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// What a route costs in limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// The client address, and the student when the token is valid.
    Api,
    /// The client address and the stricter login bucket of that address.
    Login,
}

/// Charges the request's buckets; 429 when one is empty. A valid token's
/// principal is left in the request's extensions, so the handler does not
/// verify the signature a second time.
pub async fn admit(state: &AppState, req: &mut Parts, charge: Charge) -> Result<(), ApiError> {
    let limiter = &state.limiter;
    if !limiter.enabled() {
        return Ok(());
    }
    let mut buckets = Vec::with_capacity(2);
    if charge == Charge::Api {
        if let Ok(principal) = auth::authenticate(state, req) {
            req.extensions.insert(principal);
            // Admins act for many students at once (bulk imports, fixes on
            // registration day); their address bucket still applies.
            if principal.role != Role::Admin {
                buckets.push(limiter.student(principal.student_id));
            }
        }
    }
    if let Some(client) = client_key(state, req) {
        buckets.push(limiter.address(&client));
        if charge == Charge::Login {
            buckets.push(limiter.login_address(&client));
        }
    }
    match limiter.charge(&state.redis, &buckets).await {
        Ok(Verdict::Allowed) => Ok(()),
        Ok(Verdict::Limited { scope, retry_after }) => {
            metrics::counter!(RATE_LIMITED, "scope" => scope.label()).increment(1);
            Err(ApiError::TooManyRequests {
                code: "rate_limited",
                detail: "too many requests; retry after the number of seconds in Retry-After",
                retry_after_secs: retry_after_secs(retry_after),
            })
        }
        Err(e) => {
            // Failing open: a Redis blip must not turn every route into an
            // outage; the routes that need Redis answer 503 on their own.
            metrics::counter!(RATE_LIMIT_ERRORS).increment(1);
            tracing::warn!(error = %e, "rate limits could not be checked; request let through");
            Ok(())
        }
    }
}

/// The client's address: the last entry of the configured proxy header (the
/// address the trusted proxy saw), else the TCP peer.
pub(super) fn client_key(state: &AppState, req: &Parts) -> Option<ClientKey> {
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
