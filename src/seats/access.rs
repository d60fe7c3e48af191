//! What a student's tokens vouch for, kept in the student's slot
//! (`{u:<id>}:access`): a copy of PostgreSQL's token epoch, holds and
//! existence (sql/0006_student_access.sql). `lua/access.lua` checks a token
//! against it, in the same call that charges the student's rate limit
//! ([`super::limits::Limiter::charge`]); `lua/access_set.lua` stores it.

use std::time::Duration;

use redis::RedisResult;
use uuid::Uuid;

use super::{keys, Redis};
use crate::domain::AccessRecord;

/// What `lua/access.lua` said of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// The token stands; `hold` blocks registration when present.
    Stands { hold: Option<String> },
    /// The account changed since the token was minted, or is gone.
    Revoked,
    /// Redis has no record of the student yet (first request, expired copy,
    /// Redis restarted): load it from PostgreSQL, store it, ask again.
    Unknown,
}

impl Redis {
    /// Stores each record unless Redis has a newer one, in one round trip.
    /// A live account's copy does not expire (it is kept current); a gone
    /// one's lives `gone_ttl` (as long as a token could), then is forgotten.
    /// Returns how many were stored.
    pub async fn access_set(
        &self,
        records: &[(Uuid, AccessRecord)],
        gone_ttl: Duration,
    ) -> RedisResult<usize> {
        if records.is_empty() {
            return Ok(0);
        }
        let invocations: Vec<_> = records
            .iter()
            .map(|(student, record)| {
                let mut call = self.scripts().access_set.prepare_invoke();
                call.key(keys::student_access(self.namespace(), *student))
                    .arg(record.version)
                    .arg(record.epoch)
                    .arg(if record.gone { "1" } else { "0" })
                    .arg(record.hold.as_deref().unwrap_or(""))
                    .arg(if record.gone {
                        gone_ttl.as_millis().max(1) as u64
                    } else {
                        0
                    });
                call
            })
            .collect();
        let stored: Vec<i64> = self.pipelined(&invocations).await?;
        Ok(stored.iter().filter(|s| **s == 1).count())
    }

    /// Whether Redis holds a copy of each student's access record.
    pub async fn has_access_copies(&self, students: &[Uuid]) -> RedisResult<Vec<bool>> {
        self.exist(
            students
                .iter()
                .map(|s| keys::student_access(self.namespace(), *s)),
        )
        .await
    }
}
