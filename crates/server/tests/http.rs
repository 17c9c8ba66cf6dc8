//! The HTTP adapter end to end: a real HTTP API on loopback (Python's HTTP server, in
//! `clients/http_upstream.py`) behind the gateway, driven with `curl` and Python `httpx`. The
//! upstream sees the stored key and never the caller's token; caller headers that claim
//! identity or override the method are stripped; method and path policy holds against traversal
//! attempts; a POST that needs approval is held and runs once approved; JSON (nested objects and
//! arrays, gzip-encoded too) and text responses are masked; a large download streams in bounded
//! gateway memory; an unreachable upstream is a 502; and every request is in `sessions show`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

const UPSTREAM_KEY: &str = "upstream-Secret-Key-9917";

const POLICIES: &str = r#"
@id("apps-connect")
permit (principal in Group::"apps", action == Action::"connect", resource)
when { resource == Connection::"api" || resource == Connection::"files" || resource == Connection::"down" };

@id("apps-read-v1")
permit (principal in Group::"apps", action == Action::"http.get", resource in Path::"api/v1");

@id("apps-echo")
permit (principal in Group::"apps", action in [Action::"http.post", Action::"http.put"], resource in Path::"api/v1/echo");

@id("apps-refunds")
permit (principal in Group::"apps", action == Action::"http.post", resource in Path::"api/v1/invoices")
when { context has path && context.path like "/v1/invoices/*/refund" };

@id("refunds-need-a-lead")
@approval("leads")
forbid (principal, action == Action::"http.post", resource in Path::"api/v1/invoices");

@id("apps-files")
permit (principal in Group::"apps", action == Action::"http.get", resource in Connection::"files");

@id("apps-down")
permit (principal in Group::"apps", action == Action::"http.get", resource in Connection::"down");
"#;

/// `gatehouse connections add ARGS…` as admin, with `API_KEY` holding the upstream's key.
fn add_connection(gw: &Gateway, args: &[&str]) {
    let out = gw
        .client()
        .env("GATEHOUSE_TOKEN", gw.admin_token())
        .env("API_KEY", UPSTREAM_KEY)
        .args(["connections", "add"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

struct Upstream {
    child: Child,
    port: u16,
}

impl Upstream {
    fn start() -> Upstream {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/http_upstream.py");
        let mut child =
            Command::new("python3").arg(script).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().strip_prefix("ready ").unwrap().parse().unwrap();
        Upstream { child, port }
    }

    fn calls(&self) -> Vec<String> {
        let r = curl("GET", &format!("http://127.0.0.1:{}/_calls", self.port), None, None);
        serde_json::from_str(&r.body).unwrap()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Setup {
    gw: Gateway,
    upstream: Upstream,
    http: u16,
    app: String,
    lead: String,
}

impl Setup {
    fn start() -> Setup {
        Setup::start_with_hold("20")
    }

    /// With requests that need review held for `seconds`.
    fn start_with_hold(seconds: &str) -> Setup {
        Setup::start_with(seconds, &[])
    }

    /// With requests that need review held for `seconds`, and more server settings.
    fn start_with(seconds: &str, env: &[(&str, &str)]) -> Setup {
        let upstream = Upstream::start();
        let http = gatehouse_testkit::common::net::pick_free_port().unwrap();
        let listen = format!("127.0.0.1:{http}");
        let mut all = vec![
            ("GATEHOUSE_LISTEN_HTTP", listen.as_str()),
            ("GATEHOUSE_REVIEWS_HOLD_SECONDS", seconds),
            ("GATEHOUSE_HTTP_SAMPLE_BODIES", "256"),
        ];
        all.extend_from_slice(env);
        let gw = Gateway::start_with(bin(), &all).unwrap();
        let base = format!("http://127.0.0.1:{}", upstream.port);
        let add = |args: &[&str]| add_connection(&gw, args);
        add(&[
            "api",
            "--type",
            "http",
            "--url",
            &base,
            "--bearer-env",
            "API_KEY",
            "--mask",
            "email,credit_card",
            "--mask-column",
            "$.customers[*].address",
        ]);
        add(&["files", "--type", "http", "--url", &base]);
        let closed = gatehouse_testkit::common::net::pick_free_port().unwrap();
        add(&["down", "--type", "http", "--url", &format!("http://127.0.0.1:{closed}")]);
        let app = gw.cli_ok(&["identities", "add", "app", "--groups", "apps"]).unwrap().trim().to_string();
        let lead = gw.cli_ok(&["identities", "add", "lead", "--groups", "leads"]).unwrap().trim().to_string();
        let file = gw.data_dir().join("http.cedar");
        std::fs::write(&file, POLICIES).unwrap();
        gw.cli_ok(&["policies", "set", file.to_str().unwrap()]).unwrap();
        Setup { gw, upstream, http, app, lead }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }

    /// `curl -sS --path-as-is` through the gateway with extra arguments; status and body.
    fn curl(&self, path: &str, token: Option<&str>, extra: &[&str]) -> Http {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--path-as-is", "-w", "\n%{http_code}"]);
        if let Some(t) = token {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        cmd.args(extra).arg(self.url(path));
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "curl: {}", stderr(&out));
        let text = stdout(&out);
        let (body, status) = text.rsplit_once('\n').unwrap();
        Http { status: status.trim().parse().unwrap(), body: body.to_string() }
    }

    fn get(&self, path: &str) -> Http {
        self.curl(path, Some(&self.app), &[])
    }
}

#[test]
fn the_upstream_gets_the_stored_key_and_never_the_callers_token_or_claims() {
    let s = Setup::start();
    let r = s.curl(
        "/api/v1/echo/x?a=1&b=two",
        Some(&s.app),
        &[
            "-X",
            "POST",
            "-H",
            "X-HTTP-Method-Override: DELETE",
            "-H",
            "X-Forwarded-For: 10.6.6.6",
            "-H",
            "X-Gatehouse-Identity: Service::\"admin\"",
            "-H",
            "Content-Type: application/json",
            "--data",
            r#"{"note": "hello"}"#,
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = r.json();
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["path"], "/v1/echo/x");
    assert_eq!(seen["query"], "a=1&b=two");
    assert_eq!(seen["body"], r#"{"note": "hello"}"#);
    let headers = &seen["headers"];
    assert_eq!(headers["authorization"], format!("Bearer {UPSTREAM_KEY}"));
    assert!(headers.get("x-http-method-override").is_none(), "{headers}");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-gatehouse-identity"], "Service::\"app\"");
    assert!(!r.body.contains(&s.app), "the caller's token never reaches the upstream");

    // Without a token, with a wrong one, or to an unknown connection: JSON errors.
    let r = s.curl("/api/v1/echo/x", None, &[]);
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (401, Some("unauthenticated")));
    let r = s.curl("/api/v1/echo/x", Some("ghs_wrong"), &[]);
    assert_eq!(r.status, 401, "{}", r.body);
    let r = s.get("/nope/v1/x");
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (404, Some("not_found")));
    // The upstream being down is a 502 with the gateway's JSON.
    let r = s.get("/down/v1/x");
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (502, Some("upstream_unavailable")), "{}", r.body);
}

#[test]
fn method_and_path_policy_holds_against_traversal() {
    let s = Setup::start();
    assert_eq!(s.get("/api/v1/echo/public").status, 200);
    // Outside /v1: refused, however the path is spelled.
    for path in [
        "/api/admin/users",
        "/api/v1/echo/../../admin/users",
        "/api/v1/%2e%2e/admin/users",
        "/api/v1/%2E%2E/admin/users",
        "/api//v1/./../admin/users",
    ] {
        let r = s.get(path);
        assert_eq!(r.status, 403, "{path}: {}", r.body);
        let e = r.json();
        assert_eq!(e["error"]["code"], "forbidden", "{path}");
    }
    // Ambiguous encodings and escapes from the connection are refused before any decision.
    for path in ["/api/v1%2Fadmin/users", "/api/v1/echo%5C..%5Cadmin", "/api/..", "/api/v1/../../files/v1/echo/x"] {
        let r = s.get(path);
        assert_eq!(r.status, 400, "{path}: {}", r.body);
    }
    // A method policy does not grant: DELETE is not permitted anywhere.
    let r = s.curl("/api/v1/echo/x", Some(&s.app), &["-X", "DELETE"]);
    assert_eq!(r.status, 403, "{}", r.body);
    // A method the gateway does not forward.
    let r = s.curl("/api/v1/echo/x", Some(&s.app), &["-X", "TRACE"]);
    assert_eq!(r.status, 405, "{}", r.body);
    // None of the refused requests reached the upstream.
    let calls = s.upstream.calls();
    assert!(
        !calls.iter().any(|c| c.contains("admin") || c.starts_with("DELETE") || c.starts_with("TRACE")),
        "{calls:?}"
    );
}

#[test]
fn responses_are_masked_json_gzip_and_text() {
    let s = Setup::start();
    let r = s.get("/api/v1/customers");
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    let ann = &body["customers"][0];
    assert_eq!(ann["name"], "Ann");
    assert_eq!(ann["email"], "a***@example.com", "{body}");
    assert_eq!(ann["card"], "**** **** **** 4242");
    assert_eq!(ann["address"], gatehouse_mask::WHOLE_MASK, "the JSON-path rule masks the whole object");
    assert_eq!(ann["tags"][1], "contact: b***@example.org", "strings inside arrays too");
    assert_eq!(body["customers"][1]["address"], gatehouse_mask::WHOLE_MASK);
    assert_eq!(body["customers"][1]["card"], Value::Null);
    assert_eq!(body["total"], 2);
    assert!(!r.body.contains("ann@example.com") && !r.body.contains("Oslo"));

    // A gzip-encoded answer is decoded to be masked and sent plain, with its headers fixed.
    let out = Command::new("curl")
        .args(["-sS", "-D", "-", "-H", "Accept-Encoding: gzip", "-H"])
        .arg(format!("Authorization: Bearer {}", s.app))
        .arg(s.url("/api/v1/gzip"))
        .output()
        .unwrap();
    let text = stdout(&out);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(!head.contains("content-encoding"), "{head}");
    assert!(!head.contains("content-length: ") || head.contains("transfer-encoding"), "{head}");
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["customers"][0]["email"], "a***@example.com");

    // deflate and brotli too.
    for encoded in ["/api/v1/deflate", "/api/v1/brotli"] {
        let r = s.get(encoded);
        assert_eq!(r.json()["customers"][0]["email"], "a***@example.com", "{encoded}: {}", r.body);
    }

    // Other text by the detectors.
    let r = s.get("/api/v1/text");
    assert_eq!(r.body, "Contact c***@example.com for access.\n");

    // The connection without masking settings passes values through.
    let r = s.get("/files/v1/customers");
    assert!(r.body.contains("ann@example.com"));
    // And its answer, whose length the caller knew, is recorded as delivered, every byte.
    let events = sessions_events(&s.gw, "app");
    let request = events.iter().rev().find(|e| e["kind"] == "request" && e["data"]["request"] == "GET /v1/customers");
    let request = request.unwrap_or_else(|| panic!("GET /v1/customers not recorded: {events:#?}"));
    let result = events
        .iter()
        .find(|e| e["kind"] == "request.result" && e["data"]["request_seq"] == request["seq"])
        .unwrap_or_else(|| panic!("no result for {request}"));
    assert_eq!(result["data"]["error"], Value::Null, "{result}");
    assert_eq!(result["data"]["bytes_out"].as_u64(), Some(r.body.len() as u64), "{result}");

    // Recorded: method, path, status, bytes and what was masked where.
    let events = sessions_events(&s.gw, "app");
    let request = events
        .iter()
        .find(|e| e["kind"] == "request" && e["data"]["request"] == "GET /v1/customers")
        .unwrap_or_else(|| panic!("GET /v1/customers not recorded: {events:#?}"));
    assert_eq!(request["data"]["decision"], "allow");
    let result = events
        .iter()
        .find(|e| e["kind"] == "request.result" && e["data"]["request_seq"] == request["seq"])
        .unwrap_or_else(|| panic!("no result for {request}"));
    assert_eq!(result["data"]["command"], "200");
    assert_eq!(result["data"]["error"], Value::Null, "the masked answer was delivered whole: {result}");
    assert!(result["data"]["bytes_out"].as_u64().unwrap() > 100);
    assert_eq!(result["data"]["masked"]["$.customers[*].email"]["email"], 2, "{result}");
    assert_eq!(result["data"]["masked"]["$.customers[*].address"]["rule"], 2, "{result}");
    // Bodies are sampled (first 256 bytes), masked.
    let sample = result["data"]["response_sample"].as_str().unwrap();
    assert!(sample.starts_with(r#"{"customers": [{"name": "Ann", "email": "a***@example.com""#), "{sample}");
    assert!(sample.len() <= 256 + 16, "{sample}");

    // A request body is sampled too, masked by the detectors whatever the caller may see.
    let r = s.curl("/api/v1/echo/s", Some(&s.app), &["-X", "PUT", "--data", r#"{"from": "eve@example.com"}"#]);
    assert_eq!(r.status, 200, "{}", r.body);
    let events = sessions_events(&s.gw, "app");
    let put = events.iter().find(|e| e["kind"] == "request" && e["data"]["request"] == "PUT /v1/echo/s").unwrap();
    let result =
        events.iter().find(|e| e["kind"] == "request.result" && e["data"]["request_seq"] == put["seq"]).unwrap();
    assert_eq!(result["data"]["request_sample"], r#"{"from": "e***@example.com"}"#, "{result}");
    assert!(!serde_json::to_string(&events).unwrap().contains("eve@example.com"));
}

/// The gateway's resident set size high-water mark, in KiB.
fn peak_rss_kib(gw: &Gateway) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", gw.pid().unwrap())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_large_download_streams_in_bounded_memory() {
    let s = Setup::start();
    // Warm up (first connection, first TLS-less client), then measure the peak around 1 GiB.
    assert_eq!(s.get("/files/v1/download?size=1024").status, 200);
    let before = peak_rss_kib(&s.gw);
    let size: u64 = 1024 * 1024 * 1024;
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", "-H"])
        .arg(format!("Authorization: Bearer {}", s.app))
        .arg(s.url(&format!("/files/v1/download?size={size}")))
        .output()
        .unwrap();
    assert_eq!(stdout(&out), format!("200 {size}"), "{}", stderr(&out));
    let events = sessions_events(&s.gw, "app");
    let result = events.iter().rev().find(|e| e["kind"] == "request.result").unwrap();
    assert_eq!(
        (&result["data"]["error"], result["data"]["bytes_out"].as_u64()),
        (&Value::Null, Some(size)),
        "{result}"
    );
    let grown = peak_rss_kib(&s.gw).saturating_sub(before);
    eprintln!("the gateway's peak memory grew by {grown} KiB for a 1 GiB download");
    assert!(grown < 64 * 1024, "the gateway's peak memory grew by {grown} KiB for a 1 GiB download");
}

#[test]
fn a_held_post_runs_once_approved_and_an_undecided_one_is_review_pending() {
    let s = Setup::start();
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/http_post.py");
    // httpx posts a refund; it is held until a lead approves it, then runs in the same call.
    let post = Command::new("python3")
        .arg(&client)
        .arg(s.url("/api/v1/invoices/42/refund"))
        .arg(&s.app)
        .arg(r#"{"amount": 5}"#)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let review = wait_pending(&s);
    assert_eq!(review["request"], "POST /v1/invoices/42/refund");
    assert!(s.upstream.calls().iter().all(|c| !c.contains("refund")), "nothing ran before approval");
    // The requester may not approve; a lead may.
    let own = s.gw.cli_as(&s.app, &["reviews", "approve", review["id"].as_str().unwrap()]).unwrap();
    assert!(!own.status.success());
    let ok = s.gw.cli_as(&s.lead, &["reviews", "approve", review["id"].as_str().unwrap(), "--comment", "ok"]).unwrap();
    assert!(ok.status.success(), "{}", stderr(&ok));
    let out = post.wait_with_output().unwrap();
    let answer: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["json"]["refunded"], "42");
    assert_eq!(answer["json"]["request"], r#"{"amount": 5}"#);
    let refunds = s.upstream.calls().iter().filter(|c| c.contains("/v1/invoices/42/refund")).count();
    assert_eq!(refunds, 1, "ran exactly once");

    // POST elsewhere under /v1/invoices is not permitted even with approval.
    let r = s.curl("/api/v1/invoices/42/void", Some(&s.app), &["-X", "POST", "--data", "{}"]);
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "forbidden");
}

#[test]
fn an_undecided_hold_ends_with_review_pending_naming_the_review() {
    let s = Setup::start_with_hold("1");
    let r = s.curl("/api/v1/invoices/7/refund", Some(&s.app), &["-X", "POST", "--data", r#"{"amount": 1}"#]);
    assert_eq!(r.status, 403, "{}", r.body);
    let e = r.json();
    assert_eq!(e["error"]["code"], "review_pending", "{e}");
    let id = e["error"]["review_id"].as_str().unwrap().to_string();
    assert!(e["error"]["message"].as_str().unwrap().contains(&id), "{e}");
    // Approved later, the same request (same body) runs once; another body is a new review.
    let ok = s.gw.cli_as(&s.lead, &["reviews", "approve", &id]).unwrap();
    assert!(ok.status.success(), "{}", stderr(&ok));
    let r = s.curl("/api/v1/invoices/7/refund", Some(&s.app), &["-X", "POST", "--data", r#"{"amount": 999}"#]);
    assert_eq!(r.json()["error"]["code"], "review_pending", "another body is not covered");
    let r = s.curl("/api/v1/invoices/7/refund", Some(&s.app), &["-X", "POST", "--data", r#"{"amount": 1}"#]);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = s.curl("/api/v1/invoices/7/refund", Some(&s.app), &["-X", "POST", "--data", r#"{"amount": 1}"#]);
    assert_eq!(r.status, 403, "the grant was used once: {}", r.body);
    let refunds = s.upstream.calls().iter().filter(|c| c.contains("/v1/invoices/7/refund")).count();
    assert_eq!(refunds, 1);
    let verify = s.gw.cli_ok(&["audit", "verify"]).unwrap();
    assert!(verify.starts_with("ok"), "{verify}");
}

fn wait_pending(s: &Setup) -> Value {
    for _ in 0..100 {
        let list: Value =
            serde_json::from_str(&s.gw.cli_ok(&["reviews", "list", "--status", "pending", "--json"]).unwrap()).unwrap();
        if let Some(first) = list.as_array().unwrap().first() {
            return first.clone();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no pending review");
}

/// Every event of every session of `identity`, oldest session first.
fn sessions_events(gw: &Gateway, identity: &str) -> Vec<Value> {
    let list: Value =
        serde_json::from_str(&gw.cli_ok(&["sessions", "list", "--identity", identity, "--json"]).unwrap()).unwrap();
    let mut all = Vec::new();
    for s in list.as_array().unwrap().iter().rev() {
        let detail: Value =
            serde_json::from_str(&gw.cli_ok(&["sessions", "show", s["id"].as_str().unwrap(), "--json"]).unwrap())
                .unwrap();
        all.extend(detail["events"].as_array().unwrap().iter().cloned());
    }
    all
}

#[test]
fn http_connections_through_the_exec_api_the_cli_and_mcp() {
    let s = Setup::start();
    let exec = format!("{}/api/v1/connections/api/exec", s.gw.url());
    // The exec API: the same decision, credential, masking and recording as the listener.
    let r = curl("POST", &exec, Some(&s.app), Some(r#"{"method": "GET", "path": "/v1/customers"}"#));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["status"], 200);
    assert_eq!(v["body"]["customers"][0]["email"], "a***@example.com", "{v}");
    assert_eq!(v["body"]["customers"][0]["address"], gatehouse_mask::WHOLE_MASK);
    assert!(v["session_id"].as_str().unwrap().len() > 8);
    let r = curl(
        "POST",
        &exec,
        Some(&s.app),
        Some(
            r#"{"method": "POST", "path": "/v1/echo/e", "query": {"q": "1"}, "headers": {"X-Trace": "t1"}, "body": {"a": 1}}"#,
        ),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let echoed = &r.json()["body"];
    assert_eq!(echoed["query"], "q=1");
    assert_eq!(echoed["headers"]["x-trace"], "t1");
    assert_eq!(echoed["headers"]["content-type"], "application/json");
    assert_eq!(echoed["headers"]["authorization"], format!("Bearer {UPSTREAM_KEY}"));
    let r = curl("POST", &exec, Some(&s.app), Some(r#"{"path": "/admin/x"}"#));
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (403, Some("forbidden")), "{}", r.body);
    let r = curl("POST", &exec, Some(&s.app), Some(r#"{"sql": "SELECT 1"}"#));
    assert_eq!(r.status, 422, "{}", r.body);
    let r = curl("POST", &exec, Some(&s.app), Some(r#"{"path": "/../files/x"}"#));
    assert_eq!(r.status, 422, "a path that leaves the connection: {}", r.body);

    // The CLI takes a request line.
    let out = s.gw.cli_as(&s.app, &["exec", "api", "GET /v1/text"]).unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "Contact c***@example.com for access.\n");
    assert!(stderr(&out).contains("HTTP 200"));

    // MCP: the connection is a tool, `http_api`, for identities that may connect to it.
    let agent = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/mcp_agent.py");
    let mcp = format!("{}/mcp", s.gw.url());
    let out = Command::new("python3").arg(&agent).args([&mcp, &s.app, "list"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let tools: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let names: Vec<&str> = tools.as_array().unwrap().iter().filter_map(|t| t["name"].as_str()).collect();
    assert!(names.contains(&"http_api") && names.contains(&"http_files"), "{names:?}");
    let out = Command::new("python3")
        .arg(&agent)
        .args([&mcp, &s.app, "call", "http_api", r#"{"path": "/v1/customers"}"#])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let called: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(called["is_error"], false, "{called}");
    assert_eq!(called["structured"]["body"]["customers"][1]["email"], "b***@example.net", "{called}");
    let out = Command::new("python3")
        .arg(&agent)
        .args([&mcp, &s.app, "call", "http_api", r#"{"path": "/admin/users"}"#])
        .output()
        .unwrap();
    let refused: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(refused["is_error"], true, "{refused}");
    // A held request: progress names the review while it waits, and it runs once approved.
    let held = Command::new("python3")
        .arg(&agent)
        .args([
            &mcp,
            &s.app,
            "call",
            "http_api",
            r#"{"method": "POST", "path": "/v1/invoices/9/refund", "body": {"amount": 2}}"#,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let review = wait_pending(&s);
    std::thread::sleep(Duration::from_millis(1500));
    let ok = s.gw.cli_as(&s.lead, &["reviews", "approve", review["id"].as_str().unwrap()]).unwrap();
    assert!(ok.status.success(), "{}", stderr(&ok));
    let out = held.wait_with_output().unwrap();
    let called: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(called["structured"]["body"]["refunded"], "9", "{called}");
    let id = review["id"].as_str().unwrap();
    assert!(called["progress"].as_array().unwrap().iter().any(|p| p.as_str().unwrap_or("").contains(id)), "{called}");
    // The lead may not connect to the API: no tool.
    let out = Command::new("python3").arg(&agent).args([&mcp, &s.lead, "list"]).output().unwrap();
    assert!(!stdout(&out).contains("http_api"), "{}", stdout(&out));

    // Recorded, with how the request came.
    let list: Value =
        serde_json::from_str(&s.gw.cli_ok(&["sessions", "list", "--identity", "app", "--json"]).unwrap()).unwrap();
    let protocols: Vec<&str> = list.as_array().unwrap().iter().filter_map(|x| x["protocol"].as_str()).collect();
    assert!(protocols.contains(&"http") && protocols.contains(&"mcp"), "{protocols:?}");
    let events = sessions_events(&s.gw, "app");
    assert!(events.iter().any(|e| e["kind"] == "session.start" && e["data"]["via"] == "exec"));
    assert!(events.iter().any(|e| e["kind"] == "session.start" && e["data"]["via"] == "mcp"));
}

/// nginx (Debian's) serving HTTPS with HTTP/2 and a self-signed certificate made with openssl.
struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
    cert: std::path::PathBuf,
}

impl Nginx {
    fn start() -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        // A CA, and a certificate for 127.0.0.1 it signs.
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl").current_dir(dir.path()).args(args).output().unwrap();
            assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &["-days", "1", "-subj", "/CN=test CA", "-keyout", "ca.key", "-out", "ca.pem"],
            ]
            .concat(),
        );
        openssl(&[&["req"][..], &ec, &["-subj", "/CN=127.0.0.1", "-keyout", "key.pem", "-out", "leaf.csr"]].concat());
        std::fs::write(dir.path().join("leaf.ext"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
            .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "leaf.ext",
            "-out",
            "cert.pem",
        ]);
        let cert = dir.path().join("ca.pem");
        let port = gatehouse_testkit::common::net::pick_free_port().unwrap();
        let d = dir.path().display();
        let conf = format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n  fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n  scgi_temp_path {d};\n\
               server {{\n    listen 127.0.0.1:{port} ssl http2;\n    ssl_certificate {d}/cert.pem;\n    ssl_certificate_key {d}/key.pem;\n\
                 location / {{\n      default_type application/json;\n      return 200 '{{\"protocol\": \"$server_protocol\", \"auth\": \"$http_authorization\", \"email\": \"dora@example.com\"}}';\n    }}\n  }}\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let nginx =
            ["/usr/sbin/nginx", "nginx"].into_iter().find(|p| Command::new(p).arg("-v").output().is_ok()).unwrap();
        let child = Command::new(nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        gatehouse_testkit::common::net::wait_for_port(port, Duration::from_secs(10)).unwrap();
        Nginx { child, port, cert, _dir: dir }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = gatehouse_testkit::common::process::kill(&[self.child.id()], "QUIT");
        let _ = self.child.wait();
    }
}

#[test]
fn upstream_tls_is_verified_against_the_ca_file_and_http2_is_used() {
    let nginx = Nginx::start();
    let http = gatehouse_testkit::common::net::pick_free_port().unwrap();
    let listen = format!("127.0.0.1:{http}");
    let gw = Gateway::start_with(bin(), &[("GATEHOUSE_LISTEN_HTTP", listen.as_str())]).unwrap();
    let url = format!("https://127.0.0.1:{}", nginx.port);
    let add = |args: &[&str]| add_connection(&gw, args);
    let ca = nginx.cert.to_str().unwrap();
    add(&["pinned", "--type", "http", "--url", &url, "--bearer-env", "API_KEY", "--ca-file", ca, "--mask", "email"]);
    add(&["unpinned", "--type", "http", "--url", &url, "--bearer-env", "API_KEY"]);
    let app = gw.cli_ok(&["identities", "add", "app", "--groups", "apps"]).unwrap().trim().to_string();
    let file = gw.data_dir().join("tls.cedar");
    std::fs::write(&file, "@id(\"apps-get\")\npermit (principal in Group::\"apps\", action in [Action::\"connect\", Action::\"http.get\"], resource);\n").unwrap();
    gw.cli_ok(&["policies", "set", file.to_str().unwrap()]).unwrap();

    let get = |path: &str| {
        let out = Command::new("curl")
            .args(["-sS", "-w", "\n%{http_code}", "-H", &format!("Authorization: Bearer {app}")])
            .arg(format!("http://127.0.0.1:{http}{path}"))
            .output()
            .unwrap();
        let text = stdout(&out);
        let (body, status) = text.rsplit_once('\n').unwrap();
        Http { status: status.trim().parse().unwrap(), body: body.to_string() }
    };
    // Verified against the connection's CA file, spoken over HTTP/2, with the key injected.
    let r = get("/pinned/v1/anything");
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["protocol"], "HTTP/2.0", "{v}");
    assert_eq!(v["auth"], format!("Bearer {UPSTREAM_KEY}"));
    assert_eq!(v["email"], "d***@example.com");
    // Without the CA file, the self-signed certificate is not trusted: 502, nothing sent.
    let r = get("/unpinned/v1/anything");
    assert_eq!(r.status, 502, "{}", r.body);
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.to_ascii_lowercase().contains("certificate"), "{message}");
}

#[test]
fn a_websocket_upgrade_passes_once_allowed_and_is_refused_where_masking_applies() {
    let s = Setup::start();
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/ws_client.py");
    let ws = |path: &str| -> Value {
        let out = Command::new("python3")
            .arg(&client)
            .args(["127.0.0.1", &s.http.to_string(), path, &s.app, "hello through the gateway"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_str(&stdout(&out)).unwrap()
    };
    // Allowed: the upstream switches protocols, sees the caller's identity, and messages flow.
    let v = ws("/files/v1/ws");
    assert_eq!(v["status"], 101, "{v}");
    assert_eq!(v["accepted"], true);
    assert_eq!(v["messages"], serde_json::json!(["identity: Service::\"app\"", "echo: hello through the gateway"]));
    // Decided like any GET: outside /v1 on `api` it is refused before reaching the upstream.
    let v = ws("/api/admin/ws");
    assert_eq!(v["status"], 403, "{v}");
    // Where answers are masked for this caller, messages could not be: refused.
    let v = ws("/api/v1/ws");
    assert_eq!(v["status"], 501, "{v}");
    assert_eq!(v["body"]["error"]["code"], "unsupported");
    assert_eq!(s.upstream.calls().iter().filter(|c| c.contains("/ws")).count(), 1);
    // Recorded: the upgrade, and the bytes that crossed once it closed.
    let mut found = None;
    for _ in 0..50 {
        let events = sessions_events(&s.gw, "app");
        if let Some(r) = events.iter().find(|e| e["kind"] == "request.result" && e["data"]["command"] == "101") {
            found = Some(r.clone());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let result = found.expect("the upgraded request's result is recorded");
    assert!(result["data"]["bytes_out"].as_u64().unwrap() > 20, "{result}");
}

#[test]
fn the_listener_answers_503_over_its_connection_limit_and_504_for_a_silent_upstream() {
    let s = Setup::start_with("20", &[("GATEHOUSE_HTTP_MAX_CONNECTIONS", "2"), ("GATEHOUSE_HTTP_READ_TIMEOUT", "1s")]);
    // (And an upstream silent for longer than [http] read_timeout is a 504.)
    let r = s.get("/files/v1/slow?s=3");
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (504, Some("upstream_timeout")), "{}", r.body);
    // Two callers hold their connections open.
    let held: Vec<std::net::TcpStream> =
        (0..2).map(|_| std::net::TcpStream::connect(("127.0.0.1", s.http)).unwrap()).collect();
    // (The gateway counts them as it accepts them.)
    let mut r = s.get("/files/v1/echo/x");
    for _ in 0..50 {
        if r.status == 503 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        r = s.get("/files/v1/echo/x");
    }
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "unavailable");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("max_connections"));
    drop(held);
    // Once they leave, callers get in again (the gateway notices the closes asynchronously).
    let mut status = 0;
    for _ in 0..50 {
        status = s.get("/files/v1/echo/x").status;
        if status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status, 200);
    let metrics = curl("GET", &format!("{}/metrics", s.gw.url()), None, None).body;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gatehouse_limited_total{limit=\"listener_connections\"} ") && !l.ends_with(" 0")),
        "{metrics}"
    );
}
