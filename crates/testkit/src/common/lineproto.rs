//! The line protocol of the kit's node scripts (`oidc/provider.mjs` for [`crate::oidc`],
//! `browser/driver.mjs` for [`crate::browser`], both built on `lineproto.mjs`): the script prints
//! a `ready …` line on stdout once it can serve, then answers each JSON object written to its
//! stdin (`{"cmd": …, "id": …, …}`) with one JSON line on stdout repeating the `id`, or
//! `{"error": "…", "id": …}` when the command failed; closing its stdin ends it.
//!
//! [`LineProcess`] is the running script and both ends of that protocol: [`LineProcess::start`]
//! spawns it and waits for its `ready` line, [`LineProcess::request`] sends one command and waits
//! for its answer, [`LineProcess::kill`] and [`LineProcess::close`] end it. What a failure says is
//! left to the caller ([`Wording`]), as is checking the npm package the script needs
//! ([`check_package`]).

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use super::cmd::{self, SETUP_TIMEOUT};
use super::log_tail;

/// Checks that `dir` holds `script` and an installed npm `package` whose version starts with
/// `version_prefix`; the errors say to run `install` (the `npm ci` command for `dir`).
pub(crate) fn check_package(
    dir: &Path,
    script: &str,
    package: &str,
    version_prefix: &str,
    install: &str,
) -> Result<()> {
    let script = dir.join(script);
    if !script.is_file() {
        bail!("{} is missing (it belongs to the gatehouse-testkit sources)", script.display());
    }
    let manifest = dir.join("node_modules").join(package).join("package.json");
    let text = fs::read_to_string(&manifest).map_err(|e| {
        anyhow!(
            "the npm package {package} is not installed ({}: {e}); run `{install}` from the \
             repository root (the test command does)",
            manifest.display()
        )
    })?;
    let version = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.get("version").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default();
    if !version.starts_with(version_prefix) {
        bail!(
            "{} says {package} {version:?}, but the kit needs {version_prefix}x as pinned in \
             package-lock.json; run `{install}` from the repository root",
            manifest.display()
        );
    }
    Ok(())
}

/// How [`LineProcess::start`] runs a script, and what its startup errors say.
#[derive(Debug)]
pub(crate) struct Launch<'a> {
    /// The npm package the script runs, for errors: `oauth2-mock-server`.
    pub package: &'a str,
    /// The node versions the package works with, for errors: `20.19 or newer`.
    pub node_needed: &'a str,
    /// Where the script's stderr is appended.
    pub log: &'a Path,
    /// How many lines of the log errors quote.
    pub log_lines: usize,
    /// The line the script prints on stdout once it serves (surrounding white space aside).
    pub ready: &'a str,
    /// How long it may take to print it.
    pub timeout: Duration,
}

/// What a user of [`LineProcess::request`] says when a command fails.
pub(crate) trait Wording {
    /// The process, as in "… exited before answering …": `the provider`.
    const WHO: &'static str;

    /// The error message saying that `what` went wrong, naming the process, with its exit status
    /// if known and the end of its log (see [`failure`]).
    fn failure(&self, what: &str, status: Option<ExitStatus>) -> String;
}

/// `<name> (<detail>, <status>): <what>; last lines of <log>:` and those lines: the message of a
/// [`Wording::failure`].
pub(crate) fn failure(
    name: &str,
    detail: &str,
    status: Option<ExitStatus>,
    what: &str,
    log: &Path,
    log_lines: usize,
) -> String {
    let status = status.map(|s| format!(", {s}")).unwrap_or_default();
    format!("{name} ({detail}{status}): {what}; last lines of {}:\n{}", log.display(), log_tail(log, log_lines))
}

/// A running node script and the two ends of its line protocol, used by one command at a time
/// (callers keep it in a `Mutex`). Dropping it neither kills nor waits for the script: say
/// [`kill`](Self::kill) or [`close`](Self::close).
#[derive(Debug)]
pub(crate) struct LineProcess {
    child: Child,
    /// `None` once [`close`](Self::close) closed it.
    stdin: Option<ChildStdin>,
    /// Lines the script printed on stdout, read by a thread (so waits can have a deadline).
    lines: Receiver<String>,
    /// Id of the last command sent; answers carrying another id are stale and skipped.
    last_id: u64,
}

impl LineProcess {
    /// Spawns `command` (`node`, the script and its arguments, with the directory and environment
    /// the caller set) with piped stdin and stdout, stderr appended to `launch.log` and no
    /// `NODE_OPTIONS`, and waits for its `launch.ready` line. If the script exits first, `exited`
    /// is given what it wrote to the log meanwhile and may return the error to report instead of
    /// the generic one (a port clash, say). On any failure the script is killed, and the error
    /// quotes the command, `node --version` and the end of the log.
    pub(crate) fn start(
        command: &mut Command,
        launch: &Launch<'_>,
        exited: impl FnOnce(&str) -> Option<anyhow::Error>,
    ) -> Result<LineProcess> {
        let log = launch.log;
        let offset = fs::metadata(log).map(|m| m.len()).unwrap_or(0);
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        command
            // A preload from the caller's environment could print on stdout and break the protocol.
            .env_remove("NODE_OPTIONS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let shown = cmd::describe(command);
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
        let mut process = LineProcess { child, stdin: Some(stdin), lines, last_id: 0 };

        let ready = launch.ready;
        let what = match process.lines.recv_timeout(launch.timeout) {
            Ok(line) if line.trim() == ready => return Ok(process),
            Ok(line) => format!("printed {line:?} instead of `{ready}`"),
            Err(RecvTimeoutError::Timeout) => format!("did not print `{ready}` within {:?}", launch.timeout),
            Err(RecvTimeoutError::Disconnected) => {
                // Exited before serving: a taken port, or a broken installation.
                let _ = process.child.wait();
                let new_log = fs::read(log)
                    .map(|b| {
                        let start = usize::try_from(offset).unwrap_or(0).min(b.len());
                        String::from_utf8_lossy(&b[start..]).into_owned()
                    })
                    .unwrap_or_default();
                if let Some(err) = exited(&new_log) {
                    return Err(err);
                }
                "exited while starting".to_owned()
            }
        };
        process.kill();
        let status = process.exit_status().map(|s| format!(" ({s})")).unwrap_or_default();
        let node = command.get_program();
        let version = cmd::run(Command::new(node).arg("--version"), SETUP_TIMEOUT)
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|e| format!("`{} --version` failed: {e}", node.display()));
        bail!(
            "`{shown}`{status}: {what} (node {version}; {} needs node {}); last lines of {}:\n{}",
            launch.package,
            launch.node_needed,
            log.display(),
            log_tail(log, launch.log_lines)
        )
    }

    /// Sends one command (`fields`, a JSON object, plus `cmd` and a fresh `id`) and waits up to
    /// `timeout` for the answer with that id, skipping lines that are not JSON and stale answers
    /// (to commands that timed out). An `{"error": …}` answer is an error. `what` names the
    /// command in errors (`` `token` ``), which `wording` makes.
    pub(crate) fn request<W: Wording>(
        &mut self,
        wording: &W,
        command: &str,
        what: &str,
        mut fields: Value,
        timeout: Duration,
    ) -> Result<Value> {
        self.last_id += 1;
        let id = self.last_id;
        fields["cmd"] = json!(command);
        fields["id"] = json!(id);
        let sent = match self.stdin.as_mut() {
            Some(stdin) => writeln!(stdin, "{fields}").and_then(|()| stdin.flush()),
            None => Err(std::io::Error::other("stdin already closed")),
        };
        if let Err(e) = sent {
            let status = self.exit_status();
            bail!(wording.failure(&format!("could not send {what} ({e})"), status));
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(text) => {
                    let Ok(answer) = serde_json::from_str::<Value>(&text) else {
                        continue; // not protocol output; the scripts keep stdout clean
                    };
                    if answer.get("id") != Some(&json!(id)) {
                        continue; // the late answer to a command that timed out
                    }
                    if let Some(err) = answer.get("error") {
                        let err = err.as_str().map_or_else(|| err.to_string(), str::to_owned);
                        bail!(wording.failure(&format!("{what} failed: {err}"), None));
                    }
                    return Ok(answer);
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!(wording.failure(&format!("no answer to {what} within {timeout:?}"), None));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.exit_status();
                    let who = W::WHO;
                    bail!(wording.failure(&format!("{who} exited before answering {what}"), status));
                }
            }
        }
    }

    /// Kills the script (SIGKILL) and reaps it; nothing to do if it already exited.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Closes the script's stdin so that it shuts down on its own, waits for that, and kills it
    /// (SIGKILL) if it takes longer than `timeout`.
    pub(crate) fn close(&mut self, timeout: Duration) {
        drop(self.stdin.take());
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => thread::sleep(Duration::from_millis(20)),
            }
        }
        self.kill();
    }

    /// How the script exited, if it did.
    fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oidc::find_node;

    const TIMEOUT: Duration = Duration::from_secs(30);

    struct Named;

    impl Wording for Named {
        const WHO: &'static str = "the script";

        fn failure(&self, what: &str, status: Option<ExitStatus>) -> String {
            let status = status.map(|s| format!(" ({s})")).unwrap_or_default();
            format!("script{status}: {what}")
        }
    }

    /// `node` running `body` as an ES module after `import { serve } from '…/lineproto.mjs'`.
    fn node_script(body: &str) -> Result<Command> {
        let module = Path::new(env!("CARGO_MANIFEST_DIR")).join("lineproto.mjs");
        let source = format!("import {{ serve }} from {};\n{body}", json!(module.display().to_string()));
        let mut command = Command::new(find_node()?);
        command.args(["--input-type=module", "-e", &source]);
        Ok(command)
    }

    fn launch(log: &Path) -> Launch<'_> {
        Launch { package: "nothing", node_needed: "any", log, log_lines: 10, ready: "ready", timeout: TIMEOUT }
    }

    #[test]
    fn check_package_says_how_to_install_it() -> Result<()> {
        let check = |dir: &Path| check_package(dir, "script.mjs", "some-pkg", "1.2.", "npm ci --prefix here");
        let dir = tempfile::tempdir()?;
        let err = check(dir.path()).err().context("a directory without the script must be refused")?;
        assert!(format!("{err:#}").contains("script.mjs is missing"), "{err:#}");

        fs::write(dir.path().join("script.mjs"), "")?;
        let err = check(dir.path()).err().context("a directory without the package must be refused")?;
        let text = format!("{err:#}");
        assert!(text.contains("npm ci --prefix here") && text.contains("some-pkg is not installed"), "{text}");

        let installed = dir.path().join("node_modules").join("some-pkg");
        fs::create_dir_all(&installed)?;
        fs::write(installed.join("package.json"), r#"{"name":"some-pkg","version":"1.20.0"}"#)?;
        let err = check(dir.path()).err().context("a 1.20 install must be refused")?;
        let text = format!("{err:#}");
        assert!(text.contains(r#""1.20.0""#) && text.contains("npm ci --prefix here"), "{text}");

        fs::write(installed.join("package.json"), r#"{"name":"some-pkg","version":"1.2.3"}"#)?;
        check(dir.path())
    }

    #[test]
    fn answers_errors_and_exits() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("script.log");
        let mut command = node_script(
            r#"process.stdout.write('ready\nnot json\n{"id": 99}\n');
            await serve('script.mjs', {
              async echo(req) { return { value: req.value }; },
              async boom() { throw new Error('boom'); },
              async quit() { process.exit(3); },
            });"#,
        )?;
        let mut script = LineProcess::start(&mut command, &launch(&log), |_| None)?;
        // The line that is not JSON and the stale answer are skipped.
        let answer = script.request(&Named, "echo", "`echo`", json!({ "value": [7] }), TIMEOUT)?;
        assert_eq!(answer, json!({ "value": [7], "id": 1 }));

        let err = script.request(&Named, "boom", "`boom`", json!({}), TIMEOUT).err().context("boom must fail")?;
        assert_eq!(err.to_string(), "script: `boom` failed: boom");
        let err = script.request(&Named, "nope", "`nope`", json!({}), TIMEOUT).err().context("unknown command")?;
        assert!(err.to_string().contains(r#"unknown cmd "nope"; known: echo, boom, quit"#), "{err}");
        let text = fs::read_to_string(&log)?;
        assert!(text.contains(r#"script.mjs: {"cmd":"boom","id":2}: Error: boom"#), "{text}");

        let err = script.request(&Named, "quit", "`quit`", json!({}), TIMEOUT).err().context("quit must fail")?;
        assert!(err.to_string().contains("the script exited before answering `quit`"), "{err}");
        script.kill();
        let err = script.request(&Named, "echo", "`echo`", json!({}), TIMEOUT).err().context("gone")?;
        assert!(err.to_string().starts_with("script (exit status: 3): could not send `echo`"), "{err}");
        Ok(())
    }

    #[test]
    fn startup_failures_quote_the_log() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("script.log");
        let body = "process.stderr.write('broken installation\\n'); process.exit(2);";
        let err = LineProcess::start(&mut node_script(body)?, &launch(&log), |_| None).err().context("must fail")?;
        let text = format!("{err:#}");
        assert!(text.contains("exited while starting") && text.contains("broken installation"), "{text}");
        assert!(text.contains("(node v") && text.contains("nothing needs node any"), "{text}");

        // What the script logged this time goes to `exited`, which may name the error.
        let body = "process.stderr.write('EADDRINUSE\\n'); process.exit(2);";
        let err = LineProcess::start(&mut node_script(body)?, &launch(&log), |new| Some(anyhow!("clash: {new}")))
            .err()
            .context("must fail")?;
        assert_eq!(err.to_string(), "clash: EADDRINUSE\n");

        let err = LineProcess::start(&mut node_script("process.stdout.write('hello\\n');")?, &launch(&log), |_| None)
            .err()
            .context("must fail")?;
        assert!(err.to_string().contains(r#"printed "hello" instead of `ready`"#), "{err}");
        Ok(())
    }
}
