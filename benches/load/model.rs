//! What one load run measured: the data behind the terminal table, the JSON
//! file and the HTML report.

use serde::Serialize;

/// Latency summary of one kind of request, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// One phase of a run (a scenario or a ceiling) as measured by the client.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Phase {
    /// "race", "peak", "reserve-queue", "drop-promotion", "ceiling:/live",
    /// "ceiling:redis-reserve", "ceiling:pg-batch-insert".
    pub name: String,
    /// Closed loop: concurrent connections. Open loop: also the connection pool size.
    pub connections: usize,
    /// Open loop only: the intended arrival rate (requests per second).
    pub target_rate: Option<f64>,
    pub duration_s: f64,
    /// Requests (or operations) completed per second.
    pub throughput: f64,
    /// Over all requests of the phase.
    pub latency: Latency,
    /// By request kind ("register", "browse", "view", "mine", "drop", ...).
    pub by_kind: Vec<(String, Latency)>,
    /// Errors by kind ("http_503", "timeout", "connect", ...), with counts.
    pub errors: Vec<(String, u64)>,
    /// What the register answers of the phase said, one count per section
    /// asked for; None when the phase sent no registration.
    pub outcomes: Option<Outcomes>,
}

/// The outcome mix of a phase's registrations: a throughput figure means
/// little without it (a race where almost everyone is told "full" measures
/// the rejection path, not registration).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Outcomes {
    /// A new enrolment (a seat taken, an event to persist).
    pub enrolled: u64,
    /// A new waitlist place.
    pub waitlisted: u64,
    /// Refused because the section and its waitlist are full.
    pub full: u64,
    /// Refused by a registration rule (a hold, a time ticket, a
    /// prerequisite, the credit limit, a time conflict, one per course).
    pub ruled: u64,
    /// Everything else: already enrolled or waitlisted, refused for
    /// another reason, an error status or no answer.
    pub other: u64,
}

impl Outcomes {
    pub fn total(&self) -> u64 {
        self.enrolled + self.waitlisted + self.full + self.ruled + self.other
    }

    /// "enrolled 97.0%, waitlisted 1.0%, full 2.0%, other 0.0% of 30,000",
    /// with "rules x%" before "other" when a rule refused any.
    pub fn describe(&self) -> String {
        let total = self.total().max(1) as f64;
        let pct = |n: u64| 100.0 * n as f64 / total;
        let rules = if self.ruled > 0 {
            format!("rules {:.1}%, ", pct(self.ruled))
        } else {
            String::new()
        };
        format!(
            "enrolled {:.1}%, waitlisted {:.1}%, full {:.1}%, {rules}other {:.1}% of {}",
            pct(self.enrolled),
            pct(self.waitlisted),
            pct(self.full),
            pct(self.other),
            self.total()
        )
    }
}

/// One point of the time series, one per second of a phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// Seconds since the phase started.
    pub t_s: f64,
    pub phase: String,
    pub throughput: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// Jobs waiting in the persistence queues (sum over shards).
    pub queue_depth: u64,
    /// Outbox entries not yet in PostgreSQL.
    pub outbox_backlog: u64,
    /// Age of the oldest outbox entry (persistence lag), seconds.
    pub lag_s: f64,
    /// Resident memory of the server process, MiB.
    pub rss_mib: f64,
    /// Whether /health answered with the queue figures this second (they
    /// read 0 otherwise, which must not pass for an empty queue).
    pub health_ok: bool,
}

/// One checked promise of SPEC §2.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    /// What was found when it failed (empty when it passed).
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub name: String,
    pub value: f64,
    /// The target from the issue, e.g. ">= 0.5"; empty if none.
    pub target: String,
    pub met: Option<bool>,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub scenario: String,
    pub preset: String,
    /// Server processes the clients were spread over (`--instances`).
    pub instances: usize,
    /// e.g. "2 cores, 23 GiB, Linux 6.x" and the git revision.
    pub machine: String,
    pub started_at: String,
    pub phases: Vec<Phase>,
    pub samples: Vec<Sample>,
    /// Seconds from the end of the load to an empty outbox.
    pub drain_s: f64,
    pub audit: Vec<Check>,
    pub ratios: Vec<Ratio>,
    /// Peak and final server RSS, MiB.
    pub rss_peak_mib: f64,
    pub rss_end_mib: f64,
    /// Start-up and growth figures (warm-up time, memory per section, per
    /// registration), in the order printed.
    pub measures: Vec<Measure>,
    /// Fault injection (`--faults`): the windows and what they did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faults: Option<FaultReport>,
}

/// A named figure of the run as a whole.
#[derive(Debug, Clone, Serialize)]
pub struct Measure {
    pub name: String,
    pub value: f64,
}

/// One window of a fault run: a fault, or the normal operation between them.
#[derive(Debug, Clone, Serialize)]
pub struct FaultWindow {
    /// "pg-cut", "pg-blackhole", "pg-slow", "redis-cut", or "none".
    pub kind: String,
    /// Seconds since the scenario phase started.
    pub start_s: f64,
    pub end_s: f64,
    /// Answers to requests sent in the window.
    pub answered: u64,
    /// Errors by kind that happened in the window.
    pub errors: Vec<(String, u64)>,
    /// Fault windows: seconds from the fault's end until the queues and the
    /// outbox were back under the recovery threshold (None: not within the run).
    pub recovery_s: Option<f64>,
}

/// What a run with faults measured beyond the usual phase figures.
#[derive(Debug, Clone, Serialize)]
pub struct FaultReport {
    /// A fault was switched on or off every this many seconds.
    pub every_s: f64,
    /// Faults stopped here (seconds into the phase); the rest ran clean.
    pub quiet_from_s: f64,
    /// Added per chunk and direction during pg-slow.
    pub pg_delay_ms: u64,
    pub windows: Vec<FaultWindow>,
    /// Largest queue depth and outbox backlog sampled before the first fault.
    pub baseline_queue_depth: u64,
    pub baseline_outbox_backlog: u64,
    /// Seconds from the end of the last fault until the queues and the
    /// outbox were back under their recovery threshold (None: never, within the run).
    pub recovery_s: Option<f64>,
    /// The threshold: twice the baseline, at least 20 entries.
    pub recovery_threshold: u64,
    /// Server RSS: mean over the first and last tenth of the phase, and max.
    pub rss_first_tenth_mib: f64,
    pub rss_last_tenth_mib: f64,
    pub rss_max_mib: f64,
    /// (student, section) pairs whose last register or drop got no clear
    /// answer (5xx or no answer): the audit does not expect either outcome.
    pub uncertain_pairs: usize,
}

impl RunReport {
    pub fn audit_passed(&self) -> bool {
        self.audit.iter().all(|c| c.passed)
    }
}
