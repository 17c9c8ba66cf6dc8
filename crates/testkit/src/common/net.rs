//! Loopback ports: pick a free one, retry a server start when someone else took it first, and
//! wait until a server accepts connections.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The address every server started by the kit listens on.
pub const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Ports the machine's own services use; never handed out even if the kernel offers them, so a
/// test server can never be confused with (or collide with) the real one.
const AVOID: &[u16] = &[3306, 5432, 6379];

/// How many ports [`start_on_free_port`] tries before giving up.
pub const START_ATTEMPTS: usize = 5;

/// A port on 127.0.0.1 that was free a moment ago: binds `127.0.0.1:0`, reads the port the kernel
/// chose and closes the socket. Another process may take it before the server binds it, which is
/// why starts go through [`start_on_free_port`].
pub fn pick_free_port() -> Result<u16> {
    for _ in 0..20 {
        let listener =
            TcpListener::bind(SocketAddrV4::new(LOOPBACK, 0)).context("binding 127.0.0.1:0 to pick a free port")?;
        let port = listener.local_addr().context("reading the port of a socket bound to 127.0.0.1:0")?.port();
        drop(listener);
        if !AVOID.contains(&port) {
            return Ok(port);
        }
    }
    bail!("the kernel kept handing out reserved ports when binding 127.0.0.1:0")
}

/// Returned (inside an [`anyhow::Error`]) by a start closure given to [`start_on_free_port`] when
/// the server failed only because its port was taken; any other error ends the retries.
#[derive(Debug)]
pub struct PortInUse {
    /// The port that was taken.
    pub port: u16,
    /// What the server said, e.g. the log line with "Address already in use".
    pub detail: String,
}

impl fmt::Display for PortInUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "port {} was already in use: {}", self.port, self.detail)
    }
}

impl std::error::Error for PortInUse {}

/// Calls `start` with freshly picked ports until it succeeds, fails with something other than
/// [`PortInUse`], or [`START_ATTEMPTS`] ports were taken. `what` names the server in errors.
pub fn start_on_free_port<T>(what: &str, mut start: impl FnMut(u16) -> Result<T>) -> Result<T> {
    let mut last = None;
    for _ in 0..START_ATTEMPTS {
        let port = pick_free_port()?;
        match start(port) {
            Ok(v) => return Ok(v),
            Err(e) if e.downcast_ref::<PortInUse>().is_some() => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    match last {
        Some(e) => Err(e.context(format!(
            "{what}: every one of {START_ATTEMPTS} picked ports was taken before the server bound it"
        ))),
        None => bail!("{what}: no start attempt was made"),
    }
}

/// Whether something accepts TCP connections on `127.0.0.1:port` right now.
pub fn port_accepts(port: u16) -> bool {
    let addr = SocketAddr::V4(SocketAddrV4::new(LOOPBACK, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Waits until `127.0.0.1:port` accepts a TCP connection, polling every 50 ms, and fails after
/// `timeout` with the last connection error.
pub fn wait_for_port(port: u16, timeout: Duration) -> Result<()> {
    let addr = SocketAddr::V4(SocketAddrV4::new(LOOPBACK, port));
    let deadline = Instant::now() + timeout;
    loop {
        let err = match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            bail!("{addr} did not accept a TCP connection within {timeout:?} (last error: {err})");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until nothing accepts on `127.0.0.1:port` any more (a server shut down), failing after
/// `timeout`.
pub fn wait_for_port_closed(port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while port_accepts(port) {
        if Instant::now() >= deadline {
            bail!("127.0.0.1:{port} still accepts connections after {timeout:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picked_port_is_free_and_waits_work() -> Result<()> {
        let port = pick_free_port()?;
        assert!(!AVOID.contains(&port));
        assert!(!port_accepts(port));
        let listener = TcpListener::bind(SocketAddrV4::new(LOOPBACK, port))?;
        wait_for_port(port, Duration::from_secs(5))?;
        drop(listener);
        wait_for_port_closed(port, Duration::from_secs(5))?;
        assert!(wait_for_port(port, Duration::from_millis(200)).is_err());
        Ok(())
    }

    #[test]
    fn start_retries_only_on_port_in_use() -> Result<()> {
        let mut calls = 0;
        let port = start_on_free_port("demo", |port| {
            calls += 1;
            if calls < 3 {
                return Err(PortInUse { port, detail: "taken".into() }.into());
            }
            Ok(port)
        })?;
        assert_eq!(calls, 3);
        assert_ne!(port, 0);

        let mut calls = 0;
        let err = start_on_free_port("demo", |_| -> Result<()> {
            calls += 1;
            bail!("broken config")
        });
        assert_eq!(calls, 1);
        assert!(err.is_err());
        Ok(())
    }
}
