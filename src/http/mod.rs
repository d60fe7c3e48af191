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
pub mod error;
pub mod idempotency;
pub mod limits;
pub mod openapi;
pub mod operations;
pub mod probes;
pub mod registration;
pub mod router;
pub mod rules;
pub mod server;
pub mod students;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Response, StatusCode};
use serde::Serialize;

pub use error::ApiError;

/// Every response body is a single buffer: answers are small and complete.
pub type Body = Full<Bytes>;

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
        .body(Full::new(Bytes::from(body)))
        .expect("static headers are valid"))
}

/// A response without a body (204).
pub fn empty(status: StatusCode) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .expect("a status alone is a valid response")
}

/// Parses a path segment as a UUID, or answers 400.
pub fn path_id(segment: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::try_parse(segment)
        .map_err(|_| ApiError::bad_request("invalid_id", format!("`{segment}` is not a UUID")))
}
