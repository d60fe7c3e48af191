//! The load tool: `cargo bench --bench load -- --scenario race --preset load`.
//!
//! It creates its own database and Redis namespace, seeds what the scenario
//! needs, starts the release binary, mints tokens, drives the scenario,
//! measures the ceilings with the same client and connection count (GET
//! /live, the reserve script called directly on Redis, a raw batched insert
//! of as many rows into the same schema), measures the persistence drain
//! rate, then drains and audits SPEC §2 against both stores. It prints a
//! table and writes a JSON file and an HTML report to `--out`. A broken
//! promise fails the run (exit code 1).
//!
//! Every loop is bounded by a request count or a duration.

mod client;
mod cpu;
mod day;
mod faults;
mod flood;
#[path = "../../tests/kit/mod.rs"]
mod kit;
mod model;
mod report;
mod server;
mod streams;
mod workloads;

use std::{
    collections::{BTreeSet, HashMap},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::{Parser, ValueEnum};
use model::{Check, Phase, Ratio, RunReport, Sample};
use registrar::seed::SeedOptions;
use server::{System, Target};
use workloads::{Ledger, Workload};

/// Flood: the others' arrival rate (requests/s) unless --rate names one;
/// a load well inside the server's capacity, so what changes under the
/// flood is the flood's doing.
const FLOOD_RATE: f64 = 500.0;

/// The registration day's catalogue, and the students of its login storm
/// (at most; every other student's token is minted, as if obtained before).
const REGISTRATION_DAY_SECTIONS: usize = 250;
const LOGIN_STORM: usize = 1_000;

/// The catalogue scenario's shape: courses of this many sections, browsed
/// in pages of this many.
const CATALOGUE_SECTIONS_PER_COURSE: usize = 10;
const CATALOGUE_PAGE: usize = 100;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Scenario {
    /// Every answer a new enrolment: each student registers once, spread
    /// over --sections sections with a seat for everyone.
    Enrol,
    /// N students register for one section: almost every answer is "full"
    /// (the rejection path, not registration).
    Race,
    /// Browse 5, view 3, register 2, mine 1, drop 1 over 200 sections.
    Peak,
    /// Fill sections, then keep pressing on their waitlists.
    ReserveQueue,
    /// Full sections with waitlists: concurrent drops and promotions.
    DropPromotion,
    /// Every student logs in once (Argon2id), for the preset's duration:
    /// the login storm's capacity (logins/s) before registration opens.
    Login,
    /// A login storm, then every student's session over a Zipf-popular
    /// catalogue of 250 sections: browse, view, register for 3 to 5 in one
    /// request, replace the full ones, some drop, read their own (day.rs).
    RegistrationDay,
    /// Browse a university-scale semester (--sections, default 20,000, in
    /// courses of 10): pages of 100 sections picked uniformly, with live
    /// counts, for the preset's duration.
    Catalogue,
    /// Others register at a fixed rate, alone and then while one student
    /// floods; the server's rate limits are on (benches/load/flood.rs).
    Flood,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Preset {
    /// Seconds-long run for CI.
    Smoke,
    Load,
    Stress,
    /// Few connections, then a sudden jump, then back.
    Spike,
    /// Long and steady (open loop) to show the memory trend.
    Soak,
}

/// The named settings of a preset.
#[derive(Debug, Clone)]
struct Shape {
    /// (connections, seconds) stages; one stage unless spiking.
    stages: Vec<(usize, u64)>,
    /// Students seeded (race: all register once).
    students: usize,
    /// Events accumulated while PostgreSQL is held back, for the drain rate.
    drain_events: usize,
    /// Open-loop arrival rate (requests/s), if any.
    rate: Option<f64>,
}

fn shape(preset: Preset) -> Shape {
    match preset {
        Preset::Smoke => Shape {
            stages: vec![(32, 3)],
            students: 2_000,
            drain_events: 1_000,
            rate: None,
        },
        Preset::Load => Shape {
            stages: vec![(64, 20)],
            students: 10_000,
            drain_events: 10_000,
            rate: None,
        },
        Preset::Stress => Shape {
            stages: vec![(256, 30)],
            students: 20_000,
            drain_events: 20_000,
            rate: None,
        },
        Preset::Spike => Shape {
            stages: vec![(16, 5), (512, 10), (16, 5)],
            students: 20_000,
            drain_events: 10_000,
            rate: None,
        },
        Preset::Soak => Shape {
            stages: vec![(64, 600)],
            students: 20_000,
            drain_events: 10_000,
            rate: Some(2_000.0),
        },
    }
}

#[derive(Parser, Debug)]
#[command(about = "Registration load tests with an invariant audit")]
struct Args {
    #[arg(long, value_enum, default_value = "race")]
    scenario: Scenario,
    #[arg(long, value_enum, default_value = "load")]
    preset: Preset,
    /// Override the preset's connection count (every stage).
    #[arg(long)]
    connections: Option<usize>,
    /// Override the preset's duration, seconds (time-bound scenarios).
    #[arg(long)]
    duration: Option<u64>,
    /// Override the preset's students.
    #[arg(long)]
    students: Option<usize>,
    /// Open loop at this many requests per second (latency from intended send time).
    #[arg(long)]
    rate: Option<f64>,
    /// Enrol: sections the students are spread over (default 30).
    /// Catalogue: sections of the semester (default 20,000).
    #[arg(long)]
    sections: Option<usize>,
    /// Race: seats and waitlist of the section.
    #[arg(long, default_value_t = 100)]
    seats: i32,
    #[arg(long, default_value_t = 50)]
    waitlist: i32,
    /// Skip the ceilings and the drain measurement.
    #[arg(long)]
    no_ceilings: bool,
    /// Persistence shards of the server.
    #[arg(long, default_value_t = 4)]
    shards: usize,
    /// Server processes on one database and Redis namespace; the clients'
    /// connections are spread over them (connection i to instance i mod N).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=8))]
    instances: u16,
    /// Run on a private local Redis Cluster (3 primaries + 3 replicas,
    /// started and torn down by the tool) instead of BENCH_REDIS_URL. The
    /// servers' other settings come from the environment as usual, e.g.
    /// APP__REDIS__WAIT_REPLICAS=1.
    #[arg(long)]
    redis_cluster: bool,
    /// Where the JSON and HTML reports go.
    #[arg(long, default_value = "target/load-reports")]
    out: PathBuf,
    /// Soak with faults: PostgreSQL cut, black-holed and slowed, Redis cut,
    /// in turns (open loop; see benches/load/faults.rs).
    #[arg(long)]
    faults: bool,
    /// With --faults: a fault starts or ends every this many seconds.
    #[arg(long, default_value_t = 10)]
    fault_every: u64,
    /// With --faults: delay per chunk and direction while PostgreSQL is slow.
    #[arg(long, default_value_t = 100)]
    pg_delay_ms: u64,
    /// With --faults: requests in flight at most (each on a pooled
    /// connection). While PostgreSQL is black-holed a read waits ~3 s
    /// (database.connect_timeout_ms) for its 503; at 2,000 req/s that is
    /// ~4,000 reads in flight, and a smaller cap would queue registrations
    /// behind them in the client, not in the server.
    #[arg(long, default_value_t = 4096)]
    max_in_flight: usize,
    /// Run the server with its rate limits on (address bucket lifted: every
    /// client here is one loopback address); the flood scenario always does.
    #[arg(long)]
    rate_limits: bool,
    /// Put realistic registration rules on the seeded catalogue (a credit
    /// limit, meeting times that sometimes conflict, prerequisites, priority
    /// groups, a few holds: `registrar::seed::seed_realistic_rules`). The
    /// server enforces rules unless APP__RULES__ENABLED=false.
    #[arg(long)]
    rules: bool,
    /// Flood: connections the flooding student sends on, as fast as they can.
    #[arg(long, default_value_t = 8)]
    flood_connections: usize,
    /// Live update streams held open through the scenario phase (half
    /// students' own, half section streams over the scenario's sections),
    /// each read like a browser would: what they cost the registrations.
    #[arg(long, default_value_t = 0)]
    streams: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let rev = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{cores} cores, {mem:.0} GiB RAM, revision {rev}")
}

/// Samples /health and the server's memory once a second while a phase runs.
fn sample_health(
    system: &System,
    phase: &str,
) -> (
    tokio::task::JoinHandle<Vec<Sample>>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let url = format!("http://{}/health", system.addr);
    let pid = system.pid();
    let phase = phase.to_string();
    let handle = tokio::spawn(async move {
        // Bounded: /health waits on a black-holed PostgreSQL (--faults), and
        // the memory reading must not stall with it.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(900))
            .build()
            .unwrap_or_default();
        let started = Instant::now();
        let mut samples = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut stopped => break,
            }
            let health: serde_json::Value = match http.get(&url).send().await {
                Ok(r) => r.json().await.unwrap_or_default(),
                Err(_) => serde_json::Value::Null,
            };
            samples.push(Sample {
                t_s: started.elapsed().as_secs_f64().floor(),
                phase: phase.clone(),
                queue_depth: health["queues"]["total"].as_u64().unwrap_or(0),
                outbox_backlog: health["outbox"]["backlog"].as_u64().unwrap_or(0),
                lag_s: health["outbox"]["oldest_age_seconds"]
                    .as_f64()
                    .unwrap_or(0.0),
                rss_mib: server::rss_mib(pid),
                health_ok: health["queues"]["total"].is_u64()
                    && health["outbox"]["backlog"].is_u64(),
                ..Sample::default()
            });
        }
        samples
    });
    (handle, stop)
}

/// Merges client samples (throughput, latency) with server samples (queues, memory).
fn merge(mut client: Vec<Sample>, server: Vec<Sample>) -> Vec<Sample> {
    for s in server {
        let i = s.t_s as usize;
        while client.len() <= i {
            let t = client.len() as f64;
            client.push(Sample {
                t_s: t,
                phase: s.phase.clone(),
                ..Sample::default()
            });
        }
        let c = &mut client[i];
        c.queue_depth = s.queue_depth;
        c.outbox_backlog = s.outbox_backlog;
        c.lag_s = s.lag_s;
        c.rss_mib = s.rss_mib;
        c.health_ok = s.health_ok;
    }
    client
}

/// Runs one measured phase of `workload` and returns it with its samples.
async fn measure(
    system: &System,
    name: &str,
    workload: Arc<dyn Workload>,
    stages: &[(usize, u64)],
    rate: Option<f64>,
    bounded_by_time: bool,
) -> (Phase, Vec<Sample>) {
    let recorder = Arc::new(client::Recorder::new());
    let (sampler, stop) = sample_health(system, name);
    let mut elapsed = 0.0;
    for (connections, seconds) in stages {
        let limit = bounded_by_time.then(|| Duration::from_secs(*seconds));
        let took = match rate {
            Some(rate) => {
                let duration = Duration::from_secs(*seconds);
                workloads::open_loop(
                    system.addrs.clone(),
                    *connections,
                    rate,
                    duration,
                    workload.clone(),
                    recorder.clone(),
                )
                .await
            }
            None => {
                workloads::closed_loop(
                    system.addrs.clone(),
                    *connections,
                    limit,
                    workload.clone(),
                    recorder.clone(),
                )
                .await
            }
        };
        elapsed += took.as_secs_f64();
    }
    let _ = stop.send(());
    let server_samples = sampler.await.unwrap_or_default();
    let total = recorder.total();
    let phase = Phase {
        name: name.to_string(),
        connections: stages.iter().map(|s| s.0).max().unwrap_or(0),
        target_rate: rate,
        duration_s: elapsed,
        throughput: total.count as f64 / elapsed.max(1e-9),
        latency: total,
        by_kind: recorder.by_kind(),
        errors: recorder.errors(),
        outcomes: recorder.outcomes(),
    };
    (phase, merge(recorder.samples(name), server_samples))
}

/// Redis's CPU seconds so far (INFO cpu) and EVALSHA's total µs (INFO
/// commandstats; a script's time includes the commands it runs).
async fn redis_usec(redis: &registrar::seats::Redis) -> anyhow::Result<(f64, u64)> {
    // Summed over every primary of a cluster.
    let (mut cpu, mut eval_usec) = (0.0, 0);
    for info in redis.info_per_primary("all").await? {
        let value = |key: &str| -> Option<&str> { info.lines().find_map(|l| l.strip_prefix(key)) };
        cpu += ["used_cpu_user:", "used_cpu_sys:"]
            .iter()
            .filter_map(|k| value(k).and_then(|v| v.trim().parse::<f64>().ok()))
            .sum::<f64>();
        eval_usec += value("cmdstat_evalsha:")
            .and_then(|l| l.split(',').find_map(|kv| kv.strip_prefix("usec=")))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok((cpu, eval_usec))
}

/// The database's size on disk, bytes.
async fn database_bytes(system: &System) -> anyhow::Result<i64> {
    Ok(system
        .db
        .get()
        .await?
        .query_one("select pg_database_size(current_database())", &[])
        .await?
        .get(0))
}

/// Sections (and students) whose Redis keys are weighed for the growth
/// figures.
const GROWTH_SAMPLE: usize = 100;

/// `MEMORY USAGE` of the given keys, summed; `None` on a cluster (the
/// bench weighs keys on one Redis only) or when Redis does not answer.
async fn key_bytes(system: &System, keys: Vec<String>) -> Option<u64> {
    let url = system.settings.redis.url.expose();
    if !url.starts_with("redis://") || url.contains(',') {
        return None;
    }
    let client = redis::Client::open(url).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let mut pipe = redis::pipe();
    for key in &keys {
        pipe.cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .arg("SAMPLES")
            .arg(0);
    }
    let sizes: Vec<Option<u64>> = pipe.query_async(&mut conn).await.ok()?;
    Some(sizes.into_iter().flatten().sum())
}

/// What the sampled sections' keys weigh in Redis.
async fn section_bytes(system: &System, sections: &[uuid::Uuid]) -> Option<u64> {
    let keys = sections
        .iter()
        .flat_map(|s| {
            let k = system.redis.section_keys(*s);
            [
                k.meta, k.seats, k.enrolled, k.waitlist, k.seq, k.outbox, k.reverted, k.undone,
                k.since,
            ]
        })
        .collect();
    key_bytes(system, keys).await
}

/// What the start cost and what the run left behind, per section and per
/// registration (issue 13, item 5): everything drained, so the growth is
/// what the rows and the sections' Redis state hold, not queues.
async fn growth(
    system: &System,
    db_ready: i64,
    sampled: &[uuid::Uuid],
    sections_ready: Option<u64>,
    students: &[(uuid::Uuid, String)],
) -> anyhow::Result<Vec<model::Measure>> {
    let db = system.db.get().await?;
    let count = "select (select count(*) from registrations where $1::uuid[] is null or section_id = any($1)) \
                 + (select count(*) from waitlist where $1::uuid[] is null or section_id = any($1))";
    let rows: i64 = db
        .query_one(count, &[&None::<Vec<uuid::Uuid>>])
        .await?
        .get(0);
    let sampled_rows: i64 = db.query_one(count, &[&sampled]).await?.get(0);
    drop(db);
    let db_end = database_bytes(system).await?;
    let sections_end = section_bytes(system, sampled).await;
    let namespace = &system.settings.redis.namespace;
    let student_keys = students
        .iter()
        .step_by((students.len() / GROWTH_SAMPLE).max(1))
        .flat_map(|(s, _)| {
            [
                registrar::seats::keys::student_sections(namespace, *s),
                registrar::seats::keys::student_access(namespace, *s),
                registrar::seats::keys::student_rate(namespace, *s),
            ]
        })
        .collect::<Vec<_>>();
    let weighed_students = student_keys.len() / 3;
    let students_end = key_bytes(system, student_keys).await;
    let warm = &system.warm;
    let measure = |name: String, value: f64| model::Measure { name, value };
    let mut measures = vec![
        measure(
            format!(
                "warm-up to ready (s): {} students, {} sections",
                warm.students, warm.sections
            ),
            warm.ready_s,
        ),
        measure("server RSS once ready (MiB)".into(), warm.rss_mib),
        measure(
            "Redis used_memory growth over the warm-up (MiB)".into(),
            warm.redis_bytes as f64 / 1024.0 / 1024.0,
        ),
        measure(
            "PostgreSQL database growth per registration (bytes)".into(),
            (db_end - db_ready).max(0) as f64 / rows.max(1) as f64,
        ),
    ];
    if let (Some(ready), Some(end)) = (sections_ready, sections_end) {
        let n = sampled.len().max(1) as f64;
        measures.push(measure(
            format!(
                "Redis bytes per section once ready (its keys, {} sampled)",
                sampled.len()
            ),
            ready as f64 / n,
        ));
        measures.push(measure(
            format!(
                "Redis bytes per registration in its section's keys ({sampled_rows} in the sample)"
            ),
            end.saturating_sub(ready) as f64 / sampled_rows.max(1) as f64,
        ));
    }
    if let Some(bytes) = students_end {
        measures.push(measure(
            format!("Redis bytes per student (access copy, sections index, rate bucket; {weighed_students} sampled)"),
            bytes as f64 / weighed_students.max(1) as f64,
        ));
    }
    Ok(measures)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut shape = shape(args.preset);
    if let Some(c) = args.connections {
        shape.stages.iter_mut().for_each(|s| s.0 = c);
    }
    if let Some(d) = args.duration {
        let n = shape.stages.len() as u64;
        shape.stages.iter_mut().for_each(|s| s.1 = (d / n).max(1));
    }
    if let Some(n) = args.students {
        shape.students = n;
        shape.drain_events = shape.drain_events.min(n);
    }
    if args.rate.is_some() {
        shape.rate = args.rate;
    }
    let connections = shape.stages.iter().map(|s| s.0).max().unwrap_or(1);
    let (sections, seats, waitlist) = match args.scenario {
        Scenario::Enrol => {
            let sections = args.sections.unwrap_or(30).max(1);
            (sections, shape.students.div_ceil(sections) as i32, 0)
        }
        // Seats for 1.2 × the first requests' asks; Zipf popularity fills the
        // top sections and waitlists them, the tail keeps room.
        Scenario::RegistrationDay => (
            REGISTRATION_DAY_SECTIONS,
            (shape.students * day::MEAN_ASK * 6 / 5).div_ceil(REGISTRATION_DAY_SECTIONS) as i32,
            20,
        ),
        Scenario::Catalogue => (
            args.sections
                .unwrap_or(20_000)
                .div_ceil(CATALOGUE_SECTIONS_PER_COURSE)
                * CATALOGUE_SECTIONS_PER_COURSE,
            40,
            10,
        ),
        Scenario::Race => (1, args.seats, args.waitlist),
        Scenario::Peak => (200, 30, 10),
        Scenario::ReserveQueue => (50, 40, 40),
        // 80 students fill each section, 40 more arrive during the drops.
        Scenario::DropPromotion => ((shape.students / 120).clamp(1, 50), 40, 40),
        Scenario::Login => (1, args.seats, args.waitlist),
        // Room for every registration of the three phases.
        Scenario::Flood => (20, 2_000, 0),
    };
    if args.scenario == Scenario::Flood {
        // Each of the three phases registers rate × seconds distinct
        // students, plus the flooder.
        let rate = shape.rate.unwrap_or(FLOOD_RATE);
        let seconds: u64 = shape.stages.iter().map(|s| s.1).sum();
        shape.students = shape
            .students
            .max((3.0 * rate * seconds as f64).ceil() as usize + 1);
    }
    // Extra sections for the drain measurement, big enough for every event.
    let drain_sections = 8;
    let per_course = match args.scenario {
        Scenario::Catalogue => CATALOGUE_SECTIONS_PER_COURSE,
        _ => 1,
    };
    let seed_options = SeedOptions {
        students: shape.students,
        courses: (sections + drain_sections).div_ceil(per_course),
        sections_per_course: per_course,
        seats,
        waitlist,
        password: "bench-password".into(),
        admin_password: "bench-admin-password".into(),
    };
    eprintln!(
        "scenario {:?}, preset {:?}, {connections} connections",
        args.scenario, args.preset
    );
    let mut target = Target::from_env();
    if args.redis_cluster && args.faults {
        anyhow::bail!(
            "--faults cuts one Redis through a proxy; it does not combine with --redis-cluster"
        );
    }
    // Outlives the system (declared first, dropped last).
    let cluster = args.redis_cluster.then(kit::cluster::Cluster::start);
    if let Some(cluster) = &cluster {
        target.redis_url = cluster.url();
        eprintln!("on a local Redis Cluster: {}", target.redis_url);
    }
    let fault_plan = args.faults.then(|| {
        let seconds: u64 = shape.stages.iter().map(|s| s.1).sum();
        faults::Plan::new(
            Duration::from_secs(seconds),
            Duration::from_secs(args.fault_every),
            Duration::from_millis(args.pg_delay_ms),
        )
    });
    let redis_proxy = fault_plan
        .as_ref()
        .is_some_and(faults::Plan::needs_redis_proxy);
    let system = System::start_with(
        &target,
        &seed_options,
        args.shards,
        redis_proxy,
        args.rate_limits || args.scenario == Scenario::Flood,
        usize::from(args.instances),
        args.rules,
    )
    .await?;
    let all_sections = workloads::sections(&system).await?;
    let db_ready = database_bytes(&system).await?;
    let sampled: Vec<uuid::Uuid> = all_sections
        .iter()
        .step_by((all_sections.len() / GROWTH_SAMPLE).max(1))
        .copied()
        .collect();
    let sections_ready = section_bytes(&system, &sampled).await;
    let (scenario_sections, drain_targets) = all_sections.split_at(sections);
    workloads::make_room(&system, drain_targets, shape.drain_events).await?;
    let students = workloads::students(&system).await?;
    let ledger = Arc::new(Ledger::default());
    let started_at = chrono::Utc::now().to_rfc3339();
    let mut phases = Vec::new();
    let mut samples = Vec::new();
    let mut ratios = Vec::new();

    let name = args
        .scenario
        .to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_string());
    let (drain_s, fault_report) = if args.scenario == Scenario::Flood {
        let flood = flood::run(
            &system,
            &students,
            scenario_sections,
            connections,
            args.flood_connections,
            shape.rate.unwrap_or(FLOOD_RATE),
            shape.stages.iter().map(|s| s.1).sum(),
            ledger.clone(),
        )
        .await?;
        phases.extend(flood.phases);
        ratios.extend(flood.ratios);
        let drain_s = system
            .drain(scenario_sections, Duration::from_secs(120))
            .await?
            .as_secs_f64();
        (drain_s, None)
    } else {
        // The scenario itself.
        let time_bound = matches!(
            args.scenario,
            Scenario::Peak
                | Scenario::ReserveQueue
                | Scenario::Login
                | Scenario::Catalogue
                | Scenario::RegistrationDay
        );
        if args.scenario == Scenario::RegistrationDay {
            anyhow::ensure!(
                shape.rate.is_none(),
                "registration-day sessions wait for each answer: closed loop only (no --rate, no soak)"
            );
            // The login storm first: students sign in before the window opens.
            let storm = Arc::new(
                workloads::Logins::of(&system, &seed_options.password, LOGIN_STORM).await?,
            );
            let (phase, storm_samples) = measure(
                &system,
                "login storm",
                storm.clone(),
                &[(connections.min(64), 600)],
                None,
                false,
            )
            .await;
            let ok = storm.ok.load(std::sync::atomic::Ordering::Relaxed);
            let refused = storm.refused.load(std::sync::atomic::Ordering::Relaxed);
            ratios.push(Ratio {
                name: format!("login storm: logins/s ({ok} ok, {refused} refused)"),
                value: ok as f64 / phase.duration_s.max(1e-9),
                target: String::new(),
                met: None,
            });
            phases.push(phase);
            samples.extend(storm_samples);
        }
        let logins = match args.scenario {
            Scenario::Login => Some(Arc::new(
                workloads::Logins::of(&system, &seed_options.password, usize::MAX).await?,
            )),
            _ => None,
        };
        let catalogue = match args.scenario {
            Scenario::Catalogue => {
                let semester = workloads::semester(&system).await?;
                let catalogue = workloads::Catalogue::of(
                    &system,
                    &students,
                    semester,
                    CATALOGUE_PAGE,
                    connections,
                )
                .await?;
                eprintln!(
                    "catalogue: {} sections in {} pages of {CATALOGUE_PAGE}",
                    scenario_sections.len() + drain_targets.len(),
                    catalogue.pages()
                );
                Some(Arc::new(catalogue))
            }
            _ => None,
        };
        let workload: Arc<dyn Workload> = match args.scenario {
            Scenario::Enrol => Arc::new(workloads::enrol(
                &students,
                scenario_sections,
                ledger.clone(),
            )),
            Scenario::Race => Arc::new(workloads::race(
                &students,
                scenario_sections[0],
                ledger.clone(),
            )),
            Scenario::Peak => Arc::new(
                workloads::peak(
                    &system,
                    &students,
                    scenario_sections,
                    connections,
                    ledger.clone(),
                )
                .await?,
            ),
            Scenario::ReserveQueue => Arc::new(workloads::reserve_queue(
                &students,
                scenario_sections,
                connections,
                ledger.clone(),
            )),
            Scenario::DropPromotion => Arc::new(
                workloads::drop_promotion(&system, &students, scenario_sections, ledger.clone())
                    .await?,
            ),
            Scenario::Login => logins.clone().expect("built above"),
            Scenario::Catalogue => catalogue.clone().expect("built above"),
            Scenario::RegistrationDay => Arc::new(
                day::Day::new(
                    &system,
                    &students,
                    scenario_sections,
                    connections,
                    ledger.clone(),
                )
                .await?,
            ),
            Scenario::Flood => unreachable!("the flood runs its own phases above"),
        };
        let live_streams = match args.streams {
            0 => None,
            n => {
                let open =
                    streams::Streams::open(&system.addrs, &students, scenario_sections, n).await?;
                eprintln!("live streams: {n} open");
                Some(open)
            }
        };
        let (cpu_before, eval_before) = redis_usec(&system.redis).await?;
        let procs_before = cpu::Cpu::now(&system.pids());
        // scripts/profile-enrol.sh starts sampling the server on this line.
        eprintln!("scenario phase starts (server pid {})", system.pid());
        let mut fault_windows = None;
        let (phase, phase_samples) = match &fault_plan {
            Some(plan) => {
                let (phase, samples, windows) = faults::measure(
                    &system,
                    &name,
                    workload,
                    connections,
                    args.max_in_flight,
                    shape.rate.unwrap_or(2_000.0),
                    plan,
                )
                .await;
                fault_windows = Some(windows);
                (phase, samples)
            }
            None => {
                measure(
                    &system,
                    &name,
                    workload,
                    &shape.stages,
                    shape.rate,
                    time_bound,
                )
                .await
            }
        };
        let fault_report = match (&fault_plan, fault_windows) {
            (Some(plan), Some(windows)) => Some(faults::summarize(
                plan,
                windows,
                &phase_samples,
                phase.duration_s,
                ledger.uncertain(),
            )),
            _ => None,
        };
        let (cpu_after, eval_after) = redis_usec(&system.redis).await?;
        let spent = procs_before.until(&cpu::Cpu::now(&system.pids()));
        let answered = Instant::now();
        if let Some(live) = &live_streams {
            // Events still on their way after the last answer are not counted.
            let (events, bytes, open) = (live.events(), live.bytes(), live.still_open());
            eprintln!(
                "live streams: {open} of {} still open after the phase; {events} events, {bytes} bytes delivered",
                live.open
            );
            ratios.push(Ratio {
                name: format!(
                    "live: events/s delivered to {} open streams ({open} still open at the end)",
                    live.open
                ),
                value: events as f64 / phase.duration_s.max(1e-9),
                target: String::new(),
                met: None,
            });
        }
        let drain_s = system
            .drain(scenario_sections, Duration::from_secs(120))
            .await?
            .as_secs_f64();
        // Costs per registration only where registering is all the phase
        // did: in a mix, the reads' costs would be charged to the registers.
        let registrations = match phase.by_kind.as_slice() {
            [(kind, l)] if kind == "register" => l.count,
            _ => 0,
        };
        let register_phase = phase.clone();
        if let Some(logins) = &logins {
            let ok = logins.ok.load(std::sync::atomic::Ordering::Relaxed);
            let refused = logins.refused.load(std::sync::atomic::Ordering::Relaxed);
            let rate = ok as f64 / phase.duration_s.max(1e-9);
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            ratios.push(Ratio {
                name: format!(
                    "logins/s answered 200 ({ok} ok, {refused} refused, {cores} cores shared with everything else: {:.0} per core)",
                    rate / cores as f64
                ),
                value: rate,
                target: String::new(),
                met: None,
            });
            // A registration day: 50,000 students logging in over 10 minutes.
            ratios.push(Ratio {
                name: "login capacity / 50,000 logins in 10 minutes (83/s)".into(),
                value: rate / (50_000.0 / 600.0),
                target: ">= 1".into(),
                met: Some(rate >= 50_000.0 / 600.0),
            });
        }
        if let Some(catalogue) = &catalogue {
            let ok = catalogue.ok.load(std::sync::atomic::Ordering::Relaxed);
            let other = catalogue.other.load(std::sync::atomic::Ordering::Relaxed);
            let bytes = catalogue.bytes.load(std::sync::atomic::Ordering::Relaxed);
            ratios.push(Ratio {
                name: format!(
                    "catalogue pages/s ({ok} answered 200, {other} other; {:.1} KiB per page)",
                    bytes as f64 / 1024.0 / ok.max(1) as f64
                ),
                value: ok as f64 / phase.duration_s.max(1e-9),
                target: String::new(),
                met: None,
            });
        }
        if registrations > 0 {
            // Where a registration's CPU went, over the scenario phase (the
            // shards' writes included; the load client is not counted).
            let us = |s: f64| s * 1e6 / registrations as f64;
            ratios.push(Ratio {
                name: format!(
                    "CPU per registration, µs: server {:.0}, PostgreSQL {:.0} (client backends {:.0}), Redis {:.0} (of {registrations})",
                    us(spent.server),
                    us(spent.postgres),
                    us(spent.postgres_backends),
                    us(spent.redis)
                ),
                value: us(spent.server + spent.postgres + spent.redis),
                target: String::new(),
                met: None,
            });
        }
        phases.push(phase);
        samples.extend(phase_samples);
        eprintln!("scenario done; persistence drained {drain_s:.2}s after the last answer");
        let _ = answered;

        if !args.no_ceilings {
            // HTTP ceiling: GET /live, same client, same connections.
            let count = register_phase.latency.count.max(5_000);
            // As long as the scenario ran (3 to 30 s), so both rates are steady.
            let seconds = register_phase.duration_s.ceil().clamp(3.0, 30.0) as u64;
            let live = Arc::new(workloads::Repeat(client::Call::get(
                "live",
                "/live".into(),
                None,
            )));
            let (live_phase, live_samples) = measure(
                &system,
                "ceiling:/live",
                live,
                &[(connections, seconds)],
                None,
                true,
            )
            .await;
            if let Some((_, page)) = register_phase.by_kind.iter().find(|(k, _)| k == "page") {
                let rate = page.count as f64 / register_phase.duration_s.max(1e-9);
                let ratio = rate / live_phase.throughput.max(1e-9);
                ratios.push(Ratio {
                    name: format!(
                        "catalogue page of {CATALOGUE_PAGE} sections throughput / GET /live throughput"
                    ),
                    value: ratio,
                    target: ">= 0.1".into(),
                    met: Some(ratio >= 0.1),
                });
            }
            let mix = register_phase
                .outcomes
                .map(|o| o.describe())
                .unwrap_or_default();
            if args.scenario == Scenario::RegistrationDay {
                ratios.push(Ratio {
                    name: format!(
                        "registration-day requests of every kind / GET /live throughput (registers: {mix})"
                    ),
                    value: register_phase.throughput / live_phase.throughput.max(1e-9),
                    target: String::new(),
                    met: None,
                });
            } else if let Some((_, reg)) =
                register_phase.by_kind.iter().find(|(k, _)| k == "register")
            {
                let reg_rate = reg.count as f64 / register_phase.duration_s.max(1e-9);
                let ratio = reg_rate / live_phase.throughput.max(1e-9);
                // Enrol is registration proper (every answer a seat taken and
                // persisted); the race is mostly the rejection path.
                let (target, met) = match args.scenario {
                    Scenario::Enrol => (">= 0.3 (enrol)", Some(ratio >= 0.3)),
                    Scenario::Race => (">= 0.5 (race, 256 connections)", Some(ratio >= 0.5)),
                    _ => ("", None),
                };
                ratios.push(Ratio {
                    name: format!("register throughput / GET /live throughput ({mix})"),
                    value: ratio,
                    target: target.into(),
                    met,
                });
                ratios.push(Ratio {
                    name: "register p99 / GET /live p99".into(),
                    value: reg.p99_ms / live_phase.latency.p99_ms.max(1e-9),
                    target: "<= 3 (64 connections)".into(),
                    met: Some(reg.p99_ms / live_phase.latency.p99_ms.max(1e-9) <= 3.0),
                });
            }
            phases.push(live_phase);
            samples.extend(live_samples);

            // Redis ceiling: the reserve script straight on Redis, and a bare EVALSHA.
            let ceiling = workloads::redis_ceiling(&target, connections, count).await?;
            phases.push(ceiling.phase);
            if registrations > 0 {
                let per_registration = (eval_after - eval_before) as f64 / registrations as f64;
                let cpu_per_registration = (cpu_after - cpu_before) * 1e6 / registrations as f64;
                ratios.push(Ratio {
                    name: format!(
                        "Redis script time per registration ({per_registration:.1} µs, commandstats) / bare EVALSHA DECR ({:.1} µs)",
                        ceiling.bare_us
                    ),
                    value: per_registration / ceiling.bare_us.max(1e-9),
                    target: "<= 3".into(),
                    met: Some(per_registration / ceiling.bare_us.max(1e-9) <= 3.0),
                });
                ratios.push(Ratio {
                    name: format!(
                        "Redis CPU per registration ({cpu_per_registration:.1} µs, INFO cpu, all work) / per bare EVALSHA DECR ({:.1} µs)",
                        ceiling.bare_cpu_us
                    ),
                    value: cpu_per_registration / ceiling.bare_cpu_us.max(1e-9),
                    target: String::new(),
                    met: None,
                });
                ratios.push(Ratio {
                    name: format!(
                        "reserve.lua alone ({:.1} µs, commandstats) / bare EVALSHA DECR",
                        ceiling.reserve_us
                    ),
                    value: ceiling.reserve_us / ceiling.bare_us.max(1e-9),
                    target: String::new(),
                    met: None,
                });
            }

            // Drain: hold PostgreSQL back, pile up events, let go, time the drain.
            let (drain_phase, drained_events, drain_rate) = workloads::drain_rate(
                &system,
                &students,
                drain_targets,
                shape.drain_events,
                ledger.clone(),
            )
            .await?;
            phases.push(drain_phase);
            let (insert_phase, insert_rate) = workloads::insert_ceiling(
                &system,
                &students,
                drained_events,
                system.settings.sync.batch_size,
            )
            .await?;
            phases.push(insert_phase);
            ratios.push(Ratio {
                name: format!("drain rate ({drain_rate:.0} events/s) / raw batched insert ({insert_rate:.0} rows/s)"),
                value: drain_rate / insert_rate.max(1e-9),
                target: ">= 0.5".into(),
                met: Some(drain_rate / insert_rate.max(1e-9) >= 0.5),
            });
            ratios.push(Ratio {
                name: "lag back to zero after the scenario's last answer (s)".into(),
                value: drain_s,
                target: "<= 2 (race)".into(),
                met: Some(drain_s <= 2.0),
            });
        }

        (drain_s, fault_report)
    };

    // Audit every section after everything drained.
    system
        .drain(&all_sections, Duration::from_secs(120))
        .await?;
    let acknowledged: HashMap<uuid::Uuid, BTreeSet<uuid::Uuid>> = ledger.enrolled();
    let findings = registrar::audit::audit(
        &system.db,
        &system.redis,
        &all_sections,
        &acknowledged,
        system.settings.sync.sweep_interval_ms,
    )
    .await?;
    let mut audit: Vec<Check> = findings
        .into_iter()
        .map(|f| Check {
            name: f.check.to_string(),
            passed: f.passed,
            detail: f.detail,
        })
        .collect();
    if let Some(report) = &fault_report {
        audit.push(faults::recovery_check(report));
    }
    let mut measures = growth(&system, db_ready, &sampled, sections_ready, &students).await?;
    // What the audit could not hold the service to: the last answer was
    // lost or a 5xx, or two answers about the pair crossed in flight.
    measures.push(model::Measure {
        name: "(student, section) pairs of unknown final state".into(),
        value: ledger.uncertain() as f64,
    });
    measures.push(model::Measure {
        name: "... of which answers crossed in flight".into(),
        value: ledger.crossed() as f64,
    });
    if args.scenario == Scenario::RegistrationDay {
        measures.push(model::Measure {
            name: "waitlist offers found by returning students".into(),
            value: day::OFFERS_SEEN.load(std::sync::atomic::Ordering::Relaxed) as f64,
        });
        measures.push(model::Measure {
            name: "... accepted by registering (answered enrolled)".into(),
            value: day::OFFERS_ACCEPTED.load(std::sync::atomic::Ordering::Relaxed) as f64,
        });
    }
    let rss_peak = samples.iter().map(|s| s.rss_mib).fold(0.0, f64::max);
    let rss_end = system.rss_mib();
    let report = RunReport {
        scenario: name.clone(),
        preset: format!("{:?}", args.preset).to_lowercase(),
        instances: usize::from(args.instances),
        machine: machine(),
        started_at,
        phases,
        samples,
        drain_s,
        audit,
        ratios,
        rss_peak_mib: rss_peak,
        rss_end_mib: rss_end,
        measures,
        faults: fault_report,
    };
    system.stop().await;
    std::fs::create_dir_all(&args.out)?;
    let stem = format!("{}-{}", report.scenario, report.preset);
    report::print_table(&report);
    report::write_json(&report, &args.out.join(format!("{stem}.json")))?;
    report::write_html(&report, &args.out.join(format!("{stem}.html")))?;
    eprintln!("reports: {}/{stem}.json and .html", args.out.display());
    if !report.audit_passed() {
        eprintln!("AUDIT FAILED: a promise of SPEC §2 was broken");
        std::process::exit(1);
    }
    Ok(())
}
