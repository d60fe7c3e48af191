//! Rendering a [`RunReport`]: a table on the terminal, a JSON file, and one
//! self-contained HTML page (inline CSS and SVG charts, nothing fetched, so it
//! renders offline and can be attached to an issue as is).

use std::io::{self, IsTerminal, Write as _};
use std::path::Path;

use crate::model::{FaultReport, Latency, Phase, RunReport, Sample};

// ---------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------

/// Prints the run as aligned tables, ending with the audit verdict.
pub fn print_table(report: &RunReport) {
    let mut out = String::new();
    let mut heading = vec![format!(
        "{} / {}, {} instance(s)",
        report.scenario, report.preset, report.instances
    )];
    if !report.machine.is_empty() {
        heading.push(report.machine.clone());
    }
    if !report.started_at.is_empty() {
        heading.push(format!("started {}", report.started_at));
    }
    out.push_str(&format!("\n{}\n", heading.join("  —  ")));
    for (title, table) in summary_tables(report) {
        out.push('\n');
        out.push_str(&title);
        out.push('\n');
        out.push_str(&table.text());
    }
    let passed = report.audit_passed();
    let (color, reset) = match (io::stdout().is_terminal(), passed) {
        (false, _) => ("", ""),
        (true, true) => ("\x1b[1;32m", "\x1b[0m"),
        (true, false) => ("\x1b[1;31m", "\x1b[0m"),
    };
    out.push_str(&format!("\n{color}{}{reset}\n", verdict(report)));
    // A closed stdout (e.g. piped into `head`) is not worth a panic.
    let _ = io::stdout().lock().write_all(out.as_bytes());
}

/// Writes the whole report as pretty-printed JSON.
pub fn write_json(report: &RunReport, path: &Path) -> io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(report)?;
    bytes.push(b'\n');
    std::fs::write(path, bytes)
}

/// Writes one HTML file: header, the terminal's tables, and time-series charts.
pub fn write_html(report: &RunReport, path: &Path) -> io::Result<()> {
    std::fs::write(path, html_page(report))
}

fn verdict(report: &RunReport) -> &'static str {
    if report.audit_passed() {
        "AUDIT PASSED"
    } else {
        "AUDIT FAILED"
    }
}

// ---------------------------------------------------------------------------
// Tables, shared by the terminal and the HTML page
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Align {
    Left,
    Right,
}

use Align::{Left, Right};

struct Table {
    headers: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(headers: &[(&'static str, Align)]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn cell(row: &[String], col: usize) -> &str {
        row.get(col).map(String::as_str).unwrap_or("")
    }

    /// Columns padded to their widest cell, two spaces apart.
    fn text(&self) -> String {
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| Self::cell(r, c).chars().count())
                    .chain([self.headers[c].0.chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: Vec<&str>| -> String {
            let padded: Vec<String> = cells
                .iter()
                .zip(&self.headers)
                .zip(&widths)
                .map(|((text, (_, align)), &w)| match align {
                    Left => format!("{text:<w$}"),
                    Right => format!("{text:>w$}"),
                })
                .collect();
            format!("  {}\n", padded.join("  ").trim_end())
        };
        let mut out = line(self.headers.iter().map(|(h, _)| *h).collect());
        let rule_width = widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1);
        out.push_str(&format!("  {}\n", "-".repeat(rule_width)));
        if self.rows.is_empty() {
            out.push_str("  (none)\n");
        }
        for row in &self.rows {
            out.push_str(&line(
                (0..self.headers.len())
                    .map(|c| Self::cell(row, c))
                    .collect(),
            ));
        }
        out
    }

    fn html(&self) -> String {
        let mut out = String::from("<table>\n<thead><tr>");
        for (header, align) in &self.headers {
            out.push_str(&format!("<th{}>{}</th>", align_class(*align), esc(header)));
        }
        out.push_str("</tr></thead>\n<tbody>\n");
        if self.rows.is_empty() {
            out.push_str(&format!(
                "<tr><td colspan=\"{}\" class=\"none\">(none)</td></tr>\n",
                self.headers.len()
            ));
        }
        for row in &self.rows {
            out.push_str("<tr>");
            for (c, (_, align)) in self.headers.iter().enumerate() {
                let text = Self::cell(row, c);
                let class = match (text, align) {
                    ("PASS" | "yes", _) => " class=\"pass\"",
                    ("FAIL" | "no", _) => " class=\"fail\"",
                    (_, align) => align_class(*align),
                };
                out.push_str(&format!("<td{class}>{}</td>", esc(text)));
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</tbody>\n</table>\n");
        out
    }
}

fn align_class(align: Align) -> &'static str {
    match align {
        Left => "",
        Right => " class=\"num\"",
    }
}

/// The tables of a run, titled, in reading order.
fn summary_tables(report: &RunReport) -> Vec<(String, Table)> {
    let mut tables = vec![
        ("Phases".into(), phases_table(&report.phases)),
        (
            "Outcome mix of the registrations (per section asked for)".into(),
            outcomes_table(&report.phases),
        ),
        (
            "Latency by request kind (ms)".into(),
            kinds_table(&report.phases),
        ),
        ("Run".into(), run_table(report)),
        ("Ratios".into(), ratios_table(report)),
    ];
    if let Some(faults) = &report.faults {
        tables.push((
            format!(
                "Fault windows (a fault every {} s; clean from {} s)",
                num(faults.every_s, 0),
                num(faults.quiet_from_s, 0)
            ),
            fault_windows_table(faults),
        ));
        tables.push((
            "Faults: recovery and memory".into(),
            fault_summary_table(faults),
        ));
    }
    tables.push((format!("Audit ({})", verdict(report)), audit_table(report)));
    tables
}

fn fault_windows_table(faults: &FaultReport) -> Table {
    let mut t = Table::new(&[
        ("window", Left),
        ("from s", Right),
        ("to s", Right),
        ("answered", Right),
        ("recovered after s", Right),
        ("errors", Left),
    ]);
    for w in &faults.windows {
        t.row(vec![
            w.kind.clone(),
            num(w.start_s, 0),
            num(w.end_s, 0),
            w.answered.to_string(),
            w.recovery_s.map_or_else(|| "-".into(), |r| num(r, 0)),
            errors(&w.errors),
        ]);
    }
    t
}

fn fault_summary_table(faults: &FaultReport) -> Table {
    let mut t = Table::new(&[("measure", Left), ("value", Right)]);
    let rows = [
        (
            "queue depth / outbox backlog before the first fault (max)".to_string(),
            format!(
                "{} / {}",
                faults.baseline_queue_depth, faults.baseline_outbox_backlog
            ),
        ),
        (
            "recovery threshold (entries)".into(),
            faults.recovery_threshold.to_string(),
        ),
        (
            "back under it after the last fault (s)".into(),
            faults
                .recovery_s
                .map_or_else(|| "never".into(), |r| num(r, 0)),
        ),
        (
            "server RSS, mean of the first tenth (MiB)".into(),
            num(faults.rss_first_tenth_mib, 1),
        ),
        (
            "server RSS, mean of the last tenth (MiB)".into(),
            num(faults.rss_last_tenth_mib, 1),
        ),
        ("server RSS, max (MiB)".into(), num(faults.rss_max_mib, 1)),
        (
            "PostgreSQL delay while slow (ms per chunk and direction)".into(),
            faults.pg_delay_ms.to_string(),
        ),
        (
            "student/section pairs left unknown (last change unanswered)".into(),
            faults.uncertain_pairs.to_string(),
        ),
    ];
    for (measure, value) in rows {
        t.row(vec![measure, value]);
    }
    t
}

fn phases_table(phases: &[Phase]) -> Table {
    let mut t = Table::new(&[
        ("phase", Left),
        ("conns", Right),
        ("target r/s", Right),
        ("dur s", Right),
        ("requests", Right),
        ("req/s", Right),
        ("p50 ms", Right),
        ("p95 ms", Right),
        ("p99 ms", Right),
        ("max ms", Right),
        ("errors", Left),
    ]);
    for p in phases {
        t.row(vec![
            p.name.clone(),
            p.connections.to_string(),
            p.target_rate.map_or_else(|| "-".into(), rate),
            num(p.duration_s, 1),
            p.latency.count.to_string(),
            rate(p.throughput),
            ms(p.latency.p50_ms),
            ms(p.latency.p95_ms),
            ms(p.latency.p99_ms),
            ms(p.latency.max_ms),
            errors(&p.errors),
        ]);
    }
    t
}

fn outcomes_table(phases: &[Phase]) -> Table {
    let mut t = Table::new(&[
        ("phase", Left),
        ("enrolled", Right),
        ("waitlisted", Right),
        ("full", Right),
        ("other", Right),
        ("mix", Left),
    ]);
    for p in phases {
        if let Some(o) = &p.outcomes {
            t.row(vec![
                p.name.clone(),
                o.enrolled.to_string(),
                o.waitlisted.to_string(),
                o.full.to_string(),
                o.other.to_string(),
                o.describe(),
            ]);
        }
    }
    t
}

fn kinds_table(phases: &[Phase]) -> Table {
    let mut t = Table::new(&[
        ("phase", Left),
        ("kind", Left),
        ("count", Right),
        ("p50", Right),
        ("p95", Right),
        ("p99", Right),
        ("max", Right),
    ]);
    for p in phases {
        for (kind, l) in &p.by_kind {
            t.row(latency_row(&p.name, kind, l));
        }
    }
    t
}

fn latency_row(phase: &str, kind: &str, l: &Latency) -> Vec<String> {
    vec![
        phase.to_string(),
        kind.to_string(),
        l.count.to_string(),
        ms(l.p50_ms),
        ms(l.p95_ms),
        ms(l.p99_ms),
        ms(l.max_ms),
    ]
}

fn run_table(report: &RunReport) -> Table {
    let mut t = Table::new(&[("measure", Left), ("value", Right)]);
    t.row(vec!["outbox drain time (s)".into(), num(report.drain_s, 1)]);
    t.row(vec![
        "server RSS peak (MiB)".into(),
        num(report.rss_peak_mib, 1),
    ]);
    t.row(vec![
        "server RSS end (MiB)".into(),
        num(report.rss_end_mib, 1),
    ]);
    for m in &report.measures {
        t.row(vec![m.name.clone(), num(m.value, 1)]);
    }
    t
}

fn ratios_table(report: &RunReport) -> Table {
    let mut t = Table::new(&[
        ("ratio", Left),
        ("value", Right),
        ("target", Left),
        ("met", Left),
    ]);
    for r in &report.ratios {
        let target = if r.target.is_empty() { "-" } else { &r.target };
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        };
        t.row(vec![
            r.name.clone(),
            num(r.value, 3),
            target.into(),
            met.into(),
        ]);
    }
    t
}

fn audit_table(report: &RunReport) -> Table {
    let mut t = Table::new(&[("check", Left), ("result", Left), ("detail", Left)]);
    for c in &report.audit {
        let result = if c.passed { "PASS" } else { "FAIL" };
        t.row(vec![c.name.clone(), result.into(), c.detail.clone()]);
    }
    t
}

fn errors(errors: &[(String, u64)]) -> String {
    if errors.is_empty() {
        return "-".into();
    }
    errors
        .iter()
        .map(|(kind, n)| format!("{kind}={n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `v` with `decimals` places, or "-" for NaN and infinities.
fn num(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "-".into()
    }
}

fn ms(v: f64) -> String {
    num(v, 2)
}

fn rate(v: f64) -> String {
    num(v, if v.abs() < 100.0 { 1 } else { 0 })
}

// ---------------------------------------------------------------------------
// HTML page
// ---------------------------------------------------------------------------

/// Escapes text for HTML element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       margin: 24px auto; max-width: 1000px; padding: 0 16px; color: #1f2937; background: #fff; }
h1 { font-size: 22px; margin: 0 0 6px; }
h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #e5e7eb; padding-bottom: 4px; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 8px 0 12px; font-size: 14px; }
dl.meta dt { color: #6b7280; }
dl.meta dd { margin: 0; }
.verdict { display: inline-block; padding: 6px 14px; border-radius: 6px; font-weight: 700;
           color: #fff; letter-spacing: 0.04em; }
.verdict.pass { background: #15803d; }
.verdict.fail { background: #b91c1c; }
table { border-collapse: collapse; font-size: 13px; margin: 4px 0 8px; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e5e7eb; text-align: left; vertical-align: top; }
th { background: #f3f4f6; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.pass { color: #15803d; font-weight: 700; }
td.fail { color: #b91c1c; font-weight: 700; }
td.none { color: #9ca3af; font-style: italic; }
svg.chart { display: block; width: 100%; height: auto; margin: 6px 0 18px; }
svg.chart text { font-family: inherit; }
"#;

fn html_page(report: &RunReport) -> String {
    let title = format!("{} / {}", report.scenario, report.preset);
    let class = if report.audit_passed() {
        "pass"
    } else {
        "fail"
    };
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    out.push_str(&format!("<title>Load run: {}</title>\n", esc(&title)));
    out.push_str(&format!("<style>{STYLE}</style>\n</head>\n<body>\n"));
    out.push_str(&format!("<h1>Load run: {}</h1>\n", esc(&title)));
    out.push_str("<dl class=\"meta\">\n");
    let instances = report.instances.to_string();
    for (label, value) in [
        ("scenario", &report.scenario),
        ("preset", &report.preset),
        ("instances", &instances),
        ("machine", &report.machine),
        ("started", &report.started_at),
    ] {
        out.push_str(&format!("<dt>{label}</dt><dd>{}</dd>\n", esc(value)));
    }
    out.push_str("</dl>\n");
    out.push_str(&format!(
        "<div class=\"verdict {class}\">{}</div>\n",
        verdict(report)
    ));
    for (title, table) in summary_tables(report) {
        out.push_str(&format!("<h2>{}</h2>\n", esc(&title)));
        out.push_str(&table.html());
    }
    out.push_str("<h2>Over time</h2>\n");
    out.push_str(&charts(report));
    out.push_str("</body>\n</html>\n");
    out
}

fn charts(report: &RunReport) -> String {
    let timeline = Timeline::new(report);
    let series = |name, color, f: fn(&Sample) -> f64| Series {
        name,
        color,
        segments: timeline.series(&report.samples, f),
    };
    let charts = [
        (
            "Throughput",
            "req/s",
            vec![series("throughput", BLUE, |s| s.throughput)],
        ),
        (
            "Latency percentiles",
            "ms",
            vec![
                series("p50", GREEN, |s| s.p50_ms),
                series("p95", ORANGE, |s| s.p95_ms),
                series("p99", RED, |s| s.p99_ms),
            ],
        ),
        (
            "Persistence queue depth and outbox backlog",
            "entries",
            vec![
                series("queue depth", BLUE, |s| s.queue_depth as f64),
                series("outbox backlog", PURPLE, |s| s.outbox_backlog as f64),
            ],
        ),
        (
            "Persistence lag (oldest outbox entry)",
            "seconds",
            vec![series("lag", ORANGE, |s| s.lag_s)],
        ),
        (
            "Server resident memory",
            "MiB",
            vec![series("RSS", GREEN, |s| s.rss_mib)],
        ),
    ];
    charts
        .iter()
        .map(|(title, y_label, series)| line_chart(title, y_label, series, &timeline))
        .collect()
}

// ---------------------------------------------------------------------------
// SVG line charts
// ---------------------------------------------------------------------------

const BLUE: &str = "#2563eb";
const GREEN: &str = "#16a34a";
const ORANGE: &str = "#ea580c";
const RED: &str = "#dc2626";
const PURPLE: &str = "#7c3aed";

/// One line of a chart; broken into one segment per phase so that a line
/// does not join the end of one phase to the start of the next.
struct Series<'a> {
    name: &'a str,
    color: &'a str,
    segments: Vec<Vec<(f64, f64)>>,
}

/// Where a phase starts on the continuous time axis.
struct Mark {
    x: f64,
    label: String,
}

/// A continuous x axis over all samples: `t_s` restarts with every phase, so
/// each phase is shifted by the durations of the phases before it.
struct Timeline {
    /// x of every sample, in sample order (NaN where `t_s` was not finite).
    x: Vec<f64>,
    /// Index of the phase segment of every sample.
    segment: Vec<usize>,
    marks: Vec<Mark>,
    /// End of the last phase.
    end: f64,
    /// Fault windows on the same axis: (from, to, fault).
    bands: Vec<(f64, f64, String)>,
}

impl Timeline {
    fn new(report: &RunReport) -> Self {
        let mut timeline = Timeline {
            x: Vec::with_capacity(report.samples.len()),
            segment: Vec::with_capacity(report.samples.len()),
            marks: Vec::new(),
            end: 0.0,
            bands: Vec::new(),
        };
        let mut offset = 0.0;
        let mut current: Option<&str> = None;
        let mut last_t = 0.0_f64;
        for sample in &report.samples {
            if current != Some(sample.phase.as_str()) {
                if let Some(previous) = current {
                    offset += phase_length(report, previous, last_t);
                }
                timeline.marks.push(Mark {
                    x: offset,
                    label: sample.phase.clone(),
                });
                current = Some(&sample.phase);
                last_t = 0.0;
            }
            if sample.t_s.is_finite() {
                last_t = last_t.max(sample.t_s);
                timeline.x.push(offset + sample.t_s);
            } else {
                timeline.x.push(f64::NAN);
            }
            timeline.segment.push(timeline.marks.len() - 1);
        }
        timeline.end = match current {
            Some(phase) => offset + phase_length(report, phase, last_t),
            None => 0.0,
        };
        // The faults ran during the scenario phase, which carries its name.
        if let (Some(faults), Some(mark)) = (
            &report.faults,
            timeline.marks.iter().find(|m| m.label == report.scenario),
        ) {
            timeline.bands = faults
                .windows
                .iter()
                .filter(|w| w.kind != "none")
                .map(|w| (mark.x + w.start_s, mark.x + w.end_s, w.kind.clone()))
                .collect();
        }
        timeline
    }

    /// The points of one measure, split by phase.
    fn series(&self, samples: &[Sample], value: fn(&Sample) -> f64) -> Vec<Vec<(f64, f64)>> {
        let mut segments: Vec<Vec<(f64, f64)>> = vec![Vec::new(); self.marks.len()];
        for ((sample, &x), &segment) in samples.iter().zip(&self.x).zip(&self.segment) {
            segments[segment].push((x, value(sample)));
        }
        segments
    }
}

/// How much x axis a phase takes: its reported duration, or its last sample
/// time if that is later (or the duration is missing).
fn phase_length(report: &RunReport, name: &str, last_t: f64) -> f64 {
    let reported = report
        .phases
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.duration_s)
        .filter(|d| d.is_finite() && *d > 0.0)
        .unwrap_or(0.0);
    reported.max(last_t)
}

const CHART_W: f64 = 960.0;
const CHART_H: f64 = 280.0;
const PAD_LEFT: f64 = 64.0;
const PAD_RIGHT: f64 = 20.0;
const PAD_TOP: f64 = 44.0;
const PAD_BOTTOM: f64 = 44.0;

/// A line chart of `series` over the run's time axis, with a dashed line
/// and label where each phase starts.
fn line_chart(title: &str, y_label: &str, series: &[Series], timeline: &Timeline) -> String {
    let points = || {
        series
            .iter()
            .flat_map(|s| s.segments.iter().flatten())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    };
    let x_max = points().map(|p| p.0).fold(timeline.end, f64::max);
    let x_axis = Axis::new(0.0, x_max, 8);
    let y_min = points().map(|p| p.1).fold(0.0, f64::min);
    let y_max = points().map(|p| p.1).fold(0.0, f64::max);
    let y_axis = Axis::new(y_min, y_max, 5);

    let plot_w = CHART_W - PAD_LEFT - PAD_RIGHT;
    let plot_h = CHART_H - PAD_TOP - PAD_BOTTOM;
    let px = |x: f64| PAD_LEFT + x_axis.fraction(x) * plot_w;
    let py = |y: f64| PAD_TOP + (1.0 - y_axis.fraction(y)) * plot_h;
    let bottom = PAD_TOP + plot_h;

    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {CHART_W} {CHART_H}\" xmlns=\"http://www.w3.org/2000/svg\" \
         role=\"img\" aria-label=\"{}\">\n",
        esc(title)
    );
    svg.push_str(&format!(
        "<text x=\"{PAD_LEFT}\" y=\"20\" font-size=\"15\" font-weight=\"600\" fill=\"#111827\">{}</text>\n",
        esc(title)
    ));
    svg.push_str(&legend(series));

    // Grid and tick labels.
    for y in y_axis.ticks() {
        let at = py(y);
        svg.push_str(&format!(
            "<line x1=\"{PAD_LEFT}\" y1=\"{at:.1}\" x2=\"{:.1}\" y2=\"{at:.1}\" stroke=\"#e5e7eb\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#6b7280\" text-anchor=\"end\">{}</text>\n",
            PAD_LEFT + plot_w,
            PAD_LEFT - 6.0,
            at + 4.0,
            y_axis.label(y)
        ));
    }
    for x in x_axis.ticks() {
        let at = px(x);
        svg.push_str(&format!(
            "<line x1=\"{at:.1}\" y1=\"{bottom:.1}\" x2=\"{at:.1}\" y2=\"{:.1}\" stroke=\"#9ca3af\"/>\n\
             <text x=\"{at:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#6b7280\" text-anchor=\"middle\">{}</text>\n",
            bottom + 4.0,
            bottom + 16.0,
            x_axis.label(x)
        ));
    }
    svg.push_str(&format!(
        "<rect x=\"{PAD_LEFT}\" y=\"{PAD_TOP}\" width=\"{plot_w}\" height=\"{plot_h}\" fill=\"none\" stroke=\"#9ca3af\"/>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" fill=\"#374151\" text-anchor=\"middle\">time (s)</text>\n\
         <text transform=\"translate(16 {:.1}) rotate(-90)\" font-size=\"12\" fill=\"#374151\" text-anchor=\"middle\">{}</text>\n",
        PAD_LEFT + plot_w / 2.0,
        CHART_H - 6.0,
        PAD_TOP + plot_h / 2.0,
        esc(y_label)
    ));

    // Fault windows, shaded under everything else.
    for (from, to, fault) in &timeline.bands {
        let (x0, x1) = (px(*from), px(*to));
        svg.push_str(&format!(
            "<rect x=\"{x0:.1}\" y=\"{PAD_TOP}\" width=\"{:.1}\" height=\"{plot_h}\" \
             fill=\"#fecaca\" fill-opacity=\"0.45\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#b91c1c\" text-anchor=\"middle\">{}</text>\n",
            (x1 - x0).max(1.0),
            (x0 + x1) / 2.0,
            bottom - 4.0,
            esc(fault)
        ));
    }

    // Phase boundaries; labels alternate between two rows to overlap less.
    for (i, mark) in timeline.marks.iter().enumerate() {
        let at = px(mark.x);
        if mark.x > 0.0 {
            svg.push_str(&format!(
                "<line x1=\"{at:.1}\" y1=\"{PAD_TOP}\" x2=\"{at:.1}\" y2=\"{bottom:.1}\" \
                 stroke=\"#6b7280\" stroke-dasharray=\"5 4\"/>\n"
            ));
        }
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#4b5563\">{}</text>\n",
            at + 4.0,
            PAD_TOP + 13.0 + 13.0 * (i % 2) as f64,
            esc(&mark.label)
        ));
    }

    // The lines themselves.
    for s in series {
        for segment in &s.segments {
            let coords: Vec<(f64, f64)> = segment
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .map(|&(x, y)| (px(x), py(y)))
                .collect();
            match coords.as_slice() {
                [] => {}
                [(cx, cy)] => svg.push_str(&format!(
                    "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"2.5\" fill=\"{}\"/>\n",
                    s.color
                )),
                _ => {
                    let points: Vec<String> = coords
                        .iter()
                        .map(|(x, y)| format!("{x:.1},{y:.1}"))
                        .collect();
                    svg.push_str(&format!(
                        "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.8\" \
                         stroke-linejoin=\"round\" points=\"{}\"/>\n",
                        s.color,
                        points.join(" ")
                    ));
                }
            }
        }
    }
    if points().next().is_none() {
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"14\" fill=\"#9ca3af\" text-anchor=\"middle\">no samples</text>\n",
            PAD_LEFT + plot_w / 2.0,
            PAD_TOP + plot_h / 2.0
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

/// Colour swatches and names, right-aligned above the plot.
fn legend(series: &[Series]) -> String {
    const SWATCH: f64 = 12.0;
    const CHAR_W: f64 = 7.0;
    const GAP: f64 = 16.0;
    let width = |s: &Series| SWATCH + 5.0 + s.name.chars().count() as f64 * CHAR_W + GAP;
    let mut x = CHART_W - PAD_RIGHT - series.iter().map(width).sum::<f64>() + GAP;
    let mut out = String::new();
    for s in series {
        out.push_str(&format!(
            "<rect x=\"{x:.1}\" y=\"10\" width=\"{SWATCH}\" height=\"{SWATCH}\" rx=\"2\" fill=\"{}\"/>\n\
             <text x=\"{:.1}\" y=\"20\" font-size=\"12\" fill=\"#374151\">{}</text>\n",
            s.color,
            x + SWATCH + 5.0,
            esc(s.name)
        ));
        x += width(s);
    }
    out
}

/// A linear axis from `lo` to `hi` with "nice" tick steps (1, 2, 2.5, 5 × 10ⁿ).
struct Axis {
    lo: f64,
    hi: f64,
    step: f64,
}

impl Axis {
    /// Never degenerate: an empty or flat range becomes 0..1.
    fn new(lo: f64, hi: f64, max_ticks: usize) -> Self {
        let (lo, hi) = if lo.is_finite() && hi.is_finite() && hi > lo {
            (lo, hi)
        } else {
            (0.0, lo.max(0.0) + 1.0)
        };
        let step = nice_step((hi - lo) / max_ticks.max(1) as f64);
        // Round outward to whole steps so the top grid line is labelled.
        let lo = (lo / step).floor() * step;
        let hi = (hi / step).ceil() * step;
        Self { lo, hi, step }
    }

    fn fraction(&self, v: f64) -> f64 {
        (v - self.lo) / (self.hi - self.lo)
    }

    fn ticks(&self) -> impl Iterator<Item = f64> + '_ {
        let count = ((self.hi - self.lo) / self.step + 1e-9).floor() as usize;
        (0..=count.min(100)).map(move |i| self.lo + i as f64 * self.step)
    }

    fn label(&self, v: f64) -> String {
        tick_label(v, self.step)
    }
}

fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    let nice = match raw / magnitude {
        f if f <= 1.0 => 1.0,
        f if f <= 2.0 => 2.0,
        f if f <= 2.5 => 2.5,
        f if f <= 5.0 => 5.0,
        _ => 10.0,
    };
    nice * magnitude
}

/// A tick value with as many decimals as the step needs; thousands as "k".
fn tick_label(v: f64, step: f64) -> String {
    if step >= 1000.0 {
        return format!("{}k", tick_label(v / 1000.0, step / 1000.0));
    }
    let decimals = (0..6)
        .find(|&d| {
            let scaled = step * 10f64.powi(d);
            (scaled - scaled.round()).abs() < 1e-6
        })
        .unwrap_or(6) as usize;
    // Adding 0.0 turns -0.0 into 0.0.
    format!("{:.decimals$}", v + 0.0)
}
