//! Starts the real headless browser (Debian's chromium under `playwright-core`) against a tiny
//! HTTP server in the test and checks what the kit promises. Needs `npm ci --prefix
//! crates/testkit/browser` and `apt-get install chromium` first.

mod support;

use std::fs;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gatehouse_testkit::Browser;
use gatehouse_testkit::browser::WaitState;
use gatehouse_testkit::common::net::pick_free_port;
use serde_json::{Value, json};
use support::{Answer, HttpServer};

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

/// A page with a form, a button whose click changes the page from JavaScript, a list, an
/// HttpOnly session cookie set by the server and a script-visible cookie set by the page.
const HOME: &str = r#"<!doctype html>
<html>
<head><title>Gatehouse test page</title></head>
<body>
<h1 id="greeting">Hello</h1>
<p id="status">idle</p>
<div id="spinner">loading</div>
<button id="approve" type="button">Approve</button>
<ul id="items"><li>one</li><li>two</li><li>three</li></ul>
<form id="login" action="/submit" method="get">
  <input name="user" id="user">
  <select name="role" id="role"><option value="reader">Reader</option><option value="admin">Admin</option></select>
  <label><input type="checkbox" name="agree" id="agree"> I agree</label>
  <button type="submit">Sign in</button>
</form>
<script>
  document.cookie = 'visible=yes; path=/';
  document.getElementById('approve').addEventListener('click', () => {
    setTimeout(() => {
      document.getElementById('status').textContent = 'approved by ' + document.getElementById('user').value;
      document.getElementById('spinner').remove();
    }, 300);
  });
  console.log('home page loaded');
</script>
</body>
</html>
"#;

/// A page whose script throws, once synchronously late and once as an unhandled rejection.
const BOOM: &str = r#"<!doctype html>
<html><head><title>boom</title></head>
<body><p id="done">done</p>
<script>
  setTimeout(() => { throw new Error('boom from the page'); }, 0);
  Promise.reject(new Error('rejected in the page'));
</script>
</body></html>
"#;

fn handler(method: &str, target: &str) -> Answer {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match (method, path) {
        ("GET", "/") => Answer::html(HOME).with("Set-Cookie", "session=s3cret; Path=/; HttpOnly; SameSite=Strict"),
        ("GET", "/submit") => {
            Answer::html(format!("<!doctype html><title>submitted</title><p id=\"echo\">{query}</p>"))
        }
        ("GET", "/boom") => Answer::html(BOOM),
        _ => Answer::not_found(),
    }
}

fn cookie<'c>(cookies: &'c [Value], name: &str) -> Option<&'c Value> {
    cookies.iter().find(|c| c["name"] == name)
}

#[test]
fn drives_a_page_like_a_user() -> Result<()> {
    let site = HttpServer::start(handler)?;
    let browser = Browser::start()?;
    let page = browser.context("alice");
    assert_eq!(page.name(), "alice");

    assert_eq!(page.goto(&format!("{}/", site.url()))?, 200);
    assert_eq!(page.url()?, format!("{}/", site.url()));
    assert_eq!(page.title()?, "Gatehouse test page");
    assert_eq!(page.text("#greeting")?, "Hello");
    assert_eq!(page.text("h1, p")?, "Hello", "text reads the first match");
    assert_eq!(page.texts("#items li")?, ["one", "two", "three"]);
    assert_eq!(page.count("#items li")?, 3);
    assert_eq!(page.count("#nothing")?, 0);
    assert!(page.texts("#nothing")?.is_empty());

    // A click whose effect comes later, from JavaScript.
    page.fill("#user", "alice")?;
    page.wait("#spinner")?;
    page.click(r#"role=button[name="Approve"]"#)?;
    page.wait_text("#status", "approved by alice")?;
    page.wait_gone("#spinner")?;
    assert_eq!(page.count("#spinner")?, 0);
    assert_eq!(page.text("#status")?, "approved by alice");

    // Script-visible state; the HttpOnly cookie is not visible to the page.
    assert_eq!(page.eval("1 + 2")?, json!(3));
    assert_eq!(page.eval("document.cookie")?, json!("visible=yes"));
    assert_eq!(page.eval("Promise.resolve({ a: [1, 'x'] })")?, json!({ "a": [1, "x"] }));
    assert_eq!(page.eval("undefined")?, Value::Null);

    let cookies = page.cookies()?;
    let session = cookie(&cookies, "session").with_context(|| format!("no session cookie in {cookies:?}"))?;
    assert_eq!(session["value"], "s3cret");
    assert_eq!(session["httpOnly"], true);
    assert_eq!(session["secure"], false);
    assert_eq!(session["sameSite"], "Strict");
    assert_eq!(session["path"], "/");
    let visible = cookie(&cookies, "visible").with_context(|| format!("no visible cookie in {cookies:?}"))?;
    assert_eq!(visible["httpOnly"], false);

    // The form: fill, select, check, submit with Enter.
    page.select("#role", "admin")?;
    page.check("text=I agree")?;
    assert_eq!(page.eval("document.getElementById('agree').checked")?, json!(true));
    page.press("#user", "Enter")?;
    page.wait("#echo")?;
    assert_eq!(page.text("#echo")?, "user=alice&role=admin&agree=on");
    assert!(page.url()?.ends_with("/submit?user=alice&role=admin&agree=on"), "{}", page.url()?);
    assert_eq!(page.title()?, "submitted");

    // Back, and submit by clicking; a missing page is a status, not an error.
    assert_eq!(page.goto(&format!("{}/", site.url()))?, 200);
    page.fill("#user", "bob")?;
    page.click("text=Sign in")?;
    page.wait_text("#echo", "user=bob")?;
    assert_eq!(page.goto(&format!("{}/missing", site.url()))?, 404);

    let dir = tempfile::tempdir()?;
    let png = dir.path().join("page.png");
    page.screenshot(&png)?;
    let bytes = fs::read(&png)?;
    assert!(bytes.len() > PNG_SIGNATURE.len() && bytes.starts_with(&PNG_SIGNATURE), "not a PNG: {png:?}");

    assert_eq!(page.errors()?, Vec::<String>::new());
    // The page's console went to the log, tagged with the context.
    let log = fs::read_to_string(browser.log_path())?;
    assert!(log.contains("[alice] console.log: home page loaded"), "{log}");
    Ok(())
}

#[test]
fn page_errors_are_recorded() -> Result<()> {
    let site = HttpServer::start(handler)?;
    let browser = Browser::start()?;
    let page = browser.context("mallory");
    assert_eq!(page.goto(&format!("{}/boom", site.url()))?, 200);
    page.wait("#done")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let errors = loop {
        let errors = page.errors()?;
        if errors.len() >= 2 || Instant::now() >= deadline {
            break errors;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(errors.iter().any(|e| e.contains("boom from the page")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("rejected in the page")), "{errors:?}");
    // Only this context's.
    assert!(browser.context("other").errors()?.is_empty());
    let log = fs::read_to_string(browser.log_path())?;
    assert!(log.contains("[mallory] pageerror:"), "{log}");

    // A script error of `eval` is an error of the call, not of the page.
    let err = page.eval("(() => { throw new Error('thrown by eval') })()").err().context("eval must fail")?;
    assert!(format!("{err:#}").contains("thrown by eval"), "{err:#}");
    Ok(())
}

#[test]
fn contexts_have_their_own_cookies() -> Result<()> {
    let site = HttpServer::start(handler)?;
    let browser = Browser::start()?;
    let alice = browser.context("alice");
    let bob = browser.context("bob");
    alice.goto(&format!("{}/", site.url()))?;
    assert!(cookie(&alice.cookies()?, "session").is_some());
    assert!(bob.cookies()?.is_empty(), "bob sees alice's cookies");
    bob.goto(&format!("{}/submit?x=1", site.url()))?;
    assert!(bob.cookies()?.is_empty());
    assert_eq!(alice.title()?, "Gatehouse test page", "bob's navigation moved alice's page");

    // A second handle on a name drives the same page.
    assert_eq!(browser.context("alice").url()?, format!("{}/", site.url()));

    // Closing forgets the cookies; the name starts afresh.
    alice.close()?;
    let alice = browser.context("alice");
    assert!(alice.cookies()?.is_empty());
    assert_eq!(alice.url()?, "about:blank");
    Ok(())
}

#[test]
fn failures_name_the_command_and_quote_the_log() -> Result<()> {
    let site = HttpServer::start(handler)?;
    let browser = Browser::start()?;
    let page = browser.context("carol");
    page.goto(&format!("{}/", site.url()))?;

    let started = Instant::now();
    let err = page
        .wait_for("#never", WaitState::Visible, Duration::from_millis(500))
        .err()
        .context("waiting for a missing element must fail")?;
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
    let text = format!("{err:#}");
    assert!(text.contains("#never") && text.contains("carol"), "{text}");
    assert!(text.contains(&browser.log_path().display().to_string()), "{text}");

    // The element is there, just not in the other states.
    page.wait_for("#spinner", WaitState::Attached, Duration::from_secs(2))?;
    assert!(page.wait_for("#spinner", WaitState::Detached, Duration::from_millis(300)).is_err());

    // Nothing listens on a fresh port.
    let port = pick_free_port()?;
    let err = page.goto(&format!("http://127.0.0.1:{port}/")).err().context("a refused connection must fail")?;
    assert!(format!("{err:#}").contains("ERR_CONNECTION_REFUSED"), "{err:#}");

    // The browser is still usable afterwards.
    assert_eq!(page.goto(&format!("{}/", site.url()))?, 200);
    Ok(())
}

#[test]
fn drop_closes_the_browser_and_removes_its_directory() -> Result<()> {
    let browser = Browser::start()?;
    let dir = browser.log_path().parent().context("log has a directory")?.to_path_buf();
    assert!(dir.is_dir());
    assert!(format!("{browser:?}").contains("chromium"));
    assert_eq!(browser.context("x").eval("navigator.userAgent.includes('Chrome')")?, json!(true));
    drop(browser);
    assert!(!dir.exists(), "{} left behind", dir.display());
    Ok(())
}
