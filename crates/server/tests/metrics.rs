//! `/metrics`: public, parsed by the Prometheus project's own OpenMetrics parser (the Python
//! `prometheus_client` package), with counters that move when requests happen.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

const PARSER: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.setdefault(s.name, []).append({"labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;

/// Every sample, parsed by `prometheus_client`: name → [{labels, value}].
fn scrape(gw: &Gateway) -> serde_json::Value {
    let r = curl("GET", &format!("{}/metrics", gw.url()), None, None);
    assert_eq!(r.status, 200, "{}", r.body);
    let mut child = Command::new("python3")
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(r.body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the OpenMetrics parser refused /metrics: {}\n{}", stderr(&out), r.body);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn value(samples: &serde_json::Value, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples[name]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| labels.iter().all(|(k, v)| s["labels"][k] == *v))
        .map(|s| s["value"].as_f64().unwrap())
        .sum()
}

#[test]
fn metrics_parse_and_counters_move() {
    let gw = gateway();
    let before = scrape(&gw);
    assert_eq!(value(&before, "gatehouse_build_info", &[]), 1.0);

    let token = gw.cli_ok(&["identities", "add", "svc", "--groups", "g"]).unwrap();
    gw.cli_ok(&["identities", "list"]).unwrap();
    assert_eq!(curl("GET", &format!("{}/api/v1/identities", gw.url()), Some(token.trim()), None).status, 403);
    assert_eq!(curl("GET", &format!("{}/api/v1/whoami", gw.url()), Some("ghs_wrong"), None).status, 401);
    let closed = gatehouse_testkit::common::net::pick_free_port().unwrap().to_string();
    gw.cli_ok(&["connections", "add", "gone", "--type", "redis", "--host", "127.0.0.1", "--port", &closed]).unwrap();
    assert!(!gw.cli(&["connections", "test", "gone"]).unwrap().status.success());

    let after = scrape(&gw);
    let moved = |name: &str, labels: &[(&str, &str)]| value(&after, name, labels) - value(&before, name, labels);
    assert_eq!(moved("gatehouse_sessions_total", &[("protocol", "api")]), 2.0, "two management changes");
    assert!(moved("gatehouse_requests_total", &[("protocol", "api"), ("decision", "allow")]) >= 3.0);
    assert_eq!(moved("gatehouse_requests_total", &[("protocol", "api"), ("decision", "deny")]), 1.0);
    assert_eq!(moved("gatehouse_authentications_total", &[("method", "token"), ("result", "refused")]), 1.0);
    assert!(moved("gatehouse_authentications_total", &[("method", "token"), ("result", "ok")]) >= 4.0);
    assert_eq!(moved("gatehouse_upstream_errors_total", &[("connection", "gone")]), 1.0);
    assert!(moved("gatehouse_audit_events_total", &[]) >= 8.0, "{after}");
    assert!(moved("gatehouse_audit_commit_seconds_count", &[]) >= 1.0);
    assert!(after["gatehouse_audit_queue_depth"].is_array());
    assert!(after["gatehouse_reviews_total"].is_array() && after["gatehouse_masked_values_total"].is_array());
}

#[test]
fn metrics_can_be_disabled() {
    let gw = Gateway::start_with(bin(), &[("GATEHOUSE_METRICS_ENABLED", "false")]).unwrap();
    assert_eq!(curl("GET", &format!("{}/metrics", gw.url()), None, None).status, 404);
}
