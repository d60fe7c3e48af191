//! Why a write did not commit, and what a student is told when a write
//! that can never succeed is undone.

use tokio_postgres::error::SqlState;
use uuid::Uuid;

use crate::sync::DbError;

/// Why a write did not commit.
#[derive(Debug)]
pub(super) enum WriteError {
    /// Worth retrying as is: the database or Redis is away or busy.
    Transient(String),
    /// Another writer advanced this section first: reread and replan.
    Conflict(Uuid),
    /// This data cannot be written, ever.
    Permanent {
        message: String,
        sqlstate: Option<String>,
    },
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Transient(e) => write!(f, "transient failure: {e}"),
            WriteError::Conflict(section) => {
                write!(f, "section {section} was advanced by another writer")
            }
            WriteError::Permanent { message, sqlstate } => {
                write!(
                    f,
                    "permanent failure ({}): {message}",
                    sqlstate.as_deref().unwrap_or("-")
                )
            }
        }
    }
}

impl From<tokio_postgres::Error> for WriteError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.code() {
            Some(state) if is_permanent(state) => WriteError::Permanent {
                message: e
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string()),
                sqlstate: Some(state.code().to_string()),
            },
            _ => WriteError::Transient(format!("{e:#}")),
        }
    }
}

/// No connection, or no answer in time, is worth retrying; an error
/// PostgreSQL answered with is classified as such.
impl<E: Into<WriteError> + std::fmt::Display> From<DbError<E>> for WriteError {
    fn from(e: DbError<E>) -> Self {
        match e {
            DbError::Failed(e) => e.into(),
            unanswered => WriteError::Transient(unanswered.to_string()),
        }
    }
}

impl From<redis::RedisError> for WriteError {
    fn from(e: redis::RedisError) -> Self {
        WriteError::Transient(format!("redis: {e}"))
    }
}

/// Integrity violations (23xxx) and data exceptions (22xxx) will fail
/// again however often they are retried; everything else may pass later.
pub(super) fn is_permanent(state: &SqlState) -> bool {
    let code = state.code();
    code.starts_with("23") || code.starts_with("22")
}

/// What a student sees as the reason an acknowledged registration was undone.
pub(super) fn reason_for(sqlstate: Option<&str>) -> &'static str {
    match sqlstate {
        Some("23503") => "the student or section record no longer exists",
        Some("23514") => "the section has no room in the system of record",
        Some("23505") => "it conflicts with an existing registration",
        _ => "it could not be saved",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_connection_or_no_answer_in_time_is_retried() {
        let unreachable: WriteError =
            DbError::<tokio_postgres::Error>::Unreachable(deadpool_postgres::PoolError::Closed)
                .into();
        assert!(matches!(unreachable, WriteError::Transient(_)));
        let late: WriteError = DbError::<tokio_postgres::Error>::Late.into();
        assert!(matches!(late, WriteError::Transient(m) if m.contains("did not answer")));
    }

    #[test]
    fn an_error_from_inside_the_call_keeps_its_class() {
        let conflict = Uuid::new_v4();
        let e: WriteError = DbError::Failed(WriteError::Conflict(conflict)).into();
        assert!(matches!(e, WriteError::Conflict(s) if s == conflict));
    }

    #[test]
    fn integrity_and_data_errors_are_permanent_others_are_not() {
        assert!(is_permanent(&SqlState::FOREIGN_KEY_VIOLATION));
        assert!(is_permanent(&SqlState::CHECK_VIOLATION));
        assert!(is_permanent(&SqlState::NUMERIC_VALUE_OUT_OF_RANGE));
        assert!(!is_permanent(&SqlState::T_R_SERIALIZATION_FAILURE));
        assert!(!is_permanent(&SqlState::QUERY_CANCELED));
        assert_eq!(reason_for(None), "it could not be saved");
    }
}
