//! The upstream client over TLS against a real PostgreSQL with `ssl = on`: a throwaway CA and
//! a server certificate for `localhost` are made with the `openssl` command and put into the
//! test kit server's data directory (owned by the server's account), then `ALTER SYSTEM SET ssl
//! = on` and a reload.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{assert_select_one, blocking, config, read_until_ready, start_postgres, tags};
use gatehouse_proto_postgres::{AuthMethod, FrontendMessage, TlsMode, UpstreamError, connect};
use gatehouse_testkit::common::dir::write_file;
use gatehouse_testkit::{PgAuth, Postgres};
use tokio::io::AsyncWriteExt;

/// Runs `openssl` in `dir` with whitespace-separated `args`.
fn openssl(dir: &Path, args: &str) -> anyhow::Result<()> {
    let out = Command::new("openssl").args(args.split_whitespace()).current_dir(dir).output()?;
    anyhow::ensure!(out.status.success(), "openssl {args}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// Makes `<name>.crt`/`<name>.key`: a self-signed CA with a P-256 key.
fn make_ca(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    openssl(
        dir,
        &format!(
            "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout {name}.key -out {name}.crt \
             -days 2 -subj /CN=gatehouse-test-{name} -addext basicConstraints=critical,CA:TRUE \
             -addext keyUsage=critical,keyCertSign,cRLSign"
        ),
    )?;
    Ok(dir.join(format!("{name}.crt")))
}

/// Makes `server.crt`/`server.key` for DNS name `localhost` only (not 127.0.0.1), signed by CA
/// `ca`, with an ECDSA P-256 key (so the channel-binding hash is SHA-256).
fn make_server_cert(dir: &Path, ca: &str) -> anyhow::Result<()> {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(
        dir,
        "req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key -out server.csr \
         -subj /CN=localhost",
    )?;
    openssl(
        dir,
        &format!(
            "x509 -req -in server.csr -CA {ca}.crt -CAkey {ca}.key -CAcreateserial -out server.crt -days 2 \
             -extfile server.ext"
        ),
    )
}

/// Turns TLS on in `pg` with the server certificate from `certs`.
fn enable_ssl(pg: &Postgres, certs: &Path) -> anyhow::Result<()> {
    for file in ["server.crt", "server.key"] {
        let text = std::fs::read_to_string(certs.join(file))?;
        write_file(&pg.data_dir().join(file), &text, 0o600, pg.run_as())?;
    }
    pg.psql("postgres", "ALTER SYSTEM SET ssl = on")?;
    pg.reload()?;
    let on = pg.psql("postgres", "SHOW ssl")?;
    anyhow::ensure!(on == "on", "ssl is {on:?} after reload; server log:\n{}", pg.log_tail(20));
    Ok(())
}

struct TlsServer {
    pg: Arc<Postgres>,
    certs: tempfile::TempDir,
}

async fn tls_server() -> TlsServer {
    let pg = start_postgres().await;
    let certs = tempfile::tempdir().unwrap();
    let (setup, dir) = (pg.clone(), certs.path().to_owned());
    blocking(move || {
        make_ca(&dir, "ca")?;
        make_ca(&dir, "other_ca")?;
        make_server_cert(&dir, "ca")?;
        enable_ssl(&setup, &dir)?;
        setup.create_role("scram_user", "scram-pw-1", PgAuth::ScramSha256)?;
        setup.create_role("md5_user", "md5-pw-1", PgAuth::Md5)
    })
    .await;
    TlsServer { pg, certs }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_modes_against_a_real_server() {
    let TlsServer { pg, certs } = tls_server().await;
    let ca = certs.path().join("ca.crt");

    // verify-full with the CA file and the certificate's name: SCRAM with channel binding.
    let mut cfg = config(&pg, "scram_user", Some("scram-pw-1"));
    cfg.host = "localhost".into();
    cfg.tls = TlsMode::VerifyFull;
    cfg.ca_file = Some(ca.clone());
    let mut up = connect(&cfg).await.unwrap_or_else(|e| panic!("{e}\n{}", pg.log_tail(20)));
    assert!(up.is_tls());
    assert_eq!(up.auth_method(), AuthMethod::ScramSha256Plus);
    assert_eq!(up.address(), format!("localhost:{}", pg.port()));
    assert_select_one(&mut up).await;
    let frames = common::simple_query(&mut up, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").await;
    assert_eq!(tags(&frames), "TDCZ");
    assert!(frames[1].body().ends_with(b"t"), "the server sees TLS");

    // MD5 over TLS as well.
    let mut md5 = cfg.clone();
    md5.user = "md5_user".into();
    md5.password = Some("md5-pw-1".into());
    let mut up = connect(&md5).await.unwrap();
    assert_eq!(up.auth_method(), AuthMethod::Md5);
    assert!(up.is_tls());
    assert_select_one(&mut up).await;

    // require: encrypted, whatever the certificate says (127.0.0.1 is not in it).
    let mut require = config(&pg, "scram_user", Some("scram-pw-1"));
    require.tls = TlsMode::Require;
    let mut up = connect(&require).await.unwrap();
    assert!(up.is_tls());
    assert_eq!(up.auth_method(), AuthMethod::ScramSha256Plus);
    assert_select_one(&mut up).await;

    // verify-full against a name the certificate does not carry.
    let mut wrong_name = cfg.clone();
    wrong_name.host = "127.0.0.1".into();
    let err = connect(&wrong_name).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Tls { .. }), "{err}");
    assert!(err.to_string().contains(&format!("127.0.0.1:{}", pg.port())), "{err}");
    assert!(err.to_string().to_lowercase().contains("name"), "{err}");

    // verify-full trusting another CA.
    let mut wrong_ca = cfg.clone();
    wrong_ca.ca_file = Some(certs.path().join("other_ca.crt"));
    let err = connect(&wrong_ca).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Tls { .. }), "{err}");
    assert!(!err.to_string().contains("scram-pw-1"));

    // verify-full with the system roots only (the test CA is not among them): refused, either
    // by the handshake or because the machine has no roots at all.
    let mut system = cfg.clone();
    system.ca_file = None;
    let err = connect(&system).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Tls { .. } | UpstreamError::Config(_)), "{err}");

    // Plain TCP still works on this server.
    let mut up = connect(&config(&pg, "scram_user", Some("scram-pw-1"))).await.unwrap();
    assert!(!up.is_tls());
    assert_eq!(up.auth_method(), AuthMethod::ScramSha256);
    assert_select_one(&mut up).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_over_tls() {
    let TlsServer { pg, certs } = tls_server().await;
    let mut cfg = config(&pg, "postgres", Some(pg.superuser_password()));
    cfg.host = "localhost".into();
    cfg.tls = TlsMode::VerifyFull;
    cfg.ca_file = Some(certs.path().join("ca.crt"));
    let mut up = connect(&cfg).await.unwrap();
    let token = up.cancel_token().unwrap();

    let query = FrontendMessage::new(b'Q', b"SELECT pg_sleep(30)\0").unwrap();
    up.stream().write_all(query.raw()).await.unwrap();
    up.stream().flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel().await.unwrap();
    let frames = tokio::time::timeout(Duration::from_secs(20), read_until_ready(&mut up))
        .await
        .expect("the query was not cancelled")
        .unwrap();
    let error = frames.iter().find(|f| f.tag() == b'E').expect("an error");
    assert_eq!(error.error_fields().unwrap().code, "57014");
}
