//! A student's own registrations and waitlist entries. Another student's
//! resources answer 404, exactly like an unknown student: nothing leaks.

use hyper::{http::request::Parts, StatusCode};
use serde::Serialize;
use uuid::Uuid;

use super::{auth::authenticate, json, ApiError, ApiResult};
use crate::{startup::AppState, store::students};

#[derive(Serialize)]
struct List<T> {
    items: Vec<T>,
}

fn ensure_may_read(state: &AppState, req: &Parts, student_id: Uuid) -> Result<(), ApiError> {
    let principal = authenticate(state, &req.headers)?;
    if principal.may_act_for(student_id) {
        Ok(())
    } else {
        Err(ApiError::not_found("student"))
    }
}

pub async fn registrations(state: &AppState, req: &Parts, id: Uuid) -> ApiResult {
    ensure_may_read(state, req, id)?;
    let db = state.db.get().await?;
    let items = students::registrations(&db, id).await?;
    json(StatusCode::OK, &List { items })
}

pub async fn waitlist(state: &AppState, req: &Parts, id: Uuid) -> ApiResult {
    ensure_may_read(state, req, id)?;
    let db = state.db.get().await?;
    let items = students::waitlist(&db, id).await?;
    json(StatusCode::OK, &List { items })
}
