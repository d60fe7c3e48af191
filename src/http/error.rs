//! The one error type at the HTTP boundary and its RFC 9457 problem+json form.
//!
//! Every variant names its status. Client errors carry a stable machine
//! `code`; 5xx bodies are opaque and their cause is logged once, here.

use std::time::Duration;

use hyper::{header, Response, StatusCode};
use serde::Serialize;

use crate::registration::RegistrationError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: malformed JSON, unknown field, bad UUID, bad query string.
    #[error("{detail}")]
    BadRequest { code: &'static str, detail: String },
    /// 401: missing, malformed, expired or wrongly signed token; bad credentials.
    #[error("{detail}")]
    Unauthorized {
        code: &'static str,
        detail: &'static str,
    },
    /// 403: authenticated but not allowed (a student on an admin route).
    #[error("this action needs another role")]
    Forbidden,
    /// 404: unknown route or resource, or another student's resource.
    #[error("{0}")]
    NotFound(String),
    /// 404: an admin acted for a student who has no account.
    #[error("no student has this id")]
    StudentNotFound,
    /// 405, with the methods the route allows.
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
    /// 408: the body did not arrive within the request deadline (shorter
    /// than its `Content-Length`, or trickling); the connection is closed.
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    /// 409: the request conflicts with existing state (duplicate key).
    #[error("{detail}")]
    Conflict { code: &'static str, detail: String },
    /// 414: request target longer than `http.max_uri_bytes`.
    #[error("the request target exceeds {limit} bytes")]
    UriTooLong { limit: usize },
    /// 431: more header lines than `http.max_headers`.
    #[error("the request has more than {limit} header lines")]
    TooManyHeaders { limit: usize },
    /// 413: body over the configured limit, refused before parsing.
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// 415: body is not JSON.
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    /// 422: well-formed but semantically invalid.
    #[error("{detail}")]
    Unprocessable { code: &'static str, detail: String },
    /// 429 with Retry-After: a rate limit or the failed-login back-off.
    #[error("{detail}")]
    TooManyRequests {
        code: &'static str,
        detail: &'static str,
        retry_after_secs: u64,
    },
    /// 503 with Retry-After: a dependency is away, a deadline passed, or shutting down.
    #[error("{detail}")]
    Unavailable {
        code: &'static str,
        detail: &'static str,
        retry_after_secs: u32,
    },
    /// 500: anything unexpected; the cause is logged, never sent.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

#[derive(Serialize)]
struct Problem<'a> {
    r#type: &'static str,
    title: &'a str,
    status: u16,
    detail: String,
    code: &'a str,
}

impl ApiError {
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            detail: detail.into(),
        }
    }

    pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> Self {
        ApiError::Unprocessable {
            code,
            detail: detail.into(),
        }
    }

    pub fn not_found(what: &str) -> Self {
        ApiError::NotFound(format!("{what} not found"))
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) | ApiError::StudentNotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            ApiError::TooManyHeaders { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. }
            | ApiError::Unauthorized { code, .. }
            | ApiError::Conflict { code, .. }
            | ApiError::Unprocessable { code, .. }
            | ApiError::TooManyRequests { code, .. }
            | ApiError::Unavailable { code, .. } => code,
            ApiError::Forbidden => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::StudentNotFound => "student_not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::BodyTimeout => "body_timeout",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UriTooLong { .. } => "uri_too_long",
            ApiError::TooManyHeaders { .. } => "too_many_headers",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn into_response(self) -> Response<super::Body> {
        let status = self.status();
        let detail = match &self {
            ApiError::Internal(cause) => {
                tracing::error!(error = ?cause, "request failed");
                "an internal error occurred; it has been logged".to_string()
            }
            other => other.to_string(),
        };
        let problem = Problem {
            r#type: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail,
            code: self.code(),
        };
        let body = serde_json::to_vec(&problem).expect("a problem always serialises");
        let mut builder = Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/problem+json");
        match &self {
            ApiError::MethodNotAllowed { allow } => {
                builder = builder.header(header::ALLOW, *allow);
            }
            ApiError::Unauthorized { .. } => {
                builder = builder.header(header::WWW_AUTHENTICATE, "Bearer");
            }
            ApiError::Unavailable {
                retry_after_secs, ..
            } => {
                builder = builder.header(header::RETRY_AFTER, retry_after_secs.to_string());
            }
            ApiError::TooManyRequests {
                retry_after_secs, ..
            } => {
                builder = builder.header(header::RETRY_AFTER, retry_after_secs.to_string());
            }
            ApiError::PayloadTooLarge { .. } | ApiError::BodyTimeout => {
                builder = builder.header(header::CONNECTION, "close");
            }
            _ => {}
        }
        builder
            .body(super::Body::from(body))
            .expect("static headers are valid")
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        if is_unavailable(&e) {
            tracing::warn!(error = %e, "PostgreSQL unavailable");
            return database_unavailable();
        }
        ApiError::Internal(anyhow::Error::new(e).context("database query failed"))
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        tracing::warn!(error = %e, "no PostgreSQL connection available");
        database_unavailable()
    }
}

impl From<crate::access::LoadError> for ApiError {
    fn from(e: crate::access::LoadError) -> Self {
        match e {
            crate::access::LoadError::Pool(e) => e.into(),
            crate::access::LoadError::Query(e) => e.into(),
        }
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(e: redis::RedisError) -> Self {
        if crate::seats::is_contract_violation(&e) {
            // Not an outage: the engine and its scripts disagree. A retry
            // would fail the same way, so this is a 500 and the cause is
            // logged where the answer is made.
            return ApiError::Internal(anyhow::Error::new(e).context("Redis contract violated"));
        }
        if e.to_string()
            .contains(crate::seats::REPLICATION_UNCONFIRMED)
        {
            tracing::warn!(error = %e, "seat change not confirmed by the replicas in time");
            return ApiError::Unavailable {
                code: "replication_unconfirmed",
                detail: "the change was made but its replication is not confirmed; retry with the same Idempotency-Key to learn the outcome",
                retry_after_secs: 1,
            };
        }
        tracing::warn!(error = %e, "Redis unavailable");
        ApiError::Unavailable {
            code: "redis_unavailable",
            detail: "registration is temporarily unavailable; retry shortly",
            retry_after_secs: 1,
        }
    }
}

impl From<RegistrationError> for ApiError {
    fn from(e: RegistrationError) -> Self {
        match e {
            RegistrationError::SectionUnavailable(e) => {
                tracing::warn!(error = %format!("{e:#}"), "could not load sections from PostgreSQL");
                ApiError::Unavailable {
                    code: "section_unavailable",
                    detail: "this section is being loaded; retry shortly",
                    retry_after_secs: 1,
                }
            }
            RegistrationError::Redis(e) => e.into(),
            RegistrationError::RulesUnavailable(e) => {
                tracing::warn!(error = %format!("{e:#}"), "could not read the registration rules");
                ApiError::Unavailable {
                    code: "rules_unavailable",
                    detail: "the registration rules could not be read; retry shortly",
                    retry_after_secs: 1,
                }
            }
        }
    }
}

/// Whole seconds for `Retry-After`, rounded up so a client that waits them
/// is never refused again for the same reason, and at least one.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_millis().div_ceil(1000).max(1) as u64
}

fn database_unavailable() -> ApiError {
    ApiError::Unavailable {
        code: "database_unavailable",
        detail: "the database is temporarily unavailable; retry shortly",
        retry_after_secs: 2,
    }
}

/// The server is away or overloaded rather than the query wrong: connection
/// failures (no SQLSTATE), connection exceptions (08xxx), operator
/// intervention (57xxx, which includes statement timeouts).
fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => true,
        Some(state) => {
            let code = state.code();
            code.starts_with("08") || code.starts_with("57")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_script_contract_is_a_500_and_an_outage_a_503() {
        let contract = redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "unexpected script reply",
            "reserve: [bogus]".to_string(),
        ));
        assert_eq!(
            ApiError::from(contract).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        let outage = redis::RedisError::from((redis::ErrorKind::Io, "connection refused"));
        let answer = ApiError::from(outage);
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.code(), "redis_unavailable");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
