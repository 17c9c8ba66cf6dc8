//! A throwaway PostgreSQL server: `initdb` into a temporary directory, `pg_ctl start` on a
//! loopback port picked at run time, helpers to run SQL with the stock `psql` and to add login
//! roles with SCRAM, MD5 or trust authentication, and `pg_ctl stop -m immediate` plus removal of
//! the directory on Drop.
//!
//! The server listens on 127.0.0.1 only, on a port from the ephemeral range (never 5432), with
//! its Unix socket in its own directory, so it cannot disturb the machine's own PostgreSQL.

use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::common::cmd::{self, SETUP_TIMEOUT};
use crate::common::dir::{server_dir, write_file};
use crate::common::net::{self, PortInUse};
use crate::common::process;
use crate::common::user::RunAs;
use crate::common::{log_tail, random_hex};

/// Environment variable naming the directory holding `initdb`, `pg_ctl` and `postgres`; it wins
/// over `pg_config --bindir` and `/usr/lib/postgresql/*/bin`.
pub const ENV_BINDIR: &str = "GATEHOUSE_TEST_PG_BINDIR";

/// The superuser `initdb` creates.
pub const SUPERUSER: &str = "postgres";

/// Deadline for one `psql` run.
const PSQL_TIMEOUT: Duration = Duration::from_secs(60);

/// Deadline for the server to accept TCP connections once `pg_ctl` says it started.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Lines of the server log quoted in errors.
const LOG_LINES: usize = 30;

/// How a role created with [`Postgres::create_role`] authenticates over TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgAuth {
    /// Password stored as a SCRAM-SHA-256 secret; `scram-sha-256` in `pg_hba.conf` (the default
    /// rule for TCP connections).
    ScramSha256,
    /// Password stored as an MD5 hash (`SET password_encryption = 'md5'`); an `md5` rule for the
    /// role in `pg_hba.conf`, so the server asks for an MD5 password on the wire.
    Md5,
    /// A `trust` rule for the role in `pg_hba.conf`: no password is asked for. A non-empty
    /// password is still stored (as SCRAM).
    Trust,
}

impl PgAuth {
    fn hba_method(self) -> &'static str {
        match self {
            PgAuth::ScramSha256 => "scram-sha-256",
            PgAuth::Md5 => "md5",
            PgAuth::Trust => "trust",
        }
    }
}

impl fmt::Display for PgAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hba_method())
    }
}

/// A running PostgreSQL server owned by a test. See the [module docs](self).
///
/// The superuser is [`SUPERUSER`] with a random password; local (Unix socket) connections are
/// trusted, TCP connections from 127.0.0.1 use `scram-sha-256` unless a role was given another
/// rule. Dropping it stops the server (`pg_ctl stop -m immediate`) and removes its directory.
pub struct Postgres {
    bindir: PathBuf,
    run_as: RunAs,
    port: u16,
    password: String,
    /// Rules added by tests, written before the default rules in `pg_hba.conf`.
    hba_rules: Mutex<Vec<String>>,
    /// Last field: removed (by `TempDir`'s Drop) after `Drop for Postgres` stopped the server.
    dir: TempDir,
}

impl fmt::Debug for Postgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Postgres")
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .field("bindir", &self.bindir)
            .field("run_as", &self.run_as)
            .field("superuser", &SUPERUSER)
            .field("superuser_password", &"<redacted>")
            .finish()
    }
}

/// Finds the directory with the PostgreSQL server binaries: [`ENV_BINDIR`] if set, else
/// `pg_config --bindir` if it has them, else the newest `/usr/lib/postgresql/<version>/bin`
/// (where Debian installs `initdb` and `pg_ctl`, which are not on `PATH`).
pub fn find_bindir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(ENV_BINDIR) {
        let dir = PathBuf::from(dir);
        if has_server_binaries(&dir) {
            return Ok(dir);
        }
        bail!("{ENV_BINDIR}={} does not contain initdb, pg_ctl and postgres", dir.display());
    }
    if let Ok(out) = cmd::run(Command::new("pg_config").arg("--bindir"), Duration::from_secs(30)) {
        let dir = PathBuf::from(out.trim());
        if has_server_binaries(&dir) {
            return Ok(dir);
        }
    }
    let mut found: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.split('.').map(|p| p.parse().ok()).collect::<Option<Vec<u32>>>()?;
            let bin = e.path().join("bin");
            has_server_binaries(&bin).then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: tried \
             {ENV_BINDIR}, `pg_config --bindir` and /usr/lib/postgresql/*/bin; install the \
             `postgresql` package (Debian) or set {ENV_BINDIR}"
        ),
    }
}

fn has_server_binaries(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"].iter().all(|b| dir.join(b).is_file())
}

/// Checks a role or database name: 1 to 63 ASCII letters, digits and `_`, not starting with a
/// digit. Keeps names safe in SQL, `pg_hba.conf` and URLs without further quoting rules.
fn check_name(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if !ok {
        bail!("{kind} name {name:?} must be 1-63 ASCII letters, digits or '_', not starting with a digit");
    }
    Ok(())
}

/// `"name"` (SQL identifier or `pg_hba.conf` user, after [`check_name`]).
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` as an SQL string literal (standard_conforming_strings is on).
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Drops the caller's `PG*` variables (a `PGPORT` or `PGHOST` must not steer the kit towards
/// the machine's own server) and makes messages English so errors can be matched.
fn clean_env(c: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            c.env_remove(&key);
        }
    }
    c.env_remove("LC_ALL").env("LC_MESSAGES", "C");
}

impl Postgres {
    /// `initdb` a fresh cluster in a new temporary directory and start it on a free loopback
    /// port (trying another port if that one gets taken first). Blocks for a second or two; from
    /// async tests call it inside `tokio::task::spawn_blocking`.
    pub fn start() -> Result<Postgres> {
        let bindir = find_bindir()?;
        let run_as = RunAs::for_servers()?;
        let dir = server_dir("gatehouse-pg-", &run_as)?;
        let mut pg =
            Postgres { bindir, run_as, port: 0, password: random_hex(16)?, hba_rules: Mutex::new(Vec::new()), dir };
        pg.init()?;
        net::start_on_free_port("PostgreSQL", |port| {
            pg.port = port;
            pg.write_settings()?;
            pg.start_server()
        })?;
        Ok(pg)
    }

    /// The TCP port, on [`host`](Self::host).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Always `"127.0.0.1"`.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The superuser's name, [`SUPERUSER`].
    pub fn superuser(&self) -> &str {
        SUPERUSER
    }

    /// The superuser's password (random per server).
    pub fn superuser_password(&self) -> &str {
        &self.password
    }

    /// The directory holding the Unix socket `.s.PGSQL.<port>` (the server's own directory).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The data directory (`PGDATA`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server log (everything the server writes to stderr, via `pg_ctl -l`).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The directory the server binaries were taken from.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// Who the server runs as (see [`RunAs::for_servers`]).
    pub fn run_as(&self) -> &RunAs {
        &self.run_as
    }

    /// `postgres://postgres:<password>@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        self.url_as(SUPERUSER, Some(&self.password), db)
    }

    /// A `postgres://` URL for `user` (with `password`, if any) and database `db`.
    pub fn url_as(&self, user: &str, password: Option<&str>, db: &str) -> String {
        let auth = match password {
            Some(pw) => format!("{}:{}", url_encode(user), url_encode(pw)),
            None => url_encode(user),
        };
        format!("postgres://{auth}@{}:{}/{}", self.host(), self.port, url_encode(db))
    }

    /// The last lines of the server log, for assertion messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    /// Runs `sql` in database `db` as the superuser with the stock `psql` over TCP and returns
    /// what it printed, without the final newline. `psql` runs with `-X -A -t -q -v
    /// ON_ERROR_STOP=1`, so a `select` prints bare `|`-separated rows and command tags are
    /// omitted; the first failing statement makes this an error carrying psql's stderr.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        self.psql_as(SUPERUSER, Some(&self.password), db, sql)
    }

    /// Like [`psql`](Self::psql), logging in as `user` with `password` (or none; `psql` never
    /// prompts). The error carries a [`cmd::CommandFailed`] whose `stderr` says why, e.g.
    /// `password authentication failed for user "…"`.
    pub fn psql_as(&self, user: &str, password: Option<&str>, db: &str, sql: &str) -> Result<String> {
        self.run_psql(user, password, db, sql)
            .with_context(|| format!("psql as {user} to {}:{}/{db} failed running:\n{sql}", self.host(), self.port))
    }

    fn run_psql(&self, user: &str, password: Option<&str>, db: &str, sql: &str) -> Result<String> {
        let own = self.bindir.join("psql");
        let mut c = Command::new(if own.is_file() { own.as_os_str() } else { OsStr::new("psql") });
        clean_env(&mut c);
        c.args(["-X", "-A", "-t", "-q", "-w", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.host())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", user, "-d", db, "-f", "-"])
            .env("PGCONNECT_TIMEOUT", "10")
            .env("PGSSLMODE", "disable")
            .env("PGCLIENTENCODING", "UTF8")
            .env("PGAPPNAME", "gatehouse-testkit");
        if let Some(pw) = password {
            c.env("PGPASSWORD", pw);
        }
        // SQL on stdin rather than `-c`, so that passwords in it never show in a command line.
        let out = cmd::run_with_input(&mut c, sql.as_bytes(), PSQL_TIMEOUT)?;
        Ok(out.trim_end_matches('\n').to_owned())
    }

    /// Creates a login role `name` that authenticates over TCP as `auth` says (see [`PgAuth`]),
    /// and returns once the server applies it. For [`PgAuth::Trust`] the password may be empty.
    /// Names are limited to ASCII letters, digits and `_`.
    pub fn create_role(&self, name: &str, password: &str, auth: PgAuth) -> Result<()> {
        check_name("role", name)?;
        if password.is_empty() && auth != PgAuth::Trust {
            bail!("role {name:?}: {auth} authentication needs a non-empty password");
        }
        let ident = quote_ident(name);
        let encryption = match auth {
            PgAuth::Md5 => "md5",
            PgAuth::ScramSha256 | PgAuth::Trust => "scram-sha-256",
        };
        let sql = if password.is_empty() {
            format!("CREATE ROLE {ident} LOGIN;")
        } else {
            format!(
                "SET password_encryption = '{encryption}';\nCREATE ROLE {ident} LOGIN PASSWORD {};",
                quote_literal(password)
            )
        };
        // Not psql(): its error would quote the SQL, password included.
        self.run_psql(SUPERUSER, Some(&self.password), "postgres", &sql)
            .with_context(|| format!("creating role {name:?} ({auth})"))?;
        match auth {
            // The default TCP rule already asks for SCRAM.
            PgAuth::ScramSha256 => Ok(()),
            PgAuth::Md5 | PgAuth::Trust => {
                self.add_hba_rule(&format!("host all {ident} 127.0.0.1/32 {}", auth.hba_method()))
            }
        }
    }

    /// Creates database `name` owned by role `owner`.
    pub fn create_database(&self, name: &str, owner: &str) -> Result<()> {
        check_name("database", name)?;
        check_name("role", owner)?;
        self.psql("postgres", &format!("CREATE DATABASE {} OWNER {};", quote_ident(name), quote_ident(owner)))?;
        Ok(())
    }

    /// Adds a line to `pg_hba.conf`, ahead of the default rules and after earlier added ones,
    /// and [`reload`](Self::reload)s. Example: `host all alice 127.0.0.1/32 trust`.
    pub fn add_hba_rule(&self, rule: &str) -> Result<()> {
        if rule.contains('\n') {
            bail!("a pg_hba.conf rule is one line: {rule:?}");
        }
        self.hba_rules.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(rule.to_owned());
        self.write_hba()?;
        self.reload()
    }

    /// `pg_ctl reload`, then waits until new connections see the reloaded configuration (by
    /// watching `pg_conf_load_time()` change), so a test can rely on it straight away.
    pub fn reload(&self) -> Result<()> {
        let query = "select pg_conf_load_time()";
        let before = self.psql("postgres", query)?;
        cmd::run(self.server_command("pg_ctl").arg("reload").arg("-D").arg(self.data_dir()), SETUP_TIMEOUT)
            .with_context(|| self.failure("reloading PostgreSQL"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.psql("postgres", query)? == before {
            if Instant::now() >= deadline {
                bail!(self.failure("PostgreSQL did not reload its configuration within 10s"));
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Whether the postmaster named in `postmaster.pid` is alive.
    pub fn is_running(&self) -> bool {
        process::read_pid_file(&self.pid_file()).is_ok_and(process::pid_alive)
    }

    /// Stops the server cleanly (`pg_ctl stop -m fast`); nothing to do if it is not running.
    pub fn stop(&self) -> Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        cmd::run(
            self.server_command("pg_ctl").args(["stop", "-m", "fast", "-w", "-t", "60", "-D"]).arg(self.data_dir()),
            SETUP_TIMEOUT,
        )
        .with_context(|| self.failure("stopping PostgreSQL"))?;
        Ok(())
    }

    /// Simulates a crash: SIGKILLs the postmaster, then its remaining children (so existing
    /// connections drop at once), and waits until they are gone. Removes the stale pid and
    /// socket lock files and the shared memory segment so that [`restart`](Self::restart) works
    /// even where dead processes are never reaped. The data directory is left as after a crash:
    /// the next start runs crash recovery.
    pub fn kill_postmaster(&self) -> Result<()> {
        let pid_file = self.pid_file();
        let pid =
            process::read_pid_file(&pid_file).context("PostgreSQL is not running (no readable postmaster.pid)")?;
        if !process::pid_alive(pid) {
            bail!("the postmaster (pid {pid}) is not running");
        }
        let shmid = fs::read_to_string(&pid_file).ok().and_then(|t| {
            // Line 7 of postmaster.pid: "<shmem key> <shmem id>".
            t.lines().nth(6)?.split_whitespace().nth(1).map(str::to_owned)
        });
        process::kill_tree(pid, Duration::from_secs(10))
            .with_context(|| format!("killing the postmaster (pid {pid})"))?;
        for stale in [pid_file, self.socket_dir().join(format!(".s.PGSQL.{}.lock", self.port))] {
            match fs::remove_file(&stale) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", stale.display()));
                }
                _ => {}
            }
        }
        if let Some(id) = shmid {
            // Best effort: the next start would clean it up too.
            let _ = cmd::run(Command::new("ipcrm").args(["-m", &id]), SETUP_TIMEOUT);
        }
        Ok(())
    }

    /// Starts the server again on the same port: stops it first if it runs, or recovers after
    /// [`kill_postmaster`](Self::kill_postmaster). Fails (with the log) if the port was taken
    /// meanwhile.
    pub fn restart(&self) -> Result<()> {
        self.stop()?;
        self.start_server()
    }

    fn pid_file(&self) -> PathBuf {
        self.data_dir().join("postmaster.pid")
    }

    /// An error message with the end of the server log.
    fn failure(&self, what: &str) -> String {
        format!(
            "{what} (server on 127.0.0.1:{}, run as {}, dir {}); last lines of {}:\n{}",
            self.port,
            self.run_as,
            self.dir.path().display(),
            self.log_path().display(),
            self.log_tail(LOG_LINES)
        )
    }

    /// A command running server binary `bin` as the server's account, in the server's
    /// directory, with a clean environment.
    fn server_command(&self, bin: &str) -> Command {
        let mut c = self.run_as.command(self.bindir.join(bin));
        clean_env(&mut c);
        c.env("LC_ALL", "C").current_dir(self.dir.path());
        c
    }

    /// `initdb`, our include line in `postgresql.conf`, and our `pg_hba.conf`.
    fn init(&self) -> Result<()> {
        let pwfile = self.dir.path().join("superuser.pw");
        write_file(&pwfile, &format!("{}\n", self.password), 0o600, &self.run_as)?;
        let initdb = cmd::run(
            self.server_command("initdb")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-U", SUPERUSER])
                .arg(format!("--pwfile={}", pwfile.display()))
                .args(["--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8", "--locale=C"]),
            SETUP_TIMEOUT,
        );
        let _ = fs::remove_file(&pwfile);
        initdb.with_context(|| {
            format!(
                "initdb (from {}) failed as {} in {}",
                self.bindir.display(),
                self.run_as,
                self.dir.path().display()
            )
        })?;

        let conf = self.data_dir().join("postgresql.conf");
        fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .and_then(|mut f| f.write_all(b"\n# Added by gatehouse-testkit.\ninclude 'gatehouse.conf'\n"))
            .with_context(|| format!("appending to {}", conf.display()))?;
        self.write_hba()
    }

    /// `gatehouse.conf`, included from `postgresql.conf`: port, sockets, speed over safety.
    /// `fsync` is off (data survives a killed server, not a machine crash); commits stay
    /// synchronous so that what a test committed survives [`kill_postmaster`](Self::kill_postmaster).
    fn write_settings(&self) -> Result<()> {
        let socket_dir = self.dir.path().display().to_string().replace('\'', "''");
        let settings = format!(
            "# Written by gatehouse-testkit.\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{socket_dir}'\n\
             fsync = off\n\
             full_page_writes = off\n\
             max_connections = 200\n\
             shared_buffers = 32MB\n\
             password_encryption = 'scram-sha-256'\n\
             logging_collector = off\n\
             log_destination = 'stderr'\n\
             log_line_prefix = '%m [%p] %q%u@%d '\n\
             log_connections = on\n\
             log_min_messages = warning\n\
             lc_messages = 'C'\n",
            port = self.port
        );
        write_file(&self.data_dir().join("gatehouse.conf"), &settings, 0o600, &self.run_as)
    }

    fn write_hba(&self) -> Result<()> {
        let mut text = String::from("# Written by gatehouse-testkit: rules added by tests first, then the defaults.\n");
        for rule in self.hba_rules.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).iter() {
            text.push_str(rule);
            text.push('\n');
        }
        text.push_str(
            "local all         all                trust\n\
             host  all         all  127.0.0.1/32  scram-sha-256\n\
             local replication all                trust\n\
             host  replication all  127.0.0.1/32  scram-sha-256\n",
        );
        write_file(&self.data_dir().join("pg_hba.conf"), &text, 0o600, &self.run_as)
    }

    /// `pg_ctl start -w` and wait for the TCP port. A port clash is reported as [`PortInUse`].
    fn start_server(&self) -> Result<()> {
        let log = self.log_path();
        let offset = fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let started = cmd::run(
            self.server_command("pg_ctl")
                .args(["start", "-w", "-t", "60", "-D"])
                .arg(self.data_dir())
                .arg("-l")
                .arg(&log),
            SETUP_TIMEOUT,
        );
        if let Err(e) = started {
            let new_log = fs::read(&log)
                .map(|b| {
                    let start = usize::try_from(offset).unwrap_or(0).min(b.len());
                    String::from_utf8_lossy(&b[start..]).into_owned()
                })
                .unwrap_or_default();
            if let Some(line) = new_log.lines().find(|l| l.contains("Address already in use")) {
                return Err(PortInUse { port: self.port, detail: line.to_owned() }.into());
            }
            return Err(e.context(self.failure("starting PostgreSQL with pg_ctl")));
        }
        net::wait_for_port(self.port, ACCEPT_TIMEOUT)
            .with_context(|| self.failure("PostgreSQL started but does not accept TCP"))
    }
}

impl Drop for Postgres {
    /// `pg_ctl stop -m immediate` (errors ignored), SIGKILL if that left the postmaster alive;
    /// the directory is removed afterwards by the `TempDir` field.
    fn drop(&mut self) {
        if !self.is_running() {
            return;
        }
        let _ = cmd::run(
            self.server_command("pg_ctl")
                .args(["stop", "-m", "immediate", "-w", "-t", "30", "-D"])
                .arg(self.data_dir()),
            Duration::from_secs(60),
        );
        if let Ok(pid) = process::read_pid_file(&self.pid_file())
            && process::pid_alive(pid)
        {
            let _ = process::kill_tree(pid, Duration::from_secs(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_quoted() {
        assert!(check_name("role", "alice_2").is_ok());
        assert!(check_name("role", "").is_err());
        assert!(check_name("role", "2bad").is_err());
        assert!(check_name("role", "a\"b").is_err());
        assert!(check_name("role", &"x".repeat(64)).is_err());
        assert_eq!(quote_ident("Alice"), "\"Alice\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(url_encode("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn bindir_has_the_server_binaries() -> Result<()> {
        let dir = find_bindir()?;
        assert!(has_server_binaries(&dir), "{}", dir.display());
        Ok(())
    }
}
