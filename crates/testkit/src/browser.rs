//! A real headless browser for the web-console tests: the machine's `chromium` (Debian's package)
//! driven by the npm package `playwright-core` (pinned in `crates/testkit/browser/package.json`),
//! run by `node` through `crates/testkit/browser/driver.mjs`. The test speaks to it over the node
//! process's stdin/stdout, one command at a time, each on a named browser context: a context is
//! made on first use with its own cookies and storage (so `"alice"` and `"bob"` are two users
//! signed in at once) and holds one page, which [`Page`] drives. Selectors are Playwright
//! selectors: CSS (`form#login input[name=user]`), `text=Sign in`, `role=button[name="Approve"]`,
//! and so on; element commands wait up to 10 s for their element ([`DEFAULT_TIMEOUT`]).
//!
//! The package is installed by the test command, not by the kit: run
//! `npm ci --prefix crates/testkit/browser` ([`NPM_INSTALL`]) once before the tests, and install
//! chromium with `apt-get install chromium` (or name another build with [`ENV_CHROMIUM`]);
//! nothing here downloads a browser. `node` is found as for the
//! [OIDC provider](crate::oidc::find_node). Node, and the browser, run as the current user;
//! chromium runs without its sandbox (which root cannot use) and with a fresh profile. The
//! driver's standard error, with every page's console messages and uncaught errors prefixed by
//! its context's name, goes to a log file in a temporary directory, which errors quote; dropping
//! the [`Browser`] closes chromium, stops node and removes the directory.
//!
//! ```no_run
//! use gatehouse_testkit::Browser;
//!
//! # fn main() -> anyhow::Result<()> {
//! let browser = Browser::start()?; // node driver.mjs /usr/bin/chromium
//! let alice = browser.context("alice");
//! assert_eq!(alice.goto("http://127.0.0.1:8080/console/")?, 200);
//! alice.fill("input[name=user]", "alice")?;
//! alice.click(r#"role=button[name="Sign in"]"#)?;
//! alice.wait_text("#who", "alice")?;
//! let _cookies = alice.cookies()?; // [{"name": …, "value": …, "httpOnly": true, …}]
//! assert!(alice.errors()?.is_empty(), "the console's JavaScript threw");
//! alice.screenshot(std::path::Path::new("console.png"))?;
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
use crate::common::user::RunAs;
use crate::oidc::find_node_for;

/// Environment variable naming the chromium executable (default: `/usr/bin/chromium`, else
/// `chromium` from `PATH`).
pub const ENV_CHROMIUM: &str = "GATEHOUSE_TEST_CHROMIUM";

/// The command, run from the repository root, that installs the pinned package.
pub const NPM_INSTALL: &str = "npm ci --prefix crates/testkit/browser";

/// The Debian command that installs the browser.
pub const APT_INSTALL: &str = "apt-get install chromium";

/// How long the driver waits for an element (or a navigation) unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where Debian's `chromium` package puts the browser.
const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";

/// The npm package driving the browser, and the version line the kit is written against.
const PACKAGE: &str = "playwright-core";
const PACKAGE_VERSION_PREFIX: &str = "1.65.";

/// The script (in [`package_dir`]) that runs the browser and speaks the line protocol.
const SCRIPT: &str = "driver.mjs";

/// Deadline for node to load the package and chromium to start.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Deadline for one command on top of the driver's own timeout (a busy machine, a slow page).
const COMMAND_SLACK: Duration = Duration::from_secs(50);

/// How long Drop lets the driver close chromium before it kills node.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Lines of the driver's log quoted in errors.
const LOG_LINES: usize = 40;

/// The directory holding `package.json`, `package-lock.json`, `driver.mjs` and, once
/// [`NPM_INSTALL`] ran, `node_modules/`.
pub fn package_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// The chromium executable: [`ENV_CHROMIUM`] if set, else `/usr/bin/chromium`, else `chromium`
/// from `PATH`.
pub fn find_chromium() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(ENV_CHROMIUM) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!("{ENV_CHROMIUM}={} is not a file", path.display());
    }
    let default = PathBuf::from(DEFAULT_CHROMIUM);
    if default.is_file() {
        return Ok(default);
    }
    cmd::which("chromium").with_context(|| {
        format!(
            "chromium not found ({DEFAULT_CHROMIUM}, or `chromium` in PATH): the browser tests drive the \
             machine's chromium; install it (Debian: `{APT_INSTALL}`) or set {ENV_CHROMIUM}"
        )
    })
}

/// Checks that `dir` holds the script and an installed `playwright-core` 1.65.x.
fn check_package(dir: &Path) -> Result<()> {
    lineproto::check_package(dir, SCRIPT, PACKAGE, PACKAGE_VERSION_PREFIX, NPM_INSTALL)
}

/// A running headless chromium owned by a test. See the [module docs](self).
///
/// Safe to share between threads (`&Browser` is enough for every method): commands are
/// serialised over one pipe. Dropping it closes the browser, stops node and removes its
/// directory.
pub struct Browser {
    node: PathBuf,
    chromium: PathBuf,
    conn: Mutex<LineProcess>,
    /// Holds `browser.log` (node's stderr) and the browser's profile; removed on Drop after node
    /// exited.
    dir: TempDir,
}

impl fmt::Debug for Browser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Browser")
            .field("chromium", &self.chromium)
            .field("dir", &self.dir.path())
            .field("node", &self.node)
            .finish()
    }
}

impl Browser {
    /// Starts `node driver.mjs <chromium>` and waits until chromium runs. Fails with a clear
    /// message if `node`, the npm package (run [`NPM_INSTALL`]) or chromium (run
    /// [`APT_INSTALL`]) is missing. Blocks for a second or two; from async tests call it inside
    /// `tokio::task::spawn_blocking`.
    pub fn start() -> Result<Browser> {
        let node = find_node_for(
            &format!("the browser tests drive chromium with {PACKAGE} under Node.js 20 or newer"),
            NPM_INSTALL,
        )?;
        let pkg = package_dir();
        check_package(&pkg)?;
        let chromium = find_chromium()?;
        let dir = server_dir("gatehouse-browser-", &RunAs::Current)?;
        let conn = spawn(&node, &pkg, &chromium, dir.path())?;
        Ok(Browser { node, chromium, conn: Mutex::new(conn), dir })
    }

    /// The page of the browser context named `name`: made with its own cookies and storage on
    /// its first command, kept until [`Page::close`] or the end of the browser.
    pub fn context(&self, name: &str) -> Page<'_> {
        Page { browser: self, name: name.to_owned() }
    }

    /// The chromium executable in use.
    pub fn chromium(&self) -> &Path {
        &self.chromium
    }

    /// The driver's standard error: every page's console messages and uncaught errors (prefixed
    /// with the context's name) and every command that failed.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("browser.log")
    }

    /// Sends one command (`fields` plus `cmd` and a fresh `id`) and waits for its answer, at
    /// most `driver_timeout` (the driver's own deadline for it) plus [`COMMAND_SLACK`].
    fn request(&self, what: &str, command: &str, fields: Value, driver_timeout: Duration) -> Result<Value> {
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        conn.request(self, command, what, fields, driver_timeout + COMMAND_SLACK)
    }
}

impl Wording for Browser {
    const WHO: &'static str = "the driver";

    /// An error message naming the browser, with node's exit status if known and the end of its
    /// log.
    fn failure(&self, what: &str, status: Option<ExitStatus>) -> String {
        let detail =
            format!("{} {} {}", self.node.display(), package_dir().join(SCRIPT).display(), self.chromium.display());
        lineproto::failure("browser", &detail, status, what, &self.log_path(), LOG_LINES)
    }
}

impl Drop for Browser {
    /// Closes node's stdin so that the driver closes chromium (and its profile) and exits, and
    /// SIGKILLs node if that takes longer than `CLOSE_TIMEOUT`; the directory is removed
    /// afterwards by the `TempDir` field.
    fn drop(&mut self) {
        self.conn.get_mut().unwrap_or_else(PoisonError::into_inner).close(CLOSE_TIMEOUT);
    }
}

/// What [`Page::wait_for`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitState {
    /// An element matches and is visible (non-empty box, not `visibility: hidden`).
    Visible,
    /// An element matches, visible or not.
    Attached,
    /// No element matches.
    Detached,
    /// No element matches, or the first is not visible.
    Hidden,
}

impl WaitState {
    fn as_str(self) -> &'static str {
        match self {
            WaitState::Visible => "visible",
            WaitState::Attached => "attached",
            WaitState::Detached => "detached",
            WaitState::Hidden => "hidden",
        }
    }
}

/// The one page of a named browser context, from [`Browser::context`]. A cheap handle: making
/// two for one name drives the same page. Element methods act on the first element `selector`
/// matches (a Playwright selector) and wait up to [`DEFAULT_TIMEOUT`] for it to be there and
/// actionable.
pub struct Page<'b> {
    browser: &'b Browser,
    name: String,
}

impl fmt::Debug for Page<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Page").field("context", &self.name).field("browser", &self.browser).finish()
    }
}

impl Page<'_> {
    /// The name of its browser context.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Loads `url` and waits for its `load` event; the HTTP status of the main document (an
    /// error status is not an error here). Fails if the navigation does (connection refused,
    /// timeout) or got no HTTP answer (a `data:` URL, a change of the fragment only).
    pub fn goto(&self, url: &str) -> Result<u16> {
        let answer = self.command("goto", json!({ "url": url }))?;
        match answer.get("status").and_then(Value::as_u64).and_then(|s| u16::try_from(s).ok()) {
            Some(status) => Ok(status),
            None => bail!(self.browser.failure(&format!("goto {url:?} got no HTTP answer: {answer}"), None)),
        }
    }

    /// Clicks the element (scrolled into view, once visible, stable and enabled).
    pub fn click(&self, selector: &str) -> Result<()> {
        self.command("click", json!({ "selector": selector })).map(drop)
    }

    /// Replaces the value of an `<input>`, `<textarea>` or contenteditable element.
    pub fn fill(&self, selector: &str, value: &str) -> Result<()> {
        self.command("fill", json!({ "selector": selector, "value": value })).map(drop)
    }

    /// Selects the `<option>` of a `<select>` whose value (else label) is `value`.
    pub fn select(&self, selector: &str, value: &str) -> Result<()> {
        self.command("select", json!({ "selector": selector, "value": value })).map(drop)
    }

    /// Checks a checkbox or radio button (nothing to do if it is checked already).
    pub fn check(&self, selector: &str) -> Result<()> {
        self.command("check", json!({ "selector": selector })).map(drop)
    }

    /// Focuses the element and presses `key` (`Enter`, `Tab`, `a`, `Control+A`, …).
    pub fn press(&self, selector: &str, key: &str) -> Result<()> {
        self.command("press", json!({ "selector": selector, "key": key })).map(drop)
    }

    /// The `innerText` of the first match.
    pub fn text(&self, selector: &str) -> Result<String> {
        let answer = self.command("text", json!({ "selector": selector }))?;
        self.string(&answer, "text")
    }

    /// The `innerText` of every match, in document order (empty if nothing matches; does not
    /// wait).
    pub fn texts(&self, selector: &str) -> Result<Vec<String>> {
        let answer = self.command("texts", json!({ "selector": selector }))?;
        let texts = answer
            .get("texts")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|t| t.as_str().map(str::to_owned)).collect::<Option<Vec<String>>>());
        match texts {
            Some(Some(texts)) => Ok(texts),
            _ => bail!(self.browser.failure(&format!("`texts` answered without a list of strings: {answer}"), None)),
        }
    }

    /// How many elements match now (does not wait).
    pub fn count(&self, selector: &str) -> Result<usize> {
        let answer = self.command("count", json!({ "selector": selector }))?;
        match answer.get("count").and_then(Value::as_u64).and_then(|n| usize::try_from(n).ok()) {
            Some(count) => Ok(count),
            None => bail!(self.browser.failure(&format!("`count` answered without a count: {answer}"), None)),
        }
    }

    /// Waits up to [`DEFAULT_TIMEOUT`] until an element matches and is visible.
    pub fn wait(&self, selector: &str) -> Result<()> {
        self.wait_for(selector, WaitState::Visible, DEFAULT_TIMEOUT)
    }

    /// Waits up to [`DEFAULT_TIMEOUT`] until no element matches, or the first match is hidden.
    pub fn wait_gone(&self, selector: &str) -> Result<()> {
        self.wait_for(selector, WaitState::Hidden, DEFAULT_TIMEOUT)
    }

    /// Waits up to `timeout` until the first match reaches `state`.
    pub fn wait_for(&self, selector: &str, state: WaitState, timeout: Duration) -> Result<()> {
        let fields = json!({ "selector": selector, "state": state.as_str(), "timeout_ms": millis(timeout) });
        self.command_waiting("wait", fields, timeout).map(drop)
    }

    /// Waits up to [`DEFAULT_TIMEOUT`] until the `innerText` of the first match contains `text`;
    /// the error says what it read last.
    pub fn wait_text(&self, selector: &str, text: &str) -> Result<()> {
        let fields = json!({ "selector": selector, "text": text, "timeout_ms": millis(DEFAULT_TIMEOUT) });
        self.command_waiting("wait_text", fields, DEFAULT_TIMEOUT).map(drop)
    }

    /// The page's current URL (after redirects and script navigations).
    pub fn url(&self) -> Result<String> {
        let answer = self.command("url", json!({}))?;
        self.string(&answer, "url")
    }

    /// The document's `<title>`.
    pub fn title(&self) -> Result<String> {
        let answer = self.command("title", json!({}))?;
        self.string(&answer, "title")
    }

    /// Saves a PNG of the whole page (not just the viewport) to `path`; a relative path is taken
    /// from the test's current directory.
    pub fn screenshot(&self, path: &Path) -> Result<()> {
        let absolute = std::path::absolute(path).with_context(|| format!("making {} absolute", path.display()))?;
        let Some(absolute) = absolute.to_str() else {
            bail!("screenshot path {} is not UTF-8", absolute.display());
        };
        self.command("screenshot", json!({ "path": absolute, "full_page": true })).map(drop)
    }

    /// The context's cookies, each `{"name", "value", "domain", "path", "expires", "httpOnly",
    /// "secure", "sameSite"}` (`expires` is -1 for a session cookie, `sameSite` is `"Strict"`,
    /// `"Lax"` or `"None"`).
    pub fn cookies(&self) -> Result<Vec<Value>> {
        let answer = self.command("cookies", json!({}))?;
        match answer.get("cookies") {
            Some(Value::Array(cookies)) => Ok(cookies.clone()),
            _ => bail!(self.browser.failure(&format!("`cookies` answered without a list: {answer}"), None)),
        }
    }

    /// Evaluates the JavaScript `expression` in the page and returns its value as JSON (awaited
    /// if it is a promise; `undefined` becomes `null`). An exception thrown is an error.
    pub fn eval(&self, expression: &str) -> Result<Value> {
        let mut answer = self.command("eval", json!({ "expression": expression }))?;
        Ok(answer.get_mut("value").map(Value::take).unwrap_or(Value::Null))
    }

    /// The messages of the uncaught exceptions (and unhandled promise rejections) the page's
    /// JavaScript threw since the context was made, oldest first: `assert!(page.errors()?.is_empty())`.
    pub fn errors(&self) -> Result<Vec<String>> {
        let answer = self.command("errors", json!({}))?;
        let errors = answer
            .get("errors")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_owned)).collect());
        match errors {
            Some(errors) => Ok(errors),
            None => bail!(self.browser.failure(&format!("`errors` answered without a list: {answer}"), None)),
        }
    }

    /// Closes the context (its page, cookies and storage); the next command on this name starts
    /// a fresh one.
    pub fn close(self) -> Result<()> {
        self.command("close_context", json!({})).map(drop)
    }

    /// Sends `command` on this context with the driver's default timeout.
    fn command(&self, command: &str, fields: Value) -> Result<Value> {
        self.command_waiting(command, fields, DEFAULT_TIMEOUT)
    }

    /// Sends `command` on this context, given that the driver may take `timeout` over it.
    fn command_waiting(&self, command: &str, mut fields: Value, timeout: Duration) -> Result<Value> {
        let what = match fields.get("selector").and_then(Value::as_str) {
            Some(selector) => format!("`{command}` {selector:?} on context {:?}", self.name),
            None => format!("`{command}` on context {:?}", self.name),
        };
        fields["context"] = json!(self.name);
        self.browser.request(&what, command, fields, timeout.max(DEFAULT_TIMEOUT))
    }

    fn string(&self, answer: &Value, name: &str) -> Result<String> {
        match answer.get(name).and_then(Value::as_str) {
            Some(text) => Ok(text.to_owned()),
            None => {
                bail!(self.browser.failure(&format!("the driver answered without a string {name:?}: {answer}"), None))
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Starts `node driver.mjs <chromium>` with stderr going to `<dir>/browser.log` and its
/// temporary files (the browser's profile) in `dir`, and waits for its `ready` line.
fn spawn(node: &Path, pkg: &Path, chromium: &Path, dir: &Path) -> Result<LineProcess> {
    let log = dir.join("browser.log");
    let launch = Launch {
        package: PACKAGE,
        node_needed: "20 or newer",
        log: &log,
        log_lines: LOG_LINES,
        ready: "ready",
        timeout: STARTUP_TIMEOUT,
    };
    let mut command = Command::new(node);
    command
        .arg(pkg.join(SCRIPT))
        .arg(chromium)
        .current_dir(pkg)
        // Playwright makes the profile in the temporary directory; this one is removed on Drop
        // even if node had to be killed.
        .env("TMPDIR", dir);
    LineProcess::start(&mut command, &launch, |_| None)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn pinned_version_matches_the_manifest() -> Result<()> {
        let manifest: Value = serde_json::from_str(&fs::read_to_string(package_dir().join("package.json"))?)?;
        let pinned = manifest["dependencies"][PACKAGE].as_str().context("playwright-core is a dependency")?;
        assert!(pinned.starts_with(PACKAGE_VERSION_PREFIX), "package.json pins {pinned}");
        Ok(())
    }
}
