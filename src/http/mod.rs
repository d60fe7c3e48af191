//! The HTTP side: accept loop, routing, handlers by area, errors, body limits.
//!
//! A request's way: [`server`] accepts the connection (connection limits,
//! in total and per client address: [`connections`],
//! header timeout) → [`router::handle`] names the route, checks the method,
//! applies the request deadline and records metrics → [`limits`] charges the
//! rate limits → a handler module
//! authenticates ([`auth::authenticate`]), reads the body ([`body`]) and
//! calls the store or Redis → errors become problem+json ([`error`]).

pub mod accounts;
pub mod admin;
pub mod auth;
pub mod body;
pub mod catalog;
pub mod client;
pub mod connections;
pub mod docs;
pub mod embedded;
pub mod error;
pub mod idempotency;
pub mod limits;
pub mod live;
pub mod openapi;
pub mod operations;
pub mod page;
pub mod probes;
pub mod registration;
pub mod router;
pub mod rules;
pub mod server;
pub mod students;

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::{Frame, SizeHint},
    header, Response, StatusCode,
};
use serde::Serialize;
use tokio::sync::mpsc;

pub use error::ApiError;

/// A response body: one buffer (every answer but the live streams: they are
/// small and complete), or the chunks a live stream's task sends
/// ([`live`]), which ends when that task stops or the client goes away
/// (dropping the body drops the receiver, and the task's next send fails).
#[derive(Debug)]
pub enum Body {
    Full(Full<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl Default for Body {
    fn default() -> Self {
        Body::Full(Full::default())
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        Body::Full(Full::new(bytes))
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Self {
        Body::from(Bytes::from(bytes))
    }
}

impl From<String> for Body {
    fn from(text: String) -> Self {
        Body::from(Bytes::from(text))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(full) => Pin::new(full).poll_frame(cx),
            Body::Stream(chunks) => chunks.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(full) => full.is_end_stream(),
            Body::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(full) => full.size_hint(),
            Body::Stream(_) => SizeHint::default(),
        }
    }
}

/// What handlers return.
pub type ApiResult = Result<Response<Body>, ApiError>;

/// A JSON response with the given status.
pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> ApiResult {
    let body = serde_json::to_vec(value).map_err(|e| {
        ApiError::Internal(anyhow::Error::new(e).context("failed to encode a response"))
    })?;
    Ok(Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("static headers are valid"))
}

/// A response without a body (204).
pub fn empty(status: StatusCode) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Body::default())
        .expect("a status alone is a valid response")
}

/// Parses a path segment as a UUID, or answers 400.
pub fn path_id(segment: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::try_parse(segment)
        .map_err(|_| ApiError::bad_request("invalid_id", format!("`{segment}` is not a UUID")))
}
