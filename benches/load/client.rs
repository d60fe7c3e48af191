//! A lean HTTP/1.1 load client on hyper: one connection per worker, bodies
//! and headers prepared before the clock starts, latencies into HDR
//! histograms per second. Open-loop latency is measured from the intended
//! send time, so a stalled server is charged for the queue it causes
//! (no coordinated omission).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{client::conn::http1, header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::model::{Latency, Outcomes, Sample};

/// One prepared request.
#[derive(Clone)]
pub struct Call {
    pub kind: &'static str,
    pub method: Method,
    pub path: String,
    pub token: Option<String>,
    pub body: Option<Bytes>,
    /// (student, section) the call is about, for the ledger.
    pub tag: Option<(uuid::Uuid, uuid::Uuid)>,
    /// When it was sent (set by [`Conn::send`]): the ledger orders two
    /// answers only when one was back before the other was sent.
    pub sent: std::sync::OnceLock<std::time::Instant>,
}

impl Call {
    pub fn get(kind: &'static str, path: String, token: Option<String>) -> Self {
        Self {
            kind,
            method: Method::GET,
            path,
            token,
            body: None,
            tag: None,
            sent: std::sync::OnceLock::new(),
        }
    }

    pub fn post(kind: &'static str, path: &str, token: String, body: serde_json::Value) -> Self {
        Self {
            kind,
            method: Method::POST,
            path: path.to_string(),
            token: Some(format!("Bearer {token}")),
            body: Some(Bytes::from(body.to_string())),
            tag: None,
            sent: std::sync::OnceLock::new(),
        }
    }

    /// How many sections a register call asks for (its body's `section_ids`).
    pub fn sections_asked(&self) -> u64 {
        (self.sections().len() as u64).max(1)
    }

    /// The sections a register call asks for (its body's `section_ids`).
    pub fn sections(&self) -> Vec<uuid::Uuid> {
        self.body
            .as_ref()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
            .and_then(|v| {
                v["section_ids"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().and_then(|s| uuid::Uuid::try_parse(s).ok()))
                        .collect()
                })
            })
            .unwrap_or_default()
    }

    pub fn tagged(mut self, student: uuid::Uuid, section: uuid::Uuid) -> Self {
        self.tag = Some((student, section));
        self
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let mut builder = Request::builder()
            .method(self.method.clone())
            .uri(&self.path)
            .header(header::HOST, "localhost");
        if let Some(token) = &self.token {
            let value = if token.starts_with("Bearer ") {
                token.clone()
            } else {
                format!("Bearer {token}")
            };
            builder = builder.header(header::AUTHORIZATION, value);
        }
        if self.body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        builder
            .body(Full::new(self.body.clone().unwrap_or_default()))
            .expect("prepared requests are valid")
    }
}

/// One HTTP/1.1 connection, reopened after an error.
pub struct Conn {
    addr: SocketAddr,
    sender: Option<http1::SendRequest<Full<Bytes>>>,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, sender: None }
    }

    /// Opens the connection now (before the clock starts).
    pub async fn open(&mut self) -> Result<(), &'static str> {
        self.sender().await.map(|_| ())
    }

    async fn sender(&mut self) -> Result<&mut http1::SendRequest<Full<Bytes>>, &'static str> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = TcpStream::connect(self.addr).await.map_err(|_| "connect")?;
            let _ = stream.set_nodelay(true);
            let (sender, connection) = http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|_| "connect")?;
            tokio::spawn(connection);
            self.sender = Some(sender);
        }
        Ok(self.sender.as_mut().expect("just set"))
    }

    /// Sends `call`; returns the status and body, or an error kind.
    pub async fn send(&mut self, call: &Call) -> Result<(StatusCode, Bytes), &'static str> {
        // The first send counts (a call is sent once).
        let _ = call.sent.set(std::time::Instant::now());
        let result = async {
            let sender = self.sender().await?;
            sender.ready().await.map_err(|_| "connection")?;
            let response =
                tokio::time::timeout(Duration::from_secs(30), sender.send_request(call.request()))
                    .await
                    .map_err(|_| "timeout")?
                    .map_err(|_| "connection")?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|_| "connection")?
                .to_bytes();
            Ok((status, body))
        }
        .await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn summary(h: &Histogram<u64>) -> Latency {
    let ms = |us: u64| us as f64 / 1000.0;
    Latency {
        count: h.len(),
        p50_ms: ms(h.value_at_quantile(0.50)),
        p95_ms: ms(h.value_at_quantile(0.95)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
    }
}

/// Collects latencies for one phase.
pub struct Recorder {
    /// When the measured part began (set by the loop once connections are open).
    started: Mutex<Instant>,
    inner: Mutex<Inner>,
}

struct Inner {
    total: Histogram<u64>,
    per_second: Vec<Histogram<u64>>,
    by_kind: HashMap<&'static str, Histogram<u64>>,
    errors: HashMap<String, u64>,
    /// Errors by kind per second of the phase (for fault windows).
    errors_per_second: Vec<HashMap<String, u64>>,
    outcomes: Outcomes,
}

/// What a worker records locally before handing it over in bulk.
#[derive(Default)]
pub struct Local {
    records: Vec<(u32, &'static str, u64)>,
    errors: Vec<(Instant, String)>,
    outcomes: Outcomes,
    /// The recorder's start, read once (records come after it is set).
    started: Option<Instant>,
}

/// Records handed over at once; keeps the lock rare.
const FLUSH_EVERY: usize = 512;

impl Local {
    pub fn record(
        &mut self,
        recorder: &Recorder,
        kind: &'static str,
        sent: Instant,
        done: Instant,
    ) {
        let started = *self.started.get_or_insert_with(|| recorder.started());
        let second = sent.saturating_duration_since(started).as_secs() as u32;
        let us = done.saturating_duration_since(sent).as_micros().max(1) as u64;
        self.records.push((second, kind, us));
        if self.records.len() >= FLUSH_EVERY {
            recorder.absorb(self);
        }
    }

    pub fn error(&mut self, kind: String) {
        self.errors.push((Instant::now(), kind));
    }

    /// Counts what a register answer said for each section it asked for.
    pub fn answered(&mut self, call: &Call, status: StatusCode, body: &Bytes) {
        if call.kind != "register" {
            return;
        }
        let results = (status == StatusCode::OK)
            .then(|| serde_json::from_slice::<serde_json::Value>(body).ok())
            .flatten();
        let Some(serde_json::Value::Array(results)) = results.map(|mut v| v["results"].take())
        else {
            self.outcomes.other += call.sections_asked();
            return;
        };
        for result in &results {
            let counter = match (result["status"].as_str(), result["reason"].as_str()) {
                (Some("enrolled"), _) => &mut self.outcomes.enrolled,
                (Some("waitlisted"), _) => &mut self.outcomes.waitlisted,
                (Some("rejected"), Some("full")) => &mut self.outcomes.full,
                (
                    Some("rejected"),
                    Some(
                        "hold"
                        | "not_your_time_yet"
                        | "prerequisite_missing"
                        | "credit_limit"
                        | "time_conflict"
                        | "already_in_course",
                    ),
                ) => &mut self.outcomes.ruled,
                _ => &mut self.outcomes.other,
            };
            *counter += 1;
        }
    }

    /// A register call that got no answer counts as "other".
    pub fn lost(&mut self, call: &Call) {
        if call.kind == "register" {
            self.outcomes.other += call.sections_asked();
        }
    }
}

impl Recorder {
    pub fn started(&self) -> Instant {
        *self.started.lock().unwrap()
    }

    /// Moves the start of the clock (after connections opened).
    pub fn restart(&self, at: Instant) {
        *self.started.lock().unwrap() = at;
    }

    pub fn new() -> Self {
        Self {
            started: Mutex::new(Instant::now()),
            inner: Mutex::new(Inner {
                total: histogram(),
                per_second: Vec::new(),
                by_kind: HashMap::new(),
                errors: HashMap::new(),
                errors_per_second: Vec::new(),
                outcomes: Outcomes::default(),
            }),
        }
    }

    pub fn absorb(&self, local: &mut Local) {
        let mut inner = self.inner.lock().unwrap();
        for (second, kind, us) in local.records.drain(..) {
            let second = second as usize;
            while inner.per_second.len() <= second {
                inner.per_second.push(histogram());
            }
            let _ = inner.per_second[second].record(us);
            let _ = inner.total.record(us);
            let _ = inner
                .by_kind
                .entry(kind)
                .or_insert_with(histogram)
                .record(us);
        }
        let started = self.started();
        for (at, e) in local.errors.drain(..) {
            let second = at.saturating_duration_since(started).as_secs() as usize;
            while inner.errors_per_second.len() <= second {
                inner.errors_per_second.push(HashMap::new());
            }
            *inner.errors_per_second[second]
                .entry(e.clone())
                .or_default() += 1;
            *inner.errors.entry(e).or_default() += 1;
        }
        let o = std::mem::take(&mut local.outcomes);
        inner.outcomes.enrolled += o.enrolled;
        inner.outcomes.waitlisted += o.waitlisted;
        inner.outcomes.full += o.full;
        inner.outcomes.ruled += o.ruled;
        inner.outcomes.other += o.other;
    }

    /// The phase's outcome mix, if it sent registrations.
    pub fn outcomes(&self) -> Option<Outcomes> {
        let o = self.inner.lock().unwrap().outcomes;
        (o.total() > 0).then_some(o)
    }

    pub fn total(&self) -> Latency {
        summary(&self.inner.lock().unwrap().total)
    }

    pub fn by_kind(&self) -> Vec<(String, Latency)> {
        let inner = self.inner.lock().unwrap();
        let mut v: Vec<(String, Latency)> = inner
            .by_kind
            .iter()
            .map(|(k, h)| (k.to_string(), summary(h)))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub fn errors(&self) -> Vec<(String, u64)> {
        let inner = self.inner.lock().unwrap();
        let mut v: Vec<(String, u64)> = inner.errors.iter().map(|(k, n)| (k.clone(), *n)).collect();
        v.sort();
        v
    }

    /// Requests answered and errors by kind over seconds `from..to` of the phase.
    pub fn window(&self, from: usize, to: usize) -> (u64, Vec<(String, u64)>) {
        let inner = self.inner.lock().unwrap();
        let answered = inner
            .per_second
            .iter()
            .skip(from)
            .take(to.saturating_sub(from))
            .map(|h| h.len())
            .sum();
        let mut errors: HashMap<String, u64> = HashMap::new();
        for second in inner
            .errors_per_second
            .iter()
            .skip(from)
            .take(to.saturating_sub(from))
        {
            for (kind, n) in second {
                *errors.entry(kind.clone()).or_default() += n;
            }
        }
        let mut errors: Vec<(String, u64)> = errors.into_iter().collect();
        errors.sort();
        (answered, errors)
    }

    /// Throughput and percentiles per second of the phase.
    pub fn samples(&self, phase: &str) -> Vec<Sample> {
        let inner = self.inner.lock().unwrap();
        inner
            .per_second
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let l = summary(h);
                Sample {
                    t_s: i as f64,
                    phase: phase.to_string(),
                    throughput: h.len() as f64,
                    p50_ms: l.p50_ms,
                    p95_ms: l.p95_ms,
                    p99_ms: l.p99_ms,
                    ..Sample::default()
                }
            })
            .collect()
    }
}
