//! The registrar's rules on the hot path (issue 14, SPEC §14).
//!
//! A registration whose rules span the student's slot and the sections'
//! runs in three steps, each atomic in its slot:
//! 1. claim (`lua/claim.lua`, the student's slot): time ticket,
//!    prerequisites and corequisites, one section per course, time
//!    conflicts and the credit limit, checked against what the student holds
//!    and has claimed this semester; the sections that pass are claimed with
//!    a deadline. Parallel requests of one student see each other's claims.
//! 2. reserve (`lua/reserve.lua`, each section's slot): the seat, as
//!    without rules, refused once the claim's deadline has passed.
//! 3. settle (`lua/settle.lua`, the student's slot): each claim becomes a
//!    held entry or is released.
//!
//! A crash between the steps leaves a claim that counts against the limits
//! (never fewer credits than held, so no limit is overshot). The next
//! request of that student that a stale entry would refuse — a claim past
//! its deadline, or a held entry its section no longer has — first judges
//! those entries from their sections (which decided for good: a late claim
//! cannot take a seat) and settles them, then claims again. Drops remove
//! the held entry; an undone registration (a compensation) leaves it until
//! the same repair finds it.
//!
//! Where the facts come from:
//! - the catalogue's (credits, meetings, requisites, a semester's credit
//!   limit and group opening times): this module's [`RuleBook`], read from
//!   PostgreSQL a semester at a time and reread after `rules.facts_ttl_ms`;
//! - the student's (group, own credit limit, completed courses, permits):
//!   a copy in the student's slot, versioned by the access record's version
//!   (sql/0009_registration_rules.sql), so any change shows on the next
//!   request, on every server.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use uuid::Uuid;

use crate::store::{self, rules::SectionFacts};

/// One semester's catalogue facts.
#[derive(Debug)]
pub struct SemesterFacts {
    /// "code=ms code=ms" (lua/claim.lua ARGV[2]).
    pub group_windows: String,
    pub credit_limit: Option<i32>,
    /// The limit counts waitlist places of offer sections too.
    pub count_waitlisted: bool,
    pub sections: HashMap<Uuid, SectionFacts>,
    read_at: Instant,
}

/// The catalogue facts every server passes to the claim script.
pub struct RuleBook {
    ttl: Duration,
    semesters: Mutex<HashMap<Uuid, Arc<SemesterFacts>>>,
    /// Section → semester, for sections seen (bounded like the catalogue).
    section_semester: Mutex<HashMap<Uuid, Uuid>>,
    /// One reader of PostgreSQL at a time.
    reading: Arc<tokio::sync::Mutex<()>>,
    /// After a failed background reread, none until then: while PostgreSQL
    /// is away, requests answer from the stale facts without each trying
    /// (and logging) a reread of their own.
    quiet_until: Mutex<Option<Instant>>,
}

/// Pause after a failed background reread.
const REREAD_PAUSE: Duration = Duration::from_secs(1);

/// Entries of the section map before it is emptied (a bound, as in
/// `catalog::CatalogCache`).
const SECTION_ENTRIES: usize = 200_000;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RuleBook {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            semesters: Mutex::default(),
            section_semester: Mutex::default(),
            reading: Arc::new(tokio::sync::Mutex::new(())),
            quiet_until: Mutex::default(),
        }
    }

    /// Forgets every semester's facts: the next request reads them.
    pub fn clear(&self) {
        lock(&self.semesters).clear();
    }

    /// Rereads every semester read so far: an admin changed a rule through
    /// this server, so the change is in force here from the next request,
    /// and registering still needs no PostgreSQL round trip (should
    /// PostgreSQL go away now, this server keeps deciding on the new
    /// facts). A semester that cannot be reread is forgotten instead.
    pub async fn renew(&self, db: &deadpool_postgres::Pool) {
        let semesters: Vec<Uuid> = lock(&self.semesters).keys().copied().collect();
        for semester in semesters {
            let one = self.reading.clone().lock_owned().await;
            if let Err(e) = self.reread(db, semester, one).await {
                tracing::warn!(error = %e, %semester, "rule facts could not be reread after a change; read on next use");
                lock(&self.semesters).remove(&semester);
            }
        }
    }

    /// A semester's facts if read, and whether they are still fresh.
    fn current(&self, semester: Uuid) -> Option<(Arc<SemesterFacts>, bool)> {
        lock(&self.semesters)
            .get(&semester)
            .map(|f| (f.clone(), f.read_at.elapsed() < self.ttl))
    }

    /// The facts of each section (None: no such section), with their
    /// semester's. Reads PostgreSQL for semesters not read lately.
    pub async fn facts(
        self: &Arc<Self>,
        db: &deadpool_postgres::Pool,
        sections: &[Uuid],
    ) -> anyhow::Result<Vec<Option<Arc<SemesterFacts>>>> {
        let mut out = Vec::with_capacity(sections.len());
        let unknown: Vec<Uuid> = {
            let map = lock(&self.section_semester);
            sections
                .iter()
                .filter(|s| !map.contains_key(s))
                .copied()
                .collect()
        };
        if !unknown.is_empty() {
            let client = db.get().await?;
            let found = store::rules::semesters_of(&client, &unknown).await?;
            drop(client);
            let mut map = lock(&self.section_semester);
            if map.len() + found.len() >= SECTION_ENTRIES {
                map.clear();
            }
            map.extend(found);
        }
        for section in sections {
            let semester = lock(&self.section_semester).get(section).copied();
            let Some(semester) = semester else {
                out.push(None);
                continue;
            };
            let facts = match self.current(semester) {
                Some((facts, true)) => facts,
                // Stale: answer from it while one task rereads it, so no
                // request waits for a semester's rows on the hot path.
                Some((facts, false)) => {
                    let quiet = lock(&self.quiet_until).is_some_and(|t| Instant::now() < t);
                    let one = if quiet {
                        None
                    } else {
                        self.reading.clone().try_lock_owned().ok()
                    };
                    if let Some(one) = one {
                        let (book, db) = (self.clone(), db.clone());
                        tokio::spawn(async move {
                            if let Err(e) = book.reread(&db, semester, one).await {
                                *lock(&book.quiet_until) = Some(Instant::now() + REREAD_PAUSE);
                                tracing::warn!(error = %e, %semester, pause_ms = REREAD_PAUSE.as_millis() as u64, "rule facts could not be reread; answering from the last read meanwhile");
                            }
                        });
                    }
                    facts
                }
                None => self.read(db, semester).await?,
            };
            // A section newer than the semester's facts (created since they
            // were read): read them again now.
            let facts = if facts.sections.contains_key(section) {
                facts
            } else {
                let one = self.reading.clone().lock_owned().await;
                match self.current(semester) {
                    Some((now, _)) if now.sections.contains_key(section) => now,
                    _ => self.reread(db, semester, one).await?,
                }
            };
            out.push(facts.sections.contains_key(section).then_some(facts));
        }
        Ok(out)
    }

    /// Reads a semester's facts (once, however many requests ask at once).
    async fn read(
        &self,
        db: &deadpool_postgres::Pool,
        semester: Uuid,
    ) -> anyhow::Result<Arc<SemesterFacts>> {
        let one = self.reading.clone().lock_owned().await;
        if let Some((facts, true)) = self.current(semester) {
            return Ok(facts);
        }
        self.reread(db, semester, one).await
    }

    async fn reread(
        &self,
        db: &deadpool_postgres::Pool,
        semester: Uuid,
        _one: tokio::sync::OwnedMutexGuard<()>,
    ) -> anyhow::Result<Arc<SemesterFacts>> {
        let client = db.get().await?;
        let rules = store::rules::semester_rules(&client, semester)
            .await?
            .unwrap_or(store::rules::SemesterRules {
                credit_limit: None,
                credit_counting: store::rules::CreditCounting::default(),
                priority_groups: Vec::new(),
            });
        let sections = store::rules::semester_facts(&client, semester).await?;
        drop(client);
        let facts = Arc::new(SemesterFacts {
            group_windows: rules
                .priority_groups
                .iter()
                .map(|g| format!("{}={}", g.code, g.opens_at.timestamp_millis()))
                .collect::<Vec<_>>()
                .join(" "),
            credit_limit: rules.credit_limit,
            count_waitlisted: rules.credit_counting
                == store::rules::CreditCounting::EnrolledAndWaitlisted,
            sections: sections.into_iter().collect(),
            read_at: Instant::now(),
        });
        {
            let mut map = lock(&self.section_semester);
            if map.len() + facts.sections.len() >= SECTION_ENTRIES {
                map.clear();
            }
            for id in facts.sections.keys() {
                map.insert(*id, semester);
            }
        }
        lock(&self.semesters).insert(semester, facts.clone());
        Ok(facts)
    }
}

/// Why a rule refused a section, as the register answer says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The student's priority group opens at this instant (unix ms).
    NotYourTimeYet { opens_at_ms: i64 },
    /// Course ids: one of them completed would do (prerequisite), or this
    /// one (corequisite), is missing.
    PrerequisiteMissing { courses: Vec<Uuid> },
    /// Already enrolled or waitlisted (or claiming) in another section of
    /// the course.
    AlreadyInCourse { section: Uuid },
    /// Meets at the same time as this section held or asked for.
    TimeConflict { section: Uuid },
    /// Credits held (enrolled and waitlisted, and claimed) and the limit.
    CreditLimit { held: i64, limit: i64 },
    /// Another request of the same student is deciding this section now
    /// (its claim's stamp).
    Busy { stamp: String },
}

impl Refusal {
    /// The stable reason code of the answer.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NotYourTimeYet { .. } => "not_your_time_yet",
            Refusal::PrerequisiteMissing { .. } => "prerequisite_missing",
            Refusal::AlreadyInCourse { .. } => "already_in_course",
            Refusal::TimeConflict { .. } => "time_conflict",
            Refusal::CreditLimit { .. } => "credit_limit",
            Refusal::Busy { .. } => "in_progress",
        }
    }

    /// Decodes one section's result of lua/claim.lua; None for `claimed`.
    pub fn decode(code: &str, detail: &str) -> Result<Option<Self>, String> {
        let uuid = |s: &str| Uuid::try_parse(s).map_err(|_| format!("{code}: bad id {s:?}"));
        Ok(Some(match code {
            "claimed" => return Ok(None),
            "busy" => Refusal::Busy {
                stamp: detail.to_string(),
            },
            "not_your_time_yet" => Refusal::NotYourTimeYet {
                opens_at_ms: detail
                    .parse()
                    .map_err(|_| format!("{code}: bad time {detail:?}"))?,
            },
            "prerequisite_missing" => Refusal::PrerequisiteMissing {
                courses: detail.split(',').map(uuid).collect::<Result<_, _>>()?,
            },
            "already_in_course" => Refusal::AlreadyInCourse {
                section: uuid(detail)?,
            },
            "time_conflict" => Refusal::TimeConflict {
                section: uuid(detail)?,
            },
            "credit_limit" => {
                let (held, limit) = detail
                    .split_once('|')
                    .and_then(|(h, l)| Some((h.parse().ok()?, l.parse().ok()?)))
                    .ok_or_else(|| format!("{code}: bad credits {detail:?}"))?;
                Refusal::CreditLimit { held, limit }
            }
            other => return Err(format!("unknown claim result {other:?}")),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_claim_result_decodes_to_its_reason() {
        let id = Uuid::from_u128(7);
        assert_eq!(Refusal::decode("claimed", ""), Ok(None));
        let cases = [
            ("busy", "3".into(), "in_progress"),
            (
                "not_your_time_yet",
                "1700000000000".into(),
                "not_your_time_yet",
            ),
            (
                "prerequisite_missing",
                format!("{id},{id}"),
                "prerequisite_missing",
            ),
            ("already_in_course", id.to_string(), "already_in_course"),
            ("time_conflict", id.to_string(), "time_conflict"),
            ("credit_limit", "12|15".into(), "credit_limit"),
        ];
        for (code, detail, reason) in cases {
            let refusal = Refusal::decode(code, &detail).unwrap().unwrap();
            assert_eq!(refusal.reason(), reason);
        }
        assert_eq!(
            Refusal::decode("credit_limit", "12|15").unwrap(),
            Some(Refusal::CreditLimit {
                held: 12,
                limit: 15
            })
        );
        assert!(Refusal::decode("credit_limit", "12").is_err());
        assert!(Refusal::decode("time_conflict", "x").is_err());
        assert!(Refusal::decode("whatever", "").is_err());
    }
}
