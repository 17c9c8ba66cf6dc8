//! A throwaway OpenID Connect provider: the npm package `oauth2-mock-server` (pinned in
//! `crates/testkit/oidc/package.json`), run by `node` through `crates/testkit/oidc/provider.mjs`
//! on a loopback port picked at run time. It serves a real discovery document
//! (`/.well-known/openid-configuration`) and JWKS (`/jwks`) over HTTP, and the test drives it
//! over the node process's stdin/stdout: mint RS256 tokens with any claims, mint tokens signed by
//! a key the JWKS does not publish, rotate the signing key (the old one leaves the JWKS), read the
//! public JWK, and count JWKS fetches (to check a verifier's caching).
//!
//! It also serves the package's authorization-code flow for interactive logins:
//! `GET <issuer>/authorize?response_type=code&client_id=…&redirect_uri=…&state=…&nonce=…` (with
//! `code_challenge`/`code_challenge_method=S256` for PKCE) redirects at once, without a login
//! page, to `redirect_uri?code=…&state=…`, and `POST <issuer>/token` with
//! `grant_type=authorization_code&code=…&client_id=…` (and `code_verifier`) answers an
//! `access_token` and an `id_token` (`aud` = the client id, `nonce` = the one given to
//! `/authorize`, `sub` = `johndoe`). [`OidcProvider::login_as`] picks who logs in: its claims are
//! laid over both tokens of every later exchange. [`OidcProvider::code_exchanges`] counts the
//! exchanges, and those that carried a `code_verifier`. Mind that the package checks the
//! verifier against the challenge only when one is sent, and checks neither the code itself nor
//! the `redirect_uri`: a test of a client's PKCE looks at the counts, not at a refusal.
//!
//! The package is installed by the test command, not by the kit: run
//! `npm ci --prefix crates/testkit/oidc` ([`NPM_INSTALL`]) once before the tests. `node` (20.19 or
//! newer) is taken from `PATH` unless [`ENV_NODE`] names it. Node runs as the current user even
//! when the tests run as root: it refuses nothing and needs no privileges, and the package
//! directory need not be readable by another account. Its standard error goes to a log file in
//! a temporary directory; dropping the [`OidcProvider`] kills the process and removes the
//! directory.
//!
//! ```no_run
//! use gatehouse_testkit::OidcProvider;
//! use serde_json::json;
//!
//! # fn main() -> anyhow::Result<()> {
//! let idp = OidcProvider::start()?; // node provider.mjs <port> on 127.0.0.1:<free port>
//! let jwt = idp.token(json!({ "aud": "gatehouse", "sub": "alice", "groups": ["dba"] }))?;
//! let expired = idp.token_expiring_in(json!({ "aud": "gatehouse" }), -60)?;
//! let forged = idp.token_with_unknown_key(json!({ "aud": "gatehouse" }))?;
//! idp.rotate_keys()?; // `jwt` no longer verifies against the published JWKS
//! let _fetches = idp.jwks_fetches()?;
//! idp.login_as(json!({ "sub": "alice", "email": "alice@example.com", "groups": ["dba"] }))?;
//! // … a browser goes through <issuer>/authorize, the client posts the code to <issuer>/token …
//! let (_exchanges, _with_pkce) = idp.code_exchanges()?;
//! let _issuer = idp.issuer(); // "http://127.0.0.1:<port>", as the discovery document says
//! # let _ = (jwt, expired, forged);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::common::cmd;
use crate::common::dir::server_dir;
use crate::common::lineproto::{self, Launch, LineProcess, Wording};
use crate::common::net::{self, PortInUse};
use crate::common::user::RunAs;

/// Environment variable naming the `node` binary to run (default: `node` from `PATH`).
pub const ENV_NODE: &str = "GATEHOUSE_TEST_NODE";

/// The command, run from the repository root, that installs the pinned package.
pub const NPM_INSTALL: &str = "npm ci --prefix crates/testkit/oidc";

/// The npm package serving the provider, and the version line the kit is written against.
const PACKAGE: &str = "oauth2-mock-server";
const PACKAGE_VERSION_PREFIX: &str = "8.2.";

/// The script (in [`package_dir`]) that runs the provider and speaks the line protocol.
const SCRIPT: &str = "provider.mjs";

/// Path of the JWKS under the issuer URL (set by `provider.mjs`).
const JWKS_PATH: &str = "/jwks";

/// Lifetime of tokens from [`OidcProvider::token`], in seconds (the package's default).
pub const DEFAULT_EXPIRES_IN: i64 = 3600;

/// Deadline for node to load the package, make the first key and listen.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Deadline for one command (a key rotation makes an RSA key, which takes a moment on a busy
/// machine).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Lines of the provider's log quoted in errors.
const LOG_LINES: usize = 30;

/// The directory holding `package.json`, `package-lock.json`, `provider.mjs` and, once
/// [`NPM_INSTALL`] ran, `node_modules/`.
pub fn package_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc")
}

/// The `node` binary: [`ENV_NODE`] if set, else `node` from `PATH`.
pub fn find_node() -> Result<PathBuf> {
    find_node_for(&format!("the OIDC provider ({PACKAGE} from npm) needs Node.js 20.19 or newer"), NPM_INSTALL)
}

/// [`find_node`] for another user of node: `why` says who needs it, `install` is the npm command
/// to run once node is there.
pub(crate) fn find_node_for(why: &str, install: &str) -> Result<PathBuf> {
    if let Some(node) = std::env::var_os(ENV_NODE) {
        let node = PathBuf::from(node);
        if node.is_file() {
            return Ok(node);
        }
        bail!("{ENV_NODE}={} is not a file", node.display());
    }
    cmd::which("node").with_context(|| {
        format!(
            "`node` not found in PATH: {why}; install it (Debian: `nodejs` and `npm`) or set {ENV_NODE}, then \
             run `{install}`"
        )
    })
}

/// Checks that `dir` holds the script and an installed `oauth2-mock-server` 8.2.x.
fn check_package(dir: &Path) -> Result<()> {
    lineproto::check_package(dir, SCRIPT, PACKAGE, PACKAGE_VERSION_PREFIX, NPM_INSTALL)
}

/// A running OIDC provider owned by a test. See the [module docs](self).
///
/// Safe to share between threads (`&OidcProvider` is enough for every method): commands are
/// serialised over one pipe. Dropping it kills node and removes its directory.
pub struct OidcProvider {
    node: PathBuf,
    port: u16,
    issuer: String,
    conn: Mutex<LineProcess>,
    /// Holds `provider.log` (node's stderr); removed on Drop after node was killed.
    dir: TempDir,
}

impl fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcProvider")
            .field("issuer", &self.issuer)
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .field("node", &self.node)
            .finish()
    }
}

impl OidcProvider {
    /// Starts `node provider.mjs <port>` on a free loopback port (trying another port if that
    /// one gets taken first) and waits until it listens with its first RS256 key. Fails with a
    /// clear message if `node` or the npm package is missing (run [`NPM_INSTALL`]). Blocks for
    /// a fraction of a second; from async tests call it inside `tokio::task::spawn_blocking`.
    pub fn start() -> Result<OidcProvider> {
        let node = find_node()?;
        let pkg = package_dir();
        check_package(&pkg)?;
        let dir = server_dir("gatehouse-oidc-", &RunAs::Current)?;
        let log = dir.path().join("provider.log");
        let (port, issuer, conn) = net::start_on_free_port("OIDC provider (oauth2-mock-server)", |port| {
            let (issuer, conn) = spawn(&node, &pkg, &log, port)?;
            Ok((port, issuer, conn))
        })?;
        Ok(OidcProvider { node, port, issuer, conn: Mutex::new(conn), dir })
    }

    /// The issuer URL, `http://127.0.0.1:<port>` without a trailing slash: exactly the `issuer`
    /// of the discovery document and the `iss` of the tokens (unless a test overrides it).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The TCP port, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `<issuer>/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    /// `<issuer>/jwks`, the `jwks_uri` of the discovery document.
    pub fn jwks_uri(&self) -> String {
        format!("{}{JWKS_PATH}", self.issuer)
    }

    /// Node's standard error: startup failures, and every command that failed.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("provider.log")
    }

    /// A JWT signed RS256 with the current key (its `kid` in the header; `typ` is `JWT`), valid
    /// for [`DEFAULT_EXPIRES_IN`] seconds. The payload is the provider's defaults (`iss` =
    /// [`issuer`](Self::issuer), `iat` = now, `exp` = now + 3600, `nbf` = now - 10) overridden
    /// and extended by `claims`, which must be a JSON object: set `aud`, `sub`, `email`,
    /// `groups`, or override `exp`, `nbf`, `iss`. A claim set to `null` is removed (say
    /// `"exp": null` for a token without expiry).
    pub fn token(&self, claims: Value) -> Result<String> {
        self.token_expiring_in(claims, DEFAULT_EXPIRES_IN)
    }

    /// Like [`token`](Self::token), with `exp` = now + `seconds` (negative: already expired).
    /// An `exp` in `claims` still wins.
    pub fn token_expiring_in(&self, claims: Value, seconds: i64) -> Result<String> {
        check_claims(&claims)?;
        let answer = self.request("token", json!({ "claims": claims, "expires_in": seconds }))?;
        string_field(&answer, "token")
    }

    /// A JWT shaped like [`token`](Self::token)'s (same issuer and defaults, RS256) but signed by
    /// an RSA key the JWKS does not publish, with a `kid` the JWKS does not have. The key is made
    /// on first use and kept, so all such tokens share it.
    pub fn token_with_unknown_key(&self, claims: Value) -> Result<String> {
        check_claims(&claims)?;
        let answer = self.request("token_unknown_key", json!({ "claims": claims }))?;
        string_field(&answer, "token")
    }

    /// Makes a new RS256 signing key and publishes a JWKS holding only it: tokens signed before
    /// no longer verify against the JWKS, and later tokens carry the new `kid`. The provider
    /// checks the published set before answering.
    pub fn rotate_keys(&self) -> Result<()> {
        self.request("rotate", json!({}))?;
        Ok(())
    }

    /// The current signing key's public JWK (`kty`, `n`, `e`, `kid`, `alg`), as published in the
    /// JWKS; e.g. to forge an HS256 token keyed with it (a key-confusion attack).
    pub fn public_jwk(&self) -> Result<Value> {
        let answer = self.request("jwk", json!({}))?;
        match answer.get("jwk") {
            Some(jwk @ Value::Object(_)) => Ok(jwk.clone()),
            _ => bail!("the OIDC provider answered `jwk` without a JWK: {answer}"),
        }
    }

    /// How many times the JWKS (`GET`/`HEAD` on [`jwks_uri`](Self::jwks_uri)) was requested since
    /// the provider started.
    pub fn jwks_fetches(&self) -> Result<u64> {
        let answer = self.request("stats", json!({}))?;
        count_field(&answer, "jwks_fetches")
    }

    /// Sets who logs in through the authorization-code flow (see the [module docs](self)): from
    /// now on, the access token and the id_token of every `grant_type=authorization_code` token
    /// request carry `claims` (a JSON object) laid over what the package puts there (`iss`,
    /// `iat`, `exp`, `nbf`, `sub` = `johndoe`, `amr`, `scope`; on the id_token `aud` = the client
    /// id and the `nonce` given to `/authorize`). A claim set to `null` is removed. Each call
    /// replaces the claims of the one before; `json!({})` goes back to the package's defaults.
    /// Tokens from [`token`](Self::token) and the other grants are not affected.
    pub fn login_as(&self, claims: Value) -> Result<()> {
        check_claims(&claims)?;
        self.request("login_as", json!({ "claims": claims }))?;
        Ok(())
    }

    /// `(all, with_pkce)`: how many token requests with `grant_type=authorization_code` the
    /// provider answered since it started, and how many of them carried a `code_verifier`;
    /// refused ones (say, a verifier that does not match the challenge) count too.
    pub fn code_exchanges(&self) -> Result<(u64, u64)> {
        let answer = self.request("stats", json!({}))?;
        Ok((count_field(&answer, "code_exchanges")?, count_field(&answer, "pkce_exchanges")?))
    }

    /// Sends one command (`fields` plus `cmd` and a fresh `id`) and waits for its answer.
    fn request(&self, command: &str, fields: Value) -> Result<Value> {
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        conn.request(self, command, &format!("`{command}`"), fields, COMMAND_TIMEOUT)
    }
}

impl Wording for OidcProvider {
    const WHO: &'static str = "the provider";

    /// An error message naming the provider, with node's exit status if known and the end of
    /// its log.
    fn failure(&self, what: &str, status: Option<ExitStatus>) -> String {
        let detail =
            format!("{} {} on 127.0.0.1:{}", self.node.display(), package_dir().join(SCRIPT).display(), self.port);
        lineproto::failure("OIDC provider", &detail, status, what, &self.log_path(), LOG_LINES)
    }
}

impl Drop for OidcProvider {
    /// Kills node (SIGKILL); the directory is removed afterwards by the `TempDir` field.
    fn drop(&mut self) {
        self.conn.get_mut().unwrap_or_else(PoisonError::into_inner).kill();
    }
}

fn check_claims(claims: &Value) -> Result<()> {
    if !claims.is_object() {
        bail!("token claims must be a JSON object, got {claims}");
    }
    Ok(())
}

fn count_field(answer: &Value, name: &str) -> Result<u64> {
    answer
        .get(name)
        .and_then(Value::as_u64)
        .with_context(|| format!("the OIDC provider answered `stats` without a count {name:?}: {answer}"))
}

fn string_field(answer: &Value, name: &str) -> Result<String> {
    answer
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("the OIDC provider answered without a string {name:?}: {answer}"))
}

/// Starts `node provider.mjs <port>` with stderr appended to `log` and waits for its
/// `ready <issuer>` line. A port clash is reported as [`PortInUse`].
fn spawn(node: &Path, pkg: &Path, log: &Path, port: u16) -> Result<(String, LineProcess)> {
    let issuer = format!("http://127.0.0.1:{port}");
    let launch = Launch {
        package: PACKAGE,
        node_needed: "20.19 or newer",
        log,
        log_lines: LOG_LINES,
        ready: &format!("ready {issuer}"),
        timeout: STARTUP_TIMEOUT,
    };
    let mut command = Command::new(node);
    command.arg(pkg.join(SCRIPT)).arg(port.to_string()).current_dir(pkg);
    let conn = LineProcess::start(&mut command, &launch, |new_log| {
        let line = new_log.lines().find(|l| l.contains("EADDRINUSE"))?;
        Some(PortInUse { port, detail: line.to_owned() }.into())
    })?;
    Ok((issuer, conn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_must_be_an_object() {
        assert!(check_claims(&json!({ "aud": "x" })).is_ok());
        assert!(check_claims(&json!(["aud"])).is_err());
        assert!(check_claims(&Value::Null).is_err());
    }
}
