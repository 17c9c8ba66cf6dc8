//! The upstream client against a real PostgreSQL (plain TCP): every login method, login
//! errors, and cancel forwarding.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::time::Duration;

use common::{assert_select_one, blocking, config, read_until_ready, start_postgres, tags};
use gatehouse_proto_postgres::{
    AuthMethod, FrontendMessage, TlsMode, TransactionStatus, UpstreamError, connect, send_cancel,
};
use gatehouse_testkit::PgAuth;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_in_with_every_method_and_runs_select_one() {
    let pg = start_postgres().await;
    let setup = pg.clone();
    blocking(move || {
        setup.create_role("scram_user", "scram-pw-1", PgAuth::ScramSha256)?;
        setup.create_role("md5_user", "md5-pw-1", PgAuth::Md5)?;
        setup.create_role("trust_user", "", PgAuth::Trust)?;
        setup.create_role("clear_user", "clear-pw-1", PgAuth::ScramSha256)?;
        setup.add_hba_rule("host all clear_user 127.0.0.1/32 password")
    })
    .await;

    for (user, password, method) in [
        ("scram_user", Some("scram-pw-1"), AuthMethod::ScramSha256),
        ("md5_user", Some("md5-pw-1"), AuthMethod::Md5),
        ("trust_user", None, AuthMethod::Trust),
        // Cleartext is sent here only because the server is on a loopback address.
        ("clear_user", Some("clear-pw-1"), AuthMethod::Cleartext),
        ("postgres", Some(pg.superuser_password()), AuthMethod::ScramSha256),
    ] {
        let cfg = config(&pg, user, password);
        let mut up = connect(&cfg).await.unwrap_or_else(|e| panic!("{user}: {e}"));
        assert_eq!(up.auth_method(), method, "{user}");
        assert!(!up.is_tls());
        assert_eq!(up.server_addr().port(), pg.port());
        assert_eq!(up.address(), format!("127.0.0.1:{}", pg.port()));
        assert!(up.parameter("server_version").is_some(), "{:?}", up.parameters());
        assert_eq!(up.parameter("application_name"), Some("gatehouse-proto-postgres-test"));
        assert_eq!(up.parameter("session_authorization"), Some(user));
        let key = up.backend_key().expect("BackendKeyData");
        assert!(key.pid > 0);
        assert_select_one(&mut up).await;

        // The session is really that role, and errors inside a transaction leave it failed.
        let frames = common::simple_query(&mut up, "SELECT current_user").await;
        assert_eq!(tags(&frames), "TDCZ");
        assert!(frames[1].body().ends_with(user.as_bytes()));
        let frames = common::simple_query(&mut up, "BEGIN; SELECT 1/0").await;
        // BEGIN completes; the division fails while being planned, before any RowDescription.
        assert_eq!(tags(&frames), "CEZ", "{frames:?}");
        assert_eq!(frames[0].command_tag().unwrap(), "BEGIN");
        assert_eq!(frames[1].error_fields().unwrap().code, "22012");
        assert_eq!(frames[2].ready_status().unwrap(), TransactionStatus::Failed);
        let frames = common::simple_query(&mut up, "ROLLBACK").await;
        assert_eq!(frames[0].command_tag().unwrap(), "ROLLBACK");

        let bye = FrontendMessage::new(b'X', b"").unwrap();
        up.stream().write_all(bye.raw()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_errors_are_clear_and_never_show_the_password() {
    let pg = start_postgres().await;
    let setup = pg.clone();
    blocking(move || {
        setup.create_role("scram_user", "right-pw", PgAuth::ScramSha256)?;
        setup.create_role("md5_user", "right-pw", PgAuth::Md5)
    })
    .await;
    let addr = format!("127.0.0.1:{}", pg.port());

    for user in ["scram_user", "md5_user"] {
        let err = connect(&config(&pg, user, Some("wrong-pw-xyzzy"))).await.unwrap_err();
        let UpstreamError::Server { code, severity, message, .. } = &err else { panic!("{user}: {err}") };
        assert_eq!(code, "28P01", "{user}: {err}");
        assert_eq!(severity, "FATAL");
        assert!(message.contains("password authentication failed"), "{message}");
        let shown = format!("{err} {err:?}");
        assert!(shown.contains(&addr), "{shown}");
        assert!(!shown.contains("wrong-pw-xyzzy"), "the password leaks: {shown}");
        assert_eq!(err.blame(), gatehouse_core::Blame::Resource);
    }

    let mut cfg = config(&pg, "scram_user", Some("right-pw"));
    cfg.database = "no_such_db".into();
    let err = connect(&cfg).await.unwrap_err();
    assert!(matches!(&err, UpstreamError::Server { code, .. } if code == "3D000"), "{err}");

    let err = connect(&config(&pg, "md5_user", None)).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Auth { .. }), "{err}");
    assert!(err.to_string().contains("no password is configured"), "{err}");

    // This server has no TLS: a mode that needs it fails before any password is sent.
    let mut cfg = config(&pg, "scram_user", Some("right-pw"));
    cfg.tls = TlsMode::Require;
    let err = connect(&cfg).await.unwrap_err();
    assert!(matches!(err, UpstreamError::TlsRefused { mode: TlsMode::Require, .. }), "{err}");
    assert!(err.to_string().contains("does not accept TLS"), "{err}");
    assert!(err.to_string().contains(&addr), "{err}");

    // Nothing listens: an I/O error naming the address.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cfg = config(&pg, "scram_user", Some("right-pw"));
    cfg.port = closed;
    let err = connect(&cfg).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Io { .. }), "{err}");
    assert!(err.to_string().contains(&format!("127.0.0.1:{closed}")), "{err}");
}

/// Starts `SELECT pg_sleep(30)` and returns once the server is running it.
async fn start_sleep(up: &mut gatehouse_proto_postgres::Upstream) {
    let query = FrontendMessage::new(b'Q', b"SELECT pg_sleep(30)\0").unwrap();
    up.stream().write_all(query.raw()).await.unwrap();
    up.stream().flush().await.unwrap();
    // Give the backend time to start the query (a cancel that arrives before is a no-op).
    tokio::time::sleep(Duration::from_millis(500)).await;
}

async fn expect_cancelled(up: &mut gatehouse_proto_postgres::Upstream) {
    let frames = tokio::time::timeout(Duration::from_secs(20), read_until_ready(up))
        .await
        .expect("the query was not cancelled")
        .unwrap();
    let error = frames.iter().find(|f| f.tag() == b'E').unwrap_or_else(|| panic!("no error: {}", tags(&frames)));
    assert_eq!(error.error_fields().unwrap().code, "57014");
    assert_eq!(frames.last().unwrap().ready_status().unwrap(), TransactionStatus::Idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_query() {
    let pg = start_postgres().await;
    let cfg = config(&pg, "postgres", Some(pg.superuser_password()));
    let mut up = connect(&cfg).await.unwrap();

    // Through the session's token…
    let token = up.cancel_token().expect("a cancel token");
    assert!(!format!("{token:?}").contains(&up.backend_key().unwrap().key.to_string()));
    start_sleep(&mut up).await;
    let started = std::time::Instant::now();
    token.cancel().await.unwrap();
    expect_cancelled(&mut up).await;
    assert!(started.elapsed() < Duration::from_secs(25));

    // …and through send_cancel with the configuration and the key.
    start_sleep(&mut up).await;
    send_cancel(&cfg, up.backend_key().unwrap()).await.unwrap();
    expect_cancelled(&mut up).await;

    // The session is still usable.
    assert_select_one(&mut up).await;
}
