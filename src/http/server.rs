//! The hyper 1.x accept loop: connection limits (in total and per client
//! address, [`super::connections`]), per-connection HTTP/1.1 settings, and
//! graceful shutdown (modelled on hyper-util's
//! `server_graceful` example). The public listener and the metrics listener
//! (`http.metrics_port`) each run one, with what they serve as an argument.

use std::{future::Future, sync::Arc, time::Duration};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{net::TcpListener, sync::Semaphore};

use super::{
    client::Peer,
    connections::{self, AddressCounts},
    router::{self, Serves},
};
use crate::{
    metrics::{HTTP_CONNECTIONS, HTTP_CONNECTIONS_REFUSED},
    state::AppState,
};

/// Pause after a failed `accept` (typically EMFILE: out of file descriptors)
/// so the loop does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Header lines hyper parses unless told otherwise.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// hyper's own limit on header lines, above `http.max_headers`. hyper
/// answers a request over its limit with a bare 431 that no hook can give a
/// body; under it the request reaches the router, which answers one over
/// `http.max_headers` with 431 problem+json itself. Twice ours (at least
/// hyper's default) keeps the bare answer for heads far beyond any client's.
pub fn parser_max_headers(max_headers: usize) -> usize {
    max_headers.saturating_mul(2).max(HYPER_DEFAULT_MAX_HEADERS)
}

/// Longest request head (request line and headers) hyper accepts; over it,
/// a bare 431. Without it hyper's only bound is its read buffer (~408 KiB),
/// checked while a head is incomplete: one read could carry a whole larger
/// head past it, so a 500 KB head was refused or served depending on how
/// TCP cut it (tests/api/input.rs saw both). With it the parsed length is
/// checked too. Above hyper's longest request target (64 KiB), so a long
/// target is still a 414.
const MAX_HEAD_BYTES: usize = 400 * 1024;

/// Refused connections being answered at once (each for at most
/// [`connections::REFUSAL_DEADLINE`]). A flood beyond it is closed without
/// an answer: refusing must stay cheaper than serving.
const MAX_PENDING_REFUSALS: usize = 128;

/// How many connections a listener holds.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open at once; more wait in the kernel backlog until one closes.
    pub total: usize,
    /// Open at once from one client address (an IPv6 /64 counts as one);
    /// more are refused at once. None: no per-address cap.
    pub per_address: Option<usize>,
}

/// The metrics listener's limits. Its clients are a Prometheus or two and
/// an orchestrator's probes, a handful of connections: the total bound keeps
/// a mistakenly exposed port from costing more than this (beyond it,
/// connections wait in the kernel backlog, and the header read timeout frees
/// idle ones). No per-address cap: its few clients are the operator's own,
/// often all from one address.
pub const METRICS_LISTENER_LIMITS: ConnectionLimits = ConnectionLimits {
    total: 64,
    per_address: None,
};

/// Serves connections from `listener` until `shutdown` resolves, then stops
/// accepting and lets in-flight requests finish within the shutdown grace.
/// `serves` is what this listener answers.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    serves: Serves,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let settings = &state.settings.http;
    let connection_slots = Arc::new(Semaphore::new(limits.total));
    let per_address = limits.per_address.map(AddressCounts::new);
    let refusals = Arc::new(Semaphore::new(MAX_PENDING_REFUSALS));
    let mut http = http1::Builder::new();
    // hyper (1.4 and later) arms the header read timeout whenever it waits
    // for a request head, on a fresh connection and on a kept-alive one
    // between requests, so it also closes idle keep-alive connections: a
    // client cannot hold a connection slot by going quiet
    // (tests/api/connections.rs).
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout())
        .max_headers(parser_max_headers(settings.max_headers))
        .max_header_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);

    loop {
        // Waiting for a slot before accepting leaves excess connections in
        // the kernel backlog instead of accepting and dropping them.
        let slot = tokio::select! {
            slot = connection_slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let address_slot = match &per_address {
            None => None,
            Some(counts) => match counts.admit(peer.ip()) {
                Some(address_slot) => Some(address_slot),
                None => {
                    // Refused before it costs a slot: its place goes back
                    // to the next connection at once.
                    drop(slot);
                    metrics::counter!(HTTP_CONNECTIONS_REFUSED).increment(1);
                    tracing::debug!(%peer, "connection refused: its address is at its cap");
                    if let Ok(pending) = refusals.clone().try_acquire_owned() {
                        tokio::spawn(async move {
                            connections::refuse(stream).await;
                            drop(pending);
                        });
                    }
                    continue;
                }
            },
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, %peer, "could not set TCP_NODELAY");
        }
        let state = state.clone();
        let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(Peer(peer));
            router::handle(state.clone(), serves, req)
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            metrics::gauge!(HTTP_CONNECTIONS).increment(1.0);
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            metrics::gauge!(HTTP_CONNECTIONS).decrement(1.0);
            drop(address_slot);
            drop(slot);
        });
    }

    drop(listener);
    let grace = settings.shutdown_grace();
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        ?serves,
        "stopped accepting; finishing in-flight requests"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!("shutdown grace expired; cutting remaining connections"),
    }
}
