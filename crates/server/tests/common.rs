//! Helpers shared by the end-to-end tests: the gateway under test and `curl`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

pub use gatehouse_testkit::Gateway;

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_gatehouse"))
}

pub fn gateway() -> Gateway {
    Gateway::start(bin()).expect("the gateway starts")
}

/// What `curl` got: status code and body.
#[derive(Debug)]
pub struct Http {
    pub status: u16,
    pub body: String,
}

impl Http {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Runs the stock `curl` client: `curl -s -X METHOD [-H Authorization] [--data BODY] URL`.
pub fn curl(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> Http {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-X", method, "-w", "\n%{http_code}", url]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = cmd.output().expect("curl runs");
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap();
    Http { status: status.trim().parse().unwrap(), body: body.to_string() }
}

pub fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs SQL on the gateway's SQLite file with the stock `sqlite3`-compatible library.
pub fn sqlite(gw: &Gateway, sql: &str) {
    let conn = rusqlite::Connection::open(gw.data_dir().join("gatehouse.db")).unwrap();
    conn.execute_batch(sql).unwrap();
}
