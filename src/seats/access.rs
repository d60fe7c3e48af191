//! What a student's tokens vouch for, kept in the student's slot
//! (`{u:<id>}:access`): a copy of PostgreSQL's token epoch, holds and
//! existence (sql/0006_student_access.sql). `lua/access.lua` checks a token
//! against it, in the same call that charges the student's rate limit
//! ([`super::limits::Limiter::charge`]); `lua/access_set.lua` stores it.

use std::time::Duration;

use redis::RedisResult;
use uuid::Uuid;

use super::{keys, Redis};
use crate::domain::{AccessRecord, StudentFacts};

/// The access record's fields for a student's rule facts
/// (`lua/access_set.lua`, read by `lua/claim.lua`).
fn fact_fields(facts: &StudentFacts) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    for (semester, code) in &facts.groups {
        fields.push((format!("g:{semester}"), code.clone()));
    }
    for (semester, limit) in &facts.credit_limits {
        fields.push((format!("c:{semester}"), limit.to_string()));
    }
    let mut permits: Vec<(Uuid, Vec<&str>)> = Vec::new();
    for (section, rule) in &facts.permits {
        match permits.last_mut() {
            Some((s, rules)) if s == section => rules.push(rule),
            _ => permits.push((*section, vec![rule])),
        }
    }
    for (section, rules) in permits {
        fields.push((format!("p:{section}"), rules.join(",")));
    }
    fields
}

/// What [`Redis::access_set`] stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    /// Records stored (the others were older than Redis's).
    pub stored: usize,
    /// Students whose stored record took away the right to register (a new
    /// hold): they leave their waitlists.
    pub lost_eligibility: Vec<Uuid>,
}

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
    /// Returns what was stored.
    ///
    /// `schedules`, one per record when given: the schedule entries to
    /// start the student's schedule with if they have none (the places of
    /// [`AccessRecord::places`] with their catalogue facts).
    pub async fn access_set(
        &self,
        records: &[(Uuid, AccessRecord)],
        schedules: Option<&[Vec<(Uuid, String)>]>,
        gone_ttl: Duration,
    ) -> RedisResult<Stored> {
        if records.is_empty() {
            return Ok(Stored::default());
        }
        let invocations: Vec<_> = records
            .iter()
            .enumerate()
            .map(|(i, (student, record))| {
                let mut call = self.scripts().access_set.prepare_invoke();
                call.key(keys::student_access(self.namespace(), *student))
                    .key(keys::student_completed(self.namespace(), *student))
                    .key(keys::student_schedule(self.namespace(), *student))
                    .key(keys::student_sections(self.namespace(), *student))
                    .arg(record.version)
                    .arg(record.epoch)
                    .arg(match (record.gone, record.may_register) {
                        (true, _) => "1",
                        (false, false) => "2",
                        (false, true) => "0",
                    })
                    .arg(record.hold.as_deref().unwrap_or(""))
                    .arg(if record.gone {
                        gone_ttl.as_millis().max(1) as u64
                    } else {
                        0
                    });
                let fields = fact_fields(&record.facts);
                call.arg(fields.len());
                for (field, value) in &fields {
                    call.arg(field).arg(value);
                }
                call.arg(record.facts.completed.len());
                for course in &record.facts.completed {
                    call.arg(course.to_string());
                }
                match schedules.and_then(|s| s.get(i)) {
                    Some(entries) if !record.gone => {
                        call.arg("1");
                        for (section, entry) in entries {
                            call.arg(section.to_string()).arg(entry);
                        }
                    }
                    _ => {
                        call.arg("0");
                    }
                }
                call
            })
            .collect();
        let stored: Vec<i64> = self.pipelined(&invocations).await?;
        Ok(Stored {
            stored: stored.iter().filter(|s| **s != 0).count(),
            lost_eligibility: records
                .iter()
                .zip(&stored)
                .filter(|(_, s)| **s == 2)
                .map(|((student, _), _)| *student)
                .collect(),
        })
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
