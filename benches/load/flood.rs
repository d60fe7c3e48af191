//! The flood scenario: does one student hammering the API slow the others?
//!
//! The server runs with its rate limits on. "Others" register at a fixed
//! open-loop rate (each student once, spread over the scenario's sections),
//! first alone (`flood:baseline`), then while one student sends register
//! requests as fast as `flood_connections` connections allow
//! (`flood:others` and `flood:flooder`, the same seconds), then while the
//! same connections send `GET /live` as fast as they can (`flood:control`
//! and `flood:live-flooder`). The figures are the others' latency under the
//! flood against their latency alone, and against the control: the load
//! generator shares the machine's two cores, so any flood from here slows
//! the others by the CPU it takes; the control shows how much of that a
//! flood of the cheapest request costs too.
//!
//! Every simulated client shares the loopback address, so the address
//! bucket is lifted for this run (see `server::rate_limit_env`): what is
//! measured is the per-student bucket, and that a refused request is cheap.

use std::{sync::Arc, time::Duration};

use uuid::Uuid;

use crate::{
    client::{Call, Recorder},
    model::{Latency, Phase, Ratio},
    server::System,
    workloads::{self, register_call, Ledger, Repeat},
};

/// What one flood run measured.
pub struct Flood {
    pub phases: Vec<Phase>,
    pub ratios: Vec<Ratio>,
}

fn phase(name: &str, connections: usize, rate: Option<f64>, took: Duration, r: &Recorder) -> Phase {
    let latency = r.total();
    Phase {
        name: name.to_string(),
        connections,
        target_rate: rate,
        duration_s: took.as_secs_f64(),
        throughput: latency.count as f64 / took.as_secs_f64().max(1e-9),
        latency,
        by_kind: r.by_kind(),
        errors: r.errors(),
        outcomes: r.outcomes(),
    }
}

/// Runs the baseline and the flood, each `seconds` long, with the others at
/// `rate` requests/s over `connections` connections.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    system: &System,
    students: &[(Uuid, String)],
    sections: &[Uuid],
    connections: usize,
    flood_connections: usize,
    rate: f64,
    seconds: u64,
    ledger: Arc<Ledger>,
) -> anyhow::Result<Flood> {
    let duration = Duration::from_secs(seconds);
    let per_phase = (rate * seconds as f64).ceil() as usize;
    anyhow::ensure!(
        students.len() > 3 * per_phase,
        "the flood needs {} students (3 × rate × seconds + the flooder); pass --students",
        3 * per_phase + 1
    );
    let (flooder, rest) = students.split_first().expect("checked above");
    let (first, rest) = rest.split_at(per_phase);
    let (second, third) = rest.split_at(per_phase);

    // Alone.
    let baseline = Arc::new(Recorder::new());
    let took = workloads::open_loop(
        system.addrs.clone(),
        connections,
        rate,
        duration,
        Arc::new(workloads::enrol(first, sections, ledger.clone())),
        baseline.clone(),
    )
    .await;
    let baseline = phase("flood:baseline", connections, Some(rate), took, &baseline);

    // The same, while one student floods. The flooder asks for a seat it
    // never gets twice (already enrolled after the first), so what the
    // server does for it is the limiter's refusal or an idempotent answer.
    let others = Arc::new(Recorder::new());
    let flood = Arc::new(Recorder::new());
    let flood_call = register_call(&flooder.1, flooder.0, sections[0]);
    let (took_others, took_flood) = tokio::join!(
        workloads::open_loop(
            system.addrs.clone(),
            connections,
            rate,
            duration,
            Arc::new(workloads::enrol(second, sections, ledger.clone())),
            others.clone(),
        ),
        workloads::closed_loop(
            system.addrs.clone(),
            flood_connections,
            Some(duration),
            Arc::new(Repeat(flood_call)),
            flood.clone(),
        ),
    );
    let under_flood = phase(
        "flood:others",
        connections,
        Some(rate),
        took_others,
        &others,
    );
    let flooder_phase = phase("flood:flooder", flood_connections, None, took_flood, &flood);

    // The control: as many connections flooding the cheapest route.
    let control = Arc::new(Recorder::new());
    let live = Arc::new(Recorder::new());
    let (took_control, took_live) = tokio::join!(
        workloads::open_loop(
            system.addrs.clone(),
            connections,
            rate,
            duration,
            Arc::new(workloads::enrol(
                &third[..per_phase],
                sections,
                ledger.clone()
            )),
            control.clone(),
        ),
        workloads::closed_loop(
            system.addrs.clone(),
            flood_connections,
            Some(duration),
            Arc::new(Repeat(Call::get("live", "/live".into(), None))),
            live.clone(),
        ),
    );
    let control = phase(
        "flood:control",
        connections,
        Some(rate),
        took_control,
        &control,
    );
    let live_phase = phase(
        "flood:live-flooder",
        flood_connections,
        None,
        took_live,
        &live,
    );

    let refusals = |p: &Phase| -> u64 {
        p.errors
            .iter()
            .filter(|(kind, _)| kind.starts_with("http_429"))
            .map(|(_, n)| n)
            .sum()
    };
    let refused = refusals(&flooder_phase);
    let others_refused = refusals(&baseline) + refusals(&under_flood) + refusals(&control);
    let ratio = |name: &str, f: fn(&Latency) -> f64, target: &str, bound: Option<f64>| {
        let value = f(&under_flood.latency) / f(&baseline.latency).max(1e-9);
        Ratio {
            name: name.to_string(),
            value,
            target: target.to_string(),
            met: bound.map(|b| value <= b),
        }
    };
    let against_control = |name: &str, f: fn(&Latency) -> f64| Ratio {
        name: name.to_string(),
        value: f(&under_flood.latency) / f(&control.latency).max(1e-9),
        target: String::new(),
        met: None,
    };
    let ratios = vec![
        ratio(
            "others' p50 under a one-student flood / alone",
            |l| l.p50_ms,
            "<= 1.5",
            Some(1.5),
        ),
        ratio(
            "others' p99 under a one-student flood / alone",
            |l| l.p99_ms,
            "<= 1.5",
            Some(1.5),
        ),
        against_control(
            "others' p50 under the student flood / under a GET /live flood (control)",
            |l| l.p50_ms,
        ),
        against_control(
            "others' p99 under the student flood / under a GET /live flood (control)",
            |l| l.p99_ms,
        ),
        Ratio {
            name: "others' requests refused with 429 (all phases)".into(),
            value: others_refused as f64,
            target: "0".into(),
            met: Some(others_refused == 0),
        },
        Ratio {
            name: format!(
                "flooder's requests refused with 429 ({refused} of {}, {:.0} req/s)",
                flooder_phase.latency.count, flooder_phase.throughput
            ),
            value: refused as f64 / (flooder_phase.latency.count.max(1)) as f64,
            target: String::new(),
            met: None,
        },
    ];
    Ok(Flood {
        phases: vec![baseline, under_flood, flooder_phase, control, live_phase],
        ratios,
    })
}
