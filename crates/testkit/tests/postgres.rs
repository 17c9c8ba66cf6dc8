//! Starts real PostgreSQL servers from the machine's packages and checks what the kit promises.

use std::thread;

use anyhow::{Context, Result, bail};
use gatehouse_testkit::common::cmd::CommandFailed;
use gatehouse_testkit::common::net::{PortInUse, port_accepts};
use gatehouse_testkit::{PgAuth, Postgres};

/// The stderr of the psql failure inside `err`.
fn psql_stderr(err: &anyhow::Error) -> Result<String> {
    Ok(err
        .downcast_ref::<CommandFailed>()
        .with_context(|| format!("expected a psql failure, got: {err:#}"))?
        .stderr
        .clone())
}

#[test]
fn two_servers_at_once_on_different_ports() -> Result<()> {
    let a = thread::spawn(Postgres::start);
    let b = thread::spawn(Postgres::start);
    let a = a.join().map_err(|_| anyhow::anyhow!("start panicked"))??;
    let b = b.join().map_err(|_| anyhow::anyhow!("start panicked"))??;

    assert_ne!(a.port(), b.port());
    assert_ne!(a.socket_dir(), b.socket_dir());
    for pg in [&a, &b] {
        assert_ne!(pg.port(), 5432);
        assert_eq!(pg.host(), "127.0.0.1");
        assert_eq!(pg.psql("postgres", "select 1")?, "1");
        assert_eq!(pg.psql("postgres", "show port")?, pg.port().to_string(), "{pg:?}");
        assert!(pg.url("postgres").ends_with(&format!("@127.0.0.1:{}/postgres", pg.port())));
        assert!(pg.log_path().is_file());
        assert!(pg.socket_dir().join(format!(".s.PGSQL.{}", pg.port())).exists());
        // The password never shows in Debug output.
        assert!(!format!("{pg:?}").contains(pg.superuser_password()));
    }
    Ok(())
}

#[test]
fn superuser_needs_its_password_over_tcp() -> Result<()> {
    let pg = Postgres::start()?;
    let err = pg
        .psql_as(pg.superuser(), Some("not-the-password"), "postgres", "select 1")
        .err()
        .context("a wrong superuser password must be refused")?;
    let stderr = psql_stderr(&err)?;
    assert!(stderr.contains("password authentication failed"), "{stderr}");
    Ok(())
}

#[test]
fn scram_md5_and_trust_roles() -> Result<()> {
    let pg = Postgres::start()?;
    pg.create_role("scram_user", "scram-pw", PgAuth::ScramSha256)?;
    pg.create_role("md5_user", "md5-pw", PgAuth::Md5)?;
    pg.create_role("trust_user", "", PgAuth::Trust)?;
    pg.create_database("appdb", "scram_user")?;

    // Stored the way each role asks for.
    let stored = pg.psql(
        "postgres",
        "select rolname, case when rolpassword like 'md5%' then 'md5' \
         when rolpassword like 'SCRAM-SHA-256$%' then 'scram' \
         else coalesce(rolpassword, 'none') end \
         from pg_authid where rolname in ('scram_user', 'md5_user', 'trust_user') \
         order by rolname",
    )?;
    assert_eq!(stored, "md5_user|md5\nscram_user|scram\ntrust_user|none", "{stored}");

    assert_eq!(pg.psql_as("scram_user", Some("scram-pw"), "appdb", "select current_user")?, "scram_user");
    assert_eq!(pg.psql_as("md5_user", Some("md5-pw"), "postgres", "select current_user")?, "md5_user");
    assert_eq!(pg.psql_as("trust_user", None, "postgres", "select current_user")?, "trust_user");
    assert_eq!(pg.psql_as("scram_user", Some("scram-pw"), "appdb", "select current_database()")?, "appdb");

    for (user, wrong) in [("scram_user", "nope"), ("md5_user", "nope")] {
        let err = pg
            .psql_as(user, Some(wrong), "postgres", "select 1")
            .err()
            .with_context(|| format!("{user} with a wrong password must be refused"))?;
        let stderr = psql_stderr(&err)?;
        assert!(stderr.contains(&format!("password authentication failed for user \"{user}\"")), "{stderr}");
    }

    // The server really used the method each role was given.
    let log = std::fs::read_to_string(pg.log_path())?;
    assert!(log.contains("user=md5_user") && log.contains("method=md5"), "{log}");
    assert!(log.contains("method=scram-sha-256"), "{log}");
    // trust_user has no password at all, so its login above went through its trust rule.

    assert!(pg.create_role("bad name", "x", PgAuth::ScramSha256).is_err());
    assert!(pg.create_role("nopw", "", PgAuth::Md5).is_err());
    Ok(())
}

#[test]
fn kill_postmaster_then_restart() -> Result<()> {
    let pg = Postgres::start()?;
    pg.psql("postgres", "create table t (v int); insert into t values (42)")?;
    assert!(pg.is_running());

    pg.kill_postmaster()?;
    assert!(!pg.is_running());
    assert!(!port_accepts(pg.port()));
    let err = pg.psql("postgres", "select 1").err().context("psql must fail while the server is dead")?;
    let stderr = psql_stderr(&err)?;
    assert!(stderr.contains("Connection refused"), "{stderr}");

    pg.restart()?;
    assert!(pg.is_running());
    assert_eq!(pg.psql("postgres", "select v from t")?, "42");

    // A clean stop and start work too.
    pg.stop()?;
    assert!(!port_accepts(pg.port()));
    pg.restart()?;
    assert_eq!(pg.psql("postgres", "select 1")?, "1");

    // Someone else took the port while the server was down: restart says so.
    pg.stop()?;
    let squatter = std::net::TcpListener::bind(("127.0.0.1", pg.port()))?;
    let err = pg.restart().err().context("restart on a taken port must fail")?;
    assert!(err.downcast_ref::<PortInUse>().is_some(), "{err:#}");
    drop(squatter);
    pg.restart()?;
    assert_eq!(pg.psql("postgres", "select 1")?, "1");
    Ok(())
}

#[test]
fn drop_stops_the_server_and_removes_the_directory() -> Result<()> {
    let pg = Postgres::start()?;
    let port = pg.port();
    let dir = pg.socket_dir().to_path_buf();
    assert!(port_accepts(port));
    assert!(dir.is_dir());
    drop(pg);
    if port_accepts(port) {
        bail!("127.0.0.1:{port} still accepts after Drop");
    }
    assert!(!dir.exists(), "{} still exists", dir.display());
    Ok(())
}

#[test]
fn drop_after_kill_cleans_up_too() -> Result<()> {
    let pg = Postgres::start()?;
    let dir = pg.socket_dir().to_path_buf();
    pg.kill_postmaster()?;
    drop(pg);
    assert!(!dir.exists(), "{} still exists", dir.display());
    Ok(())
}

#[test]
fn drop_on_panic_stops_the_server() -> Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let joined = thread::spawn(move || -> Result<()> {
        let pg = Postgres::start()?;
        let _ = tx.send((pg.port(), pg.socket_dir().to_path_buf()));
        panic!("test panics while holding a server");
    })
    .join();
    assert!(joined.is_err(), "the thread should have panicked");
    let (port, dir) = rx.recv().context("the server never started")?;
    assert!(!port_accepts(port), "127.0.0.1:{port} still accepts after a panic");
    assert!(!dir.exists());
    Ok(())
}
