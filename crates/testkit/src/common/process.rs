//! Looking at and killing server processes by pid, through `/proc` and the `kill` command (the
//! crate has no `unsafe` and so no direct system calls).

use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::cmd::{self, SETUP_TIMEOUT};

/// Reads the pid on the first line of a server's pid file (PostgreSQL's `postmaster.pid`,
/// `redis.pid`, …).
pub fn read_pid_file(path: &Path) -> Result<u32> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let first = text.lines().next().unwrap_or("").trim();
    first.parse().with_context(|| format!("{} starts with {first:?}, not a pid", path.display()))
}

/// `(state, parent pid)` from `/proc/<pid>/stat`, or `None` if there is no such process.
fn stat(pid: u32) -> Option<(char, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid …"; comm may contain spaces and parentheses, so split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether `pid` is a live process. A zombie (exited, not yet reaped by its parent) counts as
/// gone: it holds no ports, files or memory.
pub fn pid_alive(pid: u32) -> bool {
    matches!(stat(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

/// The live processes whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| matches!(stat(p), Some((s, ppid)) if ppid == pid && s != 'Z' && s != 'X'))
        .collect()
}

/// Sends `signal` (a name such as `KILL` or `TERM`) to `pids` with the `kill` command. Processes
/// that already exited are not an error.
pub fn kill(pids: &[u32], signal: &str) -> Result<()> {
    let alive: Vec<String> = pids.iter().filter(|&&p| pid_alive(p)).map(u32::to_string).collect();
    if alive.is_empty() {
        return Ok(());
    }
    let result = cmd::run(Command::new("kill").args(["-s", signal]).args(&alive), SETUP_TIMEOUT);
    // A process may exit between the check and the signal; only complain about live ones.
    if let Err(e) = result
        && pids.iter().any(|&p| pid_alive(p))
    {
        return Err(e.context(format!("sending SIG{signal} to {}", alive.join(" "))));
    }
    Ok(())
}

/// Waits until none of `pids` is alive, failing after `timeout`.
pub fn wait_gone(pids: &[u32], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|&p| pid_alive(p)).collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("processes {left:?} still alive after {timeout:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILLs `pid` and its children (children first noted, so that none is missed when they are
/// re-parented) and waits until all are gone.
pub fn kill_tree(pid: u32, timeout: Duration) -> Result<()> {
    let mut pids = vec![pid];
    pids.extend(children_of(pid));
    kill(&pids[..1], "KILL")?;
    // Children notice their parent's death on their own, but a crash test wants them gone now.
    pids.extend(children_of(pid));
    kill(&pids, "KILL")?;
    wait_gone(&pids, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_tree_kills_parent_and_children() -> Result<()> {
        let mut child = Command::new("sh").args(["-c", "sleep 60 & sleep 60 & wait"]).spawn()?;
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(5);
        while children_of(pid).len() < 2 {
            if Instant::now() >= deadline {
                bail!("sh did not start its children");
            }
            thread::sleep(Duration::from_millis(10));
        }
        let kids = children_of(pid);
        assert!(pid_alive(pid));
        kill_tree(pid, Duration::from_secs(5))?;
        child.wait()?;
        assert!(!pid_alive(pid));
        assert!(kids.iter().all(|&k| !pid_alive(k)));
        Ok(())
    }
}
