//! The web console in a real browser: headless Chromium driven by Playwright (the test kit's
//! `Browser`), signing in through a real OIDC provider (authorization code flow with PKCE) and
//! with the bootstrap admin token, looking at a session made by psql, approving a statement psql
//! is held on, and failing to approve as someone who may not. Every page is saved as a
//! screenshot under `target/console-screenshots/` (or `GATEHOUSE_SCREENSHOTS`); `docs/console.md`
//! shows them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod pg;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use gatehouse_testkit::OidcProvider;
use gatehouse_testkit::browser::{Browser, Page};
use pg::*;
use serde_json::{Value, json};

const AUDIENCE: &str = "gatehouse-console";

const POLICIES: &str = r#"
@id("apps-connect")
permit (principal in Group::"apps", action == Action::"connect", resource == Connection::"pg");

@id("apps-work")
permit (principal in Group::"apps",
        action in [Action::"sql.select", Action::"sql.update"],
        resource in Connection::"pg");

@id("order-changes-need-dba")
@approval("dba")
forbid (principal, action == Action::"sql.update", resource == Table::"pg/public.orders");

@id("dba-and-auditors-read-the-console")
permit (principal, action == Action::"api.read", resource)
when { principal in Group::"dba" || principal in Group::"auditors" };
"#;

fn screenshots() -> PathBuf {
    let dir = std::env::var_os("GATEHOUSE_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/console-screenshots")));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn shot(page: &Page<'_>, name: &str) {
    let path = screenshots().join(format!("{name}.png"));
    page.screenshot(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.starts_with(b"\x89PNG"), "{} is a PNG", path.display());
}

/// Signs `page` in through the identity provider as the person `claims` describe.
fn sign_in_with_idp(gw: &Gateway, idp: &OidcProvider, page: &Page<'_>, claims: Value) {
    idp.login_as(claims).unwrap();
    assert_eq!(page.goto(&format!("{}/console/", gw.url())).unwrap(), 200);
    assert!(page.url().unwrap().contains("/console/signin"), "not signed in yet: the sign-in page");
    page.click("[data-test=signin-oidc]").unwrap();
    page.wait("[data-test=viewer]").unwrap();
}

/// Reloads `path` until `selector` holds `text` (the page shows what was there when loaded).
fn reload_until(page: &Page<'_>, url: &str, selector: &str, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        page.goto(url).unwrap();
        if page.texts(selector).unwrap().iter().any(|t| t.contains(text)) {
            return;
        }
        assert!(Instant::now() < deadline, "{url}: no {selector:?} with {text:?} after 20 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn people_sign_in_with_the_identity_provider_follow_a_psql_session_and_approve_its_held_statement() {
    let idp = OidcProvider::start().unwrap();
    let env = [
        ("GATEHOUSE_OIDC_ISSUER", idp.issuer()),
        ("GATEHOUSE_OIDC_AUDIENCE", AUDIENCE),
        ("GATEHOUSE_REVIEWS_HOLD_SECONDS", "90"),
    ];
    let f = Fixture::with_env(&env);
    f.policies(POLICIES);
    let gw = &f.gw;
    let browser = Browser::start().unwrap();

    // Alice, a DBA, signs in at the identity provider; the console used PKCE.
    let alice = browser.context("alice");
    sign_in_with_idp(
        gw,
        &idp,
        &alice,
        json!({"aud": AUDIENCE, "sub": "u-alice", "email": "alice@example.com", "groups": ["dba"]}),
    );
    assert_eq!(alice.text("[data-test=viewer]").unwrap(), r#"User::"alice@example.com""#);
    assert_eq!(idp.code_exchanges().unwrap(), (1, 1), "one code exchange, with a PKCE verifier");
    let cookie = alice.cookies().unwrap().into_iter().find(|c| c["name"] == "gatehouse_console").unwrap();
    assert_eq!((cookie["httpOnly"].as_bool(), cookie["sameSite"].as_str()), (Some(true), Some("Lax")), "{cookie}");

    // A psql session appears in the live list without a reload, and its timeline shows the statement.
    let sessions = format!("{}/console/sessions", gw.url());
    alice.goto(&sessions).unwrap();
    let out = f.app("SELECT item FROM public.orders WHERE id = 1;");
    assert_eq!(stdout(&out).trim(), "lamp", "{}", stderr(&out));
    alice.wait_text("#session-rows", "postgres").unwrap();
    shot(&alice, "sessions");
    alice.click("#session-rows tr:has-text('postgres') a").unwrap();
    alice.wait("[data-test=timeline]").unwrap();
    let timeline = alice.text("[data-test=timeline]").unwrap();
    assert!(timeline.contains("SELECT item FROM public.orders WHERE id = 1"), "{timeline}");
    assert!(timeline.contains("allow") && timeline.contains("apps-work"), "decision and policy: {timeline}");
    assert!(timeline.contains("1 row"), "rows of the result: {timeline}");
    shot(&alice, "session");

    // psql is held on an UPDATE that needs a DBA's approval.
    let f = std::sync::Arc::new(f);
    let held = {
        let f = f.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let out = f.app("UPDATE public.orders SET price = 25 WHERE id = 1;");
            (out, started.elapsed())
        })
    };
    let reviews = format!("{}/console/reviews", f.gw.url());
    reload_until(&alice, &reviews, "[data-test=request]", "UPDATE public.orders SET price = 25");
    assert_eq!(alice.count("article.review-pending button:has-text('Approve')").unwrap(), 1);
    shot(&alice, "reviews");

    // Bob, an auditor, sees the review but may not decide it: no buttons, and a forged vote is refused.
    let bob = browser.context("bob");
    sign_in_with_idp(
        &f.gw,
        &idp,
        &bob,
        json!({"aud": AUDIENCE, "sub": "u-bob", "email": "bob@example.com", "groups": ["auditors"]}),
    );
    bob.goto(&reviews).unwrap();
    assert!(bob.text("[data-test=request]").unwrap().contains("UPDATE public.orders"));
    assert_eq!(bob.count("button:has-text('Approve')").unwrap(), 0, "no buttons for an ineligible approver");
    assert!(bob.text("[data-test=not-eligible]").unwrap().contains("dba"), "the page says why");
    let id = bob.eval("document.querySelector('article.review-pending').dataset.review").unwrap();
    let id = id.as_str().unwrap().to_string();
    let csrf = bob.eval("document.querySelector('input[name=csrf]').value").unwrap();
    let csrf = csrf.as_str().unwrap().to_string();
    // The reviews page reloads itself every 10 seconds while a review is pending: the forged votes
    // are sent from a page that stays put, so that no reload cuts them short.
    bob.goto(&sessions).unwrap();
    alice.goto(&sessions).unwrap();
    let forged = format!(
        "fetch('/console/reviews/{id}/approve', {{method: 'POST', body: new URLSearchParams({{csrf: '{csrf}', \
         comment: 'let me'}})}}).then(r => r.status)"
    );
    assert_eq!(bob.eval(&forged).unwrap(), json!(403), "the server refuses an ineligible vote");
    let without_csrf = format!(
        "fetch('/console/reviews/{id}/approve', {{method: 'POST', body: new URLSearchParams({{comment: 'x'}})}}).then(r => r.status)"
    );
    assert_eq!(alice.eval(&without_csrf).unwrap(), json!(403), "a form without its CSRF token is refused");
    let review = curl("GET", &format!("{}/api/v1/reviews/{id}", f.gw.url()), Some(f.gw.admin_token()), None).json();
    assert_eq!(review["status"], "pending", "{review}");
    assert!(!held.is_finished(), "psql is still held");

    // Alice approves; psql's statement completes in the same call.
    alice.goto(&reviews).unwrap();
    alice.fill(&format!("#comment-{id}"), "price fix agreed").unwrap();
    alice.click("article.review-pending button:has-text('Approve')").unwrap();
    alice.wait("[data-test=vote-done]").unwrap();
    assert!(alice.text("[data-test=vote-done]").unwrap().contains("approved"));
    let (out, waited) = held.join().unwrap();
    assert!(out.status.success() && !stderr(&out).contains("ERROR"), "{} {}", stdout(&out), stderr(&out));
    assert!(waited < Duration::from_secs(80), "completed on approval, not at the end of the hold ({waited:?})");
    assert_eq!(f.direct("SELECT price FROM public.orders WHERE id = 1").trim(), "25.00");
    let review = curl("GET", &format!("{}/api/v1/reviews/{id}", f.gw.url()), Some(f.gw.admin_token()), None).json();
    assert_eq!(review["status"], "approved");
    assert_eq!(review["votes"][0]["approver"], "alice@example.com");
    assert_eq!(review["votes"][0]["comment"], "price fix agreed");

    // The held session is found by its outcome, and the refused vote is in the audit trail.
    alice.goto(&format!("{sessions}?outcome=reviewed")).unwrap();
    assert_eq!(alice.count("#session-rows tr[data-session]").unwrap(), 1, "one session had a held request");

    // A session whose result had a value masked is found by that outcome, with the counts.
    f.gw.cli_ok(&["connections", "update", "pg", "--mask", "email"]).unwrap();
    let out = f.app("SELECT 'carol@example.com' AS contact;");
    assert!(!stdout(&out).contains("carol@example.com"), "masked for the caller: {}", stdout(&out));
    reload_until(&alice, &format!("{sessions}?outcome=masked"), "#session-rows tr[data-session]", "postgres");
    assert_eq!(alice.count("#session-rows tr[data-session]").unwrap(), 1);
    alice.click("#session-rows tr[data-session] a").unwrap();
    alice.wait("[data-test=timeline]").unwrap();
    let timeline = alice.text("[data-test=timeline]").unwrap();
    assert!(timeline.contains("masked 1 value"), "the masked count: {timeline}");
    assert!(!timeline.contains("carol@example.com"), "the recording holds no clear value: {timeline}");
    alice.goto(&format!("{}/console/audit", f.gw.url())).unwrap();
    let audit = alice.text("main").unwrap();
    assert!(audit.contains("review.approve") && audit.contains("bob@example.com"), "{audit}");
    shot(&alice, "audit");

    for page in [&alice, &bob] {
        assert_eq!(page.errors().unwrap(), Vec::<String>::new(), "no script errors on {}", page.name());
    }
}

/// Signs in with the admin token through the form.
fn sign_in_with_token(gw: &Gateway, page: &Page<'_>, token: &str) {
    page.goto(&format!("{}/console/signin", gw.url())).unwrap();
    page.fill("#token", token).unwrap();
    page.click("form[action='/console/signin/token'] button").unwrap();
}

#[test]
fn the_admin_token_signs_in_and_manages_identities_connections_and_policies() {
    let gw = gateway();
    let browser = Browser::start().unwrap();
    let page = browser.context("admin");
    page.goto(&format!("{}/console/signin", gw.url())).unwrap();
    shot(&page, "signin");

    // A wrong token is refused on the page; an off-site `next` is ignored.
    sign_in_with_token(&gw, &page, "ghs_wrong");
    assert!(page.text("[data-test=signin-error]").unwrap().contains("not accepted"));
    page.goto(&format!("{}/console/signin?next=//evil.example/", gw.url())).unwrap();
    page.fill("#token", gw.admin_token()).unwrap();
    page.click("form[action='/console/signin/token'] button").unwrap();
    page.wait("[data-test=viewer]").unwrap();
    assert_eq!(page.url().unwrap(), format!("{}/console/sessions", gw.url()), "never sent off-site");
    assert_eq!(page.text("[data-test=viewer]").unwrap(), r#"Service::"admin""#);

    // A service account: its token is shown once and works.
    page.goto(&format!("{}/console/identities", gw.url())).unwrap();
    page.fill("#name", "fn-billing").unwrap();
    page.fill("#groups", "billing, apps").unwrap();
    page.fill("#ttl", "30d").unwrap();
    page.click("form[action='/console/identities'] button").unwrap();
    let token = page.text("[data-test=new-token]").unwrap().trim().to_string();
    let me = curl("GET", &format!("{}/api/v1/whoami", gw.url()), Some(&token), None).json();
    assert_eq!(me["name"], "fn-billing");
    assert_eq!(me["groups"], json!(["apps", "billing"]));
    shot(&page, "identities");
    page.goto(&format!("{}/console/identities", gw.url())).unwrap();
    assert!(!page.text("main").unwrap().contains(&token), "shown once only");
    // Rotating shows the new token once; the old one stops working.
    page.click("tr[data-identity=fn-billing] button:has-text('Rotate token')").unwrap();
    let rotated = page.text("[data-test=new-token]").unwrap().trim().to_string();
    assert_ne!(rotated, token);
    assert_eq!(curl("GET", &format!("{}/api/v1/whoami", gw.url()), Some(&token), None).status, 401);
    assert_eq!(curl("GET", &format!("{}/api/v1/whoami", gw.url()), Some(&rotated), None).json()["name"], "fn-billing");

    // An HTTP connection with a bearer credential: stored, never shown again.
    page.goto(&format!("{}/console/connections", gw.url())).unwrap();
    page.fill("#name", "billing-api").unwrap();
    page.select("#type", "http").unwrap();
    page.fill("#url", "https://billing.example.com").unwrap();
    page.select("#secret_kind", "bearer").unwrap();
    page.fill("#secret", "sk_live_console_secret").unwrap();
    page.fill("#mask", "email, iban").unwrap();
    page.click("form[action='/console/connections'] button.primary").unwrap();
    page.wait_text("main", "Connection billing-api added").unwrap();
    page.goto(&format!("{}/console/connections?done=Call+support+now", gw.url())).unwrap();
    let main = page.text("main").unwrap();
    assert!(!main.contains("added") && !main.contains("Call support"), "a notice shows once, and no link sets one");
    let row = page.text("tr[data-connection=billing-api]").unwrap();
    assert!(row.contains("bearer") && row.contains("https://billing.example.com"), "{row}");
    page.click("tr[data-connection=billing-api] a:has-text('Edit')").unwrap();
    page.wait_text("#connection-form", "billing-api").unwrap();
    let html = page.eval("document.documentElement.outerHTML").unwrap();
    assert!(!html.as_str().unwrap().contains("sk_live_console_secret"), "secrets are write-only");
    page.fill("#description", "invoices and refunds").unwrap();
    page.click("form[action='/console/connections'] button.primary").unwrap();
    page.wait_text("main", "Connection billing-api saved").unwrap();
    let shown =
        curl("GET", &format!("{}/api/v1/connections/billing-api", gw.url()), Some(gw.admin_token()), None).json();
    assert_eq!(shown["description"], "invoices and refunds");
    assert_eq!(shown["credential"]["kind"], "bearer", "the stored credential was kept: {shown}");
    // Its reachability test says what happened, here that nothing answers there.
    page.click("tr[data-connection=billing-api] button:has-text('Test')").unwrap();
    page.wait_text("main", "billing.example.com:443").unwrap();
    shot(&page, "connections");

    // A policy with an error is refused in place, the text kept; a valid one is applied.
    page.goto(&format!("{}/console/policies", gw.url())).unwrap();
    let broken = "permit (principal in Group::\"billing\", action == Action::\"http.get\", resource in Connection::\"billing-api\")";
    page.fill("#policy-text", broken).unwrap();
    page.click("form[action='/console/policies'] button").unwrap();
    let problem = page.text("[data-test=form-error]").unwrap();
    assert!(problem.contains("invalid") && problem.contains("policies in force are unchanged"), "{problem}");
    assert_eq!(page.eval("document.querySelector('#policy-text').value").unwrap(), json!(broken), "the text is kept");
    page.fill("#policy-text", &format!("@id(\"billing-reads\")\n{broken};")).unwrap();
    page.click("form[action='/console/policies'] button").unwrap();
    page.wait_text("main", "Policy set version 1 applied").unwrap();
    page.fill("#principal", "Service::\"fn-billing\"").unwrap();
    page.fill("#action", "http.get").unwrap();
    page.fill("#resources", "Path::\"billing-api/v1/invoices\"").unwrap();
    page.click("form[action='/console/policies/check'] button").unwrap();
    let result = page.text("[data-test=check-result]").unwrap();
    assert!(result.contains("allow") && result.contains("billing-reads"), "{result}");
    shot(&page, "policies");

    // Every change above is a management event, filterable in the sessions list.
    page.goto(&format!("{}/console/sessions?protocol=api", gw.url())).unwrap();
    assert!(page.count("#session-rows tr[data-session]").unwrap() >= 4);
    page.goto(&format!("{}/console/audit", gw.url())).unwrap();
    let audit = page.text("main").unwrap();
    for op in ["identity.create", "connection.create", "connection.update", "policies.set"] {
        assert!(audit.contains(op), "{op} in {audit}");
    }
    assert!(page.text("[data-test=chain]").unwrap().contains("ok"));

    // Signing out ends the sign-in: the old cookie opens nothing.
    let cookie = page.cookies().unwrap().into_iter().find(|c| c["name"] == "gatehouse_console").unwrap();
    page.click("header .who button").unwrap();
    page.wait("form[action='/console/signin/token']").unwrap();
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", "-H"])
        .arg(format!("Cookie: gatehouse_console={}", cookie["value"].as_str().unwrap()))
        .arg(format!("{}/console/sessions", gw.url()))
        .output()
        .unwrap();
    assert!(stdout(&out).starts_with("303") && stdout(&out).contains("/console/signin"), "{}", stdout(&out));
    assert_eq!(page.errors().unwrap(), Vec::<String>::new());
}

#[test]
fn sessions_page_by_their_position_and_filter_by_protocol_and_outcome_through_the_api() {
    let gw = gateway();
    let admin = gw.admin_token().to_string();
    for name in ["a1", "a2", "a3", "a4"] {
        gw.cli_ok(&["identities", "add", name]).unwrap();
    }
    let list = |query: &str| -> Vec<Value> {
        curl("GET", &format!("{}/api/v1/sessions?{query}", gw.url()), Some(&admin), None)
            .json()
            .as_array()
            .unwrap()
            .clone()
    };
    let all = list("protocol=api&limit=1000");
    assert!(all.len() >= 3);
    let first = list("protocol=api&limit=2");
    let next = list(&format!("protocol=api&limit=2&after={}", first[1]["id"].as_str().unwrap()));
    let ids = |l: &[Value]| l.iter().map(|s| s["id"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!([ids(&first), ids(&next)].concat(), ids(&all[..4.min(all.len())]), "pages continue each other");
    assert!(list("protocol=postgres").is_empty());
    assert!(list("outcome=masked").is_empty());
    let bad = curl("GET", &format!("{}/api/v1/sessions?outcome=weird", gw.url()), Some(&admin), None);
    assert_eq!(bad.status, 422, "{}", bad.body);
    let future = curl("GET", &format!("{}/api/v1/sessions?since=2999-01-01T00:00:00Z", gw.url()), Some(&admin), None);
    assert_eq!(future.json(), json!([]));
}
