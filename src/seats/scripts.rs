//! Typed calls of the `lua/` scripts. Each script is embedded, loaded once
//! and invoked by SHA (`redis::Script` reloads it after a NOSCRIPT, e.g.
//! when Redis restarted). Scripts that change a section start with the
//! shared `lua/lib/emit.lua`, and their wrappers return the events the
//! script appended ([`Scripted`]), decoded from its reply: nothing about an
//! event is guessed in Rust.

use std::time::Instant;

use redis::{ErrorKind, RedisResult, Script, ScriptInvocation, ServerErrorKind, Value};
use uuid::Uuid;

use super::{outbox, watch::RedisWatch, Redis};
use crate::{
    domain::{Event, EventKind, SectionSnapshot},
    metrics::SCRIPT_DURATION,
};

/// A script that changes a section: `lua/lib/emit.lua` and
/// `lua/lib/seat.lua`, then its own body.
macro_rules! section_script {
    ($file:literal) => {
        concat!(
            include_str!("../../lua/lib/emit.lua"),
            include_str!("../../lua/lib/seat.lua"),
            include_str!(concat!("../../lua/", $file))
        )
    };
}

/// A script charging token buckets: `lua/lib/gcra.lua`, then its own body.
macro_rules! bucket_script {
    ($file:literal) => {
        concat!(
            include_str!("../../lua/lib/gcra.lua"),
            include_str!(concat!("../../lua/", $file))
        )
    };
}

/// Every script's source, in the order of [`Scripts`]' fields.
const SOURCES: [&str; 16] = [
    section_script!("reserve.lua"),
    section_script!("drop.lua"),
    section_script!("compensate.lua"),
    section_script!("resize.lua"),
    include_str!("../../lua/load.lua"),
    include_str!("../../lua/inspect.lua"),
    include_str!("../../lua/idempotency.lua"),
    bucket_script!("rate_limit.lua"),
    include_str!("../../lua/login_guard.lua"),
    bucket_script!("access.lua"),
    include_str!("../../lua/access_set.lua"),
    include_str!("../../lua/claim.lua"),
    include_str!("../../lua/settle.lua"),
    include_str!("../../lua/schedule_init.lua"),
    include_str!("../../lua/judge.lua"),
    section_script!("lapse.lua"),
];

/// The compiled scripts, shared by every call.
pub struct Scripts {
    pub reserve: Script,
    pub drop: Script,
    pub compensate: Script,
    pub resize: Script,
    pub load: Script,
    pub inspect: Script,
    pub idempotency: Script,
    pub rate_limit: Script,
    pub login_guard: Script,
    pub access: Script,
    pub access_set: Script,
    pub claim: Script,
    pub settle: Script,
    pub schedule_init: Script,
    pub judge: Script,
    pub lapse: Script,
}

impl Scripts {
    pub fn new() -> Self {
        let [reserve, drop, compensate, resize, load, inspect, idempotency, rate_limit, login_guard, access, access_set, claim, settle, schedule_init, judge, lapse] =
            SOURCES.map(Script::new);
        Self {
            reserve,
            drop,
            compensate,
            resize,
            load,
            inspect,
            idempotency,
            rate_limit,
            login_guard,
            access,
            access_set,
            claim,
            settle,
            schedule_init,
            judge,
            lapse,
        }
    }

    /// Every script's source, for loading them all (on every primary of a
    /// cluster) at start-up and after a failover.
    pub fn sources(&self) -> &'static [&'static str] {
        &SOURCES
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}

/// What a section script decided, with the events it appended to the
/// section's outbox (in sequence order; empty when it changed nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scripted<T> {
    pub outcome: T,
    pub events: Vec<Event>,
}

/// True for an error that says the engine and its scripts disagree (a reply
/// of the wrong shape, a script that failed to run): a bug to log and answer
/// 500, not an outage to retry.
pub fn is_contract_violation(e: &redis::RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::UnexpectedReturnType
            | ErrorKind::Parse
            | ErrorKind::Client
            | ErrorKind::Server(
                ServerErrorKind::ResponseError
                    | ServerErrorKind::CrossSlot
                    | ServerErrorKind::NoPerm
            )
    )
}

/// What `reserve.lua` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    NotLoaded,
    AlreadyEnrolled,
    AlreadyWaitlisted {
        position: i64,
        /// The section offers freed seats (`lua/lib/seat.lua`): the place
        /// turns into a seat only by the student's registration.
        offers: bool,
    },
    Inactive,
    WindowClosed,
    /// The registration's claim (`lua/claim.lua`) passed its deadline
    /// before the seat was decided: nothing changed.
    ClaimExpired,
    Enrolled {
        seq: i64,
    },
    Waitlisted {
        seq: i64,
        position: i64,
        /// As in [`Reserve::AlreadyWaitlisted`].
        offers: bool,
    },
    Full,
}

/// What `drop.lua` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    NotLoaded,
    NotRegistered,
    /// The seat went to `promoted` (auto mode), was offered to `offered`
    /// (offer mode), or back to the pool (neither).
    Dropped {
        seq: i64,
        promoted: Option<Uuid>,
        offered: Option<Uuid>,
    },
    /// `offered`: the student declined an offer, which passed to them.
    LeftWaitlist {
        seq: i64,
        offered: Option<Uuid>,
    },
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
    BelowEnrolled {
        enrolled: i64,
    },
    /// Offer to auto mode while `waiting` students wait (`lua/resize.lua`).
    WaitlistNotEmpty {
        waiting: i64,
    },
    Resized {
        seq: i64,
        promoted: Vec<Uuid>,
        offered: Vec<Uuid>,
    },
}

/// What an admin changes of a section (`resize.lua`); None keeps it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SectionChange {
    pub capacity: Option<i32>,
    pub waitlist_limit: Option<i32>,
    /// The section's own flag; Redis enforces it with the semester's.
    pub active: Option<bool>,
    /// true: offer mode; false: auto (`lua/lib/seat.lua`).
    pub offer_mode: Option<bool>,
    pub offer_ttl_ms: Option<i64>,
}

/// What `load.lua` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    Loaded,
    AlreadyPresent,
    /// Refused: events wait in the outbox (in [`Rebuild::Exact`], also: the
    /// section's sequence is no longer the one compared).
    OutboxPending,
}

/// One section as `inspect.lua` read it, at one point of its history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionState {
    /// The last sequence Redis issued (0 when it has none).
    pub seq: i64,
    /// Outbox entries waiting (not yet acknowledged by PostgreSQL).
    pub outbox: u64,
    /// None when the section has no state (no meta hash).
    pub live: Option<LiveState>,
}

/// What the section scripts read, as stored; a field someone deleted by
/// hand is None rather than a guess.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveState {
    pub capacity: Option<i64>,
    pub waitlist_limit: Option<i64>,
    /// The flag reserve.lua enforces (the section's and the semester's).
    pub active: Option<bool>,
    pub registration_start_ms: Option<i64>,
    pub registration_end_ms: Option<i64>,
    /// The free-seat counter.
    pub seats: Option<i64>,
    pub enrolled: Vec<Uuid>,
    /// Head first.
    pub waitlisted: Vec<Uuid>,
    /// The waitlist mode (None where the field is missing: auto).
    pub offer_mode: Option<bool>,
    pub offer_ttl_ms: Option<i64>,
    /// Open offers: student and deadline (Redis's clock, ms).
    pub offers: Vec<(Uuid, i64)>,
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
    /// Only while Redis's sequence is exactly `last_seq` and its outbox is
    /// empty: the point at which reconcile compared the two sides, so a
    /// registration that slipped in since is never erased.
    Exact,
}

impl Rebuild {
    fn as_str(self) -> &'static str {
        match self {
            Rebuild::Absent => "absent",
            Rebuild::Behind => "behind",
            Rebuild::Force => "force",
            Rebuild::Exact => "exact",
        }
    }
}

/// A waitlist mode as the scripts store it (meta `wl_mode`).
fn mode(offer: bool) -> &'static str {
    if offer {
        "offer"
    } else {
        "auto"
    }
}

/// A flag as the scripts store it.
fn flag(on: bool) -> &'static str {
    if on {
        "1"
    } else {
        "0"
    }
}

fn text(v: Option<&Value>) -> Option<String> {
    outbox::text(v?)
}

fn int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Int(i) => Some(*i),
        other => outbox::text(other)?.parse().ok(),
    }
}

/// The error of a reply that breaks `script`'s documented contract.
pub(super) fn unexpected(script: &str, reply: &impl std::fmt::Debug) -> redis::RedisError {
    redis::RedisError::from((
        ErrorKind::UnexpectedReturnType,
        "unexpected script reply",
        format!("{script}: {reply:?}"),
    ))
}

/// A section script's reply: `{code, events, detail...}`.
struct Reply {
    script: &'static str,
    raw: Vec<Value>,
    events: Vec<Event>,
}

impl Reply {
    fn decode(script: &'static str, section: Uuid, raw: Vec<Value>) -> RedisResult<Self> {
        let events = raw
            .get(1)
            .and_then(|v| outbox::from_reply(section, v))
            .ok_or_else(|| unexpected(script, &raw))?;
        Ok(Self {
            script,
            raw,
            events,
        })
    }

    fn code(&self) -> String {
        text(self.raw.first()).unwrap_or_default()
    }

    /// The integer detail at `index` (counted from the code, which is 0).
    fn int(&self, index: usize) -> RedisResult<i64> {
        int(self.raw.get(index)).ok_or_else(|| self.unexpected())
    }

    /// Whether the detail at `index` is "1" (absent: false).
    fn flag(&self, index: usize) -> bool {
        text(self.raw.get(index)).as_deref() == Some("1")
    }

    /// The sequence of the first event: the one the request itself caused
    /// (for scripts that lapse no offers before it).
    fn first_seq(&self) -> RedisResult<i64> {
        self.events
            .first()
            .map(|e| e.seq)
            .ok_or_else(|| self.unexpected())
    }

    /// The sequence of the request's own event: the last one of `student`
    /// other than an offer (lapsed offers, `lua/lib/seat.lua`, may precede
    /// it; offers passed on follow it).
    fn own_seq(&self, student: Uuid) -> RedisResult<i64> {
        self.events
            .iter()
            .rev()
            .find(|e| e.student == Some(student) && e.kind != EventKind::Offer)
            .map(|e| e.seq)
            .ok_or_else(|| self.unexpected())
    }

    /// The sequence of the (one) event of `kind`.
    fn seq_of(&self, kind: EventKind) -> RedisResult<i64> {
        self.events
            .iter()
            .find(|e| e.kind == kind)
            .map(|e| e.seq)
            .ok_or_else(|| self.unexpected())
    }

    /// The students of the events of `kind` (promote: waitlist heads given
    /// a seat; offer: those a seat is held for).
    fn students_of(&self, kind: EventKind) -> Vec<Uuid> {
        self.events
            .iter()
            .filter(|e| e.kind == kind)
            .filter_map(|e| e.student)
            .collect()
    }

    fn promoted(&self) -> Vec<Uuid> {
        self.students_of(EventKind::Promote)
    }

    fn offered(&self) -> Vec<Uuid> {
        self.students_of(EventKind::Offer)
    }

    fn unexpected(&self) -> redis::RedisError {
        unexpected(self.script, &self.raw)
    }

    fn done<T>(self, outcome: T) -> Scripted<T> {
        Scripted {
            outcome,
            events: self.events,
        }
    }
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

    /// Runs a seat-changing script under a [`RedisWatch`] permit: refused
    /// while the gate is closed, and an error (outcome unknown) if the
    /// connection changed while it ran.
    async fn run_gated(
        &self,
        name: &'static str,
        section: Uuid,
        invocation: redis::ScriptInvocation<'_>,
    ) -> RedisResult<Reply> {
        let permit = self.watch().enter().ok_or_else(RedisWatch::closed_error)?;
        let raw = if self.replication().is_on() {
            let started = Instant::now();
            let reply = self.replication().run(section, &invocation).await;
            metrics::histogram!(SCRIPT_DURATION, "script" => name)
                .record(started.elapsed().as_secs_f64());
            if let Err(e) = &reply {
                if super::watch::is_connection_error(e) {
                    self.watch().connection_failed();
                }
            }
            reply?
        } else {
            self.run(name, invocation).await?
        };
        if !permit.still_valid() {
            return Err(RedisWatch::changed_error());
        }
        Reply::decode(name, section, raw)
    }

    /// Runs several script invocations in one pipelined round trip. A
    /// pipeline does not load scripts by itself, so after a NOSCRIPT (Redis
    /// restarted, SCRIPT FLUSH) the scripts are loaded and the pipeline is
    /// sent once more.
    ///
    /// On a cluster the invocations (in different slots) are sent
    /// [`super::link::FAN_OUT`] at a time, each to its slot's primary, each
    /// loading its script if it must.
    pub(crate) async fn pipelined<T: redis::FromRedisValue>(
        &self,
        invocations: &[ScriptInvocation<'_>],
    ) -> RedisResult<Vec<T>> {
        if self.is_cluster() {
            let mut replies = Vec::with_capacity(invocations.len());
            for wave in invocations.chunks(super::link::FAN_OUT) {
                let answers = futures_util::future::try_join_all(wave.iter().map(|invocation| {
                    let mut conn = self.conn();
                    async move { invocation.invoke_async::<T>(&mut conn).await }
                }))
                .await?;
                replies.extend(answers);
            }
            return Ok(replies);
        }
        let mut pipe = redis::pipe();
        for invocation in invocations {
            pipe.invoke_script(invocation);
        }
        let mut conn = self.conn();
        match pipe.query_async(&mut conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                for invocation in invocations {
                    invocation.load_async(&mut conn).await?;
                }
                pipe.query_async(&mut conn).await
            }
            result => result,
        }
    }

    /// Enrolls, waitlists or refuses `student` in `section` (`reserve.lua`).
    pub async fn reserve(
        &self,
        section: Uuid,
        student: Uuid,
        now_ms: i64,
    ) -> RedisResult<Scripted<Reserve>> {
        self.reserve_claimed(section, student, now_ms, None).await
    }

    /// [`Redis::reserve`] for a claim (`lua/claim.lua`): its deadline (unix
    /// ms by Redis's clock) and stamp; refused past the deadline or once the
    /// claim was judged (`lua/judge.lua`).
    pub async fn reserve_claimed(
        &self,
        section: Uuid,
        student: Uuid,
        now_ms: i64,
        claim: Option<(i64, &str)>,
    ) -> RedisResult<Scripted<Reserve>> {
        let keys = self.section_keys(section);
        let mut call = self.scripts().reserve.prepare_invoke();
        call.key(&keys.core()[..])
            .key(&keys.reverted)
            .key(&keys.since)
            .key(&keys.fence)
            .key(&keys.offers)
            .arg(student.to_string())
            .arg(now_ms);
        if let Some((deadline, stamp)) = claim {
            call.arg(deadline).arg(stamp);
        }
        let reply = self.run_gated("reserve", section, call).await?;
        let outcome = match reply.code().as_str() {
            "not_loaded" => Reserve::NotLoaded,
            "already_enrolled" => Reserve::AlreadyEnrolled,
            "already_waitlisted" => Reserve::AlreadyWaitlisted {
                position: reply.int(2)?,
                offers: reply.flag(3),
            },
            "inactive" => Reserve::Inactive,
            "window_closed" => Reserve::WindowClosed,
            "claim_expired" => Reserve::ClaimExpired,
            "enrolled" => Reserve::Enrolled {
                seq: reply.own_seq(student)?,
            },
            "waitlisted" => Reserve::Waitlisted {
                seq: reply.own_seq(student)?,
                position: reply.int(2)?,
                offers: reply.flag(3),
            },
            "full" => Reserve::Full,
            _ => return Err(reply.unexpected()),
        };
        Ok(reply.done(outcome))
    }

    /// Drops `student` from `section`'s roster or waitlist (`drop.lua`).
    pub async fn drop_student(
        &self,
        section: Uuid,
        student: Uuid,
        now_ms: i64,
    ) -> RedisResult<Scripted<Drop>> {
        self.drop_from(section, student, now_ms, false).await
    }

    /// Takes `student` off `section`'s waitlist only, never off its roster
    /// (`drop.lua` with ARGV[3] = waitlist).
    pub async fn leave_waitlist(
        &self,
        section: Uuid,
        student: Uuid,
        now_ms: i64,
    ) -> RedisResult<Scripted<Drop>> {
        self.drop_from(section, student, now_ms, true).await
    }

    async fn drop_from(
        &self,
        section: Uuid,
        student: Uuid,
        now_ms: i64,
        waitlist_only: bool,
    ) -> RedisResult<Scripted<Drop>> {
        let keys = self.section_keys(section);
        let mut call = self.scripts().drop.prepare_invoke();
        call.key(&keys.core()[..])
            .key(&keys.reverted)
            .key(&keys.since)
            .key(&keys.offers)
            .arg(student.to_string())
            .arg(now_ms);
        if waitlist_only {
            call.arg("waitlist");
        }
        let reply = self.run_gated("drop", section, call).await?;
        let outcome = match reply.code().as_str() {
            "not_loaded" => Drop::NotLoaded,
            "not_registered" => Drop::NotRegistered,
            "dropped" => Drop::Dropped {
                seq: reply.own_seq(student)?,
                promoted: reply.promoted().last().copied(),
                offered: reply.offered().last().copied(),
            },
            "left_waitlist" => Drop::LeftWaitlist {
                seq: reply.own_seq(student)?,
                offered: reply.offered().last().copied(),
            },
            _ => return Err(reply.unexpected()),
        };
        Ok(reply.done(outcome))
    }

    /// Undoes `event` once (`compensate.lua`).
    pub async fn compensate(
        &self,
        event: &Event,
        reason: &str,
        now_ms: i64,
    ) -> RedisResult<Scripted<Compensate>> {
        let keys = self.section_keys(event.section);
        let mut call = self.scripts().compensate.prepare_invoke();
        call.key(&keys.core()[..])
            .key(&keys.reverted)
            .key(&keys.undone)
            .key(&keys.since)
            .key(&keys.offers)
            .arg(event.seq)
            .arg(event.kind.as_str())
            .arg(event.student.map(|s| s.to_string()).unwrap_or_default())
            .arg(reason)
            .arg(now_ms);
        let raw = self.run("compensate", call).await?;
        let reply = Reply::decode("compensate", event.section, raw)?;
        let outcome = match reply.code().as_str() {
            "already" => Compensate::Already,
            "nothing_to_undo" => Compensate::NothingToUndo,
            "not_undoable" => Compensate::NotUndoable,
            "reverted" => Compensate::Reverted {
                seq: reply.first_seq()?,
                promoted: reply.promoted().first().copied(),
            },
            _ => return Err(reply.unexpected()),
        };
        Ok(reply.done(outcome))
    }

    /// Changes a section's capacity, waitlist limit, own active flag or
    /// waitlist policy (`resize.lua`); Redis enforces that flag together
    /// with the semester's.
    pub async fn resize(
        &self,
        section: Uuid,
        change: SectionChange,
        now_ms: i64,
    ) -> RedisResult<Scripted<Resize>> {
        let keys = self.section_keys(section);
        let opt = |v: Option<i32>| v.map(|v| v.to_string()).unwrap_or_default();
        let mut call = self.scripts().resize.prepare_invoke();
        call.key(&keys.core()[..])
            .key(&keys.since)
            .key(&keys.offers)
            .arg(opt(change.capacity))
            .arg(opt(change.waitlist_limit))
            .arg(change.active.map(flag).unwrap_or(""))
            .arg(now_ms)
            .arg(change.offer_mode.map(mode).unwrap_or(""))
            .arg(
                change
                    .offer_ttl_ms
                    .map(|ttl| ttl.to_string())
                    .unwrap_or_default(),
            );
        let reply = self.run_gated("resize", section, call).await?;
        let outcome = match reply.code().as_str() {
            "not_loaded" => Resize::NotLoaded,
            "below_enrolled" => Resize::BelowEnrolled {
                enrolled: reply.int(2)?,
            },
            "waitlist_not_empty" => Resize::WaitlistNotEmpty {
                waiting: reply.int(2)?,
            },
            "resized" => Resize::Resized {
                seq: reply.seq_of(EventKind::Config)?,
                promoted: reply.promoted(),
                offered: reply.offered(),
            },
            _ => return Err(reply.unexpected()),
        };
        Ok(reply.done(outcome))
    }

    /// Lets `section`'s due offers lapse (`lapse.lua`), each seat passing
    /// on: the sweeper's bound on how late a deadline is kept. None when
    /// the section has no state.
    pub async fn lapse_offers(
        &self,
        section: Uuid,
        now_ms: i64,
    ) -> RedisResult<Option<Scripted<()>>> {
        let keys = self.section_keys(section);
        let mut call = self.scripts().lapse.prepare_invoke();
        call.key(&keys.core()[..])
            .key(&keys.since)
            .key(&keys.offers)
            .arg(now_ms);
        let reply = self.run_gated("lapse", section, call).await?;
        match reply.code().as_str() {
            "not_loaded" => Ok(None),
            "lapsed" => Ok(Some(reply.done(()))),
            _ => Err(reply.unexpected()),
        }
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
            .key(&keys.offers)
            .arg(snapshot.capacity)
            .arg(snapshot.waitlist_limit)
            .arg(flag(snapshot.section_active))
            .arg(flag(snapshot.semester_active))
            .arg(snapshot.registration_start_ms)
            .arg(snapshot.registration_end_ms)
            .arg(snapshot.last_seq)
            .arg(mode.as_str())
            .arg(self::mode(snapshot.waitlist.offer))
            .arg(snapshot.waitlist.offer_ttl_ms)
            .arg(snapshot.offers.len());
        for (student, deadline) in &snapshot.offers {
            call.arg(student.to_string()).arg(deadline);
        }
        call.arg(snapshot.enrolled.len());
        for id in snapshot.enrolled.iter().chain(&snapshot.waitlisted) {
            call.arg(id.to_string());
        }
        let started = Instant::now();
        // Bulk connection: a large roster must not delay students' requests
        // queued behind it on the shared socket.
        let mut conn = self.bulk().await?;
        let (code, dropped): (i64, i64) = call.invoke_async(&mut conn).await?;
        metrics::histogram!(SCRIPT_DURATION, "script" => "load")
            .record(started.elapsed().as_secs_f64());
        let outcome = match code {
            1 => Load::Loaded,
            0 => Load::AlreadyPresent,
            _ => Load::OutboxPending,
        };
        Ok((outcome, dropped))
    }

    /// Everything the section scripts decide from, read in one atomic step
    /// (`inspect.lua`): reconcile compares only a state whose sequence and
    /// outbox say which point of the section's history it is.
    pub async fn inspect(&self, section: Uuid) -> RedisResult<SectionState> {
        let keys = self.section_keys(section);
        let mut call = self.scripts().inspect.prepare_invoke();
        call.key(&keys.core()[..]).key(&keys.offers);
        let started = Instant::now();
        // Bulk connection: a large roster must not delay students' requests.
        let mut conn = self.bulk().await?;
        let raw: Vec<Value> = call.invoke_async(&mut conn).await?;
        metrics::histogram!(SCRIPT_DURATION, "script" => "inspect")
            .record(started.elapsed().as_secs_f64());
        let bad = || unexpected("inspect", &raw);
        let seq = int(raw.get(1)).ok_or_else(bad)?;
        let outbox = int(raw.get(2))
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(bad)?;
        let ids = |v: Option<&Value>| -> RedisResult<Vec<Uuid>> {
            match v {
                Some(Value::Array(items)) => Ok(items
                    .iter()
                    .filter_map(|i| outbox::text(i).and_then(|t| Uuid::try_parse(&t).ok()))
                    .collect()),
                _ => Err(bad()),
            }
        };
        let live = match text(raw.first()).as_deref() {
            Some("absent") => None,
            Some("present") => Some(LiveState {
                capacity: int(raw.get(3)),
                waitlist_limit: int(raw.get(4)),
                active: text(raw.get(5)).map(|a| a == "1"),
                registration_start_ms: int(raw.get(6)),
                registration_end_ms: int(raw.get(7)),
                seats: int(raw.get(8)),
                enrolled: ids(raw.get(9))?,
                waitlisted: ids(raw.get(10))?,
                offer_mode: text(raw.get(11)).map(|m| m == "offer"),
                offer_ttl_ms: int(raw.get(12)),
                offers: match raw.get(13) {
                    Some(Value::Array(flat)) => flat
                        .chunks(2)
                        .filter_map(|pair| {
                            let student = Uuid::try_parse(&text(pair.first())?).ok()?;
                            Some((student, int(pair.get(1))?))
                        })
                        .collect(),
                    _ => return Err(bad()),
                },
            }),
            _ => return Err(bad()),
        };
        Ok(SectionState { seq, outbox, live })
    }

    /// Loads every script into Redis's script cache (start-up and readiness).
    /// On a cluster, on every primary.
    pub async fn load_scripts(&self) -> RedisResult<()> {
        let mut conn = self.conn();
        for source in self.scripts().sources() {
            let loaded = super::link::load_everywhere(&mut conn.inner, source).await;
            conn.observe(loaded)?;
        }
        Ok(())
    }
}
