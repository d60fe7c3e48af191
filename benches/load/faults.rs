//! Soak with faults (`--faults`): while an open-loop scenario runs, the
//! dependencies fail in turn through the tool's proxies (PostgreSQL cut,
//! black-holed and slowed; Redis unreachable), one fault every
//! `--fault-every` seconds with clean stretches in between, and none in the
//! last fifth of the run. Afterwards: did the queues and the outbox come
//! back, how long did it take, what did each window answer, how did memory
//! move. The audit of SPEC §2 runs as for every run.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{
    client::{Conn, Local, Recorder},
    kit::proxy::Mode,
    model::{FaultReport, FaultWindow, Phase, Sample},
    server::System,
    workloads::{answer_error, Workload},
};

/// The faults, in the order they take turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// PostgreSQL's connections cut and new ones refused.
    PgCut,
    /// PostgreSQL's connections open but silent (a partition).
    PgBlackhole,
    /// Every PostgreSQL round trip delayed.
    PgSlow,
    /// Redis's connections cut and new ones refused (same Redis process,
    /// data intact).
    RedisCut,
}

const ROTATION: [Fault; 4] = [
    Fault::PgCut,
    Fault::PgBlackhole,
    Fault::PgSlow,
    Fault::RedisCut,
];

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::PgCut => "pg-cut",
            Fault::PgBlackhole => "pg-blackhole",
            Fault::PgSlow => "pg-slow",
            Fault::RedisCut => "redis-cut",
        }
    }
}

/// When each fault is on, relative to the start of the phase.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The whole phase, faults and clean tail.
    pub duration: Duration,
    pub every: Duration,
    pub quiet_from: Duration,
    pub pg_delay: Duration,
    /// (start, end, fault), in order, not overlapping.
    pub windows: Vec<(Duration, Duration, Fault)>,
}

impl Plan {
    /// Clean for `every`, then a fault for `every`, clean for `every`, the
    /// next fault..., as long as a whole fault window ends before the last
    /// fifth of `duration` (which stays clean so recovery can be seen).
    pub fn new(duration: Duration, every: Duration, pg_delay: Duration) -> Self {
        let quiet_from = duration.mul_f64(0.8);
        let mut windows = Vec::new();
        let mut start = every;
        let mut turn = 0;
        while start + every <= quiet_from && !every.is_zero() {
            windows.push((start, start + every, ROTATION[turn % ROTATION.len()]));
            turn += 1;
            start += every * 2;
        }
        Self {
            duration,
            every,
            quiet_from,
            pg_delay,
            windows,
        }
    }

    /// Whether the server's Redis must sit behind a proxy of the tool.
    pub fn needs_redis_proxy(&self) -> bool {
        self.windows.iter().any(|w| w.2 == Fault::RedisCut)
    }
}

fn apply(system: &System, fault: Option<Fault>, pg_delay: Duration) {
    let (pg, redis) = match fault {
        None => (Mode::Up, Mode::Up),
        Some(Fault::PgCut) => (Mode::Cut, Mode::Up),
        Some(Fault::PgBlackhole) => (Mode::Blackhole, Mode::Up),
        Some(Fault::PgSlow) => (Mode::Slow(pg_delay), Mode::Up),
        Some(Fault::RedisCut) => (Mode::Up, Mode::Cut),
    };
    system.proxy.set(pg);
    if let Some(proxy) = &system.redis_proxy {
        proxy.set(redis);
    }
}

/// Connections idle longer than this are not reused: the server closes idle
/// keep-alive connections after its header read timeout (5 s by default),
/// and a request sent on one it is closing would fail for the client's sake.
const POOL_IDLE: Duration = Duration::from_secs(2);

/// What [`open_loop_pooled`] sends where.
struct Arrivals {
    addr: SocketAddr,
    max_in_flight: usize,
    /// Workers of the workload the arrivals take turns on.
    lanes: usize,
    rate: f64,
    duration: Duration,
}

/// Open loop at `rate` for `duration`: every arrival is its own task on a
/// pooled connection, at most `max_in_flight` at once (then arrivals wait,
/// charged to their latency). Unlike [`crate::workloads::open_loop`], a
/// request stuck behind a black-holed PostgreSQL holds up no other request,
/// as with a crowd of independent students. Returns the measured time.
async fn open_loop_pooled(
    shape: Arrivals,
    workload: Arc<dyn Workload>,
    recorder: Arc<Recorder>,
    start: tokio::time::Instant,
) -> Duration {
    let Arrivals {
        addr,
        max_in_flight,
        lanes,
        rate,
        duration,
    } = shape;
    let total = (rate * duration.as_secs_f64()) as u64;
    let slots = Arc::new(tokio::sync::Semaphore::new(max_in_flight));
    let pool: Arc<Mutex<Vec<(Instant, Conn)>>> = Arc::default();
    for i in 0..total {
        let intended = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(intended).await;
        let lane = i as usize % lanes.max(1);
        let Some(call) = workload.next(lane) else {
            break;
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let (workload, recorder, pool) = (workload.clone(), recorder.clone(), pool.clone());
        tokio::spawn(async move {
            let reused = {
                let mut pool = pool.lock().unwrap();
                let now = Instant::now();
                pool.retain(|(used, _)| now.duration_since(*used) < POOL_IDLE);
                pool.pop()
            };
            let mut conn = reused.map_or_else(|| Conn::new(addr), |(_, c)| c);
            let mut local = Local::default();
            match conn.send(&call).await {
                Ok((status, body)) => {
                    local.record(&recorder, call.kind, intended.into_std(), Instant::now());
                    if let Some(kind) = answer_error(status, &body) {
                        local.error(kind);
                    }
                    local.answered(&call, status, &body);
                    workload.observe(lane, &call, status, &body);
                    pool.lock().unwrap().push((Instant::now(), conn));
                }
                Err(kind) => {
                    local.error(kind.to_string());
                    local.lost(&call);
                    workload.failed(lane, &call);
                }
            }
            recorder.absorb(&mut local);
            drop(slot);
        });
    }
    // Every slot back means every request was answered or failed.
    let _ = slots.acquire_many(max_in_flight as u32).await;
    start.elapsed()
}

/// Runs `workload` open loop at `rate` for `duration` while `plan`'s faults
/// take turns; returns the phase, its samples and the fault windows with
/// their answers and errors (the recovery figures come from
/// [`summarize`] once the samples are merged).
#[allow(clippy::too_many_arguments)]
pub async fn measure(
    system: &System,
    name: &str,
    workload: Arc<dyn Workload>,
    lanes: usize,
    max_in_flight: usize,
    rate: f64,
    plan: &Plan,
) -> (Phase, Vec<Sample>, Vec<FaultWindow>) {
    let duration = plan.duration;
    let recorder = Arc::new(Recorder::new());
    let (sampler, stop) = crate::sample_health(system, name);
    let start = tokio::time::Instant::now();
    recorder.restart(start.into_std());
    let arrivals = Arrivals {
        addr: system.addr,
        max_in_flight,
        lanes,
        rate,
        duration,
    };
    let load = open_loop_pooled(arrivals, workload, recorder.clone(), start);
    let faults = async {
        for (from, to, fault) in &plan.windows {
            tokio::time::sleep_until(start + *from).await;
            eprintln!("  {:>5.1}s  {} on", from.as_secs_f64(), fault.name());
            apply(system, Some(*fault), plan.pg_delay);
            tokio::time::sleep_until(start + *to).await;
            apply(system, None, plan.pg_delay);
            eprintln!("  {:>5.1}s  {} off", to.as_secs_f64(), fault.name());
        }
    };
    let (elapsed, ()) = tokio::join!(load, faults);
    // Whatever happens above, nothing stays broken after the phase.
    apply(system, None, plan.pg_delay);
    let _ = stop.send(());
    let server_samples = sampler.await.unwrap_or_default();
    let total = recorder.total();
    let elapsed = elapsed.as_secs_f64();
    let phase = Phase {
        name: name.to_string(),
        connections: max_in_flight,
        target_rate: Some(rate),
        duration_s: elapsed,
        throughput: total.count as f64 / elapsed.max(1e-9),
        latency: total,
        by_kind: recorder.by_kind(),
        errors: recorder.errors(),
        outcomes: recorder.outcomes(),
    };
    let mut bounds: VecDeque<(Duration, Duration, Option<Fault>)> = VecDeque::new();
    let mut at = Duration::ZERO;
    for (from, to, fault) in &plan.windows {
        if *from > at {
            bounds.push_back((at, *from, None));
        }
        bounds.push_back((*from, *to, Some(*fault)));
        at = *to;
    }
    let end = Duration::from_secs_f64(elapsed).max(at);
    bounds.push_back((at, end, None));
    let windows = bounds
        .into_iter()
        .map(|(from, to, fault)| {
            let (answered, errors) =
                recorder.window(from.as_secs() as usize, to.as_secs() as usize);
            FaultWindow {
                kind: fault.map_or("none", Fault::name).to_string(),
                start_s: from.as_secs_f64(),
                end_s: to.as_secs_f64(),
                answered,
                errors,
                recovery_s: None,
            }
        })
        .collect();
    (
        phase,
        crate::merge(recorder.samples(name), server_samples),
        windows,
    )
}

/// The recovery and memory figures of a fault phase from its samples.
pub fn summarize(
    plan: &Plan,
    windows: Vec<FaultWindow>,
    samples: &[Sample],
    duration_s: f64,
    uncertain_pairs: usize,
) -> FaultReport {
    let first_fault = plan
        .windows
        .first()
        .map_or(duration_s, |w| w.0.as_secs_f64());
    let last_fault_end = plan.windows.last().map_or(0.0, |w| w.1.as_secs_f64());
    let before: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t_s < first_fault && s.health_ok)
        .collect();
    let baseline_queue_depth = before.iter().map(|s| s.queue_depth).max().unwrap_or(0);
    let baseline_outbox_backlog = before.iter().map(|s| s.outbox_backlog).max().unwrap_or(0);
    let recovery_threshold = (baseline_queue_depth.max(baseline_outbox_backlog) * 2).max(20);
    let recovered_after = |end: f64| {
        samples
            .iter()
            .filter(|s| s.t_s >= end && s.health_ok)
            .find(|s| s.queue_depth <= recovery_threshold && s.outbox_backlog <= recovery_threshold)
            .map(|s| (s.t_s - end).max(0.0))
    };
    let recovery_s = recovered_after(last_fault_end);
    let mut windows = windows;
    for w in windows.iter_mut().filter(|w| w.kind != "none") {
        w.recovery_s = recovered_after(w.end_s);
    }
    let tenth = duration_s / 10.0;
    let mean_rss = |from: f64, to: f64| {
        let v: Vec<f64> = samples
            .iter()
            .filter(|s| s.t_s >= from && s.t_s < to && s.rss_mib > 0.0)
            .map(|s| s.rss_mib)
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    FaultReport {
        every_s: plan.every.as_secs_f64(),
        quiet_from_s: plan.quiet_from.as_secs_f64(),
        pg_delay_ms: plan.pg_delay.as_millis() as u64,
        windows,
        baseline_queue_depth,
        baseline_outbox_backlog,
        recovery_s,
        recovery_threshold,
        rss_first_tenth_mib: mean_rss(0.0, tenth),
        rss_last_tenth_mib: mean_rss(duration_s - tenth, duration_s + 1.0),
        rss_max_mib: samples.iter().map(|s| s.rss_mib).fold(0.0, f64::max),
        uncertain_pairs,
    }
}

/// The run fails when the queues did not come back after the faults
/// stopped (the clean last fifth of the run is the bound).
pub fn recovery_check(report: &FaultReport) -> crate::model::Check {
    let passed = report.recovery_s.is_some();
    crate::model::Check {
        name:
            "after the last fault: queues and outbox back under the threshold within the clean tail"
                .into(),
        passed,
        detail: if passed {
            String::new()
        } else {
            format!(
                "queue depth or outbox backlog still above {} entries when the load ended",
                report.recovery_threshold
            )
        },
    }
}
