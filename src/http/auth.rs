//! `POST /auth/login` and the bearer-token check every other API route uses.

use hyper::{body::Incoming, header, http::request::Parts, StatusCode};
use serde::{Deserialize, Serialize};

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use super::{body, client::client_key, error, json, ApiError, ApiResult};
use crate::{
    auth::{Principal, TokenError},
    domain::Role,
    metrics::{LOGINS, LOGIN_LOCKS, RATE_LIMITED, RATE_LIMIT_ERRORS},
    seats::limits::{ClientKey, LoginAttempt, LoginGate},
    state::AppState,
    store,
};

/// Set by [`super::limits::admit`] when the request's token no longer
/// stands: its account changed or is gone since the token was issued.
#[derive(Debug, Clone, Copy)]
pub struct TokenRevoked;

/// The caller named by the `Authorization: Bearer` header, or 401. Every
/// route that calls this is charged by [`super::limits::admit`], which
/// verified the token, checked it against its account and left the
/// principal in the request's extensions; without one, the token is
/// missing, invalid or expired, and this says which.
pub fn authenticate(state: &AppState, req: &Parts) -> Result<Principal, ApiError> {
    if let Some(principal) = req.extensions.get::<Principal>() {
        return Ok(*principal);
    }
    if req.extensions.get::<TokenRevoked>().is_some() {
        return Err(ApiError::Unauthorized {
            code: "token_revoked",
            detail: "this token no longer stands: the account changed or was removed since it was issued; log in again",
        });
    }
    verify(state, req)?;
    // A valid signature that admit did not stamp: the route's table entry
    // charges nothing, so its token was never checked against the account.
    Err(ApiError::Internal(anyhow::anyhow!(
        "{} {}: a route that authenticates must be charged (router.rs)",
        req.method,
        req.uri.path()
    )))
}

/// The token's signature and lifetime only (its account is checked by
/// [`super::limits::admit`]).
pub(super) fn verify(state: &AppState, req: &Parts) -> Result<Principal, ApiError> {
    let value = req
        .headers
        .get(header::AUTHORIZATION)
        .ok_or(ApiError::Unauthorized {
            code: "missing_token",
            detail: "an Authorization: Bearer token is required",
        })?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::Unauthorized {
            code: "invalid_token",
            detail: "the Authorization header must be `Bearer <token>`",
        })?;
    state.tokens.verify(token).map_err(|e| match e {
        TokenError::Expired => ApiError::Unauthorized {
            code: "token_expired",
            detail: "the token has expired; log in again",
        },
        TokenError::Invalid => ApiError::Unauthorized {
            code: "invalid_token",
            detail: "the token is invalid",
        },
    })
}

/// The caller, who must be an admin: 401 without a valid token, 403 for a student.
pub fn authenticate_admin(state: &AppState, req: &Parts) -> Result<Principal, ApiError> {
    let principal = authenticate(state, req)?;
    if principal.role != Role::Admin {
        return Err(ApiError::Forbidden);
    }
    Ok(principal)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    student_number: String,
    password: String,
}

#[derive(Serialize)]
struct LoginResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    /// Whose token it is: the id the student's own paths take (or `me`).
    student_id: uuid::Uuid,
    role: &'static str,
}

/// Longest accepted password; Argon2 hashes any length, but nobody needs more
/// and a cap bounds the work an anonymous caller can ask for.
const MAX_PASSWORD_CHARS: usize = 1024;

pub async fn login(state: &AppState, req: &Parts, body: Incoming) -> ApiResult {
    let login: LoginRequest = body::json(req, body, state.settings.http.max_body_bytes).await?;
    // No student number has a control character, and PostgreSQL refuses a
    // NUL in text outright (that would be a 500), so such input fails as
    // wrong credentials before reaching it.
    if login.student_number.len() > 64
        || login.student_number.contains(char::is_control)
        || login.password.chars().count() > MAX_PASSWORD_CHARS
    {
        return Err(invalid_credentials());
    }
    let student_number = login.student_number.trim();
    let guard = LoginGuard::new(state, req, student_number);
    // Counted before the password is checked: parallel guesses all count.
    let attempt = match guard.begin().await {
        Ok(attempt) => attempt,
        Err(wait) => {
            metrics::counter!(LOGINS, "outcome" => "locked").increment(1);
            return Err(ApiError::TooManyRequests {
                code: "login_backoff",
                detail: "too many login attempts for this account; retry after the number of seconds in Retry-After",
                retry_after_secs: error::retry_after_secs(wait),
            });
        }
    };
    let db = state.db.get().await?;
    let account = store::students::credentials(&db, student_number).await?;
    drop(db);
    let (hash, identity) = match account {
        Some(c) => (
            Some(c.password_hash),
            Some((c.id, c.role, c.active, c.access)),
        ),
        None => (None, None),
    };
    let ok = state.passwords.verify(hash, login.password).await?;
    match identity {
        Some((id, role, active, access)) if ok => {
            metrics::counter!(LOGINS, "outcome" => "success").increment(1);
            guard.succeeded(attempt).await;
            // The copy the first request checks, so it finds one in Redis.
            if let Err(e) = crate::access::store(state, id, &access).await {
                tracing::warn!(error = %e, "access record could not be stored at login");
            }
            let mut response = json(
                StatusCode::OK,
                &LoginResponse {
                    access_token: state.tokens.mint_at(id, role, active, access.epoch),
                    token_type: "Bearer",
                    expires_in: state.tokens.ttl().as_secs(),
                    student_id: id,
                    role: role.as_str(),
                },
            )?;
            // A bearer token must not be kept by any cache (RFC 6749 §5.1).
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            );
            Ok(response)
        }
        _ => {
            metrics::counter!(LOGINS, "outcome" => "invalid").increment(1);
            Err(invalid_credentials())
        }
    }
}

/// The failed-login throttling of one account seen from one address, when
/// rate limits are on ([`crate::seats::limits::Limiter::login_begin`]).
/// Redis trouble lets the attempt through (logged and counted): the Argon2
/// cost and `auth.max_concurrent_hashes` still bound a guesser.
struct LoginGuard<'a> {
    state: &'a AppState,
    student_number: &'a str,
    client: ClientKey,
}

impl<'a> LoginGuard<'a> {
    fn new(state: &'a AppState, req: &Parts, student_number: &'a str) -> Self {
        Self {
            state,
            student_number,
            client: client_key(state, req)
                .unwrap_or_else(|| ClientKey::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED))),
        }
    }

    /// Counts the attempt; `Err(wait)` when this account is closed to this
    /// address for now.
    async fn begin(&self) -> Result<LoginAttempt, Duration> {
        let limiter = &self.state.limiter;
        let gate = self
            .ask(limiter.login_begin(&self.state.redis, self.student_number, &self.client))
            .await;
        match gate {
            None => Ok(LoginAttempt::default()),
            Some(LoginGate::Go(attempt)) => {
                if let Some(lock) = attempt.started_lock {
                    metrics::counter!(LOGIN_LOCKS).increment(1);
                    tracing::info!(
                        lock_ms = lock.as_millis() as u64,
                        "login attempts of an account from one address locked"
                    );
                }
                Ok(attempt)
            }
            Some(LoginGate::PairLocked(wait)) => {
                metrics::counter!(RATE_LIMITED, "scope" => "account_address").increment(1);
                Err(wait)
            }
            Some(LoginGate::AccountClosed(wait)) => {
                metrics::counter!(RATE_LIMITED, "scope" => "account").increment(1);
                tracing::warn!(
                    wait_ms = wait.as_millis() as u64,
                    "an account's login attempts across all addresses are spent"
                );
                Err(wait)
            }
        }
    }

    async fn succeeded(&self, attempt: LoginAttempt) {
        let limiter = &self.state.limiter;
        self.ask(limiter.login_succeeded(
            &self.state.redis,
            self.student_number,
            &self.client,
            attempt,
        ))
        .await;
    }

    /// Runs `call` (a future does nothing until awaited) when the limits
    /// are on; a Redis failure is logged, counted and treated as "no answer".
    async fn ask<T>(&self, call: impl Future<Output = redis::RedisResult<T>>) -> Option<T> {
        if !self.state.limiter.enabled() {
            return None;
        }
        call.await
            .map_err(|e| {
                metrics::counter!(RATE_LIMIT_ERRORS).increment(1);
                tracing::warn!(error = %e, "failed-login throttling could not be checked");
            })
            .ok()
    }
}

fn invalid_credentials() -> ApiError {
    ApiError::Unauthorized {
        code: "invalid_credentials",
        detail: "unknown student number or wrong password",
    }
}
