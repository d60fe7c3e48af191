//! `POST /auth/login` and the bearer-token check every other API route uses.

use hyper::{body::Incoming, header, http::request::Parts, HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use super::{body, json, ApiError, ApiResult};
use crate::{
    auth::{Principal, TokenError},
    domain::Role,
    metrics::LOGINS,
    startup::AppState,
    store,
};

/// The caller named by the `Authorization: Bearer` header, or 401.
pub fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let value = headers
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
pub fn authenticate_admin(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let principal = authenticate(state, headers)?;
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
}

/// Longest accepted password; Argon2 hashes any length, but nobody needs more
/// and a cap bounds the work an anonymous caller can ask for.
const MAX_PASSWORD_CHARS: usize = 1024;

pub async fn login(state: &AppState, req: &Parts, body: Incoming) -> ApiResult {
    let login: LoginRequest = body::json(req, body, state.settings.http.max_body_bytes).await?;
    if login.student_number.len() > 64 || login.password.chars().count() > MAX_PASSWORD_CHARS {
        return Err(invalid_credentials());
    }
    let db = state.db.get().await?;
    let account = store::students::credentials(&db, login.student_number.trim()).await?;
    drop(db);
    let (hash, identity) = match account {
        Some(c) => (Some(c.password_hash), Some((c.id, c.role, c.active))),
        None => (None, None),
    };
    let ok = state.passwords.verify(hash, login.password).await?;
    match identity {
        Some((id, role, active)) if ok => {
            metrics::counter!(LOGINS, "outcome" => "success").increment(1);
            json(
                StatusCode::OK,
                &LoginResponse {
                    access_token: state.tokens.mint(id, role, active),
                    token_type: "Bearer",
                    expires_in: state.tokens.ttl().as_secs(),
                },
            )
        }
        _ => {
            metrics::counter!(LOGINS, "outcome" => "invalid").increment(1);
            Err(invalid_credentials())
        }
    }
}

fn invalid_credentials() -> ApiError {
    ApiError::Unauthorized {
        code: "invalid_credentials",
        detail: "unknown student number or wrong password",
    }
}
