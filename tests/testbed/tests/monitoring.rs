//! The alerts and the dashboard shipped in the chart (`charts/keyhole/files/`)
//! speak of metrics that exist. No bed: promtool checks and unit-tests the
//! rules, and every metric name in a rule or a dashboard query is looked up in
//! what the webhook and the rotation controller really expose, rendered here
//! in-process from their own registries.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use keyhole_rotation::metrics::{Outcome, RotationMetrics};
use keyhole_webhook::metrics::{EndpointLabels, Metrics, ReviewLabels};
use serde_json::Value;

const ALERTS: &str = "charts/keyhole/files/alerts.yaml";
const ALERT_TESTS: &str = "tests/monitoring/alerts_test.yaml";
const DASHBOARD: &str = "charts/keyhole/files/dashboard.json";

/// kube-state-metrics families the alerts and the dashboard read (the
/// injector is an init container: keyhole exports nothing for it).
const KUBE_STATE_METRICS: [&str; 3] = [
    "kube_pod_init_container_status_last_terminated_reason",
    "kube_pod_init_container_status_restarts_total",
    "kube_pod_init_container_status_waiting_reason",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repository root")
}

fn promtool() -> PathBuf {
    let path = keyhole_testbed::cache_dir().join("bin/promtool");
    assert!(path.is_file(), "{} is missing: `make bed-deps` (tests/bed/install.sh) installs it", path.display());
    path
}

fn run_promtool(args: &[&str]) {
    let out = Command::new(promtool()).args(args).current_dir(repo()).output().expect("promtool runs");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {}:\n{said}", args.join(" "));
}

#[test]
fn promtool_checks_the_rules() {
    run_promtool(&["check", "rules", ALERTS]);
}

#[test]
fn promtool_unit_tests_fire_and_hold_every_alert() {
    run_promtool(&["test", "rules", ALERT_TESTS]);
    // Every alert has a test that expects it to fire, and one that expects it not to.
    let tests: serde_yaml::Value = serde_yaml::from_str(&read(ALERT_TESTS)).unwrap();
    let mut fired: BTreeSet<String> = BTreeSet::new();
    let mut held: BTreeSet<String> = BTreeSet::new();
    for t in tests["tests"].as_sequence().expect("tests") {
        for case in t["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = case["alertname"].as_str().expect("alertname").to_owned();
            let expected = case["exp_alerts"].as_sequence().map_or(0, Vec::len);
            if expected > 0 {
                fired.insert(name)
            } else {
                held.insert(name)
            };
        }
    }
    for alert in alerts().keys() {
        assert!(fired.contains(alert), "{ALERT_TESTS}: no test makes {alert} fire");
        assert!(held.contains(alert), "{ALERT_TESTS}: no control where {alert} does not fire");
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Alert name -> its expression.
fn alerts() -> BTreeMap<String, String> {
    let rules: serde_yaml::Value = serde_yaml::from_str(&read(ALERTS)).unwrap();
    let mut out = BTreeMap::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().or(rule["record"].as_str()).expect("a name").to_owned();
            for key in ["summary", "description", "runbook_url"] {
                assert!(rule["annotations"][key].is_string(), "{name} has no {key} annotation");
            }
            let anchor = format!("docs/troubleshooting.md#{}", name.to_lowercase());
            assert!(
                rule["annotations"]["runbook_url"].as_str().unwrap().ends_with(&anchor),
                "{name}: runbook_url does not point at {anchor}"
            );
            out.insert(name, rule["expr"].as_str().expect("expr").to_owned());
        }
    }
    out
}

/// (where, query) of every query in the dashboard: panel targets, and the
/// template variables' `label_values(<selector>, <label>)`.
fn dashboard_queries() -> Vec<(String, String)> {
    let dash: Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 39);
    let vars = dash["templating"]["list"].as_array().expect("templating");
    assert!(
        vars.iter().any(|v| v["type"] == "datasource" && v["query"] == "prometheus" && v["name"] == "datasource"),
        "no datasource variable"
    );
    let mut out = Vec::new();
    fn walk(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                let here = m.get("title").and_then(Value::as_str).map_or(at.to_owned(), |t| format!("panel {t:?}"));
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", Value::String(e)) => out.push((here.clone(), e.clone())),
                        _ => walk(v, &here, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, at, out)),
            _ => {}
        }
    }
    walk(&dash["panels"], "dashboard", &mut out);
    for v in vars.iter().filter(|v| v["type"] == "query") {
        let def = v["definition"].as_str().expect("a query variable's definition");
        let args = def.strip_prefix("label_values(").and_then(|d| d.strip_suffix(')')).expect("label_values(...)");
        let selector = args.rsplit_once(',').map_or(args, |(s, _)| s);
        out.push((format!("variable {}", v["name"]), selector.to_owned()));
    }
    out
}

/// The metric names in a PromQL expression: identifiers outside label
/// matchers, strings, ranges and grouping lists, that are neither keywords
/// nor followed by `(` (functions) or by `by`/`without` (aggregations).
fn metric_names(expr: &str) -> Vec<String> {
    const KEYWORDS: [&str; 10] =
        ["by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"];
    const LABEL_LISTS: [&str; 6] = ["by", "without", "on", "ignoring", "group_left", "group_right"];
    let s: Vec<char> = expr.chars().collect();
    let skip_ws = |mut i: usize| {
        while i < s.len() && s[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let ident_at = |mut i: usize| {
        let start = i;
        while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '_' || s[i] == ':') {
            i += 1;
        }
        (s[start..i].iter().collect::<String>(), i)
    };
    // Skips a balanced group from its opening `open`, minding strings.
    let skip_group = |mut i: usize, open: char, close: char| {
        let mut depth = 0;
        while i < s.len() {
            match s[i] {
                '"' | '\'' | '`' => {
                    let q = s[i];
                    i += 1;
                    while i < s.len() && s[i] != q {
                        i += if s[i] == '\\' { 2 } else { 1 };
                    }
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        i
    };
    let mut names = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c == '{' {
            i = skip_group(i, '{', '}');
        } else if c == '[' {
            i = skip_group(i, '[', ']');
        } else if c == '"' || c == '\'' || c == '`' {
            i = skip_group(i, c, c);
        } else if c == '$' || c.is_ascii_digit() || c == '.' {
            // A Grafana variable, or a number (1e3, 0.5, 14).
            i += 1;
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '_' || s[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let (word, end) = ident_at(i);
            let next = skip_ws(end);
            i = end;
            if LABEL_LISTS.contains(&word.as_str()) {
                if next < s.len() && s[next] == '(' {
                    i = skip_group(next, '(', ')');
                }
            } else if word == "offset" {
                i = ident_at(skip_ws(end)).1.max(end);
            } else if KEYWORDS.contains(&word.as_str()) || (next < s.len() && s[next] == '(') {
                // A keyword or a function.
            } else if matches!(ident_at(next).0.as_str(), "by" | "without") {
                // An aggregation with its grouping first: `sum by (x) (...)`.
            } else {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Every sample name the webhook and the rotation controller expose, with one
/// sample recorded in each labelled family so that each appears.
fn exposed() -> BTreeSet<String> {
    let webhook = Metrics::default();
    webhook.reviews.get_or_create(&ReviewLabels { endpoint: "mutate", kind: "Pod", outcome: "error" }).inc();
    webhook.latency.get_or_create(&EndpointLabels { endpoint: "mutate" }).observe(0.001);
    let rotation = RotationMetrics::default();
    rotation.request("aws", "DescribeParameters", Outcome::Ok);
    rotation.outcome("rolled");
    let mut names = BTreeSet::new();
    for text in [webhook.encode(), rotation.encode()] {
        assert_eq!(text.matches("# EOF").count(), 1, "one # EOF:\n{text}");
        let mut families = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                families.insert(rest.split(' ').next().unwrap().to_owned());
            } else if !line.starts_with('#') {
                names.insert(line.split(['{', ' ']).next().unwrap().to_owned());
            }
        }
        for family in families {
            assert!(
                names.iter().any(|n| n.starts_with(&family)),
                "family {family} has no sample: record one in exposed() so its names are checked"
            );
        }
    }
    names
}

#[test]
fn metric_names_are_found_in_promql() {
    let expr = r#"sum by (le, store) (rate(a_bucket{x="y}", z=~"a|b"}[5m] offset 1h)) / on (ns) group_left (v) max without (p) (b:rate5m) > 0.5 * 86400
        or absent(c) and histogram_quantile(0.99, d{l="$v"}[$__rate_interval]) unless count(e) by (f) > bool 1e3"#;
    assert_eq!(metric_names(expr), ["a_bucket", "b:rate5m", "c", "d", "e"]);
    assert_eq!(metric_names("keyhole_build_info{namespace=~\"$namespace\"}"), ["keyhole_build_info"]);
}

#[test]
fn every_metric_in_the_alerts_and_the_dashboard_is_exposed() {
    let exposed = exposed();
    for name in [
        "keyhole_build_info",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "keyhole_webhook_admission_duration_seconds_bucket",
        "keyhole_rotation_backend_requests_total",
    ] {
        assert!(exposed.contains(name), "{name} is not exposed: {exposed:#?}");
    }
    let mut queries: Vec<(String, String)> = alerts().into_iter().map(|(n, e)| (format!("alert {n}"), e)).collect();
    queries.extend(dashboard_queries());
    assert!(queries.len() > 20, "{} queries: the dashboard lost its panels?", queries.len());
    let mut unknown = Vec::new();
    for (at, expr) in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{at}: no metric in {expr:?}");
        for name in names {
            let known = if name.starts_with("kube_") {
                KUBE_STATE_METRICS.contains(&name.as_str())
            } else {
                exposed.contains(&name)
            };
            if !known {
                unknown.push(format!("{at}: {name}"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics no keyhole server (nor the kube-state-metrics list) exposes:\n{}",
        unknown.join("\n")
    );
}
