//! The registration service: what a register, drop or capacity change does,
//! step by step, independent of HTTP.
//!
//! For each section: load it from PostgreSQL first if Redis lacks it
//! (`sync::warmup::Loader`), run its Lua script (`seats`), then hand the
//! events the script appended to the persistence shards
//! (`sync::Persistence`, a non-blocking `try_send`). The events come from
//! the script's own reply, so what the shards write is exactly what the
//! outbox holds.
//!
//! A request naming several sections never answers an error after one of
//! them changed: every load happens before the first script runs (a failed
//! load changes nothing), and a section that cannot be decided once others
//! have changed gets its own result ([`Registered::Undecided`]).
//!
//! With the registrar's rules on, each registration is claimed in the
//! student's slot first and settled there after its seat was decided
//! (`crate::rules` describes the protocol).

use std::sync::Arc;

use futures_util::future::join_all;
use uuid::Uuid;

use crate::{
    config::RulesSettings,
    rules::{Refusal, RuleBook, SemesterFacts},
    seats::{
        rules::{Claim, ClaimArgs, Verdict},
        Drop, Redis, Reserve, Resize, Scripted, SectionChange,
    },
    sync::{warmup::Loader, Persistence},
};

/// Why a registration step could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// A section Redis lacks could not be loaded from PostgreSQL (or Redis
    /// refused the load): retry shortly.
    #[error("section could not be loaded: {0:#}")]
    SectionUnavailable(anyhow::Error),
    /// Redis failed (an outage, or a reply that breaks the scripts' contract).
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    /// The student's rules (or a semester's) could not be read from
    /// PostgreSQL: nothing changed; retry shortly.
    #[error("registration rules could not be read: {0:#}")]
    RulesUnavailable(anyhow::Error),
}

/// One section's part of a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// A rule of the registrar refused it before its seat was looked at.
    Refused(Refusal),
    /// The section's script decided (never [`Reserve::NotLoaded`]).
    Decided(Reserve),
    /// Neither Redis nor PostgreSQL knows the section.
    Unknown,
    /// Not decided, and nothing changed for this section as far as this
    /// request knows: its state was gone from Redis when its script ran
    /// (dropped between the load and the script), or Redis failed on it
    /// while another section of the request changed. A retry decides it.
    Undecided,
}

/// The registrar's rules as the registration service applies them.
pub struct Rules {
    pub book: Arc<RuleBook>,
    /// Where the rules' facts are read (the primary: a change is seen at once).
    pub db: deadpool_postgres::Pool,
    pub settings: RulesSettings,
    /// Longest a PostgreSQL read of the rules may take on a request
    /// (`sync.load_timeout_ms`, the section loader's bound).
    pub read_timeout: std::time::Duration,
}

impl Rules {
    /// Runs a PostgreSQL read of the rules within [`Rules::read_timeout`].
    async fn bounded<T>(
        &self,
        read: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> Result<T, RegistrationError> {
        match tokio::time::timeout(self.read_timeout, read).await {
            Ok(result) => result.map_err(RegistrationError::RulesUnavailable),
            Err(_) => Err(RegistrationError::RulesUnavailable(anyhow::anyhow!(
                "PostgreSQL did not answer within {:?}",
                self.read_timeout
            ))),
        }
    }
}

/// Orchestrates seats → loader → persistence; cheap to share.
pub struct Registrar {
    redis: Redis,
    loader: Arc<Loader>,
    persistence: Persistence,
    rules: Option<Rules>,
}

/// How often a claim waits for another request of the same student that
/// is deciding the same section, and how long each time.
const BUSY_WAITS: usize = 25;
const BUSY_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

/// A section of a request and its claim (deadline, stamp), if it was claimed.
type Claimed = (Uuid, Option<(i64, String)>);

impl Registrar {
    pub fn new(
        redis: Redis,
        loader: Arc<Loader>,
        persistence: Persistence,
        rules: Option<Rules>,
    ) -> Self {
        Self {
            redis,
            loader,
            persistence,
            rules,
        }
    }

    /// The catalogue's rules changed through this server: its facts are
    /// reread at once (within the rules' read bound; else forgotten, and
    /// read by the next request).
    pub async fn catalogue_changed(&self) {
        let Some(rules) = &self.rules else { return };
        if tokio::time::timeout(rules.read_timeout, rules.book.renew(&rules.db))
            .await
            .is_err()
        {
            rules.book.clear();
        }
    }

    /// Reserves a seat (or a waitlist place) for `student` in each of
    /// `sections`, in request order, under the registrar's rules when they
    /// are on.
    pub async fn register(
        &self,
        student: Uuid,
        sections: &[Uuid],
        now_ms: i64,
    ) -> Result<Vec<Registered>, RegistrationError> {
        match &self.rules {
            Some(rules) => self.register_ruled(rules, student, sections, now_ms).await,
            None => {
                let claimed: Vec<Claimed> = sections.iter().map(|s| (*s, None)).collect();
                let outcomes = self.reserve_all(student, &claimed, now_ms).await?;
                let touched: Vec<Uuid> = sections
                    .iter()
                    .zip(&outcomes)
                    .filter(|(_, o)| took_place(o))
                    .map(|(s, _)| *s)
                    .collect();
                if !touched.is_empty() {
                    self.unruled(student, &touched).await;
                }
                Ok(outcomes)
            }
        }
    }

    /// Claim → reserve → settle (`crate::rules`).
    async fn register_ruled(
        &self,
        rules: &Rules,
        student: Uuid,
        sections: &[Uuid],
        now_ms: i64,
    ) -> Result<Vec<Registered>, RegistrationError> {
        let (mut outcomes, claimed) = self.claim_all(rules, student, sections).await?;
        let asked: Vec<Claimed> = claimed
            .iter()
            .map(|(i, deadline, stamp)| (sections[*i], Some((*deadline, stamp.clone()))))
            .collect();
        let decided = match self.reserve_all(student, &asked, now_ms).await {
            Ok(decided) => decided,
            Err(e) => {
                // Nothing changed: the claims are free again at once.
                let release: Vec<_> = claimed
                    .iter()
                    .map(|(i, _, stamp)| (sections[*i], stamp.as_str(), Verdict::Void))
                    .collect();
                self.settle(student, &release).await;
                return Err(e);
            }
        };
        let mut verdicts = Vec::with_capacity(claimed.len());
        for ((i, _, stamp), outcome) in claimed.iter().zip(decided) {
            let verdict = match &outcome {
                Registered::Undecided => None,
                Registered::Decided(
                    Reserve::Waitlisted { offers: true, .. }
                    | Reserve::AlreadyWaitlisted { offers: true, .. },
                ) => Some(Verdict::HeldOnOffers),
                o if holds_place(o) => Some(Verdict::Held),
                // Refused before deciding: the seat is as it was.
                Registered::Decided(Reserve::ClaimExpired) => Some(Verdict::Void),
                _ => Some(Verdict::Release),
            };
            if let Some(verdict) = verdict {
                verdicts.push((sections[*i], stamp.as_str(), verdict));
            }
            outcomes[*i] = Some(outcome);
        }
        self.settle(student, &verdicts).await;
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Registered::Undecided))
            .collect())
    }

    /// The claim step of a registration: one claim per semester the
    /// request touches (usually one). Returns each section's outcome so far
    /// (unknown, or refused by a rule; None for the claimed) and the claimed
    /// sections (index in `sections`, deadline, stamp).
    async fn claim_all(
        &self,
        rules: &Rules,
        student: Uuid,
        sections: &[Uuid],
    ) -> Result<(Vec<Option<Registered>>, Vec<(usize, i64, String)>), RegistrationError> {
        let facts = rules.bounded(rules.book.facts(&rules.db, sections)).await?;
        let mut outcomes: Vec<Option<Registered>> = facts
            .iter()
            .map(|f| f.is_none().then_some(Registered::Unknown))
            .collect();
        let mut semesters: Vec<(Uuid, Arc<SemesterFacts>)> = Vec::new();
        for (section, f) in sections.iter().zip(&facts) {
            if let Some(f) = f {
                let semester = f.sections[section].semester_id;
                if !semesters.iter().any(|(s, _)| *s == semester) {
                    semesters.push((semester, f.clone()));
                }
            }
        }
        let mut claimed: Vec<(usize, i64, String)> = Vec::new();
        for (semester, f) in &semesters {
            let members: Vec<usize> = (0..sections.len())
                .filter(|i| {
                    facts[*i]
                        .as_ref()
                        .is_some_and(|g| g.sections[&sections[*i]].semester_id == *semester)
                })
                .collect();
            let asked: Vec<_> = members
                .iter()
                .map(|i| (sections[*i], &f.sections[&sections[*i]]))
                .collect();
            let (stamp, deadline, results) =
                self.claim(rules, student, *semester, f, &asked).await?;
            for (i, refusal) in members.into_iter().zip(results) {
                match refusal {
                    None => claimed.push((i, deadline, stamp.clone())),
                    Some(refusal) => outcomes[i] = Some(Registered::Refused(refusal)),
                }
            }
        }
        Ok((outcomes, claimed))
    }

    /// Fault injection for the tests: a registration whose process dies
    /// part-way. It claims as [`Registrar::register`] does, then decides
    /// the seats of the first `seats` claimed sections only, and stops:
    /// nothing is settled and the seat scripts' events are left in their
    /// outboxes for the sweeper (a live process would have handed them to
    /// its shards). What is left behind is exactly what a crash at that
    /// point leaves; the claims are judged later (`crate::rules`). Returns
    /// the sections whose seats were decided. With the rules off, nothing
    /// is claimed and this decides the first `seats` sections the same way.
    #[doc(hidden)]
    pub async fn register_and_crash(
        &self,
        student: Uuid,
        sections: &[Uuid],
        now_ms: i64,
        seats: usize,
    ) -> Result<Vec<Uuid>, RegistrationError> {
        let claimed: Vec<Claimed> = match &self.rules {
            Some(rules) => {
                let (_, claimed) = self.claim_all(rules, student, sections).await?;
                claimed
                    .into_iter()
                    .map(|(i, deadline, stamp)| (sections[i], Some((deadline, stamp))))
                    .collect()
            }
            None => sections.iter().map(|s| (*s, None)).collect(),
        };
        let mut decided = Vec::new();
        for (section, claim) in claimed.iter().take(seats) {
            let claim = claim.as_ref().map(|(d, stamp)| (*d, stamp.as_str()));
            let scripted = self
                .redis
                .reserve_claimed(*section, student, now_ms, claim)
                .await?;
            if scripted.outcome != Reserve::NotLoaded {
                decided.push(*section);
            }
        }
        Ok(decided)
    }

    /// Claims `sections` of one semester for `student`: loads the
    /// student's rules copy when Redis lacks it, and settles entries the
    /// claim script suspects of being stale before deciding on them.
    async fn claim(
        &self,
        rules: &Rules,
        student: Uuid,
        semester: Uuid,
        facts: &SemesterFacts,
        sections: &[(Uuid, &crate::store::rules::SectionFacts)],
    ) -> Result<(String, i64, Vec<Option<Refusal>>), RegistrationError> {
        let mut verify = true;
        let (mut loads, mut rebuilds, mut busy_rounds) = (0, 0, 0);
        for _ in 0..(8 + BUSY_WAITS) {
            let args = ClaimArgs {
                semester,
                group_windows: &facts.group_windows,
                credit_limit: facts.credit_limit,
                count_waitlisted: facts.count_waitlisted,
                ttl: std::time::Duration::from_millis(rules.settings.claim_ttl_ms),
                grace: std::time::Duration::from_millis(rules.settings.claim_grace_ms),
                verify,
            };
            match self.redis.claim_rules(student, &args, sections).await? {
                // Another request of this student is deciding one of these
                // sections: a double click settles within a round trip or
                // two, so wait for it; a claim still there after that may
                // belong to a request that died, so judge it (a fence in its
                // section makes that final) and claim again.
                Claim::Decided {
                    stamp,
                    deadline: _,
                    results,
                } if busy_rounds < BUSY_WAITS + 1
                    && results
                        .iter()
                        .any(|r| matches!(r, Some(Refusal::Busy { .. }))) =>
                {
                    busy_rounds += 1;
                    let release: Vec<_> = sections
                        .iter()
                        .zip(&results)
                        .filter(|(_, r)| r.is_none())
                        .map(|((s, _), _)| (*s, stamp.as_str(), Verdict::Void))
                        .collect();
                    self.settle(student, &release).await;
                    if busy_rounds <= BUSY_WAITS {
                        tokio::time::sleep(BUSY_PAUSE).await;
                    } else {
                        let busy: Vec<(Uuid, String)> = sections
                            .iter()
                            .zip(&results)
                            .filter_map(|((s, _), r)| match r {
                                Some(Refusal::Busy { stamp }) => Some((*s, stamp.clone())),
                                _ => None,
                            })
                            .collect();
                        self.repair(student, &busy).await?;
                    }
                }
                Claim::Decided {
                    stamp,
                    deadline,
                    results,
                } => return Ok((stamp, deadline, results)),
                Claim::NotLoaded if loads < 2 => {
                    loads += 1;
                    self.load_rules(rules, student).await?;
                }
                Claim::NotLoaded => break,
                Claim::NoSchedule if rebuilds < 2 => {
                    rebuilds += 1;
                    self.rebuild_schedule(rules, student).await?;
                }
                Claim::NoSchedule => break,
                Claim::Verify(entries) => {
                    self.repair(student, &entries).await?;
                    verify = false;
                }
            }
        }
        Err(RegistrationError::RulesUnavailable(anyhow::anyhow!(
            "the student's rules copy or schedule keeps changing"
        )))
    }

    /// Rebuilds the student's schedule when Redis has none: the places
    /// PostgreSQL and the student's index name, each checked against its
    /// section in Redis (the seats' truth), with the catalogue's facts.
    async fn rebuild_schedule(
        &self,
        rules: &Rules,
        student: Uuid,
    ) -> Result<(), RegistrationError> {
        let mut sections = rules
            .bounded(async {
                let db = rules.db.get().await?;
                anyhow::Ok(crate::store::rules::places(&db, student).await?)
            })
            .await?;
        sections.extend(self.redis.remembered_sections(student).await?);
        sections.sort_unstable();
        sections.dedup();
        let mut entries = Vec::new();
        if !sections.is_empty() {
            let facts = rules
                .bounded(rules.book.facts(&rules.db, &sections))
                .await?;
            let known: Vec<Uuid> = sections
                .iter()
                .zip(&facts)
                .filter(|(_, f)| f.is_some())
                .map(|(s, _)| *s)
                .collect();
            let loaded = self.redis.are_loaded(&known).await?;
            let missing: Vec<Uuid> = known
                .iter()
                .zip(&loaded)
                .filter(|(_, l)| !**l)
                .map(|(s, _)| *s)
                .collect();
            if !missing.is_empty() {
                self.ensure_loaded(&missing).await?;
            }
            let standings = self.redis.standings(student, &known).await?;
            let offering = self.redis.offer_modes(&known).await?;
            for (((section, standing), offers), f) in known
                .iter()
                .zip(standings)
                .zip(offering)
                .zip(facts.iter().flatten())
            {
                if !(standing.enrolled || standing.waitlist_position.is_some()) {
                    continue;
                }
                // Waiting where freed seats are offered: the place turns
                // into a seat only by a claim (a section leaves offer mode
                // only once nobody waits), so w, as settle.lua writes it.
                let state = if !standing.enrolled && offers {
                    'w'
                } else {
                    'h'
                };
                entries.push((*section, entry(state, &f.sections[section])));
            }
        }
        let written = self.redis.schedule_init(student, &entries).await?;
        if written && !entries.is_empty() {
            tracing::info!(%student, entries = entries.len(), "schedule rebuilt from the sections");
        }
        Ok(())
    }

    /// The schedule each student's record starts (`lua/access_set.lua`)
    /// when Redis has none: their places in PostgreSQL with the catalogue's
    /// facts, as held entries. None with the rules off, or when the facts
    /// cannot be read (the first claim then rebuilds the schedule).
    pub async fn schedule_entries(
        &self,
        records: &[(Uuid, crate::domain::AccessRecord)],
    ) -> Option<Vec<Vec<(Uuid, String)>>> {
        let rules = self.rules.as_ref()?;
        let mut sections: Vec<Uuid> = records
            .iter()
            .flat_map(|(_, r)| r.places.iter().copied())
            .collect();
        sections.sort_unstable();
        sections.dedup();
        let facts = match rules.bounded(rules.book.facts(&rules.db, &sections)).await {
            Ok(facts) => facts,
            Err(e) => {
                tracing::warn!(error = %e, "schedules not started with the access records");
                return None;
            }
        };
        let by_section: std::collections::HashMap<Uuid, String> = sections
            .iter()
            .zip(facts)
            // Counted (h) whatever the section's mode: this copy reads no
            // standing, and counting an offer-waitlist place is only
            // stricter than the semester asks, never over its limit.
            .filter_map(|(s, f)| Some((*s, entry('h', f?.sections.get(s)?))))
            .collect();
        Some(
            records
                .iter()
                .map(|(_, r)| {
                    r.places
                        .iter()
                        .filter_map(|s| Some((*s, by_section.get(s)?.clone())))
                        .collect()
                })
                .collect(),
        )
    }

    /// Reads the student's access record (with their rule facts) from
    /// PostgreSQL again and stores it: the copy in Redis predates the rules.
    async fn load_rules(&self, rules: &Rules, student: Uuid) -> Result<(), RegistrationError> {
        let record = rules
            .bounded(async {
                let db = rules.db.get().await?;
                anyhow::Ok(crate::store::students::access(&db, student).await?)
            })
            .await?;
        if !record.gone {
            // A live account's record does not expire: no lifetime.
            let records = [(student, record)];
            let schedules = self.schedule_entries(&records).await;
            self.redis
                .access_set(&records, schedules.as_deref(), std::time::Duration::ZERO)
                .await?;
        }
        Ok(())
    }

    /// Judges schedule entries (section, stamp) from their sections
    /// (`lua/judge.lua`: fenced first, so the verdict is final) and settles
    /// them: held if the section has the student, else released.
    async fn repair(
        &self,
        student: Uuid,
        entries: &[(Uuid, String)],
    ) -> Result<(), RegistrationError> {
        let mut verdicts = Vec::with_capacity(entries.len());
        for (section, stamp) in entries {
            let mut holds = self.redis.judge(*section, student, stamp).await?;
            if holds.is_none() && !self.ensure_loaded(&[*section]).await?.is_empty() {
                holds = self.redis.judge(*section, student, stamp).await?;
            }
            // Unknown to PostgreSQL too (or gone again): no place there.
            let verdict = if holds == Some(true) {
                Verdict::Kept
            } else {
                Verdict::Release
            };
            verdicts.push((*section, stamp.as_str(), verdict));
        }
        let changed = self.redis.settle(student, &verdicts).await?;
        tracing::info!(%student, entries = entries.len(), changed, "schedule entries judged from their sections");
        Ok(())
    }

    /// Settles claims; a failure leaves them to expire and be judged later.
    async fn settle(&self, student: Uuid, verdicts: &[(Uuid, &str, Verdict)]) {
        if let Err(e) = self.redis.settle(student, verdicts).await {
            tracing::warn!(error = %e, %student, "claims could not be settled; they will be judged after their deadline");
        }
    }

    /// Reserves each section (with its claim's deadline, if any). With
    /// several sections, those Redis lacks are loaded first (an error then,
    /// with nothing changed); then the scripts of all sections run at once
    /// (they pipeline on the shared connection).
    async fn reserve_all(
        &self,
        student: Uuid,
        sections: &[Claimed],
        now_ms: i64,
    ) -> Result<Vec<Registered>, RegistrationError> {
        if sections.is_empty() {
            return Ok(Vec::new());
        }
        if let [(section, claim)] = sections {
            return Ok(vec![
                self.register_one(student, *section, claim.as_ref(), now_ms)
                    .await?,
            ]);
        }
        let ids: Vec<Uuid> = sections.iter().map(|(s, _)| *s).collect();
        let loaded = self.redis.are_loaded(&ids).await?;
        let missing: Vec<Uuid> = ids
            .iter()
            .zip(&loaded)
            .filter(|(_, loaded)| !**loaded)
            .map(|(s, _)| *s)
            .collect();
        let known = if missing.is_empty() {
            Vec::new()
        } else {
            self.ensure_loaded(&missing).await?
        };
        let unknown = |s: &Uuid| missing.contains(s) && !known.contains(s);
        let attempts = join_all(sections.iter().map(|(s, claim)| async move {
            if unknown(s) {
                return Ok(None);
            }
            let claim = claim.as_ref().map(|(d, stamp)| (*d, stamp.as_str()));
            self.redis
                .reserve_claimed(*s, student, now_ms, claim)
                .await
                .map(Some)
        }))
        .await;
        let changed = attempts
            .iter()
            .any(|a| matches!(a, Ok(Some(scripted)) if !scripted.events.is_empty()));
        let mut outcomes = Vec::with_capacity(sections.len());
        for ((section, _), attempt) in sections.iter().zip(attempts) {
            outcomes.push(match attempt {
                Ok(None) => Registered::Unknown,
                Ok(Some(scripted)) if scripted.outcome == Reserve::NotLoaded => {
                    Registered::Undecided
                }
                Ok(Some(scripted)) => Registered::Decided(self.persist(scripted)),
                // Nothing of the request changed yet: the error is the answer.
                Err(e) if !changed => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(error = %e, %section, "section undecided after others changed");
                    Registered::Undecided
                }
            });
        }
        Ok(outcomes)
    }

    /// With the rules off: remembers the sections `student` now holds a
    /// place in, for their views, and drops their schedule, which no longer
    /// says what they hold (`Redis::remember_unruled`). A failure leaves
    /// the registration standing.
    async fn unruled(&self, student: Uuid, sections: &[Uuid]) {
        if let Err(e) = self.redis.remember_unruled(student, sections).await {
            tracing::warn!(error = %e, %student, "failed to index the student's sections");
        }
    }

    /// One section, the common case: no other section can have changed, so
    /// the script runs first and a missing section is loaded only when it
    /// says so (no extra round trip on the hot path).
    async fn register_one(
        &self,
        student: Uuid,
        section: Uuid,
        claim: Option<&(i64, String)>,
        now_ms: i64,
    ) -> Result<Registered, RegistrationError> {
        let claim = claim.map(|(d, stamp)| (*d, stamp.as_str()));
        let reserve = || self.redis.reserve_claimed(section, student, now_ms, claim);
        let mut scripted = reserve().await?;
        if scripted.outcome == Reserve::NotLoaded {
            if self.ensure_loaded(&[section]).await?.is_empty() {
                return Ok(Registered::Unknown);
            }
            scripted = reserve().await?;
            if scripted.outcome == Reserve::NotLoaded {
                return Ok(Registered::Undecided);
            }
        }
        Ok(Registered::Decided(self.persist(scripted)))
    }

    /// Takes `student` off `section`'s roster or waitlist (the waitlist head
    /// takes a freed seat in the same step). None when the section does not
    /// exist.
    pub async fn drop(
        &self,
        section: Uuid,
        student: Uuid,
        now_ms: i64,
    ) -> Result<Option<Drop>, RegistrationError> {
        let mut outcome = self.redis.drop_student(section, student, now_ms).await?;
        if outcome.outcome == Drop::NotLoaded {
            if self.ensure_loaded(&[section]).await?.is_empty() {
                return Ok(None);
            }
            outcome = self.redis.drop_student(section, student, now_ms).await?;
        }
        let outcome = self.persist(outcome);
        let left = matches!(outcome, Drop::Dropped { .. } | Drop::LeftWaitlist { .. });
        if self.rules.is_some() && outcome != Drop::NotLoaded {
            // The student holds no place here now: their credits and their
            // time are free (a failure leaves the entry to be judged later).
            self.settle(student, &[(section, "", Verdict::Dropped)])
                .await;
        } else if self.rules.is_none() && left {
            self.unruled(student, &[]).await;
        }
        Ok(Some(outcome))
    }

    /// Takes a student who may no longer register (a new hold) off every
    /// waitlist they are on, so a promotion never gives
    /// them a seat; their enrolments stay. The rule: they lose those places
    /// (README "Registration rules"). Returns the sections they left.
    pub async fn withdraw_waitlists(
        &self,
        student: Uuid,
        now_ms: i64,
    ) -> Result<Vec<Uuid>, RegistrationError> {
        let mut sections = self.redis.remembered_sections(student).await?;
        if self.rules.is_some() {
            sections.extend(
                self.redis
                    .schedule(student)
                    .await?
                    .into_iter()
                    .map(|(s, _)| s),
            );
        }
        sections.sort_unstable();
        sections.dedup();
        let standings = self.redis.standings(student, &sections).await?;
        let mut left = Vec::new();
        for (section, standing) in sections.iter().zip(standings) {
            if standing.waitlist_position.is_none() {
                continue;
            }
            let outcome = self.redis.leave_waitlist(*section, student, now_ms).await?;
            if matches!(self.persist(outcome), Drop::LeftWaitlist { .. }) {
                left.push(*section);
            }
        }
        if self.rules.is_some() && !left.is_empty() {
            let dropped: Vec<_> = left.iter().map(|s| (*s, "", Verdict::Dropped)).collect();
            self.settle(student, &dropped).await;
        } else if !left.is_empty() {
            self.unruled(student, &[]).await;
        }
        if !left.is_empty() {
            tracing::info!(%student, sections = left.len(), "a student who may no longer register left their waitlists");
        }
        Ok(left)
    }

    /// Changes a section's capacity, waitlist limit, active flag or
    /// waitlist policy (`resize.lua`: new seats go to the waitlist head
    /// first). The caller has made sure the section is loaded.
    pub async fn resize(
        &self,
        section: Uuid,
        change: SectionChange,
        now_ms: i64,
    ) -> Result<Resize, RegistrationError> {
        let scripted = self.redis.resize(section, change, now_ms).await?;
        Ok(self.persist(scripted))
    }

    /// Lets `section`'s due offers lapse, each seat passing on (the
    /// sweeper's bound on a deadline). False when the section has no state.
    pub async fn lapse_offers(
        &self,
        section: Uuid,
        now_ms: i64,
    ) -> Result<bool, RegistrationError> {
        match self.redis.lapse_offers(section, now_ms).await? {
            Some(scripted) => {
                self.persist(scripted);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Loads the sections Redis lacks from PostgreSQL; returns those that
    /// exist.
    pub async fn ensure_loaded(&self, sections: &[Uuid]) -> Result<Vec<Uuid>, RegistrationError> {
        let known = self
            .loader
            .ensure(sections)
            .await
            .map_err(RegistrationError::SectionUnavailable)?;
        self.prime_rules(&known).await;
        Ok(known)
    }

    /// Reads the rules' catalogue facts of these sections' semesters if
    /// this server has not yet (with their sections, while PostgreSQL
    /// answers), so registering in them later needs no PostgreSQL.
    pub async fn prime_rules(&self, sections: &[Uuid]) {
        let Some(rules) = &self.rules else { return };
        if let Err(e) = rules.bounded(rules.book.facts(&rules.db, sections)).await {
            tracing::warn!(error = %e, "rule facts not read with their sections; read on first use");
        }
    }

    /// Hands a script's events to their shard and returns its decision.
    fn persist<T>(&self, scripted: Scripted<T>) -> T {
        for event in scripted.events {
            self.persistence.submit(event);
        }
        scripted.outcome
    }
}

/// The section holds a place for the student now (new or from before).
fn holds_place(outcome: &Registered) -> bool {
    matches!(
        outcome,
        Registered::Decided(
            Reserve::Enrolled { .. }
                | Reserve::Waitlisted { .. }
                | Reserve::AlreadyEnrolled
                | Reserve::AlreadyWaitlisted { .. }
        )
    )
}

/// The section gave the student a new place (an event was appended).
fn took_place(outcome: &Registered) -> bool {
    matches!(
        outcome,
        Registered::Decided(Reserve::Enrolled { .. } | Reserve::Waitlisted { .. })
    )
}

/// A schedule entry for a section in `state` (h held, w an uncounted
/// offer-waitlist place; `lua/claim.lua`'s format), stamp 0.
fn entry(state: char, f: &crate::store::rules::SectionFacts) -> String {
    format!(
        "{state}|{}|{}|{}|{}|0|0",
        f.semester_id, f.course_id, f.credits, f.meetings
    )
}
