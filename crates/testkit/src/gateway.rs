//! Runs the built `gatehouse` binary as a server in its own data directory, on a loopback port
//! picked at run time, and drives it with the same binary as a client (or any stock client).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::common::net::{PortInUse, start_on_free_port, wait_for_port};

/// A running gateway. Dropping it kills the process and removes its data directory.
#[derive(Debug)]
pub struct Gateway {
    bin: PathBuf,
    dir: TempDir,
    child: Option<Child>,
    port: u16,
    admin_token: String,
    env: Vec<(String, String)>,
    /// A configuration file passed with `--config`.
    config: Option<PathBuf>,
    /// Copy the server's output into the log file (so the server itself writes no file but its
    /// store: a file-size limit put on it hits only the store).
    copiers: Vec<std::thread::JoinHandle<()>>,
}

/// Every `GATEHOUSE_…` variable of the test process is removed from the servers and clients the
/// kit starts, so the caller's environment cannot change what a test sees.
fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("GATEHOUSE_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
}

impl Gateway {
    /// Starts `bin serve` with a fresh data directory and the API on a free loopback port.
    pub fn start(bin: &Path) -> Result<Gateway> {
        Gateway::start_with(bin, &[])
    }

    /// Like [`Gateway::start`], with extra environment variables for the server.
    pub fn start_with(bin: &Path, env: &[(&str, &str)]) -> Result<Gateway> {
        Gateway::start_with_config(bin, env, None)
    }

    /// Like [`Gateway::start_with`], with a configuration file (TOML text) given by `--config`.
    pub fn start_with_config(bin: &Path, env: &[(&str, &str)], config: Option<&str>) -> Result<Gateway> {
        let dir = tempfile::Builder::new().prefix("gatehouse-gw-").tempdir().context("creating the data directory")?;
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let config = match config {
            Some(text) => {
                let path = dir.path().join("gatehouse.toml");
                std::fs::write(&path, text).context("writing the configuration file")?;
                Some(path)
            }
            None => None,
        };
        let mut gw = Gateway {
            bin: bin.to_path_buf(),
            dir,
            child: None,
            port: 0,
            admin_token: String::new(),
            env,
            config,
            copiers: Vec::new(),
        };
        start_on_free_port("gatehouse", |port| gw.spawn(port))?;
        gw.admin_token = std::fs::read_to_string(gw.data_dir().join("admin.token"))
            .context("reading admin.token")?
            .trim()
            .to_string();
        Ok(gw)
    }

    fn spawn(&mut self, port: u16) -> Result<()> {
        let log_path = self.log_path();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let mut cmd = Command::new(&self.bin);
        clean_env(&mut cmd);
        cmd.arg("serve");
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        cmd.arg("--data-dir")
            .arg(self.data_dir())
            .env("GATEHOUSE_LISTEN_API", format!("127.0.0.1:{port}"))
            .env("GATEHOUSE_AUDIT_FSYNC", "off")
            // Protocol listeners stay off unless a test asks for one (on a port it picked).
            .env("GATEHOUSE_LISTEN_POSTGRES", "")
            .env("GATEHOUSE_LISTEN_HTTP", "")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("starting {}", self.bin.display()))?;
        let stdout = child.stdout.take().map(|o| Box::new(o) as Box<dyn std::io::Read + Send>);
        let stderr = child.stderr.take().map(|e| Box::new(e) as Box<dyn std::io::Read + Send>);
        for mut output in [stdout, stderr].into_iter().flatten() {
            let mut log = log.try_clone()?;
            self.copiers.push(std::thread::spawn(move || {
                let _ = std::io::copy(&mut output, &mut log);
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                self.join_copiers();
                let tail = crate::common::log_tail(&self.log_path(), 20);
                if tail.contains("Address already in use") {
                    return Err(PortInUse { port, detail: tail }.into());
                }
                bail!("gatehouse exited with {status} while starting; log:\n{tail}");
            }
            if wait_for_port(port, Duration::from_millis(100)).is_ok() && self.data_dir().join("admin.token").exists() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("gatehouse did not listen within 20 s; log:\n{}", crate::common::log_tail(&self.log_path(), 20));
            }
        }
        self.child = Some(child);
        self.port = port;
        Ok(())
    }

    /// The data directory (store, keys, tokens, chain head).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Everything the server printed.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("gatehouse.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The bootstrap `admin` token.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The client command, pointed at this gateway, with no token.
    pub fn client(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        clean_env(&mut cmd);
        cmd.env("GATEHOUSE_SERVER", self.url()).env("HOME", self.dir.path()).env_remove("XDG_CONFIG_HOME");
        cmd
    }

    /// Runs the client with `token` and `args`.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> Result<Output> {
        let out = self.client().env("GATEHOUSE_TOKEN", token).args(args).stdin(Stdio::null()).output()?;
        Ok(out)
    }

    /// Runs the client as `admin`.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        self.cli_as(&self.admin_token, args)
    }

    /// Runs the client as `admin` and returns its stdout, failing on a non-zero exit.
    pub fn cli_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.cli(args)?;
        if !out.status.success() {
            bail!(
                "gatehouse {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits until everything the exited server printed is in the log file.
    fn join_copiers(&mut self) {
        for copier in self.copiers.drain(..) {
            let _ = copier.join();
        }
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit code.
    pub fn terminate(&mut self) -> Result<Option<i32>> {
        let Some(mut child) = self.child.take() else { bail!("not running") };
        crate::common::process::kill(&[child.id()], "TERM")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                self.join_copiers();
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("gatehouse did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process with SIGKILL, as a crash would: nothing is flushed or ended.
    pub fn kill(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else { bail!("not running") };
        child.kill()?;
        child.wait()?;
        self.join_copiers();
        Ok(())
    }

    /// Starts the server again on the same data directory and port (after [`Gateway::terminate`]).
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.terminate()?;
        }
        let port = self.port;
        self.spawn(port)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
