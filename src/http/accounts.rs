//! Admins change accounts, and the change holds from the very next request:
//! `GET`/`PATCH`/`DELETE /api/v1/admin/students/{id}` and
//! `POST /api/v1/admin/students/{id}/revoke-tokens`.
//!
//! PostgreSQL records the change (its triggers move the account's token
//! epoch on for a new role, status or password, sql/0006_student_access.sql);
//! then the account's access record is stored in Redis before the answer
//! ([`crate::access`]), so no token minted before a revocation is accepted
//! once the admin has been answered, by any server.

use hyper::{body::Incoming, http::request::Parts, StatusCode};
use serde::Deserialize;
use uuid::Uuid;

use super::{auth::authenticate_admin, body, json, ApiError, ApiResult};
use crate::{
    access,
    domain::{AccessRecord, EnrollmentStatus, Role},
    state::AppState,
    store::{self, students},
};

/// Most holds one account may carry.
const MAX_HOLDS: usize = 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountPatch {
    #[serde(default)]
    enrollment_status: Option<EnrollmentStatus>,
    #[serde(default)]
    role: Option<Role>,
    /// The whole set afterwards; `[]` lifts every hold.
    #[serde(default)]
    holds: Option<Vec<String>>,
}

fn validation(detail: impl Into<String>) -> ApiError {
    ApiError::unprocessable("validation_failed", detail)
}

fn check_holds(holds: &[String]) -> Result<(), ApiError> {
    if holds.len() > MAX_HOLDS {
        return Err(validation(format!("at most {MAX_HOLDS} holds")));
    }
    let well_formed = |code: &str| {
        let mut chars = code.chars();
        code.len() <= 40
            && chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    if let Some(bad) = holds.iter().find(|h| !well_formed(h)) {
        return Err(validation(format!(
            "hold {bad:?} is not a code: 1 to 40 of a-z, 0-9 and _, starting with a letter"
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(holds.len());
    if !holds.iter().all(|h| seen.insert(h)) {
        return Err(validation("holds must not repeat"));
    }
    Ok(())
}

/// The account, or 404.
async fn account_of(state: &AppState, id: Uuid) -> Result<students::Account, ApiError> {
    let db = state.db.get().await?;
    students::account(&db, id)
        .await?
        .ok_or(ApiError::StudentNotFound)
}

/// Puts a changed account's record in Redis before the admin is answered.
/// The change is committed already; if Redis cannot take the record, the
/// answer says so (503) and repeating the request (which changes nothing
/// more in PostgreSQL) stores it. Meanwhile the NOTIFY listener of every
/// server tries too.
///
/// A student who may no longer register leaves their waitlists before the
/// answer too. Storing the record withdraws them only when it is the store
/// that takes the right away; this server's NOTIFY listener may have stored
/// it first and still be withdrawing, so this withdraws again (a student
/// already off every waitlist costs one read).
async fn apply(state: &AppState, id: Uuid, record: &AccessRecord) -> Result<(), ApiError> {
    let not_in_force = |e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, student = %id, "account changed, but its access record is not in Redis yet");
        ApiError::Unavailable {
            code: "change_not_in_force",
            detail: "the change is saved, but not yet in force on every server; repeat the request",
            retry_after_secs: 1,
        }
    };
    access::store(state, id, record)
        .await
        .map_err(|e| not_in_force(&e))?;
    if !record.gone && (!record.may_register || record.hold.is_some()) {
        state
            .registrar
            .withdraw_waitlists(id, crate::domain::now_ms())
            .await
            .map_err(|e| not_in_force(&e))?;
    }
    Ok(())
}

pub async fn get(state: &AppState, req: &Parts, id: Uuid) -> ApiResult {
    authenticate_admin(state, req)?;
    json(StatusCode::OK, &account_of(state, id).await?)
}

/// An admin may not take their own rights away, revoke their own tokens or
/// delete themselves: a slip would lock the last admin out. Another admin can.
fn not_own_account(admin: Uuid, id: Uuid) -> Result<(), ApiError> {
    if admin == id {
        return Err(ApiError::Conflict {
            code: "own_account",
            detail: "an admin cannot change their own role or status, revoke their own tokens or delete themselves; another admin can".into(),
        });
    }
    Ok(())
}

pub async fn patch(state: &AppState, req: &Parts, body: Incoming, id: Uuid) -> ApiResult {
    let admin = authenticate_admin(state, req)?;
    let patch: AccountPatch = body::json(req, body, state.settings.http.max_body_bytes).await?;
    if patch.enrollment_status.is_none() && patch.role.is_none() && patch.holds.is_none() {
        return Err(validation(
            "name at least one of enrollment_status, role, holds",
        ));
    }
    if let Some(holds) = &patch.holds {
        check_holds(holds)?;
    }
    if patch.enrollment_status.is_some() || patch.role.is_some() {
        not_own_account(admin.student_id, id)?;
    }
    let change = students::AccountChange {
        enrollment_status: patch.enrollment_status,
        role: patch.role,
        holds: patch.holds.as_deref(),
        revoke_tokens: false,
    };
    change_and_answer(state, id, &change).await
}

pub async fn revoke_tokens(state: &AppState, req: &Parts, id: Uuid) -> ApiResult {
    let admin = authenticate_admin(state, req)?;
    not_own_account(admin.student_id, id)?;
    let change = students::AccountChange {
        revoke_tokens: true,
        ..Default::default()
    };
    change_and_answer(state, id, &change).await
}

async fn change_and_answer(
    state: &AppState,
    id: Uuid,
    change: &students::AccountChange<'_>,
) -> ApiResult {
    let record = {
        let mut db = state.db.get().await?;
        students::change_account(&mut db, id, change)
            .await?
            .ok_or(ApiError::StudentNotFound)?
    };
    apply(state, id, &record).await?;
    let account = account_of(state, id).await?;
    tracing::info!(
        student = %id,
        enrollment_status = %account.enrollment_status,
        role = %account.role,
        holds = account.holds.len(),
        token_epoch = account.token_epoch,
        "account changed by an admin"
    );
    json(StatusCode::OK, &account)
}

/// Deletes an account that has never registered or waitlisted (its history
/// is kept otherwise: 409 `has_records`; set its status instead). Its
/// tokens are refused from the next request on.
pub async fn delete(state: &AppState, req: &Parts, id: Uuid) -> ApiResult {
    let admin = authenticate_admin(state, req)?;
    not_own_account(admin.student_id, id)?;
    // An enrolment or waitlist place already answered may not be in
    // PostgreSQL yet (the shards write it within `sync.batch_linger_ms` and
    // a transaction): it is a record too. Deleting the account would make
    // its write fail and take the answered place back. Redis away: 503.
    if holds_a_place(state, id).await? {
        return Err(has_records());
    }
    let deleted = {
        let db = state.db.get().await?;
        students::delete_account(&db, id).await.map_err(|e| {
            if store::foreign_key_violation(&e).is_some() {
                has_records()
            } else {
                e.into()
            }
        })?
    };
    if !deleted {
        return Err(ApiError::StudentNotFound);
    }
    apply(state, id, &AccessRecord::gone()).await?;
    tracing::info!(student = %id, "account deleted by an admin");
    Ok(super::empty(StatusCode::NO_CONTENT))
}

fn has_records() -> ApiError {
    ApiError::Conflict {
        code: "has_records",
        detail: "the student has registrations or waitlist entries; change their enrollment_status instead".into(),
    }
}

/// Whether Redis has `student` enrolled or waitlisted in a section they
/// registered in through this service (persisted or not).
async fn holds_a_place(state: &AppState, student: Uuid) -> Result<bool, ApiError> {
    let sections = state.redis.remembered_sections(student).await?;
    if sections.is_empty() {
        return Ok(false);
    }
    let standings = state.redis.standings(student, &sections).await?;
    Ok(standings
        .iter()
        .any(|s| s.enrolled || s.waitlist_position.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_codes_are_short_lowercase_words_without_repeats() {
        let holds = |codes: &[&str]| codes.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        assert!(check_holds(&holds(&["financial", "advising_2"])).is_ok());
        assert!(check_holds(&[]).is_ok());
        for bad in [&["Financial"][..], &["2fa"], &[""], &["a b"], &["x", "x"]] {
            assert!(check_holds(&holds(bad)).is_err(), "{bad:?}");
        }
        assert!(check_holds(&holds(&[&"a".repeat(41)])).is_err());
        let many: Vec<String> = (0..=MAX_HOLDS).map(|i| format!("h{i}")).collect();
        assert!(check_holds(&many).is_err());
    }
}
