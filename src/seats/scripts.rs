//! Typed calls of the `lua/` scripts. Each script is embedded, loaded once
//! and invoked by SHA (`redis::Script` reloads it after a NOSCRIPT, e.g.
//! when Redis restarted).

use std::time::Instant;

use redis::{RedisResult, Script, Value};
use uuid::Uuid;

use super::{event::Event, keys::SectionKeys, watch::RedisWatch, Redis};
use crate::metrics::SCRIPT_DURATION;

/// The compiled scripts, shared by every call.
pub struct Scripts {
    pub reserve: Script,
    pub drop: Script,
    pub compensate: Script,
    pub resize: Script,
    pub load: Script,
    pub idempotency: Script,
}

impl Scripts {
    pub fn new() -> Self {
        Self {
            reserve: Script::new(include_str!("../../lua/reserve.lua")),
            drop: Script::new(include_str!("../../lua/drop.lua")),
            compensate: Script::new(include_str!("../../lua/compensate.lua")),
            resize: Script::new(include_str!("../../lua/resize.lua")),
            load: Script::new(include_str!("../../lua/load.lua")),
            idempotency: Script::new(include_str!("../../lua/idempotency.lua")),
        }
    }

    /// Every script, for loading them all at start-up.
    pub fn all(&self) -> [&Script; 6] {
        [
            &self.reserve,
            &self.drop,
            &self.compensate,
            &self.resize,
            &self.load,
            &self.idempotency,
        ]
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}

/// What `reserve.lua` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    NotLoaded,
    AlreadyEnrolled,
    AlreadyWaitlisted { position: i64 },
    Inactive,
    WindowClosed,
    Enrolled { seq: i64 },
    Waitlisted { seq: i64, position: i64 },
    Full,
}

/// What `drop.lua` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    NotLoaded,
    NotRegistered,
    Dropped { seq: i64, promoted: Option<Uuid> },
    LeftWaitlist { seq: i64 },
}

/// What `compensate.lua` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compensate {
    Already,
    NothingToUndo,
    NotUndoable,
    Reverted { seq: i64, promoted: Option<Uuid> },
}

/// What `resize.lua` decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resize {
    NotLoaded,
    BelowEnrolled { enrolled: i64 },
    Resized { seq: i64, promoted: Vec<Uuid> },
}

/// What `load.lua` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    Loaded,
    AlreadyPresent,
    OutboxPending,
}

/// When `load.lua` may replace a section's existing state (see its header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rebuild {
    /// Only where the section has no state.
    Absent,
    /// Also where Redis's sequence is below PostgreSQL's `last_seq`.
    Behind,
    /// Whatever Redis holds, once nothing beyond `last_seq` waits in the outbox.
    Force,
}

impl Rebuild {
    fn as_str(self) -> &'static str {
        match self {
            Rebuild::Absent => "absent",
            Rebuild::Behind => "behind",
            Rebuild::Force => "force",
        }
    }
}

/// A section as PostgreSQL holds it, for `load.lua`.
#[derive(Debug, Clone)]
pub struct SectionSnapshot {
    pub section: Uuid,
    pub capacity: i32,
    pub waitlist_limit: i32,
    pub active: bool,
    pub registration_start_ms: i64,
    pub registration_end_ms: i64,
    pub last_seq: i64,
    pub enrolled: Vec<Uuid>,
    /// In position order.
    pub waitlisted: Vec<Uuid>,
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Int(i) => Some(*i),
        other => text(Some(other))?.parse().ok(),
    }
}

fn uuid(v: Option<&Value>) -> Option<Uuid> {
    Uuid::try_parse(&text(v)?).ok()
}

fn unexpected(script: &str, reply: &[Value]) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Parse,
        "unexpected script reply",
        format!("{script}: {reply:?}"),
    ))
}

impl Redis {
    async fn run(
        &self,
        name: &'static str,
        invocation: redis::ScriptInvocation<'_>,
    ) -> RedisResult<Vec<Value>> {
        let started = Instant::now();
        let mut conn = self.conn();
        let reply = invocation.invoke_async(&mut conn).await;
        metrics::histogram!(SCRIPT_DURATION, "script" => name)
            .record(started.elapsed().as_secs_f64());
        reply
    }

    pub fn section_keys(&self, section: Uuid) -> SectionKeys {
        SectionKeys::new(self.namespace(), section)
    }

    /// Enrolls, waitlists or refuses `student` in `section` (`reserve.lua`).
    pub async fn reserve(&self, section: Uuid, student: Uuid, now_ms: i64) -> RedisResult<Reserve> {
        let permit = self.watch().enter().ok_or_else(RedisWatch::closed_error)?;
        let keys = self.section_keys(section);
        let mut call = self.scripts().reserve.prepare_invoke();
        call.key(&keys.core()[..])
            .key(&keys.reverted)
            .arg(student.to_string())
            .arg(now_ms);
        let reply = self.run("reserve", call).await?;
        if !permit.still_valid() {
            return Err(RedisWatch::changed_error());
        }
        let code = text(reply.first()).unwrap_or_default();
        Ok(match code.as_str() {
            "not_loaded" => Reserve::NotLoaded,
            "already_enrolled" => Reserve::AlreadyEnrolled,
            "already_waitlisted" => Reserve::AlreadyWaitlisted {
                position: int(reply.get(2)).ok_or_else(|| unexpected("reserve", &reply))?,
            },
            "inactive" => Reserve::Inactive,
            "window_closed" => Reserve::WindowClosed,
            "enrolled" => Reserve::Enrolled {
                seq: int(reply.get(1)).ok_or_else(|| unexpected("reserve", &reply))?,
            },
            "waitlisted" => Reserve::Waitlisted {
                seq: int(reply.get(1)).ok_or_else(|| unexpected("reserve", &reply))?,
                position: int(reply.get(2)).ok_or_else(|| unexpected("reserve", &reply))?,
            },
            "full" => Reserve::Full,
            _ => return Err(unexpected("reserve", &reply)),
        })
    }

    /// Drops `student` from `section`'s roster or waitlist (`drop.lua`).
    pub async fn drop_student(
        &self,
        section: Uuid,
        student: Uuid,
        now_ms: i64,
    ) -> RedisResult<Drop> {
        let permit = self.watch().enter().ok_or_else(RedisWatch::closed_error)?;
        let keys = self.section_keys(section);
        let mut call = self.scripts().drop.prepare_invoke();
        call.key(&keys.core()[..])
            .key(&keys.reverted)
            .arg(student.to_string())
            .arg(now_ms);
        let reply = self.run("drop", call).await?;
        if !permit.still_valid() {
            return Err(RedisWatch::changed_error());
        }
        let code = text(reply.first()).unwrap_or_default();
        Ok(match code.as_str() {
            "not_loaded" => Drop::NotLoaded,
            "not_registered" => Drop::NotRegistered,
            "dropped" => Drop::Dropped {
                seq: int(reply.get(1)).ok_or_else(|| unexpected("drop", &reply))?,
                promoted: uuid(reply.get(2)),
            },
            "left_waitlist" => Drop::LeftWaitlist {
                seq: int(reply.get(1)).ok_or_else(|| unexpected("drop", &reply))?,
            },
            _ => return Err(unexpected("drop", &reply)),
        })
    }

    /// Undoes `event` once (`compensate.lua`).
    pub async fn compensate(
        &self,
        event: &Event,
        reason: &str,
        now_ms: i64,
    ) -> RedisResult<Compensate> {
        let keys = self.section_keys(event.section);
        let mut call = self.scripts().compensate.prepare_invoke();
        call.key(&keys.core()[..])
            .key(&keys.reverted)
            .key(&keys.undone)
            .arg(event.seq)
            .arg(event.kind.as_str())
            .arg(event.student.map(|s| s.to_string()).unwrap_or_default())
            .arg(reason)
            .arg(now_ms);
        let reply = self.run("compensate", call).await?;
        let code = text(reply.first()).unwrap_or_default();
        Ok(match code.as_str() {
            "already" => Compensate::Already,
            "nothing_to_undo" => Compensate::NothingToUndo,
            "not_undoable" => Compensate::NotUndoable,
            "reverted" => Compensate::Reverted {
                seq: int(reply.get(1)).ok_or_else(|| unexpected("compensate", &reply))?,
                promoted: uuid(reply.get(2)),
            },
            _ => return Err(unexpected("compensate", &reply)),
        })
    }

    /// Changes a section's capacity, waitlist limit or active flag (`resize.lua`).
    pub async fn resize(
        &self,
        section: Uuid,
        capacity: Option<i32>,
        waitlist_limit: Option<i32>,
        active: Option<bool>,
        now_ms: i64,
    ) -> RedisResult<Resize> {
        let permit = self.watch().enter().ok_or_else(RedisWatch::closed_error)?;
        let keys = self.section_keys(section);
        let opt = |v: Option<i32>| v.map(|v| v.to_string()).unwrap_or_default();
        let mut call = self.scripts().resize.prepare_invoke();
        call.key(&keys.core()[..])
            .arg(opt(capacity))
            .arg(opt(waitlist_limit))
            .arg(active.map(|a| if a { "1" } else { "0" }).unwrap_or(""))
            .arg(now_ms);
        let reply = self.run("resize", call).await?;
        if !permit.still_valid() {
            return Err(RedisWatch::changed_error());
        }
        let code = text(reply.first()).unwrap_or_default();
        Ok(match code.as_str() {
            "not_loaded" => Resize::NotLoaded,
            "below_enrolled" => Resize::BelowEnrolled {
                enrolled: int(reply.get(1)).ok_or_else(|| unexpected("resize", &reply))?,
            },
            "resized" => Resize::Resized {
                seq: int(reply.get(1)).ok_or_else(|| unexpected("resize", &reply))?,
                promoted: reply.iter().skip(2).filter_map(|v| uuid(Some(v))).collect(),
            },
            _ => return Err(unexpected("resize", &reply)),
        })
    }

    /// Builds a section's state from PostgreSQL if Redis lacks it (`load.lua`).
    pub async fn load(&self, snapshot: &SectionSnapshot) -> RedisResult<Load> {
        Ok(self.rebuild(snapshot, Rebuild::Absent).await?.0)
    }

    /// Builds a section's state from PostgreSQL when `mode` allows it
    /// (`load.lua`); also returns how many outbox entries a replacement
    /// discarded.
    pub async fn rebuild(
        &self,
        snapshot: &SectionSnapshot,
        mode: Rebuild,
    ) -> RedisResult<(Load, i64)> {
        let keys = self.section_keys(snapshot.section);
        let mut call = self.scripts().load.prepare_invoke();
        call.key(&keys.core()[..])
            .arg(snapshot.capacity)
            .arg(snapshot.waitlist_limit)
            .arg(if snapshot.active { "1" } else { "0" })
            .arg(snapshot.registration_start_ms)
            .arg(snapshot.registration_end_ms)
            .arg(snapshot.last_seq)
            .arg(mode.as_str())
            .arg(snapshot.enrolled.len());
        for id in snapshot.enrolled.iter().chain(&snapshot.waitlisted) {
            call.arg(id.to_string());
        }
        let started = Instant::now();
        // Bulk connection: a large roster must not delay students' requests
        // queued behind it on the shared socket.
        let mut conn = self.bulk().await?;
        let (code, dropped): (i64, i64) = call.invoke_async(&mut *conn).await?;
        metrics::histogram!(SCRIPT_DURATION, "script" => "load")
            .record(started.elapsed().as_secs_f64());
        let outcome = match code {
            1 => Load::Loaded,
            0 => Load::AlreadyPresent,
            _ => Load::OutboxPending,
        };
        Ok((outcome, dropped))
    }

    /// Loads every script into Redis's script cache (start-up and readiness).
    pub async fn load_scripts(&self) -> RedisResult<()> {
        let mut conn = self.conn();
        for script in self.scripts().all() {
            script.load_async(&mut conn).await?;
        }
        Ok(())
    }
}
