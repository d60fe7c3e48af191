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
//!    freed in a full section promotes its waitlist's head);
//! 6. read their own registrations.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Browse,
    View,
    Register,
    Replace,
    Drop,
    Mine,
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
}

struct Session {
    rng: fastrand::Rng,
    queue: VecDeque<(Uuid, String)>,
    current: Option<Student>,
}

pub struct Day {
    semester: Uuid,
    /// Sections in popularity order (rank 1 first) with their course codes.
    ranked: Vec<(Uuid, String)>,
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
        let workers = workers.max(1);
        let sessions = (0..workers)
            .map(|w| {
                Mutex::new(Session {
                    rng: fastrand::Rng::with_seed(w as u64 + 11),
                    queue: students.iter().skip(w).step_by(workers).cloned().collect(),
                    current: None,
                })
            })
            .collect();
        Ok(Self {
            semester,
            ranked,
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
            Step::Mine => {
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
                let (id, token) = session.queue.pop_front()?;
                session.current = Some(Student {
                    id,
                    token,
                    step: Step::Browse,
                    tried: Vec::new(),
                    held: Vec::new(),
                    full: 0,
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
                ("register", Some(answer)) => {
                    student.full = 0;
                    for result in answer["results"].as_array().into_iter().flatten() {
                        let section = result["section_id"]
                            .as_str()
                            .and_then(|s| Uuid::try_parse(s).ok());
                        match (result["status"].as_str(), result["reason"].as_str()) {
                            (Some("enrolled" | "waitlisted"), _) => {
                                student.held.extend(section);
                            }
                            (Some("rejected"), Some("full")) => student.full += 1,
                            _ => {}
                        }
                    }
                }
                ("register", None) => student.full = 0,
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
