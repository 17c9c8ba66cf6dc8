//! Who a server runs as. Several servers (PostgreSQL's `initdb` first of all) refuse to run as
//! root, and tests on CI and on developer machines often do; then the kit runs them as an
//! unprivileged account (`nobody` unless `GATEHOUSE_TEST_USER` names another) through `runuser`
//! (or `setpriv` where `runuser` is missing), and hands that account the server's directory with
//! `chown`. When the tests are not root, servers simply run as the current user.

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::cmd::{self, SETUP_TIMEOUT};

/// Environment variable naming the account servers run as when the tests run as root.
pub const ENV_USER: &str = "GATEHOUSE_TEST_USER";

/// The account used when the tests run as root and [`ENV_USER`] is not set.
pub const DEFAULT_USER: &str = "nobody";

/// The effective user id of this process, from `/proc/self/status` (or `id -u` if that cannot be
/// read).
pub fn effective_uid() -> Result<u32> {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        // "Uid:\treal\teffective\tsaved\tfs"
        if let Some(euid) = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
        {
            return Ok(euid);
        }
    }
    let out = cmd::run(Command::new("id").arg("-u"), SETUP_TIMEOUT)?;
    out.trim().parse().with_context(|| format!("`id -u` printed {out:?}, not a number"))
}

/// Whether this process runs as root (effective uid 0). Assumes not root if that cannot be told.
pub fn is_root() -> bool {
    matches!(effective_uid(), Ok(0))
}

/// How a server process is launched: as the current user, or as another account.
#[derive(Debug, Clone)]
pub enum RunAs {
    /// Run commands directly.
    Current,
    /// Run commands as this (unprivileged) account.
    User(Account),
}

/// An unprivileged account that commands are run as, and how to switch to it.
#[derive(Clone)]
pub struct Account {
    name: String,
    uid: u32,
    gid: u32,
    launcher: Launcher,
}

#[derive(Debug, Clone)]
enum Launcher {
    /// `runuser -u NAME -- program …`
    Runuser(PathBuf),
    /// `setpriv --reuid=UID --regid=GID --clear-groups -- program …`
    Setpriv(PathBuf),
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (uid {}, gid {})", self.name, self.uid, self.gid)
    }
}

impl Account {
    /// Looks up `name` with `id` and finds `runuser` or `setpriv` to switch to it.
    pub fn lookup(name: &str) -> Result<Account> {
        let id = |flag: &str| -> Result<u32> {
            let out = cmd::run(Command::new("id").args([flag, name]), SETUP_TIMEOUT)
                .with_context(|| format!("looking up the account {name:?} to run servers as"))?;
            out.trim().parse().with_context(|| format!("`id {flag} {name}` printed {out:?}, not a number"))
        };
        let uid = id("-u")?;
        let gid = id("-g")?;
        if uid == 0 {
            bail!("{name:?} is root; servers must run as an unprivileged account (set {ENV_USER})");
        }
        let launcher = if let Some(p) = cmd::which("runuser") {
            Launcher::Runuser(p)
        } else if let Some(p) = cmd::which("setpriv") {
            Launcher::Setpriv(p)
        } else {
            bail!(
                "running as root, but neither `runuser` nor `setpriv` (util-linux) was found to \
                 run servers as {name:?}"
            );
        };
        Ok(Account { name: name.to_owned(), uid, gid, launcher })
    }

    /// The account's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The account's user id.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The account's primary group id.
    pub fn gid(&self) -> u32 {
        self.gid
    }
}

impl RunAs {
    /// The right choice for servers started by this process: [`RunAs::Current`] unless running
    /// as root, else the account named by [`ENV_USER`] (default [`DEFAULT_USER`]).
    pub fn for_servers() -> Result<RunAs> {
        if !is_root() {
            return Ok(RunAs::Current);
        }
        let name = std::env::var(ENV_USER).unwrap_or_else(|_| DEFAULT_USER.to_owned());
        Ok(RunAs::User(Account::lookup(&name)?))
    }

    /// Whether commands run as another account than this process.
    pub fn is_other_user(&self) -> bool {
        matches!(self, RunAs::User(_))
    }

    /// A [`Command`] that runs `program` as this account; add arguments as usual. Environment
    /// variables set on it reach `program`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        match self {
            RunAs::Current => Command::new(program),
            RunAs::User(acct) => {
                let mut c;
                match &acct.launcher {
                    Launcher::Runuser(runuser) => {
                        c = Command::new(runuser);
                        c.args(["-u", &acct.name, "--"]);
                    }
                    Launcher::Setpriv(setpriv) => {
                        c = Command::new(setpriv);
                        c.arg(format!("--reuid={}", acct.uid))
                            .arg(format!("--regid={}", acct.gid))
                            .args(["--clear-groups", "--"]);
                    }
                }
                c.arg(program);
                c
            }
        }
    }

    /// Gives `path` (recursively) to this account with the `chown` command; nothing to do for
    /// [`RunAs::Current`].
    pub fn chown(&self, path: &Path) -> Result<()> {
        match self {
            RunAs::Current => Ok(()),
            RunAs::User(acct) => {
                cmd::run(
                    Command::new("chown").arg("-R").arg(format!("{}:{}", acct.uid, acct.gid)).arg(path),
                    SETUP_TIMEOUT,
                )
                .with_context(|| format!("giving {} to {}", path.display(), acct.name))?;
                Ok(())
            }
        }
    }
}

impl fmt::Display for RunAs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunAs::Current => write!(f, "the current user"),
            RunAs::User(acct) => write!(f, "{}", acct.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_as_the_chosen_account() -> Result<()> {
        let run_as = RunAs::for_servers()?;
        assert_eq!(run_as.is_other_user(), is_root());
        let out = cmd::run(run_as.command("id").arg("-u"), SETUP_TIMEOUT)?;
        let uid: u32 = out.trim().parse()?;
        match &run_as {
            RunAs::Current => assert_eq!(uid, effective_uid()?),
            RunAs::User(acct) => {
                assert_ne!(uid, 0);
                assert_eq!(uid, acct.uid());
            }
        }
        Ok(())
    }
}
