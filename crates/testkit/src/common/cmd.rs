//! Running a command to completion with captured output, optional standard input and a deadline,
//! and turning a failure into an error that names the command and shows what it printed.

use std::ffi::OsStr;
use std::fmt;
use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Deadline for commands that set up or tear down a server (`initdb`, `pg_ctl`, …).
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(120);

/// How much of each output stream an error message keeps (the end, where the cause usually is).
const KEEP_CHARS: usize = 4000;

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Captured {
    /// How it exited.
    pub status: ExitStatus,
    /// Standard output, lossily decoded as UTF-8.
    pub stdout: String,
    /// Standard error, lossily decoded as UTF-8.
    pub stderr: String,
}

/// A command that ran but did not succeed. Carried inside the [`anyhow::Error`] returned by
/// [`run`]/[`run_with_input`], so tests can `downcast_ref::<CommandFailed>()` and look at
/// `stderr` (for example to check that a login was refused for the right reason).
#[derive(Debug, Clone)]
pub struct CommandFailed {
    /// The command line, as shown by [`describe`].
    pub command: String,
    /// The exit status, e.g. `exit status: 2`, or `timed out after …`.
    pub status: String,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl fmt::Display for CommandFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` failed ({})", self.command, self.status)?;
        let stderr = self.stderr.trim_end();
        let stdout = self.stdout.trim_end();
        if stderr.is_empty() {
            write!(f, "; stderr was empty")?;
        } else {
            write!(f, "\n--- stderr ---\n{}", keep_end(stderr))?;
        }
        if !stdout.is_empty() {
            write!(f, "\n--- stdout ---\n{}", keep_end(stdout))?;
        }
        Ok(())
    }
}

impl std::error::Error for CommandFailed {}

fn keep_end(s: &str) -> &str {
    if s.len() <= KEEP_CHARS {
        return s;
    }
    let mut start = s.len() - KEEP_CHARS;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// The command line of `cmd` for messages: program and arguments, arguments with spaces or
/// quotes wrapped in single quotes. Environment variables are not shown (secrets go there).
pub fn describe(cmd: &Command) -> String {
    let mut out = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        out.push(' ');
        out.push_str(&shell_word(arg));
    }
    out
}

fn shell_word(arg: &OsStr) -> String {
    let s = arg.to_string_lossy();
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_=./:,@%+".contains(c)) {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

enum Stream {
    Out,
    Err,
}

fn spawn_reader<R: Read + Send + 'static>(pipe: Option<R>, which: Stream, tx: mpsc::Sender<(Stream, Vec<u8>)>) {
    if let Some(mut pipe) = pipe {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send((which, buf));
        });
    }
}

/// Runs `cmd` to completion, feeding it `input` on standard input (or `/dev/null`), capturing
/// standard output and error, and killing it after `timeout`. Fails only if the command cannot
/// be started or does not finish in time; a non-zero exit is reported in [`Captured::status`].
pub fn capture(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Result<Captured> {
    let shown = describe(cmd);
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("could not start `{shown}`"))?;

    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        let data = data.to_vec();
        // A writer thread, so a command that prints a lot before reading cannot deadlock us.
        thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }
    let (tx, rx) = mpsc::channel();
    spawn_reader(child.stdout.take(), Stream::Out, tx.clone());
    spawn_reader(child.stderr.take(), Stream::Err, tx);

    let waited = wait_with_deadline(&mut child, timeout).with_context(|| format!("waiting for `{shown}`"))?;

    // The pipes close when the command exits, unless it left a child holding them; give such
    // stragglers a moment, then go on with whatever arrived.
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let grace = Instant::now() + Duration::from_secs(5);
    for _ in 0..2 {
        match rx.recv_timeout(grace.saturating_duration_since(Instant::now())) {
            Ok((Stream::Out, b)) => stdout = b,
            Ok((Stream::Err, b)) => stderr = b,
            Err(_) => break,
        }
    }
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    let stderr = String::from_utf8_lossy(&stderr).into_owned();

    match waited {
        Some(status) => Ok(Captured { status, stdout, stderr }),
        None => Err(CommandFailed {
            command: shown,
            status: format!("did not finish within {timeout:?} and was killed"),
            stdout,
            stderr,
        }
        .into()),
    }
}

/// `Some(status)` when the child exited in time; `None` when it was killed at the deadline.
fn wait_with_deadline(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    }
}

/// Runs `cmd` (standard input from `/dev/null`) and returns its standard output; a non-zero
/// exit, a timeout or a failure to start is an error naming the command and showing its
/// standard error (a [`CommandFailed`] inside the `anyhow::Error`).
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<String> {
    run_inner(cmd, None, timeout)
}

/// Like [`run`], with `input` written to the command's standard input.
pub fn run_with_input(cmd: &mut Command, input: &[u8], timeout: Duration) -> Result<String> {
    run_inner(cmd, Some(input), timeout)
}

fn run_inner(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Result<String> {
    let out = capture(cmd, input, timeout)?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(CommandFailed {
            command: describe(cmd),
            status: out.status.to_string(),
            stdout: out.stdout,
            stderr: out.stderr,
        }
        .into())
    }
}

/// Finds `name` in `PATH`, then in `/usr/sbin` and `/sbin` (which a non-login root shell may lack).
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(Into::into))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_reports_failures() -> Result<()> {
        let out = run(Command::new("sh").args(["-c", "echo hello"]), SETUP_TIMEOUT)?;
        assert_eq!(out, "hello\n");

        let out = run_with_input(&mut Command::new("cat"), b"piped", SETUP_TIMEOUT)?;
        assert_eq!(out, "piped");

        let err = run(Command::new("sh").args(["-c", "echo oops >&2; exit 3"]), SETUP_TIMEOUT)
            .err()
            .context("a failing command must be an error")?;
        let failed = err.downcast_ref::<CommandFailed>().context("error should carry CommandFailed")?;
        assert_eq!(failed.stderr, "oops\n");
        let text = err.to_string();
        assert!(text.contains("sh -c 'echo oops >&2; exit 3'"), "{text}");
        assert!(text.contains("oops"), "{text}");
        Ok(())
    }

    #[test]
    fn kills_at_the_deadline() -> Result<()> {
        let started = Instant::now();
        let err =
            run(Command::new("sleep").arg("30"), Duration::from_millis(200)).err().context("sleep 30 must time out")?;
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(err.to_string().contains("did not finish"), "{err}");
        Ok(())
    }

    #[test]
    fn missing_program_is_named() {
        let err = run(&mut Command::new("/nonexistent/gatehouse-no-such-binary"), SETUP_TIMEOUT);
        let text = err.err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(text.contains("gatehouse-no-such-binary"), "{text}");
    }
}
