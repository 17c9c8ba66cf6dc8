//! Starts the real OIDC provider (`oauth2-mock-server` under node) and checks what the kit
//! promises, fetching over HTTP with the stock `curl` and verifying RS256 signatures with `ring`.
//! Needs `npm ci --prefix crates/testkit/oidc` first; the authorization-code test also drives the
//! kit's headless browser (`npm ci --prefix crates/testkit/browser`, Debian's `chromium`).

mod support;

use std::process::Command;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gatehouse_testkit::common::cmd::{self, SETUP_TIMEOUT};
use gatehouse_testkit::common::net::{port_accepts, wait_for_port_closed};
use gatehouse_testkit::common::random_hex;
use gatehouse_testkit::{Browser, OidcProvider, Page};
use serde_json::{Value, json};
use support::{Answer, HttpServer};

/// `curl -fsS` the URL and parse the body as JSON.
fn get_json(url: &str) -> Result<Value> {
    let body = cmd::run(Command::new("curl").args(["-fsS", "--max-time", "20", url]), SETUP_TIMEOUT)?;
    serde_json::from_str(&body).with_context(|| format!("{url} returned non-JSON: {body}"))
}

/// The published JWKS keys.
fn jwks(idp: &OidcProvider) -> Result<Vec<Value>> {
    let set = get_json(&idp.jwks_uri())?;
    set["keys"].as_array().cloned().with_context(|| format!("JWKS without keys: {set}"))
}

fn kids(keys: &[Value]) -> Vec<String> {
    keys.iter().filter_map(|k| k["kid"].as_str().map(str::to_owned)).collect()
}

/// Header and payload of a compact JWT, base64url-decoded and parsed.
fn decode(token: &str) -> Result<(Value, Value)> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        bail!("not a compact JWS: {token}");
    }
    let part = |i: usize| -> Result<Value> {
        let bytes = URL_SAFE_NO_PAD.decode(parts[i]).with_context(|| format!("part {i} of {token}"))?;
        Ok(serde_json::from_slice(&bytes)?)
    };
    Ok((part(0)?, part(1)?))
}

fn kid(token: &str) -> Result<String> {
    let (header, _) = decode(token)?;
    header["kid"].as_str().map(str::to_owned).with_context(|| format!("no kid in {header}"))
}

/// Whether `token`'s RS256 signature verifies with the RSA public `jwk`.
fn verifies(token: &str, jwk: &Value) -> Result<bool> {
    let (signed, sig) = token.rsplit_once('.').context("no signature")?;
    let field = |name: &str| -> Result<Vec<u8>> {
        let text = jwk[name].as_str().with_context(|| format!("JWK without {name}: {jwk}"))?;
        Ok(URL_SAFE_NO_PAD.decode(text)?)
    };
    let key = ring::signature::RsaPublicKeyComponents { n: field("n")?, e: field("e")? };
    let sig = URL_SAFE_NO_PAD.decode(sig)?;
    Ok(key.verify(&ring::signature::RSA_PKCS1_2048_8192_SHA256, signed.as_bytes(), &sig).is_ok())
}

/// Whether `token` verifies against the key the published JWKS has for its `kid`.
fn verifies_against_jwks(idp: &OidcProvider, token: &str) -> Result<bool> {
    let kid = kid(token)?;
    match jwks(idp)?.iter().find(|k| k["kid"] == kid.as_str()) {
        Some(jwk) => verifies(token, jwk),
        None => Ok(false),
    }
}

fn now() -> Result<i64> {
    Ok(i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs())?)
}

#[test]
fn discovery_document_names_the_issuer_and_jwks_uri() -> Result<()> {
    let idp = OidcProvider::start()?;
    assert_eq!(idp.issuer(), format!("http://127.0.0.1:{}", idp.port()));
    let doc = get_json(&idp.discovery_url())?;
    assert_eq!(doc["issuer"], idp.issuer(), "{doc}");
    assert_eq!(doc["jwks_uri"], idp.jwks_uri().as_str(), "{doc}");
    assert!(doc["id_token_signing_alg_values_supported"].as_array().is_some_and(|a| a.contains(&json!("RS256"))));

    let keys = jwks(&idp)?;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let key = &keys[0];
    assert_eq!(key["kty"], "RSA");
    assert_eq!(key["alg"], "RS256");
    for private in ["d", "p", "q", "dp", "dq", "qi"] {
        assert!(key.get(private).is_none(), "the JWKS leaks {private}: {key}");
    }
    Ok(())
}

#[test]
fn token_is_rs256_signed_by_the_published_key() -> Result<()> {
    let idp = OidcProvider::start()?;
    let before = now()?;
    let token = idp.token(json!({}))?;
    let (header, payload) = decode(&token)?;
    assert_eq!(header["alg"], "RS256", "{header}");
    assert_eq!(header["typ"], "JWT", "{header}");
    assert!(kids(&jwks(&idp)?).contains(&kid(&token)?));
    assert!(verifies_against_jwks(&idp, &token)?);

    assert_eq!(payload["iss"], idp.issuer(), "{payload}");
    let iat = payload["iat"].as_i64().context("iat")?;
    assert!((before - 5..=now()? + 5).contains(&iat), "{payload}");
    assert_eq!(payload["exp"].as_i64(), Some(iat + 3600), "{payload}");
    assert!(payload["nbf"].as_i64().is_some_and(|nbf| nbf <= iat), "{payload}");

    // The JWK handed out for key-confusion tests is the published one, public parts only.
    let jwk = idp.public_jwk()?;
    assert_eq!(jwk["kid"], kid(&token)?.as_str());
    assert_eq!(jwk["kty"], "RSA");
    assert!(jwk.get("d").is_none(), "{jwk}");
    assert!(jwks(&idp)?.contains(&jwk));
    assert!(verifies(&token, &jwk)?);
    Ok(())
}

#[test]
fn custom_claims_appear_in_the_payload() -> Result<()> {
    let idp = OidcProvider::start()?;
    let past = now()? - 600;
    let token = idp.token(json!({
        "aud": ["gatehouse", "other"],
        "sub": "alice",
        "email": "alice@example.com",
        "groups": ["dba", "ops"],
        "exp": past,
        "nbf": past - 60,
    }))?;
    let (_, payload) = decode(&token)?;
    assert_eq!(payload["aud"], json!(["gatehouse", "other"]), "{payload}");
    assert_eq!(payload["sub"], "alice");
    assert_eq!(payload["email"], "alice@example.com");
    assert_eq!(payload["groups"], json!(["dba", "ops"]));
    assert_eq!(payload["exp"], past);
    assert_eq!(payload["nbf"], past - 60);
    assert_eq!(payload["iss"], idp.issuer());
    // Still properly signed: only the claims make it unacceptable.
    assert!(verifies_against_jwks(&idp, &token)?);

    // Another issuer, and claims removed with null.
    let token = idp.token(json!({ "iss": "https://evil.example", "aud": "gatehouse", "exp": null, "nbf": null }))?;
    let (_, payload) = decode(&token)?;
    assert_eq!(payload["iss"], "https://evil.example");
    assert_eq!(payload["aud"], "gatehouse");
    assert!(payload.get("exp").is_none() && payload.get("nbf").is_none(), "{payload}");
    assert!(payload["iat"].is_i64());

    let err = idp.token(json!(["not", "an", "object"])).err().context("claims must be an object")?;
    assert!(err.to_string().contains("JSON object"), "{err:#}");
    Ok(())
}

#[test]
fn token_expiring_in_sets_exp() -> Result<()> {
    let idp = OidcProvider::start()?;
    for seconds in [-120, 0, 30, 86_400] {
        let (_, payload) = decode(&idp.token_expiring_in(json!({ "sub": "bob" }), seconds)?)?;
        let iat = payload["iat"].as_i64().context("iat")?;
        assert_eq!(payload["exp"].as_i64(), Some(iat + seconds), "{payload}");
        assert_eq!(payload["sub"], "bob");
    }
    // An explicit exp wins over the lifetime.
    let (_, payload) = decode(&idp.token_expiring_in(json!({ "exp": 42 }), 600)?)?;
    assert_eq!(payload["exp"], 42);
    Ok(())
}

#[test]
fn rotation_drops_the_old_key_from_the_jwks() -> Result<()> {
    let idp = OidcProvider::start()?;
    let old_token = idp.token(json!({ "sub": "alice" }))?;
    let old_kid = kid(&old_token)?;
    let old_jwk = idp.public_jwk()?;
    assert!(verifies_against_jwks(&idp, &old_token)?);

    idp.rotate_keys()?;
    let published = kids(&jwks(&idp)?);
    assert!(!published.contains(&old_kid), "old kid still published: {published:?}");
    assert_eq!(published.len(), 1, "{published:?}");

    let new_token = idp.token(json!({ "sub": "alice" }))?;
    let new_kid = kid(&new_token)?;
    assert_ne!(new_kid, old_kid);
    assert_eq!(published, [new_kid.as_str()]);
    assert!(verifies_against_jwks(&idp, &new_token)?);
    assert!(!verifies_against_jwks(&idp, &old_token)?);
    // The old token is still a valid signature by the old key: only the JWKS changed.
    assert!(verifies(&old_token, &old_jwk)?);
    assert!(!verifies(&new_token, &old_jwk)?);
    assert_eq!(idp.public_jwk()?["kid"], new_kid.as_str());

    // And again: each rotation leaves exactly the newest key.
    idp.rotate_keys()?;
    let third = kid(&idp.token(json!({}))?)?;
    assert_eq!(kids(&jwks(&idp)?), [third.as_str()]);
    assert!(third != new_kid && third != old_kid);
    Ok(())
}

#[test]
fn unknown_key_tokens_are_not_published() -> Result<()> {
    let idp = OidcProvider::start()?;
    let forged = idp.token_with_unknown_key(json!({ "aud": "gatehouse", "sub": "mallory" }))?;
    let (header, payload) = decode(&forged)?;
    assert_eq!(header["alg"], "RS256");
    let forged_kid = kid(&forged)?;
    let keys = jwks(&idp)?;
    assert!(!kids(&keys).contains(&forged_kid), "{forged_kid} is published");
    assert!(keys.iter().all(|k| !verifies(&forged, k).unwrap_or(true)), "a published key verifies it");
    // Otherwise it looks like a real token.
    assert_eq!(payload["iss"], idp.issuer());
    assert_eq!(payload["aud"], "gatehouse");
    assert_eq!(payload["sub"], "mallory");

    // Still unknown after a rotation; the same unknown key signs every such token.
    idp.rotate_keys()?;
    let again = idp.token_with_unknown_key(json!({}))?;
    assert_eq!(kid(&again)?, forged_kid);
    assert!(!kids(&jwks(&idp)?).contains(&forged_kid));
    assert!(!verifies_against_jwks(&idp, &again)?);
    Ok(())
}

#[test]
fn jwks_fetches_are_counted() -> Result<()> {
    let idp = OidcProvider::start()?;
    assert_eq!(idp.jwks_fetches()?, 0);
    get_json(&idp.discovery_url())?;
    idp.token(json!({}))?;
    assert_eq!(idp.jwks_fetches()?, 0, "only JWKS requests count");
    for _ in 0..3 {
        jwks(&idp)?;
    }
    assert_eq!(idp.jwks_fetches()?, 3);
    get_json(&format!("{}?cache-buster=1", idp.jwks_uri()))?;
    assert_eq!(idp.jwks_fetches()?, 4);
    Ok(())
}

#[test]
fn two_providers_at_once_on_different_ports() -> Result<()> {
    let a = thread::spawn(OidcProvider::start);
    let b = thread::spawn(OidcProvider::start);
    let a = a.join().map_err(|_| anyhow::anyhow!("start panicked"))??;
    let b = b.join().map_err(|_| anyhow::anyhow!("start panicked"))??;
    assert_ne!(a.port(), b.port());
    assert_ne!(a.issuer(), b.issuer());
    assert_ne!(a.log_path(), b.log_path());

    let token_a = a.token(json!({ "sub": "a" }))?;
    let token_b = b.token(json!({ "sub": "b" }))?;
    assert_eq!(decode(&token_a)?.1["iss"], a.issuer());
    assert_eq!(decode(&token_b)?.1["iss"], b.issuer());
    assert!(verifies_against_jwks(&a, &token_a)? && verifies_against_jwks(&b, &token_b)?);
    // Each has its own keys.
    assert!(!verifies_against_jwks(&b, &token_a)? && !verifies_against_jwks(&a, &token_b)?);
    a.rotate_keys()?;
    assert!(verifies_against_jwks(&b, &token_b)?, "rotating one provider touched the other");
    // Each counts its own JWKS fetches: two for `a`, three for `b` above.
    assert_eq!((a.jwks_fetches()?, b.jwks_fetches()?), (2, 3));
    Ok(())
}

#[test]
fn one_provider_shared_between_threads() -> Result<()> {
    let idp = OidcProvider::start()?;
    thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..4)
            .map(|t| {
                let idp = &idp;
                s.spawn(move || -> Result<()> {
                    for i in 0..10 {
                        let sub = format!("user-{t}-{i}");
                        let token = idp.token(json!({ "sub": sub }))?;
                        assert_eq!(decode(&token)?.1["sub"], sub.as_str());
                        idp.jwks_fetches()?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
        }
        Ok(())
    })?;
    assert!(verifies_against_jwks(&idp, &idp.token(json!({}))?)?);
    Ok(())
}

#[test]
fn drop_stops_node_and_removes_its_directory() -> Result<()> {
    let idp = OidcProvider::start()?;
    let port = idp.port();
    let dir = idp.log_path().parent().context("log has a directory")?.to_path_buf();
    assert!(port_accepts(port));
    assert!(dir.is_dir());
    assert!(format!("{idp:?}").contains(&port.to_string()));
    drop(idp);
    wait_for_port_closed(port, Duration::from_secs(10))?;
    assert!(!dir.exists(), "{} left behind", dir.display());
    Ok(())
}

/// `s` with everything but RFC 3986's unreserved characters percent-encoded.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of `name` in the query string of `url` (not decoded; the provider's codes and the
/// test's states need no decoding).
fn query_param(url: &str, name: &str) -> Option<String> {
    let (_, query) = url.split_once('?')?;
    query.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('=')).map(str::to_owned)
}

/// The client id the tests log in to.
const CLIENT_ID: &str = "gatehouse-console";

/// Sends the browser to `<issuer>/authorize` (with an S256 `code_challenge` if given), lets the
/// provider redirect it to `redirect_uri`, and returns the code from the URL it landed on.
fn authorize(page: &Page<'_>, idp: &OidcProvider, redirect_uri: &str, challenge: Option<&str>) -> Result<String> {
    let pkce = challenge.map(|c| format!("&code_challenge={c}&code_challenge_method=S256")).unwrap_or_default();
    let url = format!(
        "{}/authorize?response_type=code&client_id={CLIENT_ID}&redirect_uri={}&state=s&nonce=n&scope=openid{pkce}",
        idp.issuer(),
        encode(redirect_uri)
    );
    assert_eq!(page.goto(&url)?, 200);
    let landed = page.url()?;
    assert!(landed.starts_with(redirect_uri), "{landed}");
    assert_eq!(page.text("#cb")?, "callback");
    assert_eq!(query_param(&landed, "state").as_deref(), Some("s"), "{landed}");
    query_param(&landed, "code").with_context(|| format!("no code in {landed}"))
}

/// POSTs `grant_type=authorization_code` to `<issuer>/token` with `curl`; the HTTP status and
/// the JSON body.
fn exchange(idp: &OidcProvider, code: &str, redirect_uri: &str, verifier: Option<&str>) -> Result<(u16, Value)> {
    let mut curl = Command::new("curl");
    curl.args(["-sS", "--max-time", "20", "-w", "\\n%{http_code}"]);
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("client_id", CLIENT_ID),
        ("redirect_uri", redirect_uri),
    ];
    form.extend(verifier.map(|v| ("code_verifier", v)));
    for (name, value) in form {
        curl.arg("--data-urlencode").arg(format!("{name}={value}"));
    }
    curl.arg(format!("{}/token", idp.issuer()));
    let out = cmd::run(&mut curl, SETUP_TIMEOUT)?;
    let (body, status) = out.rsplit_once('\n').with_context(|| format!("no status line in {out:?}"))?;
    let body = serde_json::from_str(body).with_context(|| format!("the token endpoint returned non-JSON: {body}"))?;
    Ok((status.trim().parse()?, body))
}

#[test]
fn authorization_code_flow_carries_the_login_claims() -> Result<()> {
    let idp = OidcProvider::start()?;
    let app = HttpServer::start(|_, target| {
        if target.starts_with("/cb?") { Answer::html(r#"<p id="cb">callback</p>"#) } else { Answer::not_found() }
    })?;
    let redirect_uri = format!("{}/cb", app.url());
    let browser = Browser::start()?;
    let page = browser.context("alice");
    assert_eq!(idp.code_exchanges()?, (0, 0));

    idp.login_as(json!({ "sub": "alice", "email": "alice@example.com", "groups": ["dba", "ops"], "amr": null }))?;
    let verifier = random_hex(32)?;
    let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()));
    let code = authorize(&page, &idp, &redirect_uri, Some(&challenge))?;
    let (status, tokens) = exchange(&idp, &code, &redirect_uri, Some(&verifier))?;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer", "{tokens}");
    assert_eq!(idp.code_exchanges()?, (1, 1));

    let id_token = tokens["id_token"].as_str().with_context(|| format!("no id_token in {tokens}"))?;
    let access_token = tokens["access_token"].as_str().with_context(|| format!("no access_token in {tokens}"))?;
    for token in [id_token, access_token] {
        assert!(verifies_against_jwks(&idp, token)?);
        let (_, claims) = decode(token)?;
        assert_eq!(claims["iss"], idp.issuer(), "{claims}");
        assert_eq!(claims["sub"], "alice", "{claims}");
        assert_eq!(claims["email"], "alice@example.com", "{claims}");
        assert_eq!(claims["groups"], json!(["dba", "ops"]), "{claims}");
        assert!(claims.get("amr").is_none(), "null removes a claim: {claims}");
    }
    let (_, id_claims) = decode(id_token)?;
    assert_eq!(id_claims["aud"], CLIENT_ID, "{id_claims}");
    assert_eq!(id_claims["nonce"], "n", "{id_claims}");

    // A verifier that does not match the challenge is refused, and counted.
    let code = authorize(&page, &idp, &redirect_uri, Some(&challenge))?;
    let (status, body) = exchange(&idp, &code, &redirect_uri, Some(&random_hex(32)?))?;
    assert_eq!(status, 400, "{body}");
    assert!(body["error_description"].as_str().is_some_and(|d| d.contains("code_verifier")), "{body}");
    assert!(body.get("id_token").is_none(), "{body}");
    assert_eq!(idp.code_exchanges()?, (2, 2));

    // Without PKCE; the claims of a later login_as replace the earlier ones and may override the
    // package's aud and nonce.
    idp.login_as(json!({ "sub": "bob", "aud": "elsewhere", "nonce": null }))?;
    let code = authorize(&page, &idp, &redirect_uri, None)?;
    let (status, tokens) = exchange(&idp, &code, &redirect_uri, None)?;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(idp.code_exchanges()?, (3, 2));
    let (_, id_claims) = decode(tokens["id_token"].as_str().context("id_token")?)?;
    assert_eq!(id_claims["sub"], "bob", "{id_claims}");
    assert_eq!(id_claims["aud"], "elsewhere", "{id_claims}");
    assert!(id_claims.get("nonce").is_none() && id_claims.get("email").is_none(), "{id_claims}");

    // Tokens minted directly are not logins.
    let (_, minted) = decode(&idp.token(json!({}))?)?;
    assert!(minted.get("sub").is_none(), "{minted}");
    let err = idp.login_as(json!("alice")).err().context("claims must be an object")?;
    assert!(err.to_string().contains("JSON object"), "{err:#}");
    assert!(page.errors()?.is_empty());
    Ok(())
}
