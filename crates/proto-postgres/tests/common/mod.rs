//! Helpers shared by the integration tests: a real PostgreSQL from the test kit, and a way to
//! run one simple query on an upstream session frame by frame.

#![allow(dead_code)]

use std::time::Duration;

use gatehouse_proto_postgres::{
    BackendFrame, FrontendMessage, TlsMode, Upstream, UpstreamConfig, WireError, read_backend,
};
use gatehouse_testkit::Postgres;
use tokio::io::AsyncWriteExt;

/// Largest frame the tests accept from the server.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Runs a blocking test-kit call off the async runtime.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> anyhow::Result<T> + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task panicked").expect("test kit call failed")
}

/// Starts a fresh server.
pub async fn start_postgres() -> std::sync::Arc<Postgres> {
    std::sync::Arc::new(blocking(Postgres::start).await)
}

/// A plain-TCP configuration for `user` on the server's `postgres` database.
pub fn config(pg: &Postgres, user: &str, password: Option<&str>) -> UpstreamConfig {
    let mut cfg = UpstreamConfig::new(pg.host(), pg.port(), user, "postgres");
    cfg.password = password.map(str::to_owned);
    cfg.tls = TlsMode::Disable;
    cfg.params.push(("application_name".into(), "gatehouse-proto-postgres-test".into()));
    cfg.connect_timeout = Duration::from_secs(20);
    cfg
}

/// Writes a simple Query and reads every frame up to and including `ReadyForQuery`.
pub async fn simple_query(up: &mut Upstream, sql: &str) -> Vec<BackendFrame> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    let query = FrontendMessage::new(b'Q', &body).expect("query fits");
    up.stream().write_all(query.raw()).await.expect("writing the query");
    up.stream().flush().await.expect("flushing the query");
    read_until_ready(up).await.expect("reading the answer")
}

/// Reads frames up to and including `ReadyForQuery`.
pub async fn read_until_ready(up: &mut Upstream) -> Result<Vec<BackendFrame>, WireError> {
    let mut frames = Vec::new();
    loop {
        let frame = read_backend(up.stream(), MAX_FRAME).await?;
        let done = frame.tag() == b'Z';
        frames.push(frame);
        if done {
            return Ok(frames);
        }
    }
}

/// The tags of `frames`, as a string such as `"TDCZ"`.
pub fn tags(frames: &[BackendFrame]) -> String {
    frames.iter().map(|f| f.tag() as char).collect()
}

/// Checks that `SELECT 1` answers RowDescription, one DataRow of one column, `SELECT 1`, idle.
pub async fn assert_select_one(up: &mut Upstream) {
    use gatehouse_proto_postgres::TransactionStatus;
    let frames = simple_query(up, "SELECT 1").await;
    assert_eq!(tags(&frames), "TDCZ", "{frames:?}");
    assert_eq!(frames[1].data_row_columns().unwrap(), 1);
    // The value: one column of length 1 holding "1".
    assert_eq!(&frames[1].body()[2..], &[0, 0, 0, 1, b'1']);
    assert_eq!(frames[2].command_tag().unwrap(), "SELECT 1");
    assert_eq!(frames[3].ready_status().unwrap(), TransactionStatus::Idle);
}
