//! The server process: health endpoints, the public OpenAPI document, configuration errors,
//! environment variables that are not configuration, and a clean drain on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};

use common::*;

#[test]
fn health_readiness_and_openapi_need_no_token() {
    let gw = gateway();
    let h = curl("GET", &format!("{}/healthz", gw.url()), None, None);
    assert_eq!((h.status, h.json()["status"].as_str()), (200, Some("ok")));
    let r = curl("GET", &format!("{}/readyz", gw.url()), None, None);
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ready")));
    let doc = curl("GET", &format!("{}/api/v1/openapi.json", gw.url()), None, None);
    assert_eq!(doc.status, 200);
    let doc = doc.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/identities",
        "/api/v1/connections/{name}",
        "/api/v1/policies/check",
        "/api/v1/sessions",
        "/api/v1/audit/verify",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
    // Everything else needs a token, and errors have the documented shape.
    let e = curl("GET", &format!("{}/api/v1/identities", gw.url()), None, None);
    assert_eq!(e.status, 401);
    assert_eq!(e.json()["error"]["code"], "unauthenticated");
    let e = curl("GET", &format!("{}/api/v1/nope", gw.url()), Some(gw.admin_token()), None);
    assert_eq!((e.status, e.json()["error"]["code"].as_str()), (404, Some("not_found")));
    let e = curl(
        "POST",
        &format!("{}/api/v1/identities", gw.url()),
        Some(gw.admin_token()),
        Some(r#"{"name": "x", "bogus": 1}"#),
    );
    assert_eq!(e.status, 422, "{}", e.body);
}

#[test]
fn client_variables_do_not_disturb_serve() {
    let mut gw =
        Gateway::start_with(bin(), &[("GATEHOUSE_TOKEN", "ghs_garbage"), ("GATEHOUSE_SERVER", "not a url at all")])
            .expect("serve ignores the client's variables");
    assert_eq!(curl("GET", &format!("{}/readyz", gw.url()), None, None).status, 200);
    assert_eq!(gw.terminate().unwrap(), Some(0));
}

#[test]
fn sigterm_drains_and_exits_zero_and_restart_keeps_everything() {
    let mut gw = gateway();
    let token = gw.cli_ok(&["identities", "add", "keeper", "--groups", "g"]).unwrap();
    assert_eq!(gw.terminate().unwrap(), Some(0));
    assert!(gw.log().contains("draining") && gw.log().contains("audit trail flushed"), "{}", gw.log());
    gw.restart().unwrap();
    let r = curl("GET", &format!("{}/api/v1/whoami", gw.url()), Some(token.trim()), None);
    assert_eq!(r.status, 200, "identities survive a restart");
    // A second start on a non-empty store does not replace the bootstrap token.
    let r = curl("GET", &format!("{}/api/v1/whoami", gw.url()), Some(gw.admin_token()), None);
    assert_eq!(r.status, 200);
    // A clean restart is not a broken chain.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!gw.log().contains("AUDIT CHAIN BROKEN"), "{}", gw.log());
    let ready = curl("GET", &format!("{}/readyz", gw.url()), None, None);
    assert!(ready.json()["audit_chain"].as_str().unwrap().starts_with("ok: "), "{}", ready.body);
}

fn serve_fails(env: &[(&str, &str)], config: Option<&str>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin());
    cmd.arg("serve").arg("--data-dir").arg(dir.path().join("data"));
    if let Some(text) = config {
        let path = dir.path().join("gatehouse.toml");
        std::fs::write(&path, text).unwrap();
        cmd.arg("--config").arg(path);
    }
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("GATEHOUSE_")) {
        cmd.env_remove(k);
    }
    let out = cmd.envs(env.iter().copied()).stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a bad config stops the server at start");
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
    assert!(!dir.path().join("data").exists(), "nothing is created for a bad config");
    err
}

#[test]
fn bad_config_is_one_line_naming_the_key() {
    let e = serve_fails(&[("GATEHOUSE_LISTEN_POSTGRES", "localhost")], None);
    assert!(e.contains("listen.postgres") && e.contains("GATEHOUSE_LISTEN_POSTGRES"), "{e}");
    let e = serve_fails(&[], Some("[listen]\napi = \"127.0.0.1:99999\"\n"));
    assert!(e.contains("listen.api"), "{e}");
    let e = serve_fails(&[], Some("[audit]\nfsync = \"never\"\n"));
    assert!(e.contains("audit.fsync"), "{e}");
    let e = serve_fails(&[], Some("[listne]\napi = \"127.0.0.1:1\"\n"));
    assert!(e.contains("listne"), "{e}");
    let e = serve_fails(&[], Some("data_dir = [\n"));
    assert!(e.contains("line 1"), "{e}");
    let e = serve_fails(&[("GATEHOUSE_LISTEN_API", "0.0.0.0:8800")], None);
    assert!(e.contains("allow_plaintext"), "{e}");
}

#[test]
fn config_check_prints_effective_settings() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["config", "check", "--data-dir"])
        .arg(dir.path())
        .env("GATEHOUSE_LISTEN_POSTGRES", "127.0.0.1:6432")
        .env("GATEHOUSE_MASTER_KEY", "c2VjcmV0LWtleS1tYXRlcmlhbC1kby1ub3QtcHJpbnQh")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("postgres = \"127.0.0.1:6432\""), "{text}");
    assert!(text.contains("api = \"127.0.0.1:8800\""), "{text}");
    assert!(
        text.contains("GATEHOUSE_MASTER_KEY") && !text.contains("c2VjcmV0"),
        "the key's source, never the key: {text}"
    );
}

#[test]
fn api_over_tls_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = (dir.path().join("ca.crt"), dir.path().join("api.crt"), dir.path().join("api.key"));
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir.path()).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
    };
    // A CA, and a server certificate for 127.0.0.1 signed by it.
    openssl(
        &["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"]
            .into_iter()
            .chain(["-subj", "/CN=test CA", "-keyout", "ca.key", "-out", "ca.crt"])
            .collect::<Vec<_>>(),
    );
    openssl(
        &["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=localhost"]
            .into_iter()
            .chain(["-keyout", "api.key", "-out", "api.csr"])
            .collect::<Vec<_>>(),
    );
    std::fs::write(
        dir.path().join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        &["x509", "-req", "-in", "api.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1"]
            .into_iter()
            .chain(["-extfile", "ext.cnf", "-out", "api.crt"])
            .collect::<Vec<_>>(),
    );
    let gw = Gateway::start_with(
        bin(),
        &[("GATEHOUSE_TLS_CERT", cert.to_str().unwrap()), ("GATEHOUSE_TLS_KEY", key.to_str().unwrap())],
    )
    .unwrap();
    let https = format!("https://127.0.0.1:{}", gw.port());
    let ok = Command::new("curl").args(["-sS", "--cacert"]).arg(&ca).arg(format!("{https}/healthz")).output().unwrap();
    assert!(ok.status.success() && stdout(&ok).contains("ok"), "{}", stderr(&ok));
    // Plain HTTP to a TLS listener gets nowhere, and an untrusted client refuses the server.
    let plain =
        Command::new("curl").args(["-sS", "--max-time", "5"]).arg(format!("{}/healthz", gw.url())).output().unwrap();
    assert!(!stdout(&plain).contains("ok"));
    let untrusted = Command::new("curl").args(["-sS"]).arg(format!("{https}/healthz")).output().unwrap();
    assert!(!untrusted.status.success());
    // The client trusts the server with --server-ca.
    let out = gw
        .client()
        .env("GATEHOUSE_SERVER", &https)
        .env("GATEHOUSE_TOKEN", gw.admin_token())
        .arg("--server-ca")
        .arg(&ca)
        .args(["identities", "list"])
        .output()
        .unwrap();
    assert!(out.status.success() && stdout(&out).contains("admin"), "{}", stderr(&out));
    // Over TLS the web console's cookies are Secure, the sign-in's included.
    let jar = dir.path().join("jar");
    let signin = Command::new("curl")
        .args(["-sS", "-D", "-", "--cacert"])
        .arg(&ca)
        .arg("-c")
        .arg(&jar)
        .arg(format!("{https}/console/signin"))
        .output()
        .unwrap();
    let page = stdout(&signin);
    assert!(page.contains("set-cookie: gatehouse_csrf=") && page.contains("; Secure"), "{page}");
    let csrf = page.split("name=\"csrf\" value=\"").nth(1).and_then(|r| r.split('"').next()).unwrap().to_string();
    let signed = Command::new("curl")
        .args(["-sS", "-D", "-", "-o", "/dev/null", "--cacert"])
        .arg(&ca)
        .arg("-b")
        .arg(&jar)
        .args(["--data-urlencode", &format!("csrf={csrf}"), "--data-urlencode"])
        .arg(format!("token={}", gw.admin_token()))
        .arg(format!("{https}/console/signin/token"))
        .output()
        .unwrap();
    let headers = stdout(&signed);
    let cookie = headers.lines().find(|l| l.starts_with("set-cookie: gatehouse_console=")).unwrap_or_default();
    assert!(
        headers.lines().next().is_some_and(|l| l.contains(" 303"))
            && cookie.contains("HttpOnly")
            && cookie.contains("Secure"),
        "{headers}"
    );

    // A key that does not match, or a missing one, stops the server with one line.
    let e = serve_fails(&[("GATEHOUSE_TLS_CERT", cert.to_str().unwrap())], None);
    assert!(e.contains("tls.key"), "{e}");
    let e =
        serve_fails(&[("GATEHOUSE_TLS_CERT", cert.to_str().unwrap()), ("GATEHOUSE_TLS_KEY", "/nonexistent.key")], None);
    assert!(e.contains("tls.key") && e.contains("nonexistent"), "{e}");
}

#[test]
fn an_existing_store_without_its_master_key_refuses_to_start() {
    let mut gw = gateway();
    gw.cli_ok(&["identities", "add", "svc", "--groups", "g"]).unwrap();
    gw.terminate().unwrap();
    let key = gw.data_dir().join("master.key");
    let saved = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    let err = gw.restart().unwrap_err().to_string();
    assert!(err.contains("master key must be given"), "{err}");
    assert!(!key.exists(), "no new key was generated next to the old store");
    std::fs::write(&key, saved).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    gw.restart().unwrap();
    gw.cli_ok(&["identities", "show", "svc"]).unwrap();
}

#[test]
fn api_errors_keep_their_shape_for_malformed_requests() {
    let gw = gateway();
    let t = Some(gw.admin_token());
    for (method, path, body, status) in [
        ("POST", "/api/v1/identities", Some("{not json"), 422),
        ("POST", "/api/v1/identities", Some("[]"), 422),
        ("DELETE", "/api/v1/policies", None, 405),
        ("GET", "/api/v1/sessions?limit=lots", None, 422),
    ] {
        let r = curl(method, &format!("{}{path}", gw.url()), t, body);
        assert_eq!(r.status, status, "{method} {path}: {}", r.body);
        assert!(r.json()["error"]["code"].is_string() && r.json()["error"]["message"].is_string(), "{}", r.body);
    }
}

#[test]
fn tls_ca_prints_a_stable_ca_that_signs_the_generated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        let out = Command::new(bin()).args(["tls", "ca", "--data-dir"]).arg(dir.path()).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    let first = run();
    assert!(first.starts_with("-----BEGIN CERTIFICATE-----"), "{first}");
    assert_eq!(run(), first, "the CA is kept, so pinned callers keep working");
    let tls = dir.path().join("tls");
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(tls.join("ca.crt"))
        .arg(tls.join("server.crt"))
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}{}", stdout(&verify), stderr(&verify));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for key in ["ca.key", "server.key"] {
            assert_eq!(std::fs::metadata(tls.join(key)).unwrap().permissions().mode() & 0o777, 0o600, "{key}");
        }
    }
    let missing = Command::new(bin()).args(["tls", "ca", "--data-dir", "/nonexistent-gatehouse-dir"]).output().unwrap();
    assert!(!missing.status.success());
}
