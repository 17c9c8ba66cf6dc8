//! People through the company's identity provider: JWTs from a real OIDC provider (the
//! `oauth2-mock-server` npm package, started by the test kit) are accepted where a service token
//! is, their groups reach policy, and every way a JWT can be wrong is refused with 401.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use gatehouse_testkit::OidcProvider;
use serde_json::json;

const AUDIENCE: &str = "gatehouse-test";

fn gateway_for(idp: &OidcProvider) -> Gateway {
    Gateway::start_with(
        bin(),
        &[
            ("GATEHOUSE_OIDC_ISSUER", idp.issuer()),
            ("GATEHOUSE_OIDC_AUDIENCE", AUDIENCE),
            ("GATEHOUSE_OIDC_JWKS_MIN_REFRESH", "1s"),
        ],
    )
    .unwrap()
}

fn alice(idp: &OidcProvider, groups: &[&str]) -> String {
    idp.token(json!({"aud": AUDIENCE, "sub": "u-123", "email": "alice@example.com", "groups": groups})).unwrap()
}

fn get(gw: &Gateway, path: &str, token: &str) -> Http {
    curl("GET", &format!("{}{path}", gw.url()), Some(token), None)
}

fn set_policies(gw: &Gateway, text: &str) {
    let file = gw.data_dir().join("p.cedar");
    std::fs::write(&file, text).unwrap();
    gw.cli_ok(&["policies", "set", file.to_str().unwrap()]).unwrap();
}

#[test]
fn provider_tokens_become_users_whose_groups_reach_policy() {
    let idp = OidcProvider::start().unwrap();
    let gw = gateway_for(&idp);
    let auditor = alice(&idp, &["auditors", "staff"]);
    let who = get(&gw, "/api/v1/whoami", &auditor);
    assert_eq!(who.status, 200, "{}", who.body);
    assert_eq!(who.json()["principal"], "User::\"alice@example.com\"");
    assert_eq!(who.json()["groups"], json!(["auditors", "staff"]));

    set_policies(
        &gw,
        r#"@id("auditors-read-sessions")
permit (principal in Group::"auditors", action == Action::"api.read", resource == Api::"sessions");
@id("auditors-check-policies")
permit (principal in Group::"auditors", action == Action::"api.read", resource == Api::"policies");
@id("staff-read-orders")
permit (principal in Group::"staff", action == Action::"sql.select", resource == Table::"pg/public.orders");"#,
    );
    // The API's own authorisation sees the token's groups.
    assert_eq!(get(&gw, "/api/v1/sessions", &auditor).status, 200);
    let outsider = alice(&idp, &["staff"]);
    let r = get(&gw, "/api/v1/sessions", &outsider);
    assert_eq!(r.status, 403, "{}", r.body);
    // A single string claim is one group.
    let single = idp.token(json!({"aud": AUDIENCE, "email": "bob@example.com", "groups": "auditors"})).unwrap();
    assert_eq!(get(&gw, "/api/v1/sessions", &single).status, 200);

    // `policies check` about oneself decides with the token's groups, through the CLI.
    let out = gw
        .cli_as(&auditor, &["policies", "check", "--action", "sql.select", "--resource", "Table::\"pg/public.orders\""])
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<String> = stdout(&out).lines().map(String::from).collect();
    assert_eq!(lines[0], "allow", "{lines:?}");
    assert!(lines[1].contains("staff-read-orders"), "{lines:?}");
    let out = gw
        .cli_as(&auditor, &["policies", "check", "--action", "sql.select", "--resource", "Table::\"pg/public.other\""])
        .unwrap();
    assert_eq!(stdout(&out).lines().next(), Some("deny"));

    // Admin rights come from the admins group, for people too.
    let admin = idp.token(json!({"aud": AUDIENCE, "email": "root@example.com", "groups": ["admins"]})).unwrap();
    assert_eq!(get(&gw, "/api/v1/identities", &admin).status, 200);
}

fn forge(header: serde_json::Value, payload: serde_json::Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let head = URL_SAFE_NO_PAD.encode(header.to_string());
    let body = URL_SAFE_NO_PAD.encode(payload.to_string());
    let signing_input = format!("{head}.{body}");
    let sig = URL_SAFE_NO_PAD.encode(sign(signing_input.as_bytes()));
    format!("{signing_input}.{sig}")
}

#[test]
fn bad_tokens_are_refused_with_401() {
    let idp = OidcProvider::start().unwrap();
    let gw = gateway_for(&idp);
    let claims = json!({"aud": AUDIENCE, "email": "alice@example.com", "groups": ["staff"]});
    let good = idp.token(claims.clone()).unwrap();
    assert_eq!(get(&gw, "/api/v1/whoami", &good).status, 200);

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let jwk = idp.public_jwk().unwrap();
    let kid = jwk["kid"].as_str().unwrap().to_string();
    let payload =
        json!({"iss": idp.issuer(), "aud": AUDIENCE, "email": "alice@example.com", "exp": now + 600, "iat": now});
    let cases: Vec<(&str, String)> = vec![
        ("wrong audience", idp.token(json!({"aud": "someone-else", "email": "alice@example.com"})).unwrap()),
        (
            "wrong issuer",
            idp.token(json!({"aud": AUDIENCE, "email": "a@example.com", "iss": "http://127.0.0.1:1"})).unwrap(),
        ),
        ("expired", idp.token_expiring_in(claims.clone(), -600).unwrap()),
        ("no exp", idp.token(json!({"aud": AUDIENCE, "email": "a@example.com", "exp": null})).unwrap()),
        ("not yet valid", idp.token(json!({"aud": AUDIENCE, "email": "a@example.com", "nbf": now + 3600})).unwrap()),
        ("unknown key", idp.token_with_unknown_key(claims.clone()).unwrap()),
        ("alg none", forge(json!({"alg": "none", "typ": "JWT"}), payload.clone(), |_| vec![])),
        (
            "HMAC signed with the public key",
            forge(json!({"alg": "HS256", "typ": "JWT", "kid": kid}), payload.clone(), |input| {
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, jwk.to_string().as_bytes());
                ring::hmac::sign(&key, input).as_ref().to_vec()
            }),
        ),
        ("tampered payload", {
            let parts: Vec<&str> = good.split('.').collect();
            let mut p: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
            p["groups"] = json!(["admins"]);
            format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(p.to_string()), parts[2])
        }),
        ("no username claim", idp.token(json!({"aud": AUDIENCE, "sub": "x"})).unwrap()),
        ("garbage", "a.b.c".to_string()),
    ];
    for (what, token) in cases {
        let r = get(&gw, "/api/v1/whoami", &token);
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], "unauthenticated", "{what}");
    }
    // The refusals cost the provider at most a rate-limited JWKS fetch each second.
    let before = idp.jwks_fetches().unwrap();
    let started = std::time::Instant::now();
    for _ in 0..10 {
        assert_eq!(get(&gw, "/api/v1/whoami", &idp.token_with_unknown_key(claims.clone()).unwrap()).status, 401);
    }
    // At most one fetch per jwks_min_refresh (1 s here), however many tokens arrive.
    let allowed = 1 + started.elapsed().as_secs();
    assert!(idp.jwks_fetches().unwrap() - before <= allowed, "unknown kids must not hammer the provider");
}

#[test]
fn key_rotation_needs_no_restart_and_retires_old_tokens() {
    let idp = OidcProvider::start().unwrap();
    let gw = gateway_for(&idp);
    let old = alice(&idp, &["staff"]);
    assert_eq!(get(&gw, "/api/v1/whoami", &old).status, 200);

    idp.rotate_keys().unwrap();
    // Past the refresh rate limit, a token with the new key id makes the gateway refetch.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let new = alice(&idp, &["staff"]);
    let r = get(&gw, "/api/v1/whoami", &new);
    assert_eq!(r.status, 200, "new key works without a restart: {}", r.body);
    let r = get(&gw, "/api/v1/whoami", &old);
    assert_eq!(r.status, 401, "a token of the removed key stops working: {}", r.body);
}

#[test]
fn tokens_refused_when_oidc_is_off_and_issuer_must_be_https() {
    let idp = OidcProvider::start().unwrap();
    let gw = gateway();
    assert_eq!(get(&gw, "/api/v1/whoami", &alice(&idp, &[])).status, 401, "no OIDC configured: JWTs mean nothing");
    let out = std::process::Command::new(bin())
        .args(["config", "check"])
        .env("GATEHOUSE_OIDC_ISSUER", "http://idp.example.com")
        .env("GATEHOUSE_OIDC_AUDIENCE", AUDIENCE)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("oidc.issuer") && stderr(&out).contains("https"), "{}", stderr(&out));
}
