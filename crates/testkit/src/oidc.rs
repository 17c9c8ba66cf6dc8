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
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::common::cmd::{self, SETUP_TIMEOUT};
use crate::common::dir::server_dir;
use crate::common::log_tail;
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
    let script = dir.join(SCRIPT);
    if !script.is_file() {
        bail!("{} is missing (it belongs to the gatehouse-testkit sources)", script.display());
    }
    let manifest = dir.join("node_modules").join(PACKAGE).join("package.json");
    let text = fs::read_to_string(&manifest).map_err(|e| {
        anyhow!(
            "the npm package {PACKAGE} is not installed ({}: {e}); run `{NPM_INSTALL}` from the \
             repository root (the test command does)",
            manifest.display()
        )
    })?;
    let version = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.get("version").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default();
    if !version.starts_with(PACKAGE_VERSION_PREFIX) {
        bail!(
            "{} says {PACKAGE} {version:?}, but the kit needs {PACKAGE_VERSION_PREFIX}x as pinned in \
             package-lock.json; run `{NPM_INSTALL}` from the repository root",
            manifest.display()
        );
    }
    Ok(())
}

/// The node process and the two ends of the line protocol, used by one command at a time.
struct Conn {
    child: Child,
    stdin: ChildStdin,
    /// Lines node printed on stdout, read by a thread (so waits can have a deadline).
    lines: Receiver<String>,
    /// Id of the last command sent; answers carrying another id are stale and skipped.
    last_id: u64,
}

impl Conn {
    /// Kills node (SIGKILL) and reaps it; nothing to do if it already exited.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// How node exited, if it did.
    fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// A running OIDC provider owned by a test. See the [module docs](self).
///
/// Safe to share between threads (`&OidcProvider` is enough for every method): commands are
/// serialised over one pipe. Dropping it kills node and removes its directory.
pub struct OidcProvider {
    node: PathBuf,
    port: u16,
    issuer: String,
    conn: Mutex<Conn>,
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
        conn.last_id += 1;
        let id = conn.last_id;
        let mut line = fields;
        line["cmd"] = json!(command);
        line["id"] = json!(id);
        let sent = writeln!(conn.stdin, "{line}").and_then(|()| conn.stdin.flush());
        if let Err(e) = sent {
            let status = conn.exit_status();
            bail!(self.failure(&format!("could not send `{command}` ({e})"), status));
        }
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            match conn.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(text) => {
                    let Ok(answer) = serde_json::from_str::<Value>(&text) else {
                        continue; // not protocol output; provider.mjs keeps stdout clean
                    };
                    if answer.get("id") != Some(&json!(id)) {
                        continue; // the late answer to a command that timed out
                    }
                    if let Some(err) = answer.get("error") {
                        let err = err.as_str().map_or_else(|| err.to_string(), str::to_owned);
                        bail!(self.failure(&format!("`{command}` failed: {err}"), None));
                    }
                    return Ok(answer);
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!(self.failure(&format!("no answer to `{command}` within {COMMAND_TIMEOUT:?}"), None));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = conn.exit_status();
                    bail!(self.failure(&format!("the provider exited before answering `{command}`"), status));
                }
            }
        }
    }

    /// An error message naming the provider, with node's exit status if known and the end of
    /// its log.
    fn failure(&self, what: &str, status: Option<ExitStatus>) -> String {
        let status = status.map(|s| format!(", {s}")).unwrap_or_default();
        format!(
            "OIDC provider ({} {} on 127.0.0.1:{}{status}): {what}; last lines of {}:\n{}",
            self.node.display(),
            package_dir().join(SCRIPT).display(),
            self.port,
            self.log_path().display(),
            log_tail(&self.log_path(), LOG_LINES)
        )
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
fn spawn(node: &Path, pkg: &Path, log: &Path, port: u16) -> Result<(String, Conn)> {
    let script = pkg.join(SCRIPT);
    let offset = fs::metadata(log).map(|m| m.len()).unwrap_or(0);
    let stderr = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut command = Command::new(node);
    command
        .arg(&script)
        .arg(port.to_string())
        .current_dir(pkg)
        // A preload from the caller's environment could print on stdout and break the protocol.
        .env_remove("NODE_OPTIONS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr);
    let shown = cmd::describe(&command);
    let mut child = command.spawn().with_context(|| format!("could not start `{shown}`"))?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        let _ = child.kill();
        let _ = child.wait();
        bail!("`{shown}` started without pipes");
    };
    let (tx, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut conn = Conn { child, stdin, lines, last_id: 0 };

    let failed = |conn: &mut Conn, what: String| -> anyhow::Error {
        conn.kill();
        let status = conn.exit_status().map(|s| format!(" ({s})")).unwrap_or_default();
        let version = cmd::run(Command::new(node).arg("--version"), SETUP_TIMEOUT)
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|e| format!("`{} --version` failed: {e}", node.display()));
        anyhow!(
            "`{shown}`{status}: {what} (node {version}; {PACKAGE} needs node 20.19 or newer); last lines of {}:\n{}",
            log.display(),
            log_tail(log, LOG_LINES)
        )
    };
    let expected = format!("http://127.0.0.1:{port}");
    match conn.lines.recv_timeout(STARTUP_TIMEOUT) {
        Ok(line) => match line.strip_prefix("ready ") {
            Some(issuer) if issuer.trim() == expected => Ok((expected, conn)),
            _ => Err(failed(&mut conn, format!("printed {line:?} instead of `ready {expected}`"))),
        },
        Err(RecvTimeoutError::Timeout) => {
            Err(failed(&mut conn, format!("did not print `ready <issuer>` within {STARTUP_TIMEOUT:?}")))
        }
        Err(RecvTimeoutError::Disconnected) => {
            // Exited before listening: a taken port, or a broken installation.
            let _ = conn.child.wait();
            let new_log = fs::read(log)
                .map(|b| {
                    let start = usize::try_from(offset).unwrap_or(0).min(b.len());
                    String::from_utf8_lossy(&b[start..]).into_owned()
                })
                .unwrap_or_default();
            if let Some(line) = new_log.lines().find(|l| l.contains("EADDRINUSE")) {
                return Err(PortInUse { port, detail: line.to_owned() }.into());
            }
            Err(failed(&mut conn, "exited while starting".to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_package_says_how_to_install_it() -> Result<()> {
        let dir = tempfile::tempdir()?;
        fs::write(dir.path().join(SCRIPT), "")?;
        let err = check_package(dir.path()).err().context("an empty directory must be refused")?;
        let text = format!("{err:#}");
        assert!(text.contains(NPM_INSTALL) && text.contains(PACKAGE), "{text}");

        let installed = dir.path().join("node_modules").join(PACKAGE);
        fs::create_dir_all(&installed)?;
        fs::write(installed.join("package.json"), r#"{"name":"oauth2-mock-server","version":"9.0.0"}"#)?;
        let err = check_package(dir.path()).err().context("a 9.x install must be refused")?;
        assert!(format!("{err:#}").contains("9.0.0"), "{err:#}");

        fs::write(installed.join("package.json"), r#"{"name":"oauth2-mock-server","version":"8.2.3"}"#)?;
        check_package(dir.path())
    }

    #[test]
    fn claims_must_be_an_object() {
        assert!(check_claims(&json!({ "aud": "x" })).is_ok());
        assert!(check_claims(&json!(["aud"])).is_err());
        assert!(check_claims(&Value::Null).is_err());
    }
}
