//! The registration day: the seeds' "peak" made realistic (issue 13).
//!
//! A login storm runs first (main.rs). Then every student goes through one
//! session, on one connection, each request waiting for the last answer:
//!
//! 1. browse: the semester's first page of sections, or the sections of
//!    one popular course (`course_code`);
//! 2. view one popular section;
//! 3. register for 3 to 5 distinct sections in one request, picked by a
//!    Zipf popularity (exponent [`ZIPF_EXPONENT`]) over the catalogue;
//! 4. for every section answered "full", ask once more for as many others;
//! 5. one student in five then drops one of the sections they got (a seat
//!    freed in a full section promotes its waitlist's head, or, in the one
//!    section in [`OFFER_ONE_IN`] that offers freed seats, holds it for them);
//! 6. read their own registrations.
//!
//! A student left waiting on an offer section comes back once their
//! worker's queue is done: they read their waitlist and accept every offer
//! it shows (a register of those sections), as a student told of an offer
//! would.
//!
//! Popular sections fill and waitlist early; the tail keeps room. The
//! outcome mix is printed beside the throughput, like every scenario's.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::Value;
use uuid::Uuid;

use crate::{
    client::Call,
    server::System,
    workloads::{drop_call, register_many, Ledger, Workload},
};

/// How steeply popularity falls with rank: weight 1 / rank^s.
pub const ZIPF_EXPONENT: f64 = 0.8;

/// Sections one student asks for in their first request: 3 to 5.
const FIRST_ASK: std::ops::RangeInclusive<usize> = 3..=5;

/// One student in this many drops a section after registering.
const DROP_ONE_IN: u32 = 5;

/// Sections each student asks for on average in the first request, for
/// sizing the catalogue.
pub const MEAN_ASK: usize = 4;

/// One section in this many (by popularity rank) offers freed seats
/// (`waitlist_mode` offer) instead of enrolling its waitlist's head.
pub const OFFER_ONE_IN: usize = 3;

/// Offers the returning students found on their waitlists, and those their
/// accepting register answered `enrolled`, over the run (for the report).
pub static OFFERS_SEEN: AtomicUsize = AtomicUsize::new(0);
pub static OFFERS_ACCEPTED: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Browse,
    View,
    Register,
    Replace,
    Drop,
    Mine,
    /// Back later: their waitlist, for offers.
    Offers,
    /// Accept the offers it showed.
    Accept,
}

struct Student {
    id: Uuid,
    token: String,
    step: Step,
    /// Sections asked for so far (never asked twice).
    tried: Vec<Uuid>,
    /// Enrolled or waitlisted.
    held: Vec<Uuid>,
    /// Sections the last register answered "full".
    full: usize,
    /// Waitlisted in a section that offers freed seats.
    waits_on_offers: bool,
    /// Sections their waitlist showed an offer for.
    offered: Vec<Uuid>,
}

struct Session {
    rng: fastrand::Rng,
    queue: VecDeque<(Uuid, String)>,
    /// Students who come back for their offers, once `queue` is done.
    back_later: VecDeque<Student>,
    current: Option<Student>,
}

pub struct Day {
    semester: Uuid,
    /// Sections in popularity order (rank 1 first) with their course codes.
    ranked: Vec<(Uuid, String)>,
    /// Sections in offer mode.
    offering: std::collections::HashSet<Uuid>,
    /// The Zipf distribution's cumulative weights, by rank.
    cumulative: Vec<f64>,
    sessions: Vec<Mutex<Session>>,
    ledger: Arc<Ledger>,
    /// Students whose session ended.
    pub finished: AtomicUsize,
}

impl Day {
    pub async fn new(
        system: &System,
        students: &[(Uuid, String)],
        sections: &[Uuid],
        workers: usize,
        ledger: Arc<Ledger>,
    ) -> anyhow::Result<Self> {
        let semester = crate::workloads::semester(system).await?;
        let rows = system
            .db
            .get()
            .await?
            .query(
                "select s.id, c.course_code from sections s join courses c on c.id = s.course_id \
                 where s.id = any($1)",
                &[&sections],
            )
            .await?;
        let mut ranked: Vec<(Uuid, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        ranked.sort();
        // Popularity unrelated to course codes, the same every run.
        fastrand::Rng::with_seed(7).shuffle(&mut ranked);
        let weights: Vec<f64> = (1..=ranked.len())
            .map(|rank| 1.0 / (rank as f64).powf(ZIPF_EXPONENT))
            .collect();
        let total: f64 = weights.iter().sum();
        let cumulative = weights
            .iter()
            .scan(0.0, |acc, w| {
                *acc += w / total;
                Some(*acc)
            })
            .collect();
        let offering: std::collections::HashSet<Uuid> = ranked
            .iter()
            .skip(1)
            .step_by(OFFER_ONE_IN)
            .map(|(s, _)| *s)
            .collect();
        let listed: Vec<Uuid> = offering.iter().copied().collect();
        crate::workloads::patch_sections(
            system,
            &listed,
            &serde_json::json!({ "waitlist_mode": "offer", "offer_ttl_secs": 86400 }),
        )
        .await?;
        let workers = workers.max(1);
        let sessions = (0..workers)
            .map(|w| {
                Mutex::new(Session {
                    rng: fastrand::Rng::with_seed(w as u64 + 11),
                    queue: students.iter().skip(w).step_by(workers).cloned().collect(),
                    back_later: VecDeque::new(),
                    current: None,
                })
            })
            .collect();
        Ok(Self {
            semester,
            ranked,
            offering,
            cumulative,
            sessions,
            ledger,
            finished: AtomicUsize::new(0),
        })
    }

    /// A section by popularity.
    fn pick(&self, rng: &mut fastrand::Rng) -> usize {
        let x = rng.f64();
        self.cumulative
            .partition_point(|c| *c < x)
            .min(self.ranked.len() - 1)
    }

    /// `n` popular sections the student has not asked for yet (fewer if
    /// the catalogue runs out of untried ones after a bounded search).
    fn pick_new(&self, rng: &mut fastrand::Rng, tried: &[Uuid], n: usize) -> Vec<Uuid> {
        let mut picked: Vec<Uuid> = Vec::with_capacity(n);
        for _ in 0..n * 50 {
            if picked.len() == n {
                break;
            }
            let section = self.ranked[self.pick(rng)].0;
            if !tried.contains(&section) && !picked.contains(&section) {
                picked.push(section);
            }
        }
        picked
    }

    fn call(&self, rng: &mut fastrand::Rng, student: &mut Student) -> Option<Call> {
        let bearer = Some(format!("Bearer {}", student.token));
        match student.step {
            Step::Browse => {
                let path = if rng.bool() {
                    format!("/api/v1/semesters/{}/sections?limit=100", self.semester)
                } else {
                    let course = &self.ranked[self.pick(rng)].1;
                    format!(
                        "/api/v1/semesters/{}/sections?course_code={course}",
                        self.semester
                    )
                };
                Some(Call::get("browse", path, bearer))
            }
            Step::View => {
                let section = self.ranked[self.pick(rng)].0;
                Some(Call::get(
                    "view",
                    format!("/api/v1/sections/{section}"),
                    bearer,
                ))
            }
            Step::Register => {
                let wanted = rng.usize(FIRST_ASK);
                let sections = self.pick_new(rng, &student.tried, wanted);
                student.tried.extend(&sections);
                Some(register_many(&student.token, student.id, &sections))
            }
            Step::Replace => {
                let sections = self.pick_new(rng, &student.tried, student.full);
                if sections.is_empty() {
                    return None;
                }
                student.tried.extend(&sections);
                Some(register_many(&student.token, student.id, &sections))
            }
            Step::Drop => {
                if student.held.is_empty() || rng.u32(..DROP_ONE_IN) != 0 {
                    return None;
                }
                let section = student.held[rng.usize(..student.held.len())];
                Some(drop_call(&student.token, student.id, section))
            }
            Step::Mine => Some(Call::get(
                "mine",
                format!("/api/v1/students/{}/registrations", student.id),
                bearer,
            )),
            Step::Offers => Some(Call::get(
                "offers",
                format!("/api/v1/students/{}/waitlist", student.id),
                bearer,
            )),
            Step::Accept => {
                if student.offered.is_empty() {
                    return None;
                }
                Some(register_many(&student.token, student.id, &student.offered))
            }
        }
    }

    /// Moves the worker's student past the step just answered (or lost).
    fn advance(&self, session: &mut Session) {
        let Some(student) = &mut session.current else {
            return;
        };
        student.step = match student.step {
            Step::Browse => Step::View,
            Step::View => Step::Register,
            Step::Register => Step::Replace,
            Step::Replace => Step::Drop,
            Step::Drop => Step::Mine,
            Step::Mine if student.waits_on_offers => {
                let mut later = session.current.take().expect("matched above");
                later.step = Step::Offers;
                later.waits_on_offers = false;
                session.back_later.push_back(later);
                return;
            }
            Step::Offers => Step::Accept,
            Step::Mine | Step::Accept => {
                session.current = None;
                self.finished.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
    }
}

impl Workload for Day {
    fn next(&self, worker: usize) -> Option<Call> {
        let mut guard = self.sessions[worker % self.sessions.len()].lock().unwrap();
        let session = &mut *guard;
        loop {
            if session.current.is_none() {
                session.current = Some(match session.queue.pop_front() {
                    Some((id, token)) => Student {
                        id,
                        token,
                        step: Step::Browse,
                        tried: Vec::new(),
                        held: Vec::new(),
                        full: 0,
                        waits_on_offers: false,
                        offered: Vec::new(),
                    },
                    None => session.back_later.pop_front()?,
                });
            }
            let student = session.current.as_mut().expect("set above");
            if let Some(call) = self.call(&mut session.rng, student) {
                return Some(call);
            }
            // A step with nothing to do (no replacement, no drop).
            self.advance(session);
        }
    }

    fn observe(&self, worker: usize, call: &Call, status: StatusCode, body: &Bytes) {
        self.ledger.observe(call, status, body);
        let mut guard = self.sessions[worker % self.sessions.len()].lock().unwrap();
        let session = &mut *guard;
        if let Some(student) = &mut session.current {
            let answer = status
                .is_success()
                .then(|| serde_json::from_slice::<Value>(body).ok())
                .flatten();
            match (call.kind, answer) {
                ("register", Some(answer)) if student.step == Step::Accept => {
                    let enrolled = answer["results"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|r| r["status"] == "enrolled")
                        .count();
                    OFFERS_ACCEPTED.fetch_add(enrolled, Ordering::Relaxed);
                }
                ("register", Some(answer)) => {
                    student.full = 0;
                    for result in answer["results"].as_array().into_iter().flatten() {
                        let section = result["section_id"]
                            .as_str()
                            .and_then(|s| Uuid::try_parse(s).ok());
                        match (result["status"].as_str(), result["reason"].as_str()) {
                            (Some("enrolled"), _) => student.held.extend(section),
                            (Some("waitlisted"), _) => {
                                student.waits_on_offers |=
                                    section.is_some_and(|s| self.offering.contains(&s));
                                student.held.extend(section);
                            }
                            (Some("rejected"), Some("full")) => student.full += 1,
                            _ => {}
                        }
                    }
                }
                ("register", None) => student.full = 0,
                ("offers", Some(answer)) => {
                    student.offered = answer["items"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|item| item["offer_expires_at"].is_string())
                        .filter_map(|item| item["section_id"].as_str())
                        .filter_map(|s| Uuid::try_parse(s).ok())
                        .collect();
                    OFFERS_SEEN.fetch_add(student.offered.len(), Ordering::Relaxed);
                }
                ("drop", Some(_)) => {
                    if let Some((_, section)) = call.tag {
                        student.held.retain(|s| *s != section);
                    }
                }
                _ => {}
            }
        }
        self.advance(session);
    }

    fn failed(&self, worker: usize, call: &Call) {
        self.ledger.failed(call);
        let mut guard = self.sessions[worker % self.sessions.len()].lock().unwrap();
        if let Some(student) = &mut guard.current {
            student.full = 0;
        }
        self.advance(&mut guard);
    }
}
