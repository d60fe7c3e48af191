//! The student's slot of the registration rules: their claims and their
//! schedule (`lua/claim.lua`, `lua/settle.lua`, `lua/schedule_init.lua`;
//! the protocol is in `crate::rules`). The student's own facts travel in
//! their access record (`lua/access_set.lua`).

use std::time::Duration;

use redis::{RedisError, RedisResult, Value};
use uuid::Uuid;

use super::{keys, Redis};
use crate::{rules::Refusal, store::rules::SectionFacts};

/// What `lua/claim.lua` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The student's access record lacks the rules' facts (written before
    /// the rules existed): load it again and ask again.
    NotLoaded,
    /// The student has no schedule in Redis (first registration, or Redis
    /// lost it): rebuild it and ask again.
    NoSchedule,
    /// Nothing claimed: these entries (section, stamp) may be stale; settle
    /// them from their sections and ask again without verifying.
    Verify(Vec<(Uuid, String)>),
    /// Per section in request order: None = claimed (stamp, deadline), or
    /// the rule that refused it.
    Decided {
        stamp: String,
        deadline: i64,
        results: Vec<Option<Refusal>>,
    },
}

/// What becomes of a claim or schedule entry (`lua/settle.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The section enrolled or waitlisted the student.
    Held,
    /// The section waitlisted the student where a freed seat is offered
    /// (`lua/lib/seat.lua`): the place turns into a seat only by a new
    /// registration, so a semester counting enrolled credits only does not
    /// count it (`lua/claim.lua`, entry w).
    HeldOnOffers,
    /// The section has the student (`lua/judge.lua`): a claim becomes held,
    /// a held entry (h or w) stays as it is.
    Kept,
    /// The section did not: the claim's credits are free again, and a held
    /// entry is gone (the section is the truth).
    Release,
    /// The claim came to nothing and says nothing about the seat (the
    /// request gave up before deciding it, or its seat script refused the
    /// claim): a claimed entry is freed, a held one (claimed again) stays.
    Void,
    /// The student left the section: remove their held entry.
    Dropped,
}

/// The semester-level arguments of a claim.
pub struct ClaimArgs<'a> {
    pub semester: Uuid,
    pub group_windows: &'a str,
    pub credit_limit: Option<i32>,
    /// The limit counts waitlist places of offer sections (entries w).
    pub count_waitlisted: bool,
    pub ttl: Duration,
    pub grace: Duration,
    pub verify: bool,
}

fn contract(detail: String) -> RedisError {
    RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "claim.lua answered outside its contract",
        detail,
    ))
}

fn decode<T: redis::FromRedisValue>(reply: &[Value], at: usize) -> RedisResult<T> {
    let value = reply
        .get(at)
        .cloned()
        .ok_or_else(|| contract(format!("no value at {at}")))?;
    Ok(redis::from_redis_value(value)?)
}

impl Redis {
    /// Checks the student's rules for `sections` (each with its facts) and
    /// claims those that pass (`lua/claim.lua`).
    pub async fn claim_rules(
        &self,
        student: Uuid,
        args: &ClaimArgs<'_>,
        sections: &[(Uuid, &SectionFacts)],
    ) -> RedisResult<Claim> {
        let ns = self.namespace();
        let mut call = self.scripts().claim.prepare_invoke();
        call.key(keys::student_access(ns, student))
            .key(keys::student_completed(ns, student))
            .key(keys::student_schedule(ns, student))
            .arg(args.semester.to_string())
            .arg(args.group_windows)
            .arg(args.credit_limit.map(|l| l.to_string()).unwrap_or_default())
            .arg(args.ttl.as_millis() as u64)
            .arg(args.grace.as_millis() as u64)
            .arg(if args.verify { "1" } else { "0" })
            .arg(if args.count_waitlisted { "1" } else { "0" });
        for (id, f) in sections {
            call.arg(id.to_string())
                .arg(f.course_id.to_string())
                .arg(f.credits)
                .arg(&f.meetings)
                .arg(if f.repeatable { "1" } else { "0" })
                .arg(&f.prerequisites)
                .arg(&f.corequisites);
        }
        let mut conn = self.conn();
        let reply: Vec<Value> = call.invoke_async(&mut conn).await?;
        let code: String = decode(&reply, 0)?;
        match code.as_str() {
            "not_loaded" => Ok(Claim::NotLoaded),
            "no_schedule" => Ok(Claim::NoSchedule),
            "verify" => {
                let flat: Vec<String> = decode(&reply, 1)?;
                let entries = flat
                    .chunks(2)
                    .filter_map(|pair| match pair {
                        [section, stamp] => Some((Uuid::try_parse(section).ok()?, stamp.clone())),
                        _ => None,
                    })
                    .collect();
                Ok(Claim::Verify(entries))
            }
            "ok" => {
                let stamp: i64 = decode(&reply, 1)?;
                let deadline: i64 = decode(&reply, 2)?;
                let flat: Vec<String> = decode(&reply, 3)?;
                if flat.len() != 2 * sections.len() {
                    return Err(contract(format!(
                        "{} results for {} sections",
                        flat.len() / 2,
                        sections.len()
                    )));
                }
                let results = flat
                    .chunks(2)
                    .map(|pair| Refusal::decode(&pair[0], &pair[1]).map_err(contract))
                    .collect::<RedisResult<_>>()?;
                Ok(Claim::Decided {
                    stamp: stamp.to_string(),
                    deadline,
                    results,
                })
            }
            other => Err(contract(format!("code {other:?}"))),
        }
    }

    /// Settles claims and entries (section, stamp, verdict) in the
    /// student's schedule (`lua/settle.lua`); returns how many changed.
    pub async fn settle(
        &self,
        student: Uuid,
        verdicts: &[(Uuid, &str, Verdict)],
    ) -> RedisResult<i64> {
        if verdicts.is_empty() {
            return Ok(0);
        }
        let ns = self.namespace();
        let mut call = self.scripts().settle.prepare_invoke();
        call.key(keys::student_schedule(ns, student))
            .key(keys::student_sections(ns, student));
        for (section, stamp, verdict) in verdicts {
            call.arg(section.to_string())
                .arg(*stamp)
                .arg(match verdict {
                    Verdict::Held => "h",
                    Verdict::HeldOnOffers => "w",
                    Verdict::Kept => "k",
                    Verdict::Release => "r",
                    Verdict::Void => "v",
                    Verdict::Dropped => "d",
                });
        }
        let mut conn = self.conn();
        call.invoke_async(&mut conn).await
    }

    /// Writes a rebuilt schedule (section, held entry) unless the student
    /// has one (`lua/schedule_init.lua`); true if written.
    pub async fn schedule_init(
        &self,
        student: Uuid,
        entries: &[(Uuid, String)],
    ) -> RedisResult<bool> {
        let mut call = self.scripts().schedule_init.prepare_invoke();
        call.key(keys::student_schedule(self.namespace(), student));
        for (section, entry) in entries {
            call.arg(section.to_string()).arg(entry);
        }
        let mut conn = self.conn();
        let written: i64 = call.invoke_async(&mut conn).await?;
        Ok(written == 1)
    }

    /// Fences the claim `stamp` of `student` in `section` and tells whether
    /// the section holds a place for them (`lua/judge.lua`): Some(true) or
    /// Some(false), final for that claim; None when the section is not in
    /// Redis (the fence stands; load it and judge again).
    pub async fn judge(
        &self,
        section: Uuid,
        student: Uuid,
        stamp: &str,
    ) -> RedisResult<Option<bool>> {
        let keys = self.section_keys(section);
        let mut call = self.scripts().judge.prepare_invoke();
        call.key(&keys.meta)
            .key(&keys.enrolled)
            .key(&keys.waitlist)
            .key(&keys.fence)
            .arg(student.to_string())
            .arg(stamp);
        let mut conn = self.conn();
        let verdict: i64 = call.invoke_async(&mut conn).await?;
        Ok(match verdict {
            1 => Some(true),
            0 => Some(false),
            _ => None,
        })
    }

    /// The student's schedule entries as stored (section → entry), for
    /// views and tests.
    pub async fn schedule(&self, student: Uuid) -> RedisResult<Vec<(Uuid, String)>> {
        let mut conn = self.conn();
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(keys::student_schedule(self.namespace(), student))
            .query_async(&mut conn)
            .await?;
        Ok(all
            .into_iter()
            .filter_map(|(k, v)| Some((Uuid::try_parse(&k).ok()?, v)))
            .collect())
    }
}
