//! Upstream clients: one pooled `reqwest` client per base URL and CA file, over HTTP/1.1 or
//! HTTP/2 (negotiated by TLS ALPN), with TLS verified against the system roots or the
//! connection's `--ca-file`. Redirects are not followed (the caller gets them, and its next
//! request is decided on its own) and no proxy from the environment is used.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
pub(crate) struct Clients {
    by_target: Mutex<HashMap<(String, Option<String>), Target>>,
}

/// An upstream: its pooled client and its base URL, parsed once.
#[derive(Clone)]
pub(crate) struct Target {
    pub client: reqwest::Client,
    pub base: reqwest::Url,
}

impl Target {
    /// Where a request for `encoded` (the normalised path as the caller encoded it, with its
    /// leading `/`) with `query` goes: the base URL's path without its trailing `/`, then
    /// `encoded`; the caller's query (the base URL's own, if any, is not kept).
    pub fn url(&self, encoded: &str, query: Option<&str>) -> reqwest::Url {
        let mut url = self.base.clone();
        let path = [self.base.path().trim_end_matches('/'), encoded].concat();
        url.set_path(&path);
        url.set_query(query);
        url
    }
}

impl Clients {
    /// The client for `base_url` trusting `ca_file` (besides the system roots).
    pub fn get(
        &self,
        base_url: &str,
        ca_file: Option<&str>,
        connect_timeout: Duration,
        read_timeout: Duration,
    ) -> Result<Target, String> {
        let key = (base_url.to_string(), ca_file.map(String::from));
        if let Some(t) = self.by_target.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(t.clone());
        }
        let base =
            reqwest::Url::parse(base_url).map_err(|e| format!("the connection's URL {base_url:?} is invalid: {e}"))?;
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
        let target = Target { client, base };
        self.by_target.lock().unwrap_or_else(|p| p.into_inner()).insert(key, target.clone());
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_what_parsing_base_path_and_query_together_gives() {
        let client = reqwest::Client::new();
        for base in ["http://127.0.0.1:8080", "http://h/", "https://api.example.com/v1", "https://api.example.com/v1/"]
        {
            let target = Target { client: client.clone(), base: reqwest::Url::parse(base).unwrap() };
            for encoded in ["/", "/v1/customers", "/a%20b/c%3Fd/%E2%82%AC/", "/x;y=1/~z"] {
                for query in [None, Some("a=1&b=%20c"), Some("q=a b&x=é"), Some("")] {
                    let whole = format!(
                        "{}{}{}",
                        base.trim_end_matches('/'),
                        encoded,
                        query.map(|q| format!("?{q}")).unwrap_or_default()
                    );
                    let expected = reqwest::Url::parse(&whole).unwrap();
                    assert_eq!(target.url(encoded, query), expected, "{base} {encoded} {query:?}");
                }
            }
        }
    }
}
