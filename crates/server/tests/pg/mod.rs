//! The PostgreSQL fixture the end-to-end PostgreSQL tests share: a real PostgreSQL with a small
//! schema behind the built gateway, a connection `pg` to it, an identity `app` in group `apps`,
//! and the policy below; plus helpers for psql and tokio-postgres.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Output};
use std::time::Duration;

use gatehouse_testkit::Postgres;

use crate::common::*;

pub const POLICIES: &str = r#"
@id("apps-connect")
permit (principal in Group::"apps", action == Action::"connect", resource == Connection::"pg");

@id("apps-read")
permit (principal in Group::"apps", action == Action::"sql.select", resource in Connection::"pg");

@id("apps-write-orders")
permit (principal in Group::"apps", action in [Action::"sql.insert", Action::"sql.update"], resource == Table::"pg/public.orders");

@id("apps-scratch-ddl")
permit (principal in Group::"apps", action == Action::"sql.ddl", resource == Table::"pg/public.scratch");

@id("apps-delete-orders-locally")
permit (principal in Group::"apps", action == Action::"sql.delete", resource == Table::"pg/public.orders")
when { context has client_ip && context.client_ip.isLoopback() };

@id("no-unbounded-deletes")
forbid (principal, action == Action::"sql.delete", resource)
when { context has has_where && !context.has_where };

@id("no-secrets")
forbid (principal, action, resource == Table::"pg/public.secrets");
"#;

pub struct Fixture {
    pub pg: Postgres,
    pub gw: Gateway,
    pub port: u16,
    pub token: String,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::with_env(&[])
    }

    pub fn with_env(env: &[(&str, &str)]) -> Fixture {
        Fixture::with_config(env, None)
    }

    /// With extra server environment and a configuration file (TOML text).
    pub fn with_config(env: &[(&str, &str)], config: Option<&str>) -> Fixture {
        let pg = Postgres::start().unwrap();
        pg.psql(
            "postgres",
            "CREATE TABLE public.orders (id int PRIMARY KEY, item text, price numeric(10,2), shipped date, tags text[], meta jsonb);
             INSERT INTO public.orders VALUES (1, 'lamp', 19.90, '2026-01-02', '{a,b}', '{\"k\": 1}'), (2, NULL, NULL, NULL, NULL, NULL);
             CREATE TABLE public.secrets (id int, value text);
             INSERT INTO public.secrets VALUES (1, 'top secret');
             CREATE FUNCTION public.my_func() RETURNS int LANGUAGE sql AS 'SELECT 42';",
        )
        .unwrap();
        let port = gatehouse_testkit::common::net::pick_free_port().unwrap();
        let listen = format!("127.0.0.1:{port}");
        let mut all = vec![("GATEHOUSE_LISTEN_POSTGRES", listen.as_str()), ("GATEHOUSE_POSTGRES_AUTH_TIMEOUT", "2s")];
        all.extend_from_slice(env);
        let gw = Gateway::start_with_config(bin(), &all, config).unwrap();
        add_connection(&gw, "pg", &pg);
        let token = gw.cli_ok(&["identities", "add", "app", "--groups", "apps"]).unwrap().trim().to_string();
        let f = Fixture { pg, gw, port, token };
        f.policies(POLICIES);
        f
    }

    pub fn policies(&self, text: &str) {
        let file = self.gw.data_dir().join("pg.cedar");
        std::fs::write(&file, text).unwrap();
        self.gw.cli_ok(&["policies", "set", file.to_str().unwrap()]).unwrap();
    }

    /// Runs psql through the gateway with a script on standard input.
    pub fn psql(&self, user: &str, token: &str, db: &str, script: &str) -> Output {
        let mut child = Command::new("psql")
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=0"])
            .arg(format!("host=127.0.0.1 port={} dbname={db} user={user} sslmode=disable", self.port))
            .env("PGPASSWORD", token)
            .env_remove("PGSERVICE")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    pub fn app(&self, script: &str) -> Output {
        self.psql("app", &self.token, "pg", script)
    }

    /// `psql -c`: the whole string goes to the server as one Query message (one batch).
    pub fn app_batch(&self, sql: &str) -> Output {
        Command::new("psql")
            .args(["-X", "-A", "-t", "-c", sql])
            .arg(format!("host=127.0.0.1 port={} dbname=pg user=app sslmode=disable", self.port))
            .env("PGPASSWORD", &self.token)
            .output()
            .unwrap()
    }

    pub fn direct(&self, sql: &str) -> String {
        self.pg.psql("postgres", sql).unwrap()
    }

    pub fn url(&self, token: &str) -> String {
        format!("host=127.0.0.1 port={} dbname=pg user=app password={token} sslmode=disable", self.port)
    }
}

pub async fn client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

pub fn rows(out: &Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>) -> Vec<Vec<Option<String>>> {
    out.as_ref()
        .unwrap()
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(String::from)).collect())
            }
            _ => None,
        })
        .collect()
}

/// Whether the session ends within a few seconds: its statements start failing. (The end is
/// delivered asynchronously, so a statement sent in the same instant may still run.)
pub async fn ends(c: &tokio_postgres::Client) -> bool {
    for _ in 0..50 {
        if c.simple_query("SELECT 1").await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map(|d| d.code().code().to_string()).unwrap_or_else(|| format!("not a server error: {e}"))
}

/// Adds connection `name` to `pg`'s `postgres` database, as its superuser, without TLS.
pub fn add_connection(gw: &Gateway, name: &str, pg: &Postgres) {
    let out = gw
        .client()
        .env("GATEHOUSE_TOKEN", gw.admin_token())
        .env("PGPW", pg.superuser_password())
        .args(["connections", "add", name, "--type", "postgres", "--host", "127.0.0.1", "--port"])
        .arg(pg.port().to_string())
        .args(["--database", "postgres", "--user", pg.superuser(), "--password-env", "PGPW", "--tls", "disable"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A caller speaking the wire protocol byte by byte, for what stock clients never send.
pub struct Raw {
    pub stream: std::net::TcpStream,
}

/// One message as received: its tag and body.
pub type Msg = (u8, Vec<u8>);

impl Raw {
    /// Connects as `user` to database `db`, answers the password request with `password`, and
    /// reads up to the first `ReadyForQuery`.
    pub fn login(port: u16, user: &str, db: &str, password: &str) -> Raw {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut raw = Raw { stream };
        raw.send(&startup_packet(&[("user", user), ("database", db)]));
        let (tag, body) = raw.read();
        assert_eq!((tag, &body[..]), (b'R', &3i32.to_be_bytes()[..]), "asked for a cleartext password");
        raw.send(&frame(b'p', &cstring(password)));
        let answer = raw.until_ready();
        assert!(answer.iter().all(|(t, _)| *t != b'E'), "{:?}", errors(&answer));
        raw
    }

    pub fn send(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.stream.write_all(bytes).unwrap();
    }

    pub fn read(&mut self) -> Msg {
        use std::io::Read;
        let mut head = [0u8; 5];
        self.stream.read_exact(&mut head).unwrap();
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        self.stream.read_exact(&mut body).unwrap();
        (head[0], body)
    }

    /// Every message up to and including the next `ReadyForQuery`.
    pub fn until_ready(&mut self) -> Vec<Msg> {
        let mut all = Vec::new();
        loop {
            let m = self.read();
            let done = m.0 == b'Z';
            all.push(m);
            if done {
                return all;
            }
        }
    }
}

/// A startup packet (protocol 3.0) with these parameters.
pub fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = vec![0, 3, 0, 0];
    for (k, v) in params {
        body.extend_from_slice(&cstring(k));
        body.extend_from_slice(&cstring(v));
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

pub fn cstring(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// A message: tag, length, body.
pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// `Parse` of an unnamed-or-named statement with no declared parameter types.
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = cstring(name);
    body.extend_from_slice(&cstring(sql));
    body.extend_from_slice(&0i16.to_be_bytes());
    frame(b'P', &body)
}

/// `Bind` with text parameters and text results.
pub fn bind(portal: &str, statement: &str, params: &[&str]) -> Vec<u8> {
    let mut body = cstring(portal);
    body.extend_from_slice(&cstring(statement));
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        body.extend_from_slice(&(p.len() as i32).to_be_bytes());
        body.extend_from_slice(p.as_bytes());
    }
    body.extend_from_slice(&0i16.to_be_bytes());
    frame(b'B', &body)
}

pub fn execute(portal: &str) -> Vec<u8> {
    let mut body = cstring(portal);
    body.extend_from_slice(&0i32.to_be_bytes());
    frame(b'E', &body)
}

pub fn sync() -> Vec<u8> {
    frame(b'S', &[])
}

/// The tags of the messages, as a string (`"12DCZ"`).
pub fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|(t, _)| *t as char).collect()
}

/// The SQLSTATE and message of each `ErrorResponse`.
pub fn errors(msgs: &[Msg]) -> Vec<(String, String)> {
    msgs.iter()
        .filter(|(t, _)| *t == b'E')
        .map(|(_, body)| {
            let mut code = String::new();
            let mut message = String::new();
            for field in body.split(|b| *b == 0).filter(|f| !f.is_empty()) {
                let value = String::from_utf8_lossy(&field[1..]).into_owned();
                match field[0] {
                    b'C' => code = value,
                    b'M' => message = value,
                    _ => {}
                }
            }
            (code, message)
        })
        .collect()
}

/// The text values of each `DataRow` (`None` for NULL).
pub fn data_rows(msgs: &[Msg]) -> Vec<Vec<Option<String>>> {
    msgs.iter()
        .filter(|(t, _)| *t == b'D')
        .map(|(_, body)| {
            let n = i16::from_be_bytes([body[0], body[1]]) as usize;
            let mut at = 2;
            (0..n)
                .map(|_| {
                    let len = i32::from_be_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
                    at += 4;
                    if len < 0 {
                        return None;
                    }
                    let v = String::from_utf8_lossy(&body[at..at + len as usize]).into_owned();
                    at += len as usize;
                    Some(v)
                })
                .collect()
        })
        .collect()
}

/// The events of every session of `identity`, oldest first, as `sessions show --json` lists them.
pub fn session_events(gw: &Gateway, identity: &str) -> Vec<serde_json::Value> {
    let list: serde_json::Value =
        serde_json::from_str(&gw.cli_ok(&["sessions", "list", "--identity", identity, "--json"]).unwrap()).unwrap();
    let mut all = Vec::new();
    for s in list.as_array().unwrap().iter().rev() {
        let id = s["id"].as_str().unwrap();
        let detail: serde_json::Value =
            serde_json::from_str(&gw.cli_ok(&["sessions", "show", id, "--json"]).unwrap()).unwrap();
        all.extend(detail["events"].as_array().unwrap().iter().cloned());
    }
    all
}

/// The events of the newest session of `identity`, as `sessions show --json` lists them.
pub fn last_session_events(gw: &Gateway, identity: &str) -> Vec<serde_json::Value> {
    let list: serde_json::Value =
        serde_json::from_str(&gw.cli_ok(&["sessions", "list", "--identity", identity, "--json"]).unwrap()).unwrap();
    let id = list.as_array().unwrap().first().unwrap()["id"].as_str().unwrap().to_string();
    let detail: serde_json::Value =
        serde_json::from_str(&gw.cli_ok(&["sessions", "show", &id, "--json"]).unwrap()).unwrap();
    detail["events"].as_array().unwrap().clone()
}
