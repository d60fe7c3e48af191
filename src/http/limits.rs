//! The rate limits at the HTTP boundary: whose buckets a request charges,
//! and the 429 it gets when one is empty. The buckets themselves are in
//! [`crate::seats::limits`].

use hyper::http::request::Parts;

use super::{auth, client::client_key, error::retry_after_secs, ApiError};
use crate::{
    access,
    domain::Role,
    metrics::{ACCESS_UNCHECKED, RATE_LIMITED, RATE_LIMIT_ERRORS, TOKENS_REVOKED},
    seats::{
        access::Access,
        limits::{AccessCheck, Verdict},
    },
    state::AppState,
};

/// What a route costs in limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// The client address, and the student when the token is valid.
    Api,
    /// The client address and the stricter login bucket of that address.
    Login,
}

/// A registration-blocking hold on the caller's own account, found by the
/// access check of this request ([`admit`]).
#[derive(Debug, Clone)]
pub struct CallerHold(pub String);

/// Charges the request's buckets (429 when one is empty) and checks a valid
/// token against its account's access record ([`crate::access`]), all in
/// one Redis round trip. A revoked token is marked ([`auth::TokenRevoked`]) for
/// [`auth::authenticate`] to answer 401 `token_revoked`. A token that stands leaves its principal in the
/// request's extensions, where [`auth::authenticate`] finds it; a missing or
/// invalid one is left for the handler to refuse (routes that need no token
/// answer anyway).
pub async fn admit(state: &AppState, req: &mut Parts, charge: Charge) -> Result<(), ApiError> {
    let limiter = &state.limiter;
    let limits_on = limiter.enabled();
    let principal = match charge {
        Charge::Api => auth::verify(state, req).ok(),
        Charge::Login => None,
    };
    let check = principal.map(|p| AccessCheck {
        student: p.student_id,
        epoch: p.epoch,
        // Admins act for many students at once (bulk imports, fixes on
        // registration day); their address bucket still applies.
        bucket: (limits_on && p.role != Role::Admin).then(|| limiter.student(p.student_id)),
    });
    let mut buckets = Vec::with_capacity(2);
    if limits_on {
        if let Some(client) = client_key(state, req) {
            buckets.push(limiter.address(&client));
            if charge == Charge::Login {
                buckets.push(limiter.login_address(&client));
            }
        }
    }
    let (verdict, access) = match limiter.charge(&state.redis, check.as_ref(), &buckets).await {
        Ok(answer) => answer,
        Err(e) => {
            // Failing open for the limits: a Redis blip must not turn every
            // route into an outage; the routes that need Redis answer 503 on
            // their own. The token is then checked against PostgreSQL below.
            metrics::counter!(RATE_LIMIT_ERRORS).increment(1);
            tracing::warn!(error = %e, "rate limits could not be checked; request let through");
            (Verdict::Allowed, None)
        }
    };
    if let Verdict::Limited { scope, retry_after } = verdict {
        metrics::counter!(RATE_LIMITED, "scope" => scope.label()).increment(1);
        return Err(ApiError::TooManyRequests {
            code: "rate_limited",
            detail: "too many requests; retry after the number of seconds in Retry-After",
            retry_after_secs: retry_after_secs(retry_after),
        });
    }
    let Some(principal) = principal else {
        return Ok(());
    };
    let access = match access {
        Some(Access::Stands { hold }) => Ok(hold),
        Some(Access::Revoked) => Err(()),
        // No copy in Redis (lost with a Redis restart), or Redis unreachable:
        // PostgreSQL decides, and the copy is stored for the next request
        // (this one request's student bucket goes uncharged). With
        // PostgreSQL away too, the signature decides: registration must go
        // on without PostgreSQL (SPEC §2), and no account can be changed
        // while it is away.
        Some(Access::Unknown) | None => match access::load(state, principal.student_id).await {
            Ok(record) if record.admits(principal.epoch) => Ok(record.hold),
            Ok(_) => Err(()),
            Err(e) => {
                metrics::counter!(ACCESS_UNCHECKED).increment(1);
                tracing::warn!(error = %e, "token accepted on its signature: its account could not be checked");
                Ok(None)
            }
        },
    };
    match access {
        Ok(hold) => {
            req.extensions.insert(principal);
            if let Some(hold) = hold {
                req.extensions.insert(CallerHold(hold));
            }
            Ok(())
        }
        Err(()) => {
            // Refused by the routes that need a token (auth::authenticate);
            // the others (the OpenAPI document) answer as without one.
            metrics::counter!(TOKENS_REVOKED).increment(1);
            req.extensions.insert(auth::TokenRevoked);
            Ok(())
        }
    }
}
