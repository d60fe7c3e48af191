//! A model-based property test of the engine (issue 5, item 6).
//!
//! Random sequences of operations run against the real application (real
//! Redis, real PostgreSQL reached through a proxy the test can cut) and,
//! step by step, against a small in-memory model of what SPEC §2 and §7
//! promise: per section a capacity, an enrolled set, a waitlist in arrival
//! order with a limit, promotions on drop and on resize; per (student, key)
//! an idempotency record. After every step the HTTP answer must equal the
//! model's answer and the live Redis state must equal the model's state and
//! keep the promises; at quiescent points (persistence caught up) PostgreSQL
//! must equal Redis and the model too.
//!
//! Operations: register (one to three sections, as the student or as an
//! admin acting for them, with or without an Idempotency-Key), drop (enrolled,
//! waitlisted, or not there: 404), retry of an earlier keyed request with the
//! same body (the identical answer, replayed), the same key with another body
//! (422), an earlier body again without its key (`already_*`), capacity,
//! waitlist-limit and active-flag changes through
//! `PATCH /api/v1/admin/sections/{id}` (new seats promote the waitlist head;
//! below the roster is 409; an inactive section rejects newcomers), the
//! waitlist mode through the same route (issue 15: in offer mode a freed seat
//! is held for the first in line without an offer, who accepts by
//! registering or declines by dropping; back to auto is 409 while anyone
//! waits; offers live an hour, so none lapses within a case), a PostgreSQL
//! outage of a few steps (persistence retries; registration goes on, except
//! an admin's for a student, which is checked against PostgreSQL: 503), and a
//! process restart while PostgreSQL is up (graceful stop, then a new
//! application on the same database and namespace).
//!
//! The registrar's rules (issue 14) are on: each case draws a catalogue
//! (credits per course, meeting patterns that overlap, prerequisites and
//! corequisites, a semester credit limit, an early and a late priority
//! group, sections 0 and 3 of one course, which may be repeatable), set
//! before the second instance starts so both read the same, and the
//! operations change students' own facts as an admin would: holds (a new
//! hold takes the student off every waitlist), priority groups, own credit
//! limits, completed courses, permits per section and rule. The model
//! predicts every refusal with its particulars (the conflicting section may
//! be any of those in the way: the claim names the first it finds). A crash
//! step runs a registration that dies after its claim or after some of its
//! seats (`Registrar::register_and_crash`: nothing settled, the seats'
//! events left to the sweeper), and the student's retry must get the
//! model's answer at once; after every step each student's schedule in
//! Redis holds exactly the sections they have a place in. One case in four
//! draws no catalogue rules, so the seats' own dynamics come up often too.
//! Found so far: a catalogue change that made a server need PostgreSQL for
//! its next registration, and a busy round that deleted a held entry (both
//! fixed, each pinned by a test in `tests/api/rules.rs`).
//!
//! Two instances (issue 10): a second application runs on the same database
//! and namespace, requests alternate between the two, and both persist
//! through their partition leases; a handover step stops the second one
//! gracefully (its leases go to the first) and starts it again (they are
//! shared once more). The model is the same: which instance answers must not
//! matter.
//!
//! Knobs (environment):
//! - `MODEL_SEED=<u64>`: run exactly one case with this seed. A failure
//!   names its seed and step; `MODEL_SEED=<seed> cargo test --test api model`
//!   replays the same sequence (a longer `MODEL_STEPS` replays it as a prefix).
//! - `MODEL_CASES=<n>` (default 8): cases with fresh random seeds.
//! - `MODEL_STEPS=<n>` (default 200): operations per case.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    fmt,
    panic::AssertUnwindSafe,
    time::Instant,
};

use futures_util::FutureExt;
use registrar::config::Secret;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{
    helpers::{spawn_app_with, Seeded, Sibling, TestApp},
    kit::{proxy::Proxy, via_port},
};

const DEFAULT_CASES: usize = 8;
const DEFAULT_STEPS: usize = 200;
/// Small on purpose: full sections, waitlists and promotions come up often.
/// Sections 0 and 3 are sections of one course (`COURSE_OF`).
const SECTIONS: usize = 4;
const COURSES: usize = 3;
const COURSE_OF: [usize; SECTIONS] = [0, 1, 2, 0];
const STUDENTS: usize = 7;
const INITIAL_SEATS: i32 = 2;
const INITIAL_WAITLIST: i32 = 2;
/// Largest capacity and waitlist limit the generator asks for.
const MAX_CAPACITY: usize = 4;
const MAX_LIMIT: usize = 3;
/// Persistence is checked against PostgreSQL at least this often (in steps).
const CHECKPOINT_EVERY: usize = 12;
/// Operations of the trace shown when a case fails.
const TRACE_SHOWN: usize = 25;

fn env_number(name: &str) -> Option<u64> {
    let raw = std::env::var(name).ok()?;
    Some(
        raw.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a non-negative integer, not {raw:?}")),
    )
}

#[tokio::test]
async fn random_operation_sequences_keep_every_promise_and_match_the_model() {
    let steps = env_number("MODEL_STEPS").map_or(DEFAULT_STEPS, |n| n as usize);
    let seeds: Vec<u64> = match env_number("MODEL_SEED") {
        Some(seed) => vec![seed],
        None => {
            let cases = env_number("MODEL_CASES").map_or(DEFAULT_CASES, |n| n as usize);
            (0..cases).map(|_| fastrand::u64(..)).collect()
        }
    };
    for seed in seeds {
        let started = Instant::now();
        let mut trace = Trace::default();
        let outcome = AssertUnwindSafe(run_case(seed, steps, &mut trace))
            .catch_unwind()
            .await;
        if let Err(payload) = outcome {
            let cause = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(no message)".into());
            panic!(
                "model case failed: seed {seed}, step {step}: {cause}\n\
                 replay: MODEL_SEED={seed} cargo test --test api model\n\
                 catalogue: {header}\n\
                 last operations (step: operation => answer):\n{trace}",
                header = trace.header,
                step = trace.step,
            );
        }
        println!(
            "model: seed {seed}, {steps} steps ({}) in {:.1}s",
            trace.counts(),
            started.elapsed().as_secs_f64()
        );
    }
}

/// What the case has done, for the failure message.
#[derive(Default)]
struct Trace {
    /// The case's catalogue.
    header: String,
    step: usize,
    lines: Vec<String>,
    kinds: HashMap<&'static str, usize>,
    /// Refusals seen, by reason: what the case exercised.
    reasons: HashMap<&'static str, usize>,
}

const REASONS: [&str; 9] = [
    "full",
    "inactive",
    "hold",
    "not_your_time_yet",
    "prerequisite_missing",
    "already_in_course",
    "time_conflict",
    "credit_limit",
    "unavailable",
];

impl Trace {
    fn begin(&mut self, step: usize, kind: &'static str, what: String) {
        self.step = step;
        *self.kinds.entry(kind).or_default() += 1;
        self.lines.push(format!("{step:>4}: {what}"));
    }

    fn answer(&mut self, answer: &str) {
        for reason in REASONS {
            let n = answer.matches(&format!("\"reason\":\"{reason}\"")).count();
            if n > 0 {
                *self.reasons.entry(reason).or_default() += n;
            }
        }
        if let Some(last) = self.lines.last_mut() {
            last.push_str(" => ");
            last.push_str(answer);
        }
    }

    fn counts(&self) -> String {
        let list = |map: &HashMap<&'static str, usize>| {
            let mut items: Vec<_> = map.iter().collect();
            items.sort();
            items
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!("{}; refused: {}", list(&self.kinds), list(&self.reasons))
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let skip = self.lines.len().saturating_sub(TRACE_SHOWN);
        if skip > 0 {
            writeln!(f, "  ... {skip} earlier")?;
        }
        for line in &self.lines[skip..] {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The registrar's rules, as the model knows them.

/// Rules a permit waives, as the API names them.
const WAIVABLE: [&str; 5] = [
    "time_ticket",
    "prerequisite",
    "credit_limit",
    "time_conflict",
    "course_repeat",
];

/// Meeting patterns sections draw from: 0 and 1 overlap on Mondays, 2 and
/// 3 on Thursdays.
const PATTERNS: [(&str, u16, u16); 4] = [
    ("MWF", 540, 590),
    ("M", 570, 620),
    ("TR", 540, 615),
    ("R", 600, 660),
];

fn days_of(letters: &str) -> u8 {
    letters
        .chars()
        .map(|c| 1u8 << "MTWRFSU".find(c).expect("a day letter"))
        .fold(0, |a, b| a | b)
}

fn clock(minutes: u16) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

/// Whether two sections' meetings (pattern indexes) overlap.
fn overlap(a: &[usize], b: &[usize]) -> bool {
    a.iter().any(|x| {
        b.iter().any(|y| {
            let (p, q) = (PATTERNS[*x], PATTERNS[*y]);
            days_of(p.0) & days_of(q.0) != 0 && p.1 < q.2 && q.1 < p.2
        })
    })
}

/// The catalogue's rules, fixed for a case.
#[derive(Debug, Clone)]
struct Catalogue {
    credits: [i64; COURSES],
    /// Per section, the meeting patterns (zero or one).
    meetings: [Vec<usize>; SECTIONS],
    /// Course 0's (the only one with two sections).
    repeatable: bool,
    /// Per course, an AND of ORs of courses.
    prerequisites: [Vec<Vec<usize>>; COURSES],
    corequisites: [Option<usize>; COURSES],
    credit_limit: Option<i64>,
    /// When the `late` group opens: in three days, whole seconds.
    late_opens_at: chrono::DateTime<chrono::Utc>,
    course_ids: Vec<Uuid>,
    course_codes: Vec<String>,
}

impl Catalogue {
    fn draw(rng: &mut fastrand::Rng) -> Self {
        let other = |rng: &mut fastrand::Rng, course: usize| {
            (course + 1 + rng.usize(..COURSES - 1)) % COURSES
        };
        let prerequisites = std::array::from_fn(|course| match rng.u32(..10) {
            0..=6 => Vec::new(),
            7..=8 => vec![vec![other(rng, course)]],
            _ => {
                let a = other(rng, course);
                let b = (0..COURSES).find(|c| *c != course && *c != a).unwrap();
                if rng.bool() {
                    vec![vec![a, b]]
                } else {
                    vec![vec![a], vec![b]]
                }
            }
        });
        let corequisites =
            std::array::from_fn(|course| (rng.u32(..4) == 0).then(|| other(rng, course)));
        let now = chrono::Utc::now().timestamp();
        let mut cat = Self {
            credits: std::array::from_fn(|_| 1 + rng.i64(0..4)),
            meetings: std::array::from_fn(|_| {
                if rng.u32(..10) < 3 {
                    Vec::new()
                } else {
                    vec![rng.usize(..PATTERNS.len())]
                }
            }),
            repeatable: rng.u32(..3) == 0,
            prerequisites,
            corequisites,
            credit_limit: (rng.u32(..4) != 0).then(|| 3 + rng.i64(0..6)),
            late_opens_at: chrono::DateTime::from_timestamp(now + 3 * 86_400, 0).unwrap(),
            course_ids: Vec::new(),
            course_codes: Vec::new(),
        };
        // One case in four without catalogue rules: the seats' own dynamics
        // (full sections, waitlists, promotions) come up more often there.
        if rng.u32(..4) == 0 {
            cat.meetings = Default::default();
            cat.prerequisites = Default::default();
            cat.corequisites = Default::default();
            cat.credit_limit = None;
        }
        cat
    }

    fn credits_of(&self, section: usize) -> i64 {
        self.credits[COURSE_OF[section]]
    }
}

/// A student's own facts (their access record).
#[derive(Debug, Clone, Default)]
struct StudentRules {
    hold: bool,
    /// In the `late` group (else in the `early` one, open since 2020, or in none).
    late: bool,
    own_limit: Option<i64>,
    completed: BTreeSet<usize>,
    /// (section, rule waived)
    permits: BTreeSet<(usize, &'static str)>,
}

/// Why the claim refused a section (`lua/claim.lua`, in its order).
#[derive(Debug, Clone, PartialEq)]
enum Refused {
    NotYourTime,
    /// The courses of the first group not met (or the corequisite).
    Prerequisite(Vec<usize>),
    /// Any of these sections may be the one named.
    InCourse(Vec<usize>),
    Conflict(Vec<usize>),
    Credit(i64, i64),
}

/// One section's expected result: the exact JSON, except that a
/// conflicting section may be any of `any_of`, and missing courses are
/// named by code, or by id when PostgreSQL could not be asked for the
/// codes (compared as sets: the claim lists a group in course id order).
#[derive(Debug, Clone, PartialEq)]
struct ResultModel {
    body: Value,
    any_of: Vec<Uuid>,
    missing: Option<(Vec<String>, Vec<String>)>,
}

impl ResultModel {
    fn plain(body: Value) -> Self {
        Self {
            body,
            any_of: Vec::new(),
            missing: None,
        }
    }

    /// Checks `got` against the model; panics with both on a mismatch.
    fn check(&self, got: &Value) {
        let mut got = got.clone();
        let mut body = self.body.clone();
        if !self.any_of.is_empty() {
            let named: Option<Uuid> = got["conflicting_section_id"]
                .as_str()
                .and_then(|s| s.parse().ok());
            assert!(
                named.is_some_and(|n| self.any_of.contains(&n)),
                "the conflicting section must be one of {:?}: {got}",
                self.any_of
            );
            body["conflicting_section_id"] = got["conflicting_section_id"].clone();
        }
        if let Some((codes, ids)) = &self.missing {
            let mut named: Vec<String> = got["missing_courses"]
                .as_array()
                .unwrap_or_else(|| panic!("missing_courses expected: {got}"))
                .iter()
                .map(|c| c.as_str().unwrap().to_string())
                .collect();
            named.sort();
            assert!(
                &named == codes || &named == ids,
                "missing courses {named:?}, expected the codes {codes:?} (or their ids {ids:?})"
            );
            got["missing_courses"] = json!(null);
            body["missing_courses"] = json!(null);
        }
        assert_eq!(got, body, "section result (left) against the model (right)");
    }
}

// ---------------------------------------------------------------------------
// The model.

#[derive(Debug, Clone)]
struct SectionModel {
    capacity: usize,
    limit: usize,
    active: bool,
    enrolled: BTreeSet<usize>,
    waitlist: VecDeque<usize>,
    /// Waitlist mode offer (else auto).
    offer: bool,
    /// Waitlisted students a seat is held for.
    offers: BTreeSet<usize>,
    /// Waitlisted students whose schedule entry says their place came from
    /// an offer waitlist (`w`, `lua/claim.lua`): the last answer they got
    /// here was given in offer mode.
    uncounted: BTreeSet<usize>,
}

/// Where a freed seat went (`lua/lib/seat.lua`).
enum Given {
    Promoted(usize),
    Offered(usize),
    Free,
}

/// How long the model's offers live: no offer lapses within a case.
const OFFER_TTL_SECS: i64 = 3600;

impl SectionModel {
    /// Seats enrolled or held by offers.
    fn taken(&self) -> usize {
        self.enrolled.len() + self.offers.len()
    }

    fn give_seat(&mut self) -> Given {
        if !self.offer {
            return match self.waitlist.pop_front() {
                Some(head) => {
                    self.enrolled.insert(head);
                    self.uncounted.remove(&head);
                    Given::Promoted(head)
                }
                None => Given::Free,
            };
        }
        match self.waitlist.iter().find(|w| !self.offers.contains(w)) {
            Some(next) => {
                let next = *next;
                self.offers.insert(next);
                Given::Offered(next)
            }
            None => Given::Free,
        }
    }

    /// `student` left the waitlist: an offer they held passes on.
    fn leave_waitlist(&mut self, student: usize) -> bool {
        let Some(i) = self.waitlist.iter().position(|w| *w == student) else {
            return false;
        };
        self.waitlist.remove(i);
        self.uncounted.remove(&student);
        if self.offers.remove(&student) {
            self.give_seat();
        }
        true
    }
}

/// One request as the client sends it; students and sections by index.
#[derive(Debug, Clone, PartialEq)]
enum Request {
    Register {
        student: usize,
        sections: Vec<usize>,
        as_admin: bool,
    },
    Drop {
        student: usize,
        section: usize,
        as_admin: bool,
    },
}

impl Request {
    fn student(&self) -> usize {
        match self {
            Request::Register { student, .. } | Request::Drop { student, .. } => *student,
        }
    }

    /// Same request for the idempotency fingerprint (who sends it and
    /// whether `student_id` is spelled out do not count).
    fn same_fingerprint(&self, other: &Request) -> bool {
        match (self, other) {
            (
                Request::Register {
                    student: a,
                    sections: x,
                    ..
                },
                Request::Register {
                    student: b,
                    sections: y,
                    ..
                },
            ) => a == b && x == y,
            (
                Request::Drop {
                    student: a,
                    section: x,
                    ..
                },
                Request::Drop {
                    student: b,
                    section: y,
                    ..
                },
            ) => a == b && x == y,
            _ => false,
        }
    }
}

/// An answer the model expects: the status and either the exact JSON body
/// or, for errors, the problem code.
#[derive(Debug, Clone, PartialEq)]
enum Expected {
    Json(StatusCode, Value),
    Problem(StatusCode, &'static str),
    /// 200 with one result per section.
    Register(Vec<ResultModel>),
}

/// A stored answer to a keyed request.
#[derive(Debug, Clone)]
struct Record {
    request: Request,
    status: StatusCode,
    body: String,
}

struct Model {
    sections: Vec<SectionModel>,
    section_ids: Vec<Uuid>,
    student_ids: Vec<Uuid>,
    catalogue: Catalogue,
    students: Vec<StudentRules>,
    /// (student, key) → the first answer.
    records: HashMap<(usize, String), Record>,
}

impl Model {
    fn new(section_ids: Vec<Uuid>, student_ids: Vec<Uuid>, catalogue: Catalogue) -> Self {
        let section = SectionModel {
            capacity: INITIAL_SEATS as usize,
            limit: INITIAL_WAITLIST as usize,
            active: true,
            enrolled: BTreeSet::new(),
            waitlist: VecDeque::new(),
            offer: false,
            offers: BTreeSet::new(),
            uncounted: BTreeSet::new(),
        };
        Self {
            sections: vec![section; section_ids.len()],
            students: vec![StudentRules::default(); student_ids.len()],
            section_ids,
            student_ids,
            catalogue,
            records: HashMap::new(),
        }
    }

    /// Applies a request the server has no record of; returns its answer.
    fn apply(&mut self, request: &Request) -> Expected {
        match request {
            Request::Register {
                student, sections, ..
            } => Expected::Register(self.register(*student, sections)),
            Request::Drop {
                student, section, ..
            } => self.drop_student(*student, *section),
        }
    }

    /// Sections the student holds a place in (enrolled or waitlisted).
    fn held(&self, student: usize) -> Vec<usize> {
        (0..SECTIONS)
            .filter(|s| {
                let m = &self.sections[*s];
                m.enrolled.contains(&student) || m.waitlist.contains(&student)
            })
            .collect()
    }

    /// A registration: a hold refuses every section; else the claim decides
    /// each section's rules (all before any seat), then the seats.
    fn register(&mut self, student: usize, sections: &[usize]) -> Vec<ResultModel> {
        if self.students[student].hold {
            return sections
                .iter()
                .map(|s| {
                    ResultModel::plain(json!({
                        "section_id": self.section_ids[*s], "status": "rejected",
                        "reason": "hold", "hold": "financial",
                    }))
                })
                .collect();
        }
        let verdicts = self.claim(student, sections);
        sections
            .iter()
            .zip(verdicts)
            .map(|(s, verdict)| match verdict {
                None => ResultModel::plain(self.reserve(student, *s)),
                Some(refused) => self.refusal(*s, refused),
            })
            .collect()
    }

    /// lua/claim.lua: per section in request order, None when claimed.
    fn claim(&self, student: usize, sections: &[usize]) -> Vec<Option<Refused>> {
        let cat = &self.catalogue;
        let me = &self.students[student];
        let held = self.held(student);
        let mut credits: i64 = held.iter().map(|s| cat.credits_of(*s)).sum();
        let limit = me.own_limit.or(cat.credit_limit);
        let mut accepted: Vec<usize> = Vec::new();
        let mut verdicts = Vec::with_capacity(sections.len());
        for &x in sections {
            let course = COURSE_OF[x];
            let waived = |rule: &str| me.permits.iter().any(|(s, r)| *s == x && *r == rule);
            if held.contains(&x) {
                verdicts.push(None);
                continue;
            }
            let in_course: Vec<usize> = held
                .iter()
                .copied()
                .filter(|s| COURSE_OF[*s] == course && *s != x)
                .chain(
                    accepted
                        .iter()
                        .copied()
                        .filter(|s| COURSE_OF[*s] == course)
                        .take(1),
                )
                .collect();
            let conflicts: Vec<usize> = {
                let mine = &cat.meetings[x];
                let h: Vec<usize> = held
                    .iter()
                    .copied()
                    .filter(|s| *s != x && overlap(mine, &cat.meetings[*s]))
                    .collect();
                if h.is_empty() {
                    accepted
                        .iter()
                        .copied()
                        .filter(|s| overlap(mine, &cat.meetings[*s]))
                        .take(1)
                        .collect()
                } else {
                    h
                }
            };
            let prerequisite = || {
                if let Some(group) = cat.prerequisites[course]
                    .iter()
                    .find(|g| !g.iter().any(|c| me.completed.contains(c)))
                {
                    return Some(group.clone());
                }
                let c = cat.corequisites[course]?;
                let met = me.completed.contains(&c)
                    || sections.iter().any(|s| COURSE_OF[*s] == c)
                    || held.iter().any(|s| COURSE_OF[*s] == c);
                (!met).then(|| vec![c])
            };
            let repeats = course == 0 && cat.repeatable;
            let refused = if me.late && !waived("time_ticket") {
                Some(Refused::NotYourTime)
            } else if let Some(missing) = prerequisite().filter(|_| !waived("prerequisite")) {
                Some(Refused::Prerequisite(missing))
            } else if !in_course.is_empty() && !repeats && !waived("course_repeat") {
                // In the claim, held sections come before those accepted
                // in this request; either way the first one is named.
                let held_ones: Vec<usize> = in_course
                    .iter()
                    .copied()
                    .filter(|s| held.contains(s))
                    .collect();
                Some(Refused::InCourse(if held_ones.is_empty() {
                    in_course
                } else {
                    held_ones
                }))
            } else if !waived("time_conflict") && !conflicts.is_empty() {
                Some(Refused::Conflict(conflicts))
            } else {
                match limit {
                    Some(l) if !waived("credit_limit") && credits + cat.credits_of(x) > l => {
                        Some(Refused::Credit(credits, l))
                    }
                    _ => None,
                }
            };
            if refused.is_none() {
                credits += cat.credits_of(x);
                accepted.push(x);
            }
            verdicts.push(refused);
        }
        verdicts
    }

    fn refusal(&self, section: usize, refused: Refused) -> ResultModel {
        let mut result = ResultModel::plain(json!({
            "section_id": self.section_ids[section], "status": "rejected",
        }));
        let body = &mut result.body;
        match refused {
            Refused::NotYourTime => {
                body["reason"] = json!("not_your_time_yet");
                body["opens_at"] = json!(self.catalogue.late_opens_at);
            }
            Refused::Prerequisite(courses) => {
                body["reason"] = json!("prerequisite_missing");
                let mut codes: Vec<String> = courses
                    .iter()
                    .map(|c| self.catalogue.course_codes[*c].clone())
                    .collect();
                let mut ids: Vec<String> = courses
                    .iter()
                    .map(|c| self.catalogue.course_ids[*c].to_string())
                    .collect();
                codes.sort();
                ids.sort();
                result.missing = Some((codes, ids));
            }
            Refused::InCourse(sections) => {
                body["reason"] = json!("already_in_course");
                result.any_of = self.ids_of_sections(&sections);
            }
            Refused::Conflict(sections) => {
                body["reason"] = json!("time_conflict");
                result.any_of = self.ids_of_sections(&sections);
            }
            Refused::Credit(held, limit) => {
                body["reason"] = json!("credit_limit");
                body["credits_held"] = json!(held);
                body["credit_limit"] = json!(limit);
            }
        }
        result
    }

    fn ids_of_sections(&self, sections: &[usize]) -> Vec<Uuid> {
        sections.iter().map(|s| self.section_ids[*s]).collect()
    }

    /// A registration that dies after its claim and the seats of its first
    /// `seats` claimed sections (nothing answered, nothing settled).
    fn crash(&mut self, student: usize, sections: &[usize], seats: usize) {
        let verdicts = self.claim(student, sections);
        let claimed: Vec<usize> = sections
            .iter()
            .zip(verdicts)
            .filter(|(_, v)| v.is_none())
            .map(|(s, _)| *s)
            .take(seats)
            .collect();
        for s in claimed {
            self.reserve(student, s);
        }
    }

    /// A new hold: the student leaves every waitlist (no seat frees; an
    /// offer they held passes on).
    fn place_hold(&mut self, student: usize) {
        if !self.students[student].hold {
            for s in &mut self.sections {
                s.leave_waitlist(student);
            }
        }
        self.students[student].hold = true;
    }

    /// reserve.lua as SPEC §2/§7 describe it: a duplicate is reported, a
    /// free seat is taken, else a waitlist place while there is room.
    fn reserve(&mut self, student: usize, section: usize) -> Value {
        let id = self.section_ids[section];
        let s = &mut self.sections[section];
        if s.enrolled.contains(&student) {
            return json!({ "section_id": id, "status": "already_enrolled" });
        }
        if let Some(i) = s.waitlist.iter().position(|w| *w == student) {
            if s.active && s.offers.contains(&student) {
                // The offer accepted: the held seat is theirs.
                s.waitlist.remove(i);
                s.offers.remove(&student);
                s.uncounted.remove(&student);
                s.enrolled.insert(student);
                return json!({ "section_id": id, "status": "enrolled" });
            }
            if s.offer {
                s.uncounted.insert(student);
            } else {
                s.uncounted.remove(&student);
            }
            return json!({ "section_id": id, "status": "already_waitlisted", "waitlist_position": i + 1 });
        }
        if !s.active {
            return json!({ "section_id": id, "status": "rejected", "reason": "inactive" });
        }
        if s.taken() < s.capacity {
            s.enrolled.insert(student);
            return json!({ "section_id": id, "status": "enrolled" });
        }
        if s.waitlist.len() < s.limit {
            if s.offer {
                s.uncounted.insert(student);
            }
            s.waitlist.push_back(student);
            return json!({ "section_id": id, "status": "waitlisted", "waitlist_position": s.waitlist.len() });
        }
        json!({ "section_id": id, "status": "rejected", "reason": "full" })
    }

    /// A freed seat goes to the waitlist head in the same step.
    fn drop_student(&mut self, student: usize, section: usize) -> Expected {
        let s = &mut self.sections[section];
        if s.enrolled.remove(&student) {
            let body = match s.give_seat() {
                Given::Promoted(head) => {
                    json!({ "status": "dropped", "promoted_student_id": self.student_ids[head] })
                }
                Given::Offered(_) | Given::Free => json!({ "status": "dropped" }),
            };
            return Expected::Json(StatusCode::OK, body);
        }
        if s.leave_waitlist(student) {
            return Expected::Json(StatusCode::OK, json!({ "status": "left_waitlist" }));
        }
        Expected::Problem(StatusCode::NOT_FOUND, "not_found")
    }

    /// resize.lua: never below the roster and the held seats; back to
    /// auto only with nobody waiting; new seats go to the waitlist head
    /// (promoted, or offered in offer mode). Returns the promoted and the
    /// offered students, or the refusal's code.
    fn resize(
        &mut self,
        section: usize,
        change: &Change,
    ) -> Result<(Vec<usize>, Vec<usize>), &'static str> {
        let s = &mut self.sections[section];
        if change.capacity.is_some_and(|c| c < s.taken()) {
            return Err("below_enrolled");
        }
        if change.offer == Some(false) && s.offer && !s.waitlist.is_empty() {
            return Err("waitlist_not_empty");
        }
        s.capacity = change.capacity.unwrap_or(s.capacity);
        s.limit = change.limit.unwrap_or(s.limit);
        s.active = change.active.unwrap_or(s.active);
        s.offer = change.offer.unwrap_or(s.offer);
        let (mut promoted, mut offered) = (Vec::new(), Vec::new());
        while s.taken() < s.capacity {
            match s.give_seat() {
                Given::Promoted(head) => promoted.push(head),
                Given::Offered(next) => offered.push(next),
                Given::Free => break,
            }
        }
        Ok((promoted, offered))
    }

    fn ids(&self, students: impl IntoIterator<Item = usize>) -> Vec<Uuid> {
        students.into_iter().map(|i| self.student_ids[i]).collect()
    }

    /// (student, section) pairs where the student is enrolled or waitlisted.
    fn registered_pairs(&self) -> Vec<(usize, usize)> {
        let mut pairs = Vec::new();
        for (i, s) in self.sections.iter().enumerate() {
            pairs.extend(s.enrolled.iter().map(|st| (*st, i)));
            pairs.extend(s.waitlist.iter().map(|st| (*st, i)));
        }
        pairs
    }
}

// ---------------------------------------------------------------------------
// Operations.

#[derive(Debug, Clone)]
enum Op {
    /// A request the server has not seen under `key` (or without a key).
    Send {
        request: Request,
        key: Option<String>,
    },
    /// An earlier request's body again, without a key: the model answers it
    /// afresh (`already_enrolled`, `already_waitlisted`, or whatever the
    /// state now gives).
    Repeat {
        request: Request,
    },
    /// An earlier keyed request again, same key and body: replayed.
    Retry {
        key: String,
        record: Record,
    },
    /// An earlier key with a request of another fingerprint: 422.
    Reuse {
        key: String,
        request: Request,
    },
    /// `PATCH /admin/sections/{id}`; promotions happen whether or not the
    /// section is active.
    Resize {
        section: usize,
        change: Change,
    },
    /// Cut PostgreSQL for this many steps.
    Outage {
        steps: usize,
    },
    Restart,
    /// The second instance stops gracefully (its persistence leases go to
    /// the first) and starts again (they are shared once more).
    Handover,
    /// `PATCH /admin/students/{id}` with the hold on or off.
    Hold {
        student: usize,
        on: bool,
    },
    /// Into the late (not yet open) priority group, or the early one.
    Group {
        student: usize,
        late: bool,
    },
    /// The student's own credit limit, or back to the semester's.
    OwnLimit {
        student: usize,
        limit: Option<i64>,
    },
    /// A completed course imported for the student.
    Complete {
        student: usize,
        course: usize,
    },
    /// A permit granted or revoked.
    Permit {
        student: usize,
        section: usize,
        rule: &'static str,
        grant: bool,
    },
    /// The registration dies after its claim and `seats` of its seats;
    /// the student sends it again.
    Crash {
        request: Request,
        seats: usize,
    },
}

impl Op {
    fn kind(&self) -> &'static str {
        match self {
            Op::Send {
                request: Request::Register { .. },
                key: Some(_),
            } => "register+key",
            Op::Send {
                request: Request::Register { .. },
                key: None,
            } => "register",
            Op::Send {
                request: Request::Drop { .. },
                key: Some(_),
            } => "drop+key",
            Op::Send {
                request: Request::Drop { .. },
                key: None,
            } => "drop",
            Op::Repeat { .. } => "repeat",
            Op::Retry { .. } => "retry",
            Op::Reuse { .. } => "reuse",
            Op::Resize { change, .. } if change.offer.is_some() => "waitlist-mode",
            Op::Resize { .. } => "resize",
            Op::Outage { .. } => "outage",
            Op::Restart => "restart",
            Op::Handover => "handover",
            Op::Hold { .. } => "hold",
            Op::Group { .. } => "group",
            Op::OwnLimit { .. } => "own-limit",
            Op::Complete { .. } => "complete",
            Op::Permit { .. } => "permit",
            Op::Crash { .. } => "crash",
        }
    }
}

/// What a `PATCH /admin/sections/{id}` changes (None keeps it).
#[derive(Debug, Clone, Default)]
struct Change {
    capacity: Option<usize>,
    limit: Option<usize>,
    active: Option<bool>,
    /// The waitlist mode: true offer, false auto.
    offer: Option<bool>,
}

/// Picks the next operation from the model's state alone, so a seed always
/// produces the same sequence as long as the engine agrees with the model.
struct Generator {
    rng: fastrand::Rng,
    /// Earlier requests, for repeats without their key.
    sent: Vec<Request>,
    keys: u64,
}

impl Generator {
    fn new(seed: u64) -> Self {
        Self {
            rng: fastrand::Rng::with_seed(seed),
            sent: Vec::new(),
            keys: 0,
        }
    }

    fn key(&mut self) -> String {
        self.keys += 1;
        format!("model-key-{}", self.keys)
    }

    fn maybe_key(&mut self, probability: f64) -> Option<String> {
        (self.rng.f64() < probability).then(|| self.key())
    }

    fn register(&mut self) -> Request {
        let count = 1 + self.rng.usize(..3);
        let mut sections: Vec<usize> = (0..SECTIONS).collect();
        self.rng.shuffle(&mut sections);
        sections.truncate(count);
        Request::Register {
            student: self.rng.usize(..STUDENTS),
            sections,
            as_admin: self.rng.f64() < 0.2,
        }
    }

    fn drop_request(&mut self, model: &Model) -> Request {
        let pairs = model.registered_pairs();
        let (student, section) = if !pairs.is_empty() && self.rng.f64() < 0.85 {
            pairs[self.rng.usize(..pairs.len())]
        } else {
            (self.rng.usize(..STUDENTS), self.rng.usize(..SECTIONS))
        };
        Request::Drop {
            student,
            section,
            as_admin: self.rng.f64() < 0.2,
        }
    }

    /// A request with another fingerprint than `original`, by the same student.
    fn other_than(&mut self, original: &Request) -> Request {
        let student = original.student();
        loop {
            let candidate = if self.rng.bool() {
                let mut r = self.register();
                if let Request::Register { student: s, .. } = &mut r {
                    *s = student;
                }
                r
            } else {
                Request::Drop {
                    student,
                    section: self.rng.usize(..SECTIONS),
                    as_admin: false,
                }
            };
            if !candidate.same_fingerprint(original) {
                return candidate;
            }
        }
    }

    fn next(&mut self, model: &Model, outage_active: bool) -> Op {
        loop {
            let roll = self.rng.u32(..116);
            let op = match roll {
                0..=29 => {
                    let request = self.register();
                    let key = self.maybe_key(0.5);
                    Op::Send { request, key }
                }
                30..=49 => {
                    let request = self.drop_request(model);
                    let key = self.maybe_key(0.4);
                    Op::Send { request, key }
                }
                50..=61 => {
                    let Some((key, record)) = self.pick_record(model) else {
                        continue;
                    };
                    Op::Retry { key, record }
                }
                62..=66 => {
                    let Some((key, record)) = self.pick_record(model) else {
                        continue;
                    };
                    let request = self.other_than(&record.request);
                    Op::Reuse { key, request }
                }
                67..=74 => {
                    if self.sent.is_empty() {
                        continue;
                    }
                    let request = self.sent[self.rng.usize(..self.sent.len())].clone();
                    Op::Repeat { request }
                }
                75..=82 => Op::Resize {
                    section: self.rng.usize(..SECTIONS),
                    change: Change {
                        capacity: Some(self.rng.usize(..=MAX_CAPACITY)),
                        ..Change::default()
                    },
                },
                83..=84 => {
                    // Offer mode half the time a case runs: the mode flips
                    // (back to auto is refused while anyone waits).
                    let section = self.rng.usize(..SECTIONS);
                    Op::Resize {
                        section,
                        change: Change {
                            offer: Some(!model.sections[section].offer),
                            ..Change::default()
                        },
                    }
                }
                85..=86 => Op::Resize {
                    section: self.rng.usize(..SECTIONS),
                    change: Change {
                        limit: Some(self.rng.usize(..=MAX_LIMIT)),
                        ..Change::default()
                    },
                },
                87..=88 => {
                    let section = self.rng.usize(..SECTIONS);
                    Op::Resize {
                        section,
                        change: Change {
                            active: Some(!model.sections[section].active),
                            ..Change::default()
                        },
                    }
                }
                89..=94 => {
                    if outage_active {
                        continue;
                    }
                    Op::Outage {
                        steps: 2 + self.rng.usize(..5),
                    }
                }
                100..=115 => {
                    // Students' facts change through PostgreSQL first: only
                    // while it is up.
                    if outage_active && roll < 113 {
                        continue;
                    }
                    let Some(op) = self.rule_op(model, roll) else {
                        continue;
                    };
                    op
                }
                95..=96 => {
                    // Restarts (below) and handovers only with PostgreSQL up.
                    if outage_active {
                        continue;
                    }
                    Op::Handover
                }
                _ => {
                    // A server started while PostgreSQL is away refuses
                    // registration until its warm-up (503 not_ready, issue
                    // 10; tests/api/dependencies.rs checks it), so the
                    // model restarts only with PostgreSQL up.
                    if outage_active {
                        continue;
                    }
                    Op::Restart
                }
            };
            if let Op::Send { request, .. } = &op {
                self.sent.push(request.clone());
            }
            return op;
        }
    }

    fn rule_op(&mut self, model: &Model, roll: u32) -> Option<Op> {
        let student = self.rng.usize(..STUDENTS);
        let me = &model.students[student];
        Some(match roll {
            100..=101 => Op::Hold {
                student,
                on: !me.hold && self.rng.bool(),
            },
            102..=103 => Op::Group {
                student,
                late: !me.late && self.rng.bool(),
            },
            104..=105 => Op::OwnLimit {
                student,
                limit: self.rng.bool().then(|| 2 + self.rng.i64(0..8)),
            },
            106..=108 => Op::Complete {
                student,
                course: self.rng.usize(..COURSES),
            },
            109..=112 => {
                let section = self.rng.usize(..SECTIONS);
                let rule = WAIVABLE[self.rng.usize(..WAIVABLE.len())];
                let has = me.permits.contains(&(section, rule));
                Op::Permit {
                    student,
                    section,
                    rule,
                    grant: !has || self.rng.u32(..4) == 0,
                }
            }
            _ => {
                // A student with a hold is refused before any claim.
                let student = (0..STUDENTS)
                    .map(|i| (student + i) % STUDENTS)
                    .find(|s| !model.students[*s].hold)?;
                let mut request = self.register();
                if let Request::Register {
                    student: s,
                    as_admin,
                    ..
                } = &mut request
                {
                    *s = student;
                    *as_admin = false;
                }
                Op::Crash {
                    request,
                    seats: self.rng.usize(..=3),
                }
            }
        })
    }

    /// A stored record, picked in key order so the choice is reproducible.
    fn pick_record(&mut self, model: &Model) -> Option<(String, Record)> {
        let mut keys: Vec<&(usize, String)> = model.records.keys().collect();
        if keys.is_empty() {
            return None;
        }
        keys.sort();
        let chosen = keys[self.rng.usize(..keys.len())];
        Some((chosen.1.clone(), model.records[chosen].clone()))
    }
}

// ---------------------------------------------------------------------------
// The system under test.

struct Live {
    app: TestApp,
    /// A second instance on the same database and namespace: requests
    /// alternate between the two, and both persist (several writers).
    second: Option<Sibling>,
    /// Requests sent so far: even ones go to `app`, odd ones to `second`.
    sent: std::cell::Cell<usize>,
    proxy: Proxy,
    admin_token: String,
    student_tokens: Vec<String>,
    semester: Uuid,
    /// Steps left before PostgreSQL comes back; 0 when it is up.
    outage_left: usize,
}

/// An answer as received.
struct Answer {
    status: StatusCode,
    replayed: Option<String>,
    content_type: String,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {}", self.text))
    }

    fn summary(&self) -> String {
        format!("{} {}", self.status.as_u16(), self.text)
    }
}

impl Live {
    async fn send(
        &self,
        method: Method,
        path: &str,
        token: &str,
        key: Option<&str>,
        body: Value,
    ) -> Answer {
        let turn = self.sent.get();
        self.sent.set(turn + 1);
        let url = match &self.second {
            Some(second) if turn % 2 == 1 => format!("{}{path}", second.base),
            _ => self.app.url(path),
        };
        let mut request = self
            .app
            .http
            .request(method, url)
            .bearer_auth(token)
            .json(&body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let response = request.send().await.expect("request sent");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (replayed, content_type) = (header("idempotent-replayed"), header("content-type"));
        Answer {
            status: response.status(),
            replayed,
            content_type: content_type.unwrap_or_default(),
            text: response.text().await.expect("a readable body"),
        }
    }

    async fn request(&self, model: &Model, request: &Request, key: Option<&str>) -> Answer {
        let (path, student, as_admin, mut body) = match request {
            Request::Register {
                student,
                sections,
                as_admin,
            } => (
                "/api/v1/register",
                *student,
                *as_admin,
                json!({ "section_ids": sections.iter().map(|s| model.section_ids[*s]).collect::<Vec<_>>() }),
            ),
            Request::Drop {
                student,
                section,
                as_admin,
            } => (
                "/api/v1/register/drop",
                *student,
                *as_admin,
                json!({ "section_id": model.section_ids[*section] }),
            ),
        };
        let token = if as_admin {
            body["student_id"] = json!(model.student_ids[student]);
            &self.admin_token
        } else {
            &self.student_tokens[student]
        };
        self.send(Method::POST, path, token, key, body).await
    }

    /// The answer `request` must get, applied to the model when it changes
    /// anything. An admin acting for a student is checked against
    /// PostgreSQL first: while PostgreSQL is away that is a 503 with nothing
    /// changed.
    fn expect(&self, model: &mut Model, request: &Request) -> Expected {
        let as_admin = match request {
            Request::Register { as_admin, .. } | Request::Drop { as_admin, .. } => *as_admin,
        };
        if as_admin && self.outage_left > 0 {
            Expected::Problem(StatusCode::SERVICE_UNAVAILABLE, "database_unavailable")
        } else {
            model.apply(request)
        }
    }

    async fn patch(&self, model: &Model, section: usize, body: Value) -> Answer {
        let path = format!("/api/v1/admin/sections/{}", model.section_ids[section]);
        self.send(Method::PATCH, &path, &self.admin_token, None, body)
            .await
    }
}

/// Asserts `answer` is what the model expects.
fn assert_answer(answer: &Answer, expected: &Expected) {
    match expected {
        Expected::Json(status, body) => {
            assert_eq!(answer.status, *status, "status; answer {}", answer.text);
            assert_eq!(
                &answer.json(),
                body,
                "answer body (left) against the model (right)"
            );
        }
        Expected::Problem(status, code) => {
            assert_eq!(answer.status, *status, "status; answer {}", answer.text);
            assert_eq!(
                answer.content_type, "application/problem+json",
                "errors are problem+json"
            );
            assert_eq!(answer.json()["code"], *code, "problem code");
        }
        Expected::Register(results) => {
            assert_eq!(
                answer.status,
                StatusCode::OK,
                "status; answer {}",
                answer.text
            );
            let got = answer.json();
            let got = got["results"]
                .as_array()
                .unwrap_or_else(|| panic!("a register answer has results: {got}"));
            assert_eq!(got.len(), results.len(), "one result per section: {got:?}");
            for (got, expected) in got.iter().zip(results) {
                expected.check(got);
            }
        }
    }
}

async fn run_case(seed: u64, steps: usize, trace: &mut Trace) {
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let port = proxy.port;
    let app = spawn_app_with(|s| {
        s.database.url = Secret::new(via_port(s.database.url.expose(), port));
        // An outage is noticed, retried and left quickly, so steps stay short.
        s.database.connect_timeout_ms = registrar::config::Millis::new(500);
        s.sync.retry_max_ms = 200;
        // A restart just after an outage, with the shards still catching
        // up, gives up draining soon; the sweeper of
        // the next start then finds the leftovers quickly.
        s.sync.drain_timeout_ms = 2000;
        s.sync.sweep_interval_ms = 200;
        s.sync.sweep_min_age_ms = 400;
    })
    .await;
    app.wait_ready().await;
    let seeded = app
        .seed_sections(STUDENTS, COURSES, INITIAL_SEATS, INITIAL_WAITLIST)
        .await;
    let student_ids = app.student_ids().await;
    let student_tokens = student_ids.iter().map(|s| app.token_for(*s)).collect();
    let mut generator = Generator::new(seed);
    let catalogue = Catalogue::draw(&mut generator.rng);
    let (section_ids, catalogue) = set_catalogue(&app, &seeded, catalogue).await;
    trace.header = format!("{catalogue:?}");
    let mut model = Model::new(section_ids, student_ids, catalogue);
    // Started after the catalogue is set: both servers read the same facts.
    let second = app.sibling().await;
    second.wait_ready().await;
    let mut live = Live {
        app,
        second: Some(second),
        sent: std::cell::Cell::new(0),
        proxy,
        admin_token: seeded.admin_token,
        student_tokens,
        semester: seeded.report.semester_id,
        outage_left: 0,
    };
    let mut since_checkpoint = 0;

    for step in 1..=steps {
        let op = generator.next(&model, live.outage_left > 0);
        trace.begin(step, op.kind(), describe(&model, &op));
        let answer = run_op(&mut live, &mut model, &op).await;
        trace.answer(&answer);
        check_live(&live.app, &model).await;

        if live.outage_left > 0 && !matches!(op, Op::Outage { .. }) {
            live.outage_left -= 1;
            if live.outage_left == 0 {
                live.proxy.restore();
                trace.answer("PostgreSQL back");
            }
        }
        since_checkpoint += 1;
        if since_checkpoint >= CHECKPOINT_EVERY && live.outage_left == 0 {
            trace.answer("checkpoint: PostgreSQL = Redis = model");
            checkpoint(&live.app, &model).await;
            since_checkpoint = 0;
        }
    }
    trace.begin(steps + 1, "final", "final checkpoint".into());
    live.proxy.restore();
    if !live.app.state.is_warmed_up() {
        live.app.wait_ready().await;
    }
    checkpoint(&live.app, &model).await;
}

/// Adds section 3 (course 0's second section) and sets the case's
/// catalogue rules through the admin API; returns the sections' ids and
/// the catalogue with its courses' ids and codes.
async fn set_catalogue(
    app: &TestApp,
    seeded: &Seeded,
    mut cat: Catalogue,
) -> (Vec<Uuid>, Catalogue) {
    let admin = seeded.admin_token.as_str();
    let semester = seeded.report.semester_id;
    let mut sections = seeded.report.section_ids.clone();
    let db = app.db.get().await.unwrap();
    for section in &sections {
        let row = db
            .query_one(
                "select c.id, c.course_code from sections s join courses c on c.id = s.course_id where s.id = $1",
                &[section],
            )
            .await
            .unwrap();
        cat.course_ids.push(row.get(0));
        cat.course_codes.push(row.get(1));
    }
    let created = app
        .post(
            "/api/v1/admin/sections",
            Some(admin),
            &json!({"course_id": cat.course_ids[0], "semester_id": semester,
                    "section_number": "002", "total_seats": INITIAL_SEATS,
                    "waitlist_limit": INITIAL_WAITLIST}),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.unwrap();
    sections.push(created["id"].as_str().unwrap().parse().unwrap());
    for (course, id) in cat.course_ids.iter().enumerate() {
        db.execute(
            "update courses set credits = $1 where id = $2",
            &[&(cat.credits[course] as i32), id],
        )
        .await
        .unwrap();
    }
    let code = |c: &usize| cat.course_codes[*c].clone();
    let put = |path: String, body: Value| async move {
        let answer = app
            .http
            .put(app.url(&path))
            .bearer_auth(admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = answer.status();
        assert!(
            status.is_success(),
            "PUT {path} {body}: {status} {}",
            answer.text().await.unwrap()
        );
    };
    for (course, id) in cat.course_ids.iter().enumerate() {
        let body = json!({
            "prerequisites": cat.prerequisites[course].iter().map(|g| g.iter().map(code).collect::<Vec<_>>()).collect::<Vec<_>>(),
            "corequisites": cat.corequisites[course].iter().map(code).collect::<Vec<_>>(),
            "repeatable": course == 0 && cat.repeatable,
        });
        put(format!("/api/v1/admin/courses/{id}/rules"), body).await;
    }
    for (section, id) in sections.iter().enumerate() {
        let meetings: Vec<Value> = cat.meetings[section]
            .iter()
            .map(|p| {
                let (days, start, end) = PATTERNS[*p];
                json!({"days": days, "start": clock(start), "end": clock(end)})
            })
            .collect();
        put(
            format!("/api/v1/admin/sections/{id}/meetings"),
            json!({ "meetings": meetings }),
        )
        .await;
    }
    put(
        format!("/api/v1/admin/semesters/{semester}/rules"),
        json!({"credit_limit": cat.credit_limit, "priority_groups": [
            {"code": "early", "opens_at": "2020-01-01T00:00:00Z"},
            {"code": "late", "opens_at": cat.late_opens_at},
        ]}),
    )
    .await;
    (sections, cat)
}

fn describe(model: &Model, op: &Op) -> String {
    let request = |r: &Request| match r {
        Request::Register {
            student,
            sections,
            as_admin,
        } => format!(
            "register student {student} in sections {sections:?}{}",
            if *as_admin { " (by admin)" } else { "" }
        ),
        Request::Drop {
            student,
            section,
            as_admin,
        } => format!(
            "drop student {student} from section {section}{}",
            if *as_admin { " (by admin)" } else { "" }
        ),
    };
    let state = |s: usize| {
        let m = &model.sections[s];
        format!(
            "[cap {} limit {} active {} offer {} enrolled {:?} waitlist {:?} offers {:?}]",
            m.capacity, m.limit, m.active, m.offer, m.enrolled, m.waitlist, m.offers
        )
    };
    match op {
        Op::Send { request: r, key } => format!("{} key {key:?}", request(r)),
        Op::Repeat { request: r } => format!("repeat {} without a key", request(r)),
        Op::Retry { key, record } => format!("retry {} key {key}", request(&record.request)),
        Op::Reuse { key, request: r } => format!("reuse key {key} for {}", request(r)),
        Op::Resize { section, change } => format!(
            "resize section {section} {} to capacity {:?} limit {:?} active {:?} offer {:?}",
            state(*section),
            change.capacity,
            change.limit,
            change.active,
            change.offer
        ),
        Op::Outage { steps } => format!("cut PostgreSQL for {steps} steps"),
        Op::Restart => "restart the application".into(),
        Op::Hold { student, on } => format!("hold for student {student}: {on}"),
        Op::Group { student, late } => format!(
            "student {student} into the {} group",
            if *late { "late" } else { "early" }
        ),
        Op::OwnLimit { student, limit } => {
            format!("student {student}'s own credit limit {limit:?}")
        }
        Op::Complete { student, course } => format!("student {student} completed course {course}"),
        Op::Permit {
            student,
            section,
            rule,
            grant,
        } => format!(
            "{} student {student} a {rule} permit for section {section}",
            if *grant { "grant" } else { "revoke from" }
        ),
        Op::Crash { request: r, seats } => format!(
            "{} dies after its claim and {seats} seats; sent again",
            request(r)
        ),
        Op::Handover => {
            "stop the second instance (it hands its leases over) and start it again".into()
        }
    }
}

/// Runs one operation against both sides and compares the answers; returns
/// a short form of the answer for the trace.
async fn run_op(live: &mut Live, model: &mut Model, op: &Op) -> String {
    match op {
        Op::Repeat { request } => {
            let answer = live.request(model, request, None).await;
            let expected = live.expect(model, request);
            assert_answer(&answer, &expected);
            assert_eq!(answer.replayed, None, "no key, no replay");
            answer.summary()
        }
        Op::Send { request, key } => {
            let answer = live.request(model, request, key.as_deref()).await;
            let expected = live.expect(model, request);
            assert_answer(&answer, &expected);
            assert_eq!(answer.replayed, None, "a first request is not a replay");
            // 5xx answers are not stored (SPEC §7): the key stays fresh.
            if let Some(key) = key.as_ref().filter(|_| !answer.status.is_server_error()) {
                let previous = model.records.insert(
                    (request.student(), key.clone()),
                    Record {
                        request: request.clone(),
                        status: answer.status,
                        body: answer.text.clone(),
                    },
                );
                assert!(previous.is_none(), "the generator makes fresh keys");
            }
            answer.summary()
        }
        Op::Retry { key, record } => {
            let answer = live.request(model, &record.request, Some(key)).await;
            assert_eq!(
                (answer.status, answer.text.as_str()),
                (record.status, record.body.as_str()),
                "same key, same body: the stored answer again"
            );
            assert_eq!(answer.replayed.as_deref(), Some("true"), "marked replayed");
            answer.summary()
        }
        Op::Reuse { key, request } => {
            let answer = live.request(model, request, Some(key)).await;
            assert_answer(
                &answer,
                &Expected::Problem(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
            );
            answer.summary()
        }
        Op::Resize { section, change } => {
            let mut body = json!({});
            if let Some(c) = change.capacity {
                body["total_seats"] = json!(c);
            }
            if let Some(l) = change.limit {
                body["waitlist_limit"] = json!(l);
            }
            if let Some(a) = change.active {
                body["is_active"] = json!(a);
            }
            if let Some(offer) = change.offer {
                body["waitlist_mode"] = json!(if offer { "offer" } else { "auto" });
                body["offer_ttl_secs"] = json!(OFFER_TTL_SECS);
            }
            let answer = live.patch(model, *section, body).await;
            if live.outage_left > 0 {
                // Admin changes need the catalog row: refused, nothing changed.
                assert_answer(
                    &answer,
                    &Expected::Problem(StatusCode::SERVICE_UNAVAILABLE, "database_unavailable"),
                );
                return answer.summary();
            }
            match model.resize(*section, change) {
                Err(code) => assert_answer(&answer, &Expected::Problem(StatusCode::CONFLICT, code)),
                Ok((promoted, offered)) => {
                    assert_eq!(answer.status, StatusCode::OK, "resize: {}", answer.text);
                    let got = answer.json();
                    let m = &model.sections[*section];
                    let expected = json!({
                        "total_seats": m.capacity,
                        "waitlist_limit": m.limit,
                        "is_active": m.active,
                        "enrolled": m.enrolled.len(),
                        "seats_available": m.capacity - m.taken(),
                        "seats_offered": m.offers.len(),
                        "waitlist_length": m.waitlist.len(),
                        "waitlist_mode": if m.offer { "offer" } else { "auto" },
                        "promoted_student_ids": model.ids(promoted),
                        "offered_student_ids": model.ids(offered),
                    });
                    let shown: Value = expected
                        .as_object()
                        .unwrap()
                        .keys()
                        .map(|k| (k.clone(), got[k].clone()))
                        .collect::<serde_json::Map<_, _>>()
                        .into();
                    assert_eq!(
                        shown, expected,
                        "resize answer (left) against the model (right); full answer {got}"
                    );
                }
            }
            answer.summary()
        }
        Op::Outage { steps } => {
            live.proxy.cut();
            live.outage_left = *steps;
            "cut".into()
        }
        Op::Restart => {
            live.app.restart().await;
            live.app.wait_ready().await;
            "restarted".into()
        }
        Op::Handover => {
            if let Some(second) = live.second.take() {
                second.stop().await;
            }
            let second = live.app.sibling().await;
            second.wait_ready().await;
            live.second = Some(second);
            "handed over and back".into()
        }
        Op::Hold { student, on } => {
            let path = format!("/api/v1/admin/students/{}", model.student_ids[*student]);
            let holds: Vec<&str> = if *on { vec!["financial"] } else { vec![] };
            let answer = live
                .send(
                    Method::PATCH,
                    &path,
                    &live.admin_token,
                    None,
                    json!({ "holds": holds }),
                )
                .await;
            assert_eq!(answer.status, StatusCode::OK, "hold: {}", answer.text);
            assert_eq!(answer.json()["holds"], json!(holds), "{}", answer.text);
            if *on {
                model.place_hold(*student);
            } else {
                model.students[*student].hold = false;
            }
            answer.summary()
        }
        Op::Group { student, late } => {
            let path = format!(
                "/api/v1/admin/semesters/{}/priority-groups/assign",
                live.semester
            );
            let body = json!({
                "priority_group": if *late { "late" } else { "early" },
                "student_ids": [model.student_ids[*student]],
            });
            let answer = live
                .send(Method::POST, &path, &live.admin_token, None, body)
                .await;
            assert_eq!(answer.status, StatusCode::OK, "assign: {}", answer.text);
            assert_eq!(answer.json()["assigned"], 1, "{}", answer.text);
            model.students[*student].late = *late;
            answer.summary()
        }
        Op::OwnLimit { student, limit } => {
            let path = format!(
                "/api/v1/admin/students/{}/credit-limit",
                model.student_ids[*student]
            );
            let body = json!({ "semester_id": live.semester, "credit_limit": limit });
            let answer = live
                .send(Method::PUT, &path, &live.admin_token, None, body.clone())
                .await;
            assert_eq!(
                answer.status,
                StatusCode::OK,
                "credit limit: {}",
                answer.text
            );
            assert_eq!(answer.json(), body);
            model.students[*student].own_limit = *limit;
            answer.summary()
        }
        Op::Complete { student, course } => {
            let body = json!({ "items": [{
                "student_id": model.student_ids[*student],
                "course_code": model.catalogue.course_codes[*course],
            }]});
            let answer = live
                .send(
                    Method::POST,
                    "/api/v1/admin/completed-courses",
                    &live.admin_token,
                    None,
                    body,
                )
                .await;
            assert_eq!(answer.status, StatusCode::OK, "completed: {}", answer.text);
            let fresh = model.students[*student].completed.insert(*course);
            assert_eq!(
                answer.json()["recorded"],
                u64::from(fresh),
                "{}",
                answer.text
            );
            answer.summary()
        }
        Op::Permit {
            student,
            section,
            rule,
            grant,
        } => {
            let id = model.student_ids[*student];
            let body = json!({ "section_id": model.section_ids[*section], "rule": rule });
            let permits = &mut model.students[*student].permits;
            if *grant {
                let path = format!("/api/v1/admin/students/{id}/permits");
                let answer = live
                    .send(Method::POST, &path, &live.admin_token, None, body)
                    .await;
                assert_eq!(
                    answer.status,
                    StatusCode::CREATED,
                    "permit: {}",
                    answer.text
                );
                assert_eq!(answer.json()["rule"], *rule);
                permits.insert((*section, rule));
                answer.summary()
            } else {
                let path = format!("/api/v1/admin/students/{id}/permits/revoke");
                let answer = live
                    .send(Method::POST, &path, &live.admin_token, None, body)
                    .await;
                if permits.remove(&(*section, rule)) {
                    assert_eq!(
                        answer.status,
                        StatusCode::NO_CONTENT,
                        "revoke: {}",
                        answer.text
                    );
                } else {
                    assert_answer(
                        &answer,
                        &Expected::Problem(StatusCode::NOT_FOUND, "not_found"),
                    );
                }
                answer.summary()
            }
        }
        Op::Crash { request, seats } => {
            let Request::Register {
                student, sections, ..
            } = request
            else {
                unreachable!("the generator crashes registrations only")
            };
            let ids: Vec<Uuid> = sections.iter().map(|s| model.section_ids[*s]).collect();
            live.app
                .state
                .registrar
                .register_and_crash(
                    model.student_ids[*student],
                    &ids,
                    registrar::domain::now_ms(),
                    *seats,
                )
                .await
                .expect("the claim and the seats are decided (Redis is up)");
            model.crash(*student, sections, *seats);
            let answer = live.request(model, request, None).await;
            let expected = live.expect(model, request);
            assert_answer(&answer, &expected);
            answer.summary()
        }
    }
}

/// After every step: Redis equals the model and keeps the promises.
async fn check_live(app: &TestApp, model: &Model) {
    for (i, (section, m)) in model.section_ids.iter().zip(&model.sections).enumerate() {
        let (enrolled, waitlist) = app.redis_roster(*section).await;
        let counts = app.redis.live_counts(&[*section]).await.unwrap()[0]
            .unwrap_or_else(|| panic!("section {i} has no state in Redis"));
        // The promises, on the live state alone.
        assert!(
            enrolled.len() as i64 <= counts.capacity,
            "promise 1 (no oversell) broken in Redis, section {i}: {} enrolled, capacity {}",
            enrolled.len(),
            counts.capacity
        );
        let unique: BTreeSet<&Uuid> = waitlist.iter().collect();
        assert!(
            unique.len() == waitlist.len() && waitlist.iter().all(|w| !enrolled.contains(w)),
            "promise 2 (nobody twice) broken in Redis, section {i}: enrolled {enrolled:?}, waitlist {waitlist:?}"
        );
        assert!(
            waitlist.len() as i64 <= counts.seats_offered || counts.seats_available == 0,
            "promise 3 (fair waitlist) broken in Redis, section {i}: {} seats free while {} wait",
            counts.seats_available,
            waitlist.len()
        );
        assert_eq!(
            counts.seats_available,
            counts.capacity - enrolled.len() as i64 - counts.seats_offered,
            "section {i}: free seats = capacity - enrolled - offered in Redis"
        );
        let live = app.redis.inspect(*section).await.unwrap().live.unwrap();
        let offers: BTreeSet<Uuid> = live.offers.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            offers,
            model.ids(m.offers.iter().copied()).into_iter().collect(),
            "section {i}: Redis's offers differ from the model's"
        );
        assert_eq!(
            live.offer_mode.unwrap_or(false),
            m.offer,
            "section {i}: waitlist mode in Redis"
        );
        // And the model.
        assert_eq!(
            enrolled,
            model.ids(m.enrolled.iter().copied()).into_iter().collect(),
            "section {i}: Redis's enrolled set differs from the model's"
        );
        assert_eq!(
            waitlist,
            model.ids(m.waitlist.iter().copied()),
            "section {i}: Redis's waitlist (in order) differs from the model's"
        );
        assert_eq!(
            counts.capacity, m.capacity as i64,
            "section {i}: capacity in Redis"
        );
    }
    // The claims of every request were settled (a crashed one's by the
    // retry): each schedule holds exactly the student's places.
    for (student, id) in model.student_ids.iter().enumerate() {
        let schedule = app.state.redis.schedule(*id).await.unwrap();
        let mut entries: Vec<(Uuid, char)> = schedule
            .iter()
            .map(|(s, e)| (*s, e.chars().next().unwrap_or('?')))
            .collect();
        entries.sort();
        let mut expected: Vec<(Uuid, char)> = model
            .held(student)
            .into_iter()
            .map(|s| {
                let uncounted = model.sections[s].uncounted.contains(&student);
                (model.section_ids[s], if uncounted { 'w' } else { 'h' })
            })
            .collect();
        expected.sort();
        assert_eq!(
            entries, expected,
            "student {student}: schedule entries in Redis (left) against their places (right): {schedule:?}"
        );
    }
}

/// At a quiescent point: PostgreSQL caught up, and equals Redis and the model.
async fn checkpoint(app: &TestApp, model: &Model) {
    app.wait_persisted(&model.section_ids).await;
    let db = app.db.get().await.unwrap();
    for (i, (section, m)) in model.section_ids.iter().zip(&model.sections).enumerate() {
        app.assert_converged(*section).await;
        let (enrolled, waitlist) = app.pg_roster(*section).await;
        assert_eq!(
            enrolled,
            model.ids(m.enrolled.iter().copied()).into_iter().collect(),
            "section {i}: PostgreSQL's enrolled set differs from the model's (promise 4)"
        );
        assert_eq!(
            waitlist,
            model.ids(m.waitlist.iter().copied()),
            "section {i}: PostgreSQL's waitlist differs from the model's"
        );
        let row = db
            .query_one(
                "select total_seats, waitlist_limit, is_active, waitlist_mode, \
                        array(select w.student_id from waitlist w where w.section_id = s.id \
                               and w.offer_expires_at is not null) \
                   from sections s where id = $1",
                &[section],
            )
            .await
            .unwrap();
        let (total, limit, active, mode): (i32, i32, bool, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        assert_eq!(
            (total as usize, limit as usize, active, mode == "offer"),
            (m.capacity, m.limit, m.active, m.offer),
            "section {i}: PostgreSQL's capacity, waitlist limit, active flag and waitlist mode"
        );
        let offered: BTreeSet<Uuid> = row.get::<_, Vec<Uuid>>(4).into_iter().collect();
        assert_eq!(
            offered,
            model.ids(m.offers.iter().copied()).into_iter().collect(),
            "section {i}: PostgreSQL's offers differ from the model's"
        );
    }
    for (student, id) in model.student_ids.iter().enumerate() {
        check_views(app, model, student, *id).await;
    }
    let dead: i64 = db
        .query_one("select count(*) from dead_letters", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        dead, 0,
        "promise 6: nothing was undone (every failure was transient)"
    );
}

/// A student's own views, once persistence caught up: every enrolment and
/// waitlist place the model holds, persisted, with the live position.
async fn check_views(app: &TestApp, model: &Model, student: usize, id: Uuid) {
    let token = app.token_for(id);
    let get = |path: String| {
        let token = token.clone();
        async move {
            let response = app.get(&path, Some(&token)).await;
            assert_eq!(response.status(), StatusCode::OK, "GET {path}");
            response.json::<Value>().await.unwrap()
        }
    };
    let registrations = get(format!("/api/v1/students/{id}/registrations")).await;
    let mut enrolled = BTreeSet::new();
    for item in registrations["items"].as_array().unwrap() {
        assert_ne!(
            item["status"], "reverted",
            "student {student}: nothing is undone by transient failures: {item}"
        );
        assert_eq!(
            item["persistence"], "persisted",
            "student {student}: after catching up every registration is persisted: {item}"
        );
        if item["status"] == "enrolled" {
            enrolled.insert(
                item["section_id"]
                    .as_str()
                    .unwrap()
                    .parse::<Uuid>()
                    .unwrap(),
            );
        }
    }
    let expected: BTreeSet<Uuid> = model
        .sections
        .iter()
        .zip(&model.section_ids)
        .filter(|(m, _)| m.enrolled.contains(&student))
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(
        enrolled, expected,
        "student {student}: enrolled sections in their view (left) against the model (right)"
    );
    let waitlist = get(format!("/api/v1/students/{id}/waitlist")).await;
    let mut places: Vec<(Uuid, i64, bool)> = waitlist["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            assert_eq!(
                item["persistence"], "persisted",
                "student {student}: waitlist place persisted: {item}"
            );
            (
                item["section_id"].as_str().unwrap().parse().unwrap(),
                item["position"].as_i64().unwrap(),
                item["offer_expires_at"].is_string(),
            )
        })
        .collect();
    places.sort();
    let mut expected: Vec<(Uuid, i64, bool)> = model
        .sections
        .iter()
        .zip(&model.section_ids)
        .filter_map(|(m, s)| {
            let i = m.waitlist.iter().position(|w| *w == student)?;
            Some((*s, i as i64 + 1, m.offers.contains(&student)))
        })
        .collect();
    expected.sort();
    assert_eq!(
        places, expected,
        "student {student}: waitlist places and positions in their view (left) against the model (right)"
    );
}
