//! Upstream clients: one pooled `reqwest` client per base URL and CA file, over HTTP/1.1 or
//! HTTP/2 (negotiated by TLS ALPN), with TLS verified against the system roots or the
//! connection's `--ca-file`. Redirects are not followed (the caller gets them, and its next
//! request is decided on its own) and no proxy from the environment is used.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
pub(crate) struct Clients {
    by_target: Mutex<HashMap<(String, Option<String>), reqwest::Client>>,
}

impl Clients {
    /// The client for `base_url` trusting `ca_file` (besides the system roots).
    pub fn get(
        &self,
        base_url: &str,
        ca_file: Option<&str>,
        connect_timeout: Duration,
        read_timeout: Duration,
    ) -> Result<reqwest::Client, String> {
        let key = (base_url.to_string(), ca_file.map(String::from));
        if let Some(c) = self.by_target.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(c.clone());
        }
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(connect_timeout)
            .read_timeout(read_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true);
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|e| format!("cannot read the connection's CA file {path}: {e}"))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("the connection's CA file {path} is not PEM certificates: {e}"))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(|e| format!("cannot build the upstream client: {e}"))?;
        self.by_target.lock().unwrap_or_else(|p| p.into_inner()).insert(key, client.clone());
        Ok(client)
    }
}
