//! Fail closed when events cannot be recorded, and resume by itself when they can again. Two
//! real faults: another process holding the store's write lock (an operator's `sqlite3`, a
//! backup tool), and a file-size limit on the gateway (`prlimit`, as a full disk or a quota
//! would). Statements are recorded in the audit journal first: a locked store stops requests
//! only once it has refused the journaled events (after its 5 s wait for the lock), while a
//! file that cannot grow stops them at once. Meanwhile new statements and sessions are refused
//! with a clear error, nothing is forwarded unrecorded, `/readyz` says why; afterwards the same
//! session goes on, the results recorded late are there, and the audit chain verifies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod pg;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use pg::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A process that holds the store's write lock (`BEGIN IMMEDIATE`) until it is dropped.
struct Locker(std::process::Child);

impl Locker {
    fn hold(gw: &Gateway) -> Locker {
        let path = gw.data_dir().join("gatehouse.db");
        let script = "import sqlite3, sys\n\
                      c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
                      c.execute('BEGIN IMMEDIATE')\n\
                      print('locked', flush=True)\n\
                      sys.stdin.read()\n\
                      c.execute('ROLLBACK')\n";
        let mut child = Command::new("python3")
            .args(["-c", script])
            .arg(&path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "locked");
        Locker(child)
    }
}

impl Drop for Locker {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.0.stdin.take() {
            let _ = stdin.write_all(b"");
        }
        let _ = self.0.wait();
    }
}

fn prlimit_fsize(gw: &Gateway, soft: &str) {
    let out = Command::new("prlimit")
        .arg("--pid")
        .arg(gw.pid().unwrap().to_string())
        .arg(format!("--fsize={soft}:unlimited"))
        .output()
        .unwrap();
    assert!(out.status.success(), "prlimit: {}", stderr(&out));
}

fn readyz(gw: &Gateway) -> Http {
    curl("GET", &format!("{}/readyz", gw.url()), None, None)
}

/// The fault in place: a statement in an open session and a new session are refused with
/// clear errors (in bounded time: the client gets an answer at all), nothing reaches the
/// resource, and `/readyz` reports it.
async fn refused_during_fault(f: &Fixture, open: &tokio_postgres::Client, id: i32) {
    let started = Instant::now();
    let insert = format!("INSERT INTO orders (id, item) VALUES ({id}, 'during the fault')");
    let e = open.simple_query(&insert).await.expect_err("not recorded, so not run");
    assert_eq!(sqlstate(&e), "58000", "{e}");
    assert!(e.as_db_error().unwrap().message().contains("cannot record this statement"), "{e}");
    let e = tokio_postgres::connect(&f.url(&f.token), tokio_postgres::NoTls).await.err().expect("no new session");
    assert_eq!(sqlstate(&e), "08004", "{e}");
    assert!(e.as_db_error().unwrap().message().contains("audit trail is unavailable"), "{e}");
    eprintln!("refused within {:?}", started.elapsed());
    assert_eq!(f.direct(&format!("SELECT count(*) FROM orders WHERE id = {id}")).trim(), "0");
    let ready = readyz(&f.gw);
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.json()["audit"].as_str().unwrap().contains("cannot be written"), "{}", ready.body);
}

/// The fault gone: the same session runs statements again (the first commit after recovery
/// may still meet the fault's tail, so a few tries are allowed), new sessions open, and
/// `/readyz` is ready.
async fn resumed_after_fault(f: &Fixture, open: &tokio_postgres::Client, id: i32) {
    let insert = format!("INSERT INTO orders (id, item) VALUES ({id}, 'after the fault')");
    let mut last = None;
    for _ in 0..50 {
        match open.simple_query(&insert).await {
            Ok(_) => {
                last = None;
                break;
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(last.is_none(), "the session did not resume: {last:?}");
    assert_eq!(f.direct(&format!("SELECT item FROM orders WHERE id = {id}")).trim(), "after the fault");
    let fresh = client(&f.url(&f.token)).await;
    assert_eq!(rows(&fresh.simple_query("SELECT 'new'").await), vec![vec![Some("new".to_string())]]);
    assert_eq!(readyz(&f.gw).status, 200);
}

fn verified(f: &Fixture) {
    let verify = f.gw.cli_ok(&["audit", "verify"]).unwrap();
    assert!(verify.starts_with("ok"), "{verify}");
    // The statement refused during the fault is not in the trail as run; the one before it has
    // its result, recorded even if that had to wait for the store.
    let events = session_events(&f.gw, "app");
    let text: Vec<&str> =
        events.iter().filter(|e| e["kind"] == "request").filter_map(|e| e["data"]["request"].as_str()).collect();
    assert!(!text.iter().any(|t| t.contains("during the fault")), "{text:?}");
    assert!(text.iter().any(|t| t.contains("after the fault")), "{text:?}");
    // The session that ended during the fault has its end recorded: it was kept and retried.
    let sessions: serde_json::Value =
        serde_json::from_str(&f.gw.cli_ok(&["sessions", "list", "--identity", "app", "--json"]).unwrap()).unwrap();
    let ended_during = sessions
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["end_reason"] == "the caller ended the session" && s["live"] == false)
        .count();
    assert!(ended_during >= 1, "{sessions:#}");
}

#[test]
fn a_locked_store_refuses_requests_until_it_is_released() {
    let f = Fixture::new();
    rt().block_on(async {
        let open = client(&f.url(&f.token)).await;
        assert!(open.simple_query("SELECT 'before'").await.is_ok());
        // A session that ends while the store fails: its end is recorded once it can be.
        let ending = client(&f.url(&f.token)).await;
        let lock = Locker::hold(&f.gw);
        // The journal takes the statement: it runs, recorded, while the store waits for its lock.
        let journaled = "INSERT INTO orders (id, item) VALUES (99, 'journaled while the store is locked')";
        open.simple_query(journaled).await.unwrap();
        assert_eq!(f.direct("SELECT item FROM orders WHERE id = 99").trim(), "journaled while the store is locked");
        // The store gives up on its lock after 5 s; from then on, nothing more is recorded.
        let deadline = Instant::now() + Duration::from_secs(30);
        while readyz(&f.gw).status != 503 {
            assert!(Instant::now() < deadline, "the gateway never noticed the locked store: {}", readyz(&f.gw).body);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        refused_during_fault(&f, &open, 100).await;
        drop(ending);
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(lock);
        resumed_after_fault(&f, &open, 101).await;
    });
    verified(&f);
    let events = session_events(&f.gw, "app");
    assert!(
        events.iter().any(|e| e["data"]["request"].as_str().is_some_and(|r| r.contains("journaled while the store"))),
        "the statement journaled during the fault is in the trail"
    );
}

/// An HTTP request through the gateway's HTTP listener to connection `self` (the gateway's own
/// API, whose `/healthz` needs no token): its status and body.
fn http_get(f: &Fixture, port: u16) -> Http {
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", "-H", &format!("Authorization: Bearer {}", f.token)])
        .arg(format!("http://127.0.0.1:{port}/self/healthz"))
        .output()
        .unwrap();
    let text = stdout(&out);
    let (body, status) = text.rsplit_once('\n').unwrap();
    Http { status: status.trim().parse().unwrap(), body: body.to_string() }
}

#[test]
fn a_store_over_the_file_size_limit_refuses_requests_until_it_is_lifted() {
    let http = gatehouse_testkit::common::net::pick_free_port().unwrap();
    let listen = format!("127.0.0.1:{http}");
    let f = Fixture::with_env(&[("GATEHOUSE_LISTEN_HTTP", listen.as_str())]);
    // The HTTP adapter records through the same pipeline: an API behind it, here the gateway's
    // own unauthenticated /healthz.
    f.gw.cli_ok(&["connections", "add", "self", "--type", "http", "--url", &f.gw.url()]).unwrap();
    f.policies(&format!(
        "{POLICIES}\n@id(\"apps-self\")\npermit (principal in Group::\"apps\", action in [Action::\"connect\", Action::\"http.get\"], resource in Connection::\"self\");\n"
    ));
    assert_eq!(http_get(&f, http).status, 200);
    rt().block_on(async {
        let open = client(&f.url(&f.token)).await;
        assert!(open.simple_query("SELECT 'before'").await.is_ok());
        // A session that ends while the store fails: its end is recorded once it can be.
        let ending = client(&f.url(&f.token)).await;
        // No file of the gateway's may grow at all: every write to the store fails, as on a full
        // disk. (The gateway takes SIGXFSZ rather than dying of it.)
        prlimit_fsize(&f.gw, "0");
        refused_during_fault(&f, &open, 200).await;
        let r = http_get(&f, http);
        assert_eq!((r.status, r.json()["error"]["code"].as_str()), (503, Some("unavailable")), "{}", r.body);
        assert!(r.body.contains("audit trail is unavailable"), "{}", r.body);
        drop(ending);
        tokio::time::sleep(Duration::from_millis(300)).await;
        prlimit_fsize(&f.gw, "unlimited");
        resumed_after_fault(&f, &open, 201).await;
    });
    assert_eq!(http_get(&f, http).status, 200, "HTTP resumes too");
    assert!(f.gw.pid().is_some());
    verified(&f);
}
