//! What operators are given beside the API: the metrics page's hygiene, and
//! the Grafana dashboard and Prometheus alert rules, whose every metric name
//! must be one the server exports (a renamed metric would otherwise leave a
//! panel empty and an alert silent without anyone noticing).

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::helpers::spawn_app_with;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The metric families of a Prometheus text page: name → type, from the
/// `# TYPE` lines, and the names that have a `# HELP` line.
fn families(page: &str) -> (HashMap<String, String>, BTreeSet<String>) {
    let mut types = HashMap::new();
    let mut helped = BTreeSet::new();
    for line in page.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("#"), Some("TYPE"), Some(name)) => {
                types.insert(name.to_owned(), words.next().unwrap_or("").to_owned());
            }
            (Some("#"), Some("HELP"), Some(name)) => {
                helped.insert(name.to_owned());
            }
            _ => {}
        }
    }
    (types, helped)
}

/// Every metric name a file mentions (ours carry the `registrar_` prefix;
/// `process_` are the standard process metrics).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    for prefix in ["registrar_", "process_"] {
        let mut from = 0;
        while let Some(at) = text[from..].find(prefix) {
            let start = from + at;
            let mut end = start;
            while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
                end += 1;
            }
            // `registrar_` inside a longer word is not a metric name.
            let standalone = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric());
            if standalone {
                names.insert(text[start..end].to_owned());
            }
            from = end.max(start + 1);
        }
    }
    names
}

/// The family a sample name belongs to (a histogram's `_bucket`, `_sum`,
/// `_count` series).
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        (types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
    })
}

/// The metrics page of a server that has done what the dashboard plots: a
/// registration (scripts, persistence lag) and a reconcile (drift).
async fn metrics_page() -> String {
    let app = spawn_app_with(|s| s.sync.reconcile_interval_secs = 1).await;
    let seeded = app.seed_sections(1, 2, 5, 0).await;
    let (token, _) = app.student(1).await;
    let answer = app.register(&token, &seeded.report.section_ids[..1]).await;
    assert_eq!(answer.status(), 200);
    let measured = |page: &str| {
        page.contains("registrar_persistence_lag_seconds_bucket")
            && page.contains("registrar_reconcile_drift_sections ")
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let page = app.get("/metrics", None).await.text().await.unwrap();
        if measured(&page) {
            return page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no persistence lag or drift measured in 10 s:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_metrics_page_names_its_build_and_process_and_hides_no_counter_at_zero() {
    let page = metrics_page().await;
    let (types, helped) = families(&page);

    // An application prefix on everything but the standard process metrics.
    for name in types.keys() {
        assert!(
            name.starts_with("registrar_") || name.starts_with("process_"),
            "unprefixed metric {name}"
        );
    }
    // Histograms, never summaries (a summary cannot be summed over instances).
    let summaries: Vec<_> = types.iter().filter(|(_, t)| *t == "summary").collect();
    assert!(summaries.is_empty(), "summaries: {summaries:?}");
    // Every family of ours is described.
    for name in types.keys().filter(|n| n.starts_with("registrar_")) {
        assert!(helped.contains(name), "{name} has no HELP");
    }
    // The build, with its commit.
    let build = page
        .lines()
        .find(|l| l.starts_with("registrar_build_info{"))
        .unwrap_or_else(|| panic!("no registrar_build_info in\n{page}"));
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "{build}"
    );
    assert!(build.contains("git_sha=\""), "{build}");
    assert!(build.ends_with(" 1"), "{build}");
    // The process.
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(
            page.lines().any(|l| l.starts_with(name)),
            "{name} missing from\n{page}"
        );
    }
    // Counters exist before anything happened to them.
    for series in [
        "registrar_dead_letters_total ",
        r#"registrar_compensations_total{result="reverted"} "#,
        r#"registrar_registrations_total{outcome="enrolled"} "#,
        r#"registrar_persistence_events_applied_total{kind="enroll"} "#,
        "registrar_persistence_queue_full_total ",
    ] {
        assert!(
            page.lines().any(|l| l.starts_with(series)),
            "{series} missing from\n{page}"
        );
    }
    // Pool connections split so that summing over `state` gives the open ones.
    let states: BTreeSet<_> = page
        .lines()
        .filter(|l| l.starts_with("registrar_db_pool_connections{"))
        .filter_map(|l| l.split("state=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(states, BTreeSet::from(["idle", "in_use"]), "{page}");
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_alert_rules_use_is_exported() {
    let page = metrics_page().await;
    let (types, _) = families(&page);

    for file in [
        "config/grafana/dashboards/registrar.json",
        "config/prometheus/alerts.yml",
    ] {
        let text = std::fs::read_to_string(repo(file)).unwrap();
        let used = metric_names(&text);
        assert!(used.len() >= 8, "{file} names only {used:?}");
        let unknown: Vec<_> = used
            .iter()
            .filter(|n| family_of(n, &types).is_none())
            .collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics the server does not export: {unknown:?}"
        );
    }
    // The dashboard is JSON Grafana can load: panels with queries.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("config/grafana/dashboards/registrar.json")).unwrap(),
    )
    .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for panel in panels {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{panel}");
        assert!(targets
            .iter()
            .all(|t| t["expr"].as_str().is_some_and(|e| !e.is_empty())));
    }
}

fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(repo("config/prometheus"))
        .output()
        .expect(
            "promtool runs (Debian package prometheus; `bash scripts/services.sh --with-binaries` installs it)",
        );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?} failed:\n{said}");
    said
}

#[test]
fn the_alert_rules_are_valid_and_fire_on_their_fixtures() {
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    assert!(checked.contains("SUCCESS: 8 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    for config in ["prometheus.yml", "prometheus-cluster.yml"] {
        promtool(&["check", "config", config]);
    }
}
