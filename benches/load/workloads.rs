//! What the load tool sends: the scenarios, the loops that send it, the
//! ledger of acknowledged answers the audit checks, and the ceilings.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bytes::Bytes;
use hyper::StatusCode;
use registrar::{auth::Tokens, domain::Role, domain::SectionSnapshot, seats::Reserve};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{
    client::{Call, Conn, Local, Recorder},
    kit::namespace::Namespace,
    model::Phase,
    server::{redis_handle, Addrs, System, Target},
};

/// What the service acknowledged, with when each answer was asked for and
/// arrived.
#[derive(Default)]
pub struct Ledger {
    entries: Mutex<Vec<LedgerEntry>>,
}

/// What the answers establish about one (student, section).
struct Last {
    state: Option<bool>,
    /// Unknown because two answers crossed in flight.
    crossed: bool,
}

/// One acknowledged fact about (student, section): `Some(true)` holds a
/// seat, `Some(false)` does not, `None` unknown (a register or drop whose
/// answer was lost or a 5xx: it may or may not have happened). A promotion
/// is a fact about the promoted student acknowledged in another student's
/// drop answer, so it carries that call's times.
#[derive(Clone, Copy)]
struct LedgerEntry {
    sent: Instant,
    answered: Instant,
    student: Uuid,
    section: Uuid,
    state: Option<bool>,
}

impl Ledger {
    /// What `call`'s answer said of `student` in `section`.
    fn note(&self, call: &Call, student: Uuid, section: Uuid, enrolled: bool) {
        self.record(call, student, section, Some(enrolled));
    }

    fn record(&self, call: &Call, student: Uuid, section: Uuid, state: Option<bool>) {
        let answered = Instant::now();
        let sent = call.sent.get().copied().unwrap_or(answered);
        self.entries.lock().unwrap().push(LedgerEntry {
            sent,
            answered,
            student,
            section,
            state,
        });
    }

    /// Per section, the students whose last acknowledged state is enrolled.
    /// A student whose last register or drop got no clear answer is left
    /// out: the service never told the client where they stand.
    pub fn enrolled(&self) -> HashMap<Uuid, BTreeSet<Uuid>> {
        let mut map: HashMap<Uuid, BTreeSet<Uuid>> = HashMap::new();
        for ((student, section), last) in self.last_states() {
            let set = map.entry(section).or_default();
            if last.state == Some(true) {
                set.insert(student);
            }
        }
        map
    }

    /// (student, section) pairs whose last operation's outcome is unknown.
    pub fn uncertain(&self) -> usize {
        self.last_states()
            .values()
            .filter(|last| last.state.is_none())
            .count()
    }

    /// Of those, the pairs whose last answers crossed in flight (see
    /// [`Ledger::last_states`]); the rest lost their last answer or got a 5xx.
    pub fn crossed(&self) -> usize {
        self.last_states()
            .values()
            .filter(|last| last.crossed)
            .count()
    }

    /// The last state of each (student, section) the answers establish.
    /// Answers are ordered by arrival, but two calls in flight at the same
    /// time may have run on the server in either order (a student's own
    /// drop and, on another connection, the drop that promoted them): when
    /// an answer with another state arrived after the last one was sent,
    /// which came last on the server is unknown, and so is the state.
    fn last_states(&self) -> HashMap<(Uuid, Uuid), Last> {
        let mut by_pair: HashMap<(Uuid, Uuid), Vec<LedgerEntry>> = HashMap::new();
        for e in self.entries.lock().unwrap().iter() {
            by_pair.entry((e.student, e.section)).or_default().push(*e);
        }
        by_pair
            .into_iter()
            .map(|(pair, mut entries)| {
                entries.sort_by_key(|e| e.answered);
                let last = *entries.last().expect("at least one entry");
                let crossed = entries
                    .iter()
                    .rev()
                    .skip(1)
                    .take_while(|e| e.answered > last.sent)
                    .any(|e| e.state != last.state);
                let state = if crossed { None } else { last.state };
                (pair, Last { state, crossed })
            })
            .collect()
    }

    /// Records what a register or drop answer acknowledged.
    pub fn observe(&self, call: &Call, status: StatusCode, body: &Bytes) {
        let Some((student, section)) = call.tag else {
            return;
        };
        if status.is_server_error() {
            // A 503 after the script ran (Redis answered, then the
            // connection to it broke) is possible: outcome unknown.
            self.failed(call);
            return;
        }
        if call.kind == "drop" && status == StatusCode::NOT_FOUND {
            self.note(call, student, section, false);
            return;
        }
        if !status.is_success() {
            return;
        }
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return;
        };
        match call.kind {
            "register" => {
                // Each result names its section (a request may ask for several).
                for result in v["results"].as_array().into_iter().flatten() {
                    let section = result["section_id"]
                        .as_str()
                        .and_then(|s| Uuid::try_parse(s).ok())
                        .unwrap_or(section);
                    match result["status"].as_str() {
                        Some("enrolled" | "already_enrolled") => {
                            self.note(call, student, section, true)
                        }
                        Some("waitlisted" | "already_waitlisted") => {
                            self.note(call, student, section, false)
                        }
                        _ => {}
                    }
                }
            }
            "drop" => {
                if matches!(v["status"].as_str(), Some("dropped" | "left_waitlist")) {
                    self.note(call, student, section, false);
                }
                if let Some(promoted) = v["promoted_student_id"]
                    .as_str()
                    .and_then(|s| Uuid::try_parse(s).ok())
                {
                    self.note(call, promoted, section, true);
                }
            }
            _ => {}
        }
    }

    /// A register or drop that got no answer (connection lost, timeout).
    pub fn failed(&self, call: &Call) {
        let Some((student, section)) = call.tag else {
            return;
        };
        match call.kind {
            "register" => {
                for section in call.sections() {
                    self.record(call, student, section, None);
                }
            }
            "drop" => self.record(call, student, section, None),
            _ => {}
        }
    }
}

/// The error kind of a 5xx or 429 answer: the status and, when the body is
/// problem+json, its machine code ("http_503 redis_unavailable").
pub fn answer_error(status: StatusCode, body: &Bytes) -> Option<String> {
    if !(status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS) {
        return None;
    }
    let code = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_string));
    Some(match code {
        Some(code) => format!("http_{} {code}", status.as_u16()),
        None => format!("http_{}", status.as_u16()),
    })
}

/// A source of calls for the loops.
pub trait Workload: Send + Sync {
    /// The next call of `worker`, or None when the work is done.
    fn next(&self, worker: usize) -> Option<Call>;
    /// Sees every answer (to update the ledger or the worker's state).
    fn observe(&self, worker: usize, call: &Call, status: StatusCode, body: &Bytes);
    /// Sees every call that got no answer (connection error, timeout).
    fn failed(&self, _worker: usize, _call: &Call) {}
}

/// Drives `connections` workers, each on its own connection (opened before
/// the clock starts), with no think time, until the workload ends or
/// `limit` has passed. Returns the measured time.
pub async fn closed_loop(
    addrs: Addrs,
    connections: usize,
    limit: Option<Duration>,
    workload: Arc<dyn Workload>,
    recorder: Arc<Recorder>,
) -> Duration {
    let mut workers = Vec::with_capacity(connections);
    let ready = Arc::new(tokio::sync::Barrier::new(connections + 1));
    let (go_tx, go) = tokio::sync::watch::channel::<Option<Instant>>(None);
    for worker in 0..connections {
        let (workload, recorder, ready, mut go) = (
            workload.clone(),
            recorder.clone(),
            ready.clone(),
            go.clone(),
        );
        let addr = addrs[worker % addrs.len()];
        workers.push(tokio::spawn(async move {
            let mut conn = Conn::new(addr);
            let _ = conn.open().await;
            ready.wait().await;
            let started = go
                .wait_for(Option::is_some)
                .await
                .map(|s| s.expect("set"))
                .unwrap_or_else(|_| Instant::now());
            let deadline = limit.map(|l| started + l);
            let mut local = Local::default();
            while deadline.is_none_or(|d| Instant::now() < d) {
                let Some(call) = workload.next(worker) else {
                    break;
                };
                let sent = Instant::now();
                match conn.send(&call).await {
                    Ok((status, body)) => {
                        local.record(&recorder, call.kind, sent, Instant::now());
                        if let Some(kind) = answer_error(status, &body) {
                            local.error(kind);
                        }
                        local.answered(&call, status, &body);
                        workload.observe(worker, &call, status, &body);
                    }
                    Err(kind) => {
                        local.error(kind.to_string());
                        local.lost(&call);
                        workload.failed(worker, &call);
                    }
                }
            }
            recorder.absorb(&mut local);
        }));
    }
    ready.wait().await;
    let started = Instant::now();
    recorder.restart(started);
    let _ = go_tx.send(Some(started));
    for w in workers {
        let _ = w.await;
    }
    started.elapsed()
}

/// Sends at a fixed arrival rate for `duration` through `connections`
/// connections; latency runs from the intended send time.
pub async fn open_loop(
    addrs: Addrs,
    connections: usize,
    rate: f64,
    duration: Duration,
    workload: Arc<dyn Workload>,
    recorder: Arc<Recorder>,
) -> Duration {
    let total = (rate * duration.as_secs_f64()) as u64;
    let (tx, rx) = tokio::sync::mpsc::channel::<(Instant, Call)>(connections * 4);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut workers = Vec::with_capacity(connections);
    for worker in 0..connections {
        let (workload, recorder, rx) = (workload.clone(), recorder.clone(), rx.clone());
        let addr = addrs[worker % addrs.len()];
        workers.push(tokio::spawn(async move {
            let mut conn = Conn::new(addr);
            let mut local = Local::default();
            loop {
                let next = rx.lock().await.recv().await;
                let Some((intended, call)) = next else { break };
                match conn.send(&call).await {
                    Ok((status, body)) => {
                        local.record(&recorder, call.kind, intended, Instant::now());
                        if let Some(kind) = answer_error(status, &body) {
                            local.error(kind);
                        }
                        local.answered(&call, status, &body);
                        workload.observe(worker, &call, status, &body);
                    }
                    Err(kind) => {
                        local.error(kind.to_string());
                        local.lost(&call);
                        workload.failed(worker, &call);
                    }
                }
            }
            recorder.absorb(&mut local);
        }));
    }
    let start = tokio::time::Instant::now();
    recorder.restart(start.into_std());
    for i in 0..total {
        let intended = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(intended).await;
        let Some(call) = workload.next(i as usize % connections) else {
            break;
        };
        // A full channel waits here; the wait is charged to the request,
        // whose latency counts from `intended`.
        if tx.send((intended.into_std(), call)).await.is_err() {
            break;
        }
    }
    drop(tx);
    for w in workers {
        let _ = w.await;
    }
    start.elapsed()
}

/// The same call again and again (bounded by the loop's time limit).
pub struct Repeat(pub Call);

impl Workload for Repeat {
    fn next(&self, _worker: usize) -> Option<Call> {
        Some(self.0.clone())
    }

    fn observe(&self, _worker: usize, _call: &Call, _status: StatusCode, _body: &Bytes) {}
}

/// A fixed list of calls, each sent once, in order across all workers.
pub struct Fixed {
    calls: Vec<Call>,
    cursor: AtomicUsize,
    ledger: Option<Arc<Ledger>>,
}

impl Fixed {
    pub fn of(calls: Vec<Call>, ledger: Arc<Ledger>) -> Self {
        Self {
            calls,
            cursor: AtomicUsize::new(0),
            ledger: Some(ledger),
        }
    }
}

impl Workload for Fixed {
    fn next(&self, _worker: usize) -> Option<Call> {
        self.calls
            .get(self.cursor.fetch_add(1, Ordering::Relaxed))
            .cloned()
    }

    fn observe(&self, _worker: usize, call: &Call, status: StatusCode, body: &Bytes) {
        if let Some(ledger) = &self.ledger {
            ledger.observe(call, status, body);
        }
    }

    fn failed(&self, _worker: usize, call: &Call) {
        if let Some(ledger) = &self.ledger {
            ledger.failed(call);
        }
    }
}

pub fn register_call(token: &str, student: Uuid, section: Uuid) -> Call {
    register_many(token, student, &[section])
}

/// One request for several sections (tagged with the first).
pub fn register_many(token: &str, student: Uuid, sections: &[Uuid]) -> Call {
    Call::post(
        "register",
        "/api/v1/register",
        token.to_string(),
        json!({ "section_ids": sections }),
    )
    .tagged(student, sections[0])
}

pub fn drop_call(token: &str, student: Uuid, section: Uuid) -> Call {
    Call::post(
        "drop",
        "/api/v1/register/drop",
        token.to_string(),
        json!({ "section_id": section }),
    )
    .tagged(student, section)
}

/// The race: every student registers once for `section`.
pub fn race(students: &[(Uuid, String)], section: Uuid, ledger: Arc<Ledger>) -> Fixed {
    Fixed::of(
        students
            .iter()
            .map(|(s, t)| register_call(t, *s, section))
            .collect(),
        ledger,
    )
}

/// Enrol: every student registers once, round-robin over `sections`
/// (seeded with a seat for each), so every answer is a new enrolment and
/// every enrolment an event to persist.
pub fn enrol(students: &[(Uuid, String)], sections: &[Uuid], ledger: Arc<Ledger>) -> Fixed {
    Fixed::of(
        students
            .iter()
            .enumerate()
            .map(|(i, (s, t))| register_call(t, *s, sections[i % sections.len()]))
            .collect(),
        ledger,
    )
}

/// The login storm: every student logs in once with their password
/// (Argon2id on the server), in student-number order; counts the answers.
pub struct Logins {
    calls: Fixed,
    pub ok: AtomicUsize,
    pub refused: AtomicUsize,
}

impl Logins {
    /// The first `limit` students by number.
    pub async fn of(system: &System, password: &str, limit: usize) -> anyhow::Result<Self> {
        let rows = system
            .db
            .get()
            .await?
            .query(
                "select student_number from students where role = 'student' \
                 order by student_number limit $1",
                &[&i64::try_from(limit).unwrap_or(i64::MAX)],
            )
            .await?;
        let calls = rows
            .iter()
            .map(|r| {
                let number: String = r.get(0);
                let mut call = Call::post(
                    "login",
                    "/api/v1/auth/login",
                    String::new(),
                    json!({ "student_number": number, "password": password }),
                );
                call.token = None;
                call
            })
            .collect();
        Ok(Self {
            calls: Fixed {
                calls,
                cursor: AtomicUsize::new(0),
                ledger: None,
            },
            ok: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
        })
    }
}

impl Workload for Logins {
    fn next(&self, worker: usize) -> Option<Call> {
        self.calls.next(worker)
    }

    fn observe(&self, _worker: usize, _call: &Call, status: StatusCode, _body: &Bytes) {
        let counter = if status == StatusCode::OK {
            &self.ok
        } else {
            &self.refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Browsing a university-scale catalogue: every call asks one page of
/// `limit` sections of the semester, pages picked uniformly over the whole
/// semester (the first page's cursor walk is done before the clock starts),
/// each by a random student. Counts 200 answers and their bytes.
pub struct Catalogue {
    pages: Vec<String>,
    tokens: Vec<String>,
    rng: Vec<Mutex<fastrand::Rng>>,
    pub ok: AtomicUsize,
    pub other: AtomicUsize,
    pub bytes: AtomicUsize,
}

impl Catalogue {
    pub async fn of(
        system: &System,
        students: &[(Uuid, String)],
        semester: Uuid,
        limit: usize,
        workers: usize,
    ) -> anyhow::Result<Self> {
        let token = &students.first().context("no students seeded")?.1;
        let first = format!("/api/v1/semesters/{semester}/sections?limit={limit}");
        let http = reqwest::Client::new();
        let mut pages = vec![first.clone()];
        loop {
            let page: serde_json::Value = http
                .get(format!("http://{}{}", system.addr, pages.last().unwrap()))
                .bearer_auth(token)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            match page["next_cursor"].as_str() {
                Some(cursor) => pages.push(format!("{first}&cursor={cursor}")),
                None => break,
            }
            anyhow::ensure!(pages.len() <= 100_000, "the cursor walk does not end");
        }
        Ok(Self {
            pages,
            tokens: students
                .iter()
                .map(|(_, t)| format!("Bearer {t}"))
                .collect(),
            rng: (0..workers.max(1))
                .map(|w| Mutex::new(fastrand::Rng::with_seed(w as u64)))
                .collect(),
            ok: AtomicUsize::new(0),
            other: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
        })
    }

    pub fn pages(&self) -> usize {
        self.pages.len()
    }
}

impl Workload for Catalogue {
    fn next(&self, worker: usize) -> Option<Call> {
        let mut rng = self.rng[worker % self.rng.len()].lock().unwrap();
        let path = self.pages[rng.usize(..self.pages.len())].clone();
        let token = self.tokens[rng.usize(..self.tokens.len())].clone();
        Some(Call::get("page", path, Some(token)))
    }

    fn observe(&self, _worker: usize, _call: &Call, status: StatusCode, body: &Bytes) {
        if status == StatusCode::OK {
            self.ok.fetch_add(1, Ordering::Relaxed);
            self.bytes.fetch_add(body.len(), Ordering::Relaxed);
        } else {
            self.other.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One worker's students and what they hold.
struct WorkerState {
    rng: fastrand::Rng,
    students: Vec<(Uuid, String)>,
    holdings: HashMap<Uuid, Vec<Uuid>>,
    /// Students with a register or drop in flight: an open loop could
    /// otherwise send one student's next change before the last one was
    /// answered, and answers arriving out of order would mislead the ledger.
    busy: HashSet<Uuid>,
}

/// A weighted mix of browse, view, register, mine and drop, each worker with
/// its own students (so a student's requests never overlap).
pub struct Mix {
    weights: [u32; 5],
    sections: Vec<Uuid>,
    semester: Uuid,
    workers: Vec<Mutex<WorkerState>>,
    /// The worker that owns each student (answers may come back through
    /// another connection than the worker's in an open loop).
    owner: HashMap<Uuid, usize>,
    ledger: Arc<Ledger>,
}

/// Picks of a student before a change falls back to a read (all busy).
const BUSY_RETRIES: usize = 8;

impl Mix {
    fn new(
        students: &[(Uuid, String)],
        sections: &[Uuid],
        semester: Uuid,
        workers: usize,
        weights: [u32; 5],
        ledger: Arc<Ledger>,
    ) -> Self {
        let workers = workers.max(1);
        let states = (0..workers)
            .map(|w| {
                Mutex::new(WorkerState {
                    rng: fastrand::Rng::with_seed(w as u64 + 1),
                    students: students.iter().skip(w).step_by(workers).cloned().collect(),
                    holdings: HashMap::new(),
                    busy: HashSet::new(),
                })
            })
            .collect();
        let owner = students
            .iter()
            .enumerate()
            .map(|(i, (s, _))| (*s, i % workers))
            .collect();
        Self {
            weights,
            sections: sections.to_vec(),
            semester,
            workers: states,
            owner,
            ledger,
        }
    }

    fn state_of(&self, call: &Call) -> Option<&Mutex<WorkerState>> {
        let (student, _) = call.tag?;
        self.workers.get(*self.owner.get(&student)?)
    }
}

impl Workload for Mix {
    fn next(&self, worker: usize) -> Option<Call> {
        let mut guard = self.workers[worker % self.workers.len()].lock().unwrap();
        let state = &mut *guard;
        let total: u32 = self.weights.iter().sum();
        let mut pick = state.rng.u32(0..total);
        let mut op = 0;
        while pick >= self.weights[op] {
            pick -= self.weights[op];
            op += 1;
        }
        if state.students.is_empty() {
            return None;
        }
        let students = state.students.len();
        let mut which = state.rng.usize(..students);
        let changes = op == 2 || op == 4;
        if changes {
            let mut tries = 0;
            while state.busy.contains(&state.students[which].0) && tries < BUSY_RETRIES {
                which = state.rng.usize(..students);
                tries += 1;
            }
            if state.busy.contains(&state.students[which].0) {
                op = 1;
            }
        }
        let (student, token) = state.students[which].clone();
        let section = self.sections[state.rng.usize(..self.sections.len())];
        let bearer = Some(format!("Bearer {token}"));
        let call = match op {
            0 => Call::get(
                "browse",
                format!("/api/v1/semesters/{}/sections", self.semester),
                bearer,
            ),
            1 => Call::get("view", format!("/api/v1/sections/{section}"), bearer),
            3 => Call::get(
                "mine",
                format!("/api/v1/students/{student}/registrations"),
                bearer,
            ),
            4 => {
                let held = state
                    .holdings
                    .get(&student)
                    .and_then(|h| h.first().copied());
                match held {
                    Some(section) => drop_call(&token, student, section),
                    None => register_call(&token, student, section),
                }
            }
            _ => register_call(&token, student, section),
        };
        if call.tag.is_some() {
            state.busy.insert(student);
        }
        Some(call)
    }

    fn observe(&self, _worker: usize, call: &Call, status: StatusCode, body: &Bytes) {
        self.ledger.observe(call, status, body);
        let (Some((student, section)), Some(state)) = (call.tag, self.state_of(call)) else {
            return;
        };
        let mut state = state.lock().unwrap();
        state.busy.remove(&student);
        if call.kind == "drop" && status == StatusCode::NOT_FOUND {
            // Not held after all (an earlier drop without an answer went through).
            if let Some(held) = state.holdings.get_mut(&student) {
                held.retain(|s| *s != section);
            }
            return;
        }
        if !status.is_success() {
            return;
        }
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return;
        };
        let held = state.holdings.entry(student).or_default();
        match call.kind {
            "register"
                if matches!(
                    v["results"][0]["status"].as_str(),
                    Some("enrolled" | "waitlisted" | "already_enrolled" | "already_waitlisted")
                ) && !held.contains(&section) =>
            {
                held.push(section);
            }
            "drop" => held.retain(|s| *s != section),
            _ => {}
        }
    }

    fn failed(&self, _worker: usize, call: &Call) {
        self.ledger.failed(call);
        if let (Some((student, _)), Some(state)) = (call.tag, self.state_of(call)) {
            state.lock().unwrap().busy.remove(&student);
        }
    }
}

/// Peak: browse 5, view 3, register 2, mine 1, drop 1 (the seeds' proportions).
pub async fn peak(
    system: &System,
    students: &[(Uuid, String)],
    sections: &[Uuid],
    workers: usize,
    ledger: Arc<Ledger>,
) -> anyhow::Result<Mix> {
    let semester = semester(system).await?;
    Ok(Mix::new(
        students,
        sections,
        semester,
        workers,
        [5, 3, 2, 1, 1],
        ledger,
    ))
}

/// Reserve-queue: registrations only, over sections that fill and then
/// keep their waitlists under pressure.
pub fn reserve_queue(
    students: &[(Uuid, String)],
    sections: &[Uuid],
    workers: usize,
    ledger: Arc<Ledger>,
) -> Mix {
    Mix::new(
        students,
        sections,
        Uuid::nil(),
        workers,
        [0, 0, 1, 0, 0],
        ledger,
    )
}

/// Drop-promotion: sections filled to seats + waitlist beforehand (not
/// measured), then half the holders drop while as many newcomers register.
pub async fn drop_promotion(
    system: &System,
    students: &[(Uuid, String)],
    sections: &[Uuid],
    ledger: Arc<Ledger>,
) -> anyhow::Result<Fixed> {
    {
        let per_section = 80;
        let mut fill = Vec::new();
        let mut measured = Vec::new();
        let mut pool = students.iter();
        for section in sections {
            let holders: Vec<_> = pool.by_ref().take(per_section).cloned().collect();
            let newcomers: Vec<_> = pool.by_ref().take(per_section / 2).cloned().collect();
            for (s, t) in &holders {
                fill.push(register_call(t, *s, *section));
            }
            for (i, (s, t)) in holders.iter().take(per_section / 2).enumerate() {
                measured.push(drop_call(t, *s, *section));
                if let Some((n, nt)) = newcomers.get(i) {
                    measured.push(register_call(nt, *n, *section));
                }
            }
        }
        let filler: Arc<dyn Workload> = Arc::new(Fixed::of(fill, ledger.clone()));
        closed_loop(
            system.addrs.clone(),
            16,
            None,
            filler,
            Arc::new(Recorder::new()),
        )
        .await;
        Ok(Fixed::of(measured, ledger))
    }
}

pub async fn semester(system: &System) -> anyhow::Result<Uuid> {
    Ok(system
        .db
        .get()
        .await?
        .query_one("select id from semesters limit 1", &[])
        .await?
        .get(0))
}

/// Section ids in seeding order.
pub async fn sections(system: &System) -> anyhow::Result<Vec<Uuid>> {
    let rows = system
        .db
        .get()
        .await?
        .query(
            "select s.id from sections s join courses c on c.id = s.course_id order by c.course_code, s.section_number",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

fn tokens(system: &System) -> Tokens {
    Tokens::new(
        system.settings.auth.jwt_secret.expose().as_bytes(),
        Duration::from_secs(24 * 3600),
    )
}

/// Every student with a token.
pub async fn students(system: &System) -> anyhow::Result<Vec<(Uuid, String)>> {
    let tokens = tokens(system);
    let rows = system
        .db
        .get()
        .await?
        .query(
            "select id from students where role = 'student' order by student_number",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let id: Uuid = r.get(0);
            (id, tokens.mint(id, Role::Student, true))
        })
        .collect())
}

/// Gives the drain sections room for `events` registrations (through the admin API).
pub async fn make_room(system: &System, sections: &[Uuid], events: usize) -> anyhow::Result<()> {
    let seats = events / sections.len().max(1) + 1;
    patch_sections(
        system,
        sections,
        &json!({ "total_seats": seats, "waitlist_limit": 0 }),
    )
    .await
}

/// `PATCH /api/v1/admin/sections/{id}` with `body` for each of `sections`,
/// as an admin would.
pub async fn patch_sections(
    system: &System,
    sections: &[Uuid],
    body: &serde_json::Value,
) -> anyhow::Result<()> {
    let admin: Uuid = system
        .db
        .get()
        .await?
        .query_one(
            "select id from students where student_number = 'admin'",
            &[],
        )
        .await?
        .get(0);
    let token = tokens(system).mint(admin, Role::Admin, true);
    let http = reqwest::Client::new();
    for section in sections {
        let response = http
            .patch(format!(
                "http://{}/api/v1/admin/sections/{section}",
                system.addr
            ))
            .bearer_auth(&token)
            .json(body)
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "section change failed: {}",
            response.status()
        );
    }
    Ok(())
}

fn phase_of(name: &str, connections: usize, recorder: &Recorder, elapsed: f64) -> Phase {
    let latency = recorder.total();
    Phase {
        name: name.into(),
        connections,
        target_rate: None,
        duration_s: elapsed,
        throughput: latency.count as f64 / elapsed.max(1e-9),
        latency,
        by_kind: recorder.by_kind(),
        errors: recorder.errors(),
        outcomes: recorder.outcomes(),
    }
}

/// EVALSHA calls and µs (INFO commandstats) and Redis CPU seconds (INFO cpu).
async fn evalsha_stats(redis: &registrar::seats::Redis) -> anyhow::Result<(u64, u64, f64)> {
    // Summed over every primary of a cluster.
    let (mut calls, mut usec, mut cpu) = (0, 0, 0.0);
    for info in redis.info_per_primary("all").await? {
        let line = info
            .lines()
            .find(|l| l.starts_with("cmdstat_evalsha:"))
            .unwrap_or("");
        let field = |name: &str| -> u64 {
            line.split([':', ','])
                .find_map(|kv| {
                    kv.strip_prefix(&format!("{name}="))
                        .and_then(|v| v.parse().ok())
                })
                .unwrap_or(0)
        };
        calls += field("calls");
        usec += field("usec");
        cpu += info
            .lines()
            .filter_map(|l| {
                l.strip_prefix("used_cpu_user:")
                    .or_else(|| l.strip_prefix("used_cpu_sys:"))
            })
            .filter_map(|v| v.trim().parse::<f64>().ok())
            .sum::<f64>();
    }
    Ok((calls, usec, cpu))
}

/// What the Redis ceiling measured.
pub struct RedisCeiling {
    pub phase: Phase,
    /// Server µs per reserve.lua call (commandstats).
    pub reserve_us: f64,
    /// Server µs per bare EVALSHA DECR (commandstats).
    pub bare_us: f64,
    /// Redis CPU µs per bare EVALSHA DECR (INFO cpu).
    pub bare_cpu_us: f64,
}

/// The reserve script called directly on Redis by `connections` tasks over
/// the shared connection, `count` times; and a bare EVALSHA DECR for scale.
/// Returns the phase and Redis server µs per call of each.
pub async fn redis_ceiling(
    target: &Target,
    connections: usize,
    count: u64,
) -> anyhow::Result<RedisCeiling> {
    // Its keys go with the guard, at the end of this function.
    let namespace = Namespace::new("benchceil", &target.redis_url);
    let redis = redis_handle(&target.redis_url, &namespace.name)?;
    redis.load_scripts().await?;
    let section = Uuid::new_v4();
    let now = chrono::Utc::now().timestamp_millis();
    redis
        .load(&SectionSnapshot {
            section,
            capacity: count as i32 + 1,
            waitlist_limit: 0,
            section_active: true,
            semester_active: true,
            registration_start_ms: now - 60_000,
            registration_end_ms: now + 3_600_000,
            last_seq: 0,
            enrolled: Vec::new(),
            waitlisted: Vec::new(),
            waitlist: registrar::domain::WaitlistPolicy {
                offer: false,
                offer_ttl_ms: 86_400_000,
            },
            offers: Vec::new(),
        })
        .await?;
    let recorder = Arc::new(Recorder::new());
    let next = Arc::new(AtomicUsize::new(0));
    let (calls0, usec0, _) = evalsha_stats(&redis).await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (redis, recorder, next) = (redis.clone(), recorder.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut local = Local::default();
            while (next.fetch_add(1, Ordering::Relaxed) as u64) < count {
                let sent = Instant::now();
                match redis
                    .reserve(section, Uuid::new_v4(), now)
                    .await
                    .map(|r| r.outcome)
                {
                    Ok(Reserve::Enrolled { .. }) => {
                        local.record(&recorder, "reserve", sent, Instant::now())
                    }
                    Ok(other) => local.error(format!("{other:?}")),
                    Err(_) => local.error("redis".into()),
                }
            }
            recorder.absorb(&mut local);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (calls1, usec1, _) = evalsha_stats(&redis).await?;
    let per_reserve = (usec1 - usec0) as f64 / (calls1 - calls0).max(1) as f64;

    let bare = redis::Script::new("return redis.call('DECR', KEYS[1])");
    let key = format!("{}:{{s:bare}}:n", namespace.name);
    let (calls2, usec2, cpu2) = evalsha_stats(&redis).await?;
    let mut tasks = Vec::new();
    let next = Arc::new(AtomicUsize::new(0));
    for _ in 0..connections {
        let (mut conn, bare, key, next) = (redis.conn(), bare.clone(), key.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            while (next.fetch_add(1, Ordering::Relaxed) as u64) < count {
                let _: redis::RedisResult<i64> = bare.key(&key).invoke_async(&mut conn).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let (calls3, usec3, cpu3) = evalsha_stats(&redis).await?;
    let per_bare = (usec3 - usec2) as f64 / (calls3 - calls2).max(1) as f64;
    let bare_cpu = (cpu3 - cpu2) * 1e6 / (calls3 - calls2).max(1) as f64;
    Ok(RedisCeiling {
        phase: phase_of("ceiling:redis-reserve", connections, &recorder, elapsed),
        reserve_us: per_reserve,
        bare_us: per_bare,
        bare_cpu_us: bare_cpu,
    })
}

/// Holds PostgreSQL back while `events` registrations pile up in the
/// outboxes, lets it go, and times the drain from the first event applied
/// to the last. Returns the backlog phase, the events and events/s.
pub async fn drain_rate(
    system: &System,
    students: &[(Uuid, String)],
    sections: &[Uuid],
    events: usize,
    ledger: Arc<Ledger>,
) -> anyhow::Result<(Phase, usize, f64)> {
    let calls: Vec<Call> = students
        .iter()
        .take(events)
        .enumerate()
        .map(|(i, (s, t))| register_call(t, *s, sections[i % sections.len()]))
        .collect();
    let events = calls.len();
    system.proxy.cut();
    let recorder = Arc::new(Recorder::new());
    let started = Instant::now();
    closed_loop(
        system.addrs.clone(),
        64,
        None,
        Arc::new(Fixed::of(calls, ledger)),
        recorder.clone(),
    )
    .await;
    let phase = phase_of(
        "drain:backlog (PostgreSQL held back)",
        64,
        &recorder,
        started.elapsed().as_secs_f64(),
    );
    let backlog =
        |heads: Vec<(Option<(i64, i64)>, u64)>| heads.iter().map(|(_, n)| *n).sum::<u64>();
    let full = backlog(system.redis.outbox_heads(sections).await?);
    system.proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut first_progress = None;
    loop {
        let left = backlog(system.redis.outbox_heads(sections).await?);
        if first_progress.is_none() && left < full {
            first_progress = Some(Instant::now());
        }
        if left == 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the backlog did not drain in 300 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = first_progress.map_or(0.0, |t| t.elapsed().as_secs_f64());
    Ok((phase, events, events as f64 / took.max(1e-3)))
}

/// A raw batched insert of `rows` registrations into the same schema, in
/// transactions of `batch` rows (the shard's batch size): the PostgreSQL
/// ceiling for the drain.
pub async fn insert_ceiling(
    system: &System,
    students: &[(Uuid, String)],
    rows: usize,
    batch: usize,
) -> anyhow::Result<(Phase, f64)> {
    let mut client = system.db.get().await?;
    let course: Uuid = client
        .query_one("select id from courses limit 1", &[])
        .await?
        .get(0);
    let semester = semester(system).await?;
    let section = Uuid::now_v7();
    client
        .execute(
            "insert into sections (id, course_id, semester_id, section_number, total_seats) values ($1, $2, $3, 'ceiling', $4)",
            &[&section, &course, &semester, &(rows as i32)],
        )
        .await?;
    let ids: Vec<Uuid> = students.iter().take(rows).map(|(s, _)| *s).collect();
    let started = Instant::now();
    for chunk in ids.chunks(batch) {
        let tx = client.transaction().await?;
        let row_ids: Vec<Uuid> = chunk.iter().map(|_| Uuid::new_v4()).collect();
        let times: Vec<chrono::DateTime<chrono::Utc>> =
            chunk.iter().map(|_| chrono::Utc::now()).collect();
        tx.execute(
            "insert into registrations \
                    (id, student_id, section_id, semester_id, status, registration_date) \
             select u.id, u.student, $1, $5, 'enrolled', u.at \
               from unnest($2::uuid[], $3::uuid[], $4::timestamptz[]) as u(id, student, at)",
            &[&section, &row_ids, &chunk, &times, &semester],
        )
        .await?;
        tx.commit().await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    client
        .execute(
            "delete from registrations where section_id = $1 and semester_id = $2",
            &[&section, &semester],
        )
        .await?;
    client
        .execute("delete from sections where id = $1", &[&section])
        .await?;
    let rate = ids.len() as f64 / elapsed.max(1e-9);
    let phase = Phase {
        name: format!(
            "ceiling:pg-batch-insert ({} rows, {batch} per transaction)",
            ids.len()
        ),
        connections: 1,
        duration_s: elapsed,
        throughput: rate,
        ..Phase::default()
    };
    Ok((phase, rate))
}
