//! The server's configuration: TOML file, then `GATEHOUSE_…` environment variables, then
//! command-line flags, over built-in defaults. Every problem is reported as one line naming the
//! key (and the variable, when it came from the environment).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Environment variables that start with `GATEHOUSE_` but are not configuration keys.
pub const NOT_CONFIG_ENV: &[&str] =
    &["GATEHOUSE_SERVER", "GATEHOUSE_SERVER_CA", "GATEHOUSE_TOKEN", "GATEHOUSE_MASTER_KEY"];
const TOP_LEVEL: &[&str] = &["data_dir", "store"];
/// Sections a `GATEHOUSE_<SECTION>_<KEY>` variable may address. Variables for other sections
/// (another tool's, or a section a later version adds) are ignored with a warning; a wrong key
/// inside a known section stops the server.
const SECTIONS: &[&str] =
    &["listen", "tls", "audit", "log", "server", "oidc", "metrics", "postgres", "http", "reviews", "limits", "console"];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the store, keys, tokens and generated certificates live.
    pub data_dir: PathBuf,
    /// `sqlite://PATH`, a plain path, or empty for `<data_dir>/gatehouse.db`.
    pub store: String,
    pub listen: Listen,
    pub tls: Tls,
    pub oidc: Oidc,
    pub metrics: Metrics,
    pub postgres: Postgres,
    pub http: Http,
    pub audit: Audit,
    pub log: Log,
    pub server: Server,
    pub reviews: Reviews,
    pub access: Access,
    pub limits: Limits,
    pub console: Console,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./gatehouse-data"),
            store: String::new(),
            listen: Listen::default(),
            tls: Tls::default(),
            oidc: Oidc::default(),
            metrics: Metrics::default(),
            postgres: Postgres::default(),
            http: Http::default(),
            audit: Audit::default(),
            log: Log::default(),
            server: Server::default(),
            reviews: Reviews::default(),
            access: Access::default(),
            limits: Limits::default(),
            console: Console::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// REST API (and, later, the web console and MCP).
    pub api: String,
    pub postgres: String,
    pub mysql: String,
    pub redis: String,
    pub ssh: String,
    pub http: String,
    /// Serve plain HTTP on a non-loopback address without TLS (logged as a warning).
    #[serde(deserialize_with = "lenient::bool")]
    pub allow_plaintext: bool,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            api: "127.0.0.1:8800".into(),
            postgres: "127.0.0.1:15432".into(),
            mysql: "127.0.0.1:13306".into(),
            redis: "127.0.0.1:16379".into(),
            ssh: "127.0.0.1:12222".into(),
            http: "127.0.0.1:18080".into(),
            allow_plaintext: false,
        }
    }
}

/// The certificate the gateway presents on its TLS listeners (PEM files).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// Certificate chain, leaf first.
    pub cert: String,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

/// The company's identity provider. Empty `issuer`: OIDC is off and only service tokens work.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Oidc {
    /// Issuer URL; must be https:// except on a loopback address.
    pub issuer: String,
    /// The `aud` tokens must carry.
    pub audience: String,
    /// Claim with the caller's groups (string or array).
    pub groups_claim: String,
    /// Claim that names the user.
    pub username_claim: String,
    /// For the web console's sign-in.
    pub client_id: String,
    /// For the web console's sign-in. Never printed.
    pub client_secret: String,
    /// Tolerated clock difference for `exp`/`nbf`.
    pub leeway: String,
    /// Unknown key ids refetch the JWKS at most this often.
    pub jwks_min_refresh: String,
    /// The JWKS is refetched after this long in any case.
    pub jwks_max_age: String,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("groups_claim", &self.groups_claim)
            .field("username_claim", &self.username_claim)
            .field("client_id", &self.client_id)
            .field("client_secret", &if self.client_secret.is_empty() { "" } else { "<redacted>" })
            .field("leeway", &self.leeway)
            .field("jwks_min_refresh", &self.jwks_min_refresh)
            .field("jwks_max_age", &self.jwks_max_age)
            .finish()
    }
}

impl Default for Oidc {
    fn default() -> Self {
        Oidc {
            issuer: String::new(),
            audience: String::new(),
            groups_claim: "groups".into(),
            username_claim: "email".into(),
            client_id: String::new(),
            client_secret: String::new(),
            leeway: "60s".into(),
            jwks_min_refresh: "30s".into(),
            jwks_max_age: "15m".into(),
        }
    }
}

/// Limits of the PostgreSQL listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Postgres {
    /// A caller must have started up and authenticated within this.
    pub auth_timeout: String,
    /// A session with no statement for this long is ended; "0s" never ends one.
    pub idle_timeout: String,
    /// The largest message a caller may send, e.g. "64MiB".
    pub max_message: String,
    /// Deadline for the gateway's own login to the resource.
    pub connect_timeout: String,
    /// Connections the listener keeps open at once; more are refused (53300). 0: no limit.
    #[serde(deserialize_with = "lenient::u64")]
    pub max_connections: u64,
    /// The most bytes one statement may return ("0": no limit); a statement that returns more
    /// is canceled and fails with 54000.
    pub max_result_bytes: String,
}

impl Default for Postgres {
    fn default() -> Self {
        Postgres {
            auth_timeout: "10s".into(),
            idle_timeout: "1h".into(),
            max_message: "64MiB".into(),
            connect_timeout: "10s".into(),
            max_connections: 5000,
            max_result_bytes: "0".into(),
        }
    }
}

/// The HTTP listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Deadline for connecting to an upstream API.
    pub connect_timeout: String,
    /// The longest an upstream may stay silent, before its answer or within its body.
    pub read_timeout: String,
    /// The largest request body a request that needs review may have (it is held back to
    /// identify the exact request).
    pub max_review_body: String,
    /// Record the first this many bytes of each request's and answer's body, masked ("0": off).
    pub sample_bodies: String,
    /// Connections the listener keeps open at once; more get 503. 0: no limit.
    #[serde(deserialize_with = "lenient::u64")]
    pub max_connections: u64,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            connect_timeout: "10s".into(),
            read_timeout: "60s".into(),
            max_review_body: "1MiB".into(),
            sample_bodies: "0".into(),
            max_connections: 5000,
        }
    }
}

/// The HTTP listener's settings, checked.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub max_review_body: usize,
    pub sample_bytes: usize,
    pub max_connections: Option<usize>,
}

/// Limits on each caller, for every protocol. Zero turns a limit off.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Sessions one identity may have open at once.
    #[serde(deserialize_with = "lenient::u64")]
    pub sessions_per_identity: u64,
    /// Requests (statements, calls) one identity may make per second, sustained.
    #[serde(deserialize_with = "lenient::u64")]
    pub requests_per_second: u64,
    /// Requests one identity may make at once above the sustained rate (default: one second's
    /// worth).
    #[serde(deserialize_with = "lenient::u64")]
    pub request_burst: u64,
    /// Failed sign-ins from one address within `auth_failure_window` before that address is
    /// refused until the window lets it try again.
    #[serde(deserialize_with = "lenient::u64")]
    pub auth_failures_per_source: u64,
    /// Failed sign-ins claiming one identity (the user name a caller gives) within the window.
    #[serde(deserialize_with = "lenient::u64")]
    pub auth_failures_per_identity: u64,
    pub auth_failure_window: String,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            sessions_per_identity: 0,
            requests_per_second: 0,
            request_burst: 0,
            auth_failures_per_source: 30,
            auth_failures_per_identity: 10,
            auth_failure_window: "1m".into(),
        }
    }
}

/// The per-caller limits, checked. `None`: off.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    pub sessions_per_identity: Option<usize>,
    /// Sustained rate and burst.
    pub requests: Option<(std::num::NonZeroU32, std::num::NonZeroU32)>,
    pub auth_failures_per_source: Option<std::num::NonZeroU32>,
    pub auth_failures_per_identity: Option<std::num::NonZeroU32>,
    pub auth_failure_window: Duration,
}

/// The PostgreSQL listener's limits, checked.
#[derive(Debug, Clone)]
pub struct PostgresLimits {
    pub auth_timeout: Duration,
    pub idle_timeout: Option<Duration>,
    pub max_message: usize,
    pub connect_timeout: Duration,
    pub max_connections: Option<usize>,
    pub max_result_bytes: Option<u64>,
}

fn parse_size(text: &str) -> Option<usize> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: usize = n.parse().ok()?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "kB" => 1024,
        "MiB" | "M" | "MB" => 1024 * 1024,
        "GiB" | "G" | "GB" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// The web console, served on the API listener under `/console/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Console {
    /// Serve the console (the REST API is served either way).
    #[serde(deserialize_with = "lenient::bool")]
    pub enabled: bool,
    /// How long a console sign-in lasts at most (an OIDC sign-in also ends when its ID token
    /// expires; a token sign-in when its token does).
    pub session_lifetime: String,
}

impl Default for Console {
    fn default() -> Self {
        Console { enabled: true, session_lifetime: "8h".into() }
    }
}

/// The console's settings, checked.
#[derive(Clone)]
pub struct ConsoleSettings {
    pub enabled: bool,
    pub session_lifetime: Duration,
    /// Cookies get `Secure`: the API listener serves TLS.
    pub secure_cookies: bool,
    /// The address browsers reach the gateway at (`[reviews] public_url`), for the OIDC
    /// redirect URI `<public_url>/console/callback`.
    pub public_url: String,
    /// The OIDC client the console signs people in as (`[oidc] client_id`, else the audience).
    pub client_id: String,
    /// `[oidc] client_secret`, for a confidential client.
    pub client_secret: Option<gatehouse_keys::Secret>,
}

impl std::fmt::Debug for ConsoleSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleSettings")
            .field("enabled", &self.enabled)
            .field("session_lifetime", &self.session_lifetime)
            .field("secure_cookies", &self.secure_cookies)
            .field("public_url", &self.public_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// Serve Prometheus metrics at `/metrics` on the API listener (no token).
    #[serde(deserialize_with = "lenient::bool")]
    pub enabled: bool,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics { enabled: true }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Audit {
    /// `batch` (every commit forced to disk, the default) or `off` (committed to the store's
    /// log, which survives a killed gateway, and left to the OS to write back).
    pub fsync: String,
}

impl Default for Audit {
    fn default() -> Self {
        Audit { fsync: "batch".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// A `tracing` filter: `info`, `debug`, `gatehouse=debug,info`, …
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for Log {
    fn default() -> Self {
        Log { level: "info".into(), format: "text".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// How long open sessions may finish after `SIGTERM` before they are cut.
    pub shutdown_grace: String,
}

impl Default for Server {
    fn default() -> Self {
        Server { shutdown_grace: "30s".into() }
    }
}

/// Just-in-time approval of requests that policy holds for review.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Reviews {
    /// How long a request that needs review is held on the wire, waiting for a decision.
    #[serde(deserialize_with = "lenient::u64")]
    pub hold_seconds: u64,
    /// A review nobody decided within this expires.
    pub expire_after: String,
    /// How long an approved request may still be run (once) by re-sending it.
    pub grant_validity: String,
    /// Where to POST a JSON notification of each new review (Slack-compatible `text`).
    pub webhook_url: String,
    /// The address approvers open, for links in notices and notifications (default: the API
    /// listener's own address).
    pub public_url: String,
}

impl Default for Reviews {
    fn default() -> Self {
        Reviews {
            hold_seconds: 30,
            expire_after: "1h".into(),
            grant_validity: "15m".into(),
            webhook_url: String::new(),
            public_url: String::new(),
        }
    }
}

/// Groups people may ask to join for a while (`gatehouse access request`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Access {
    pub groups: BTreeMap<String, AccessGroup>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessGroup {
    /// The groups that must approve, comma-separated.
    pub approvers: String,
    /// Distinct members of each approver group that must approve.
    #[serde(default = "one")]
    pub quorum: u32,
    /// The longest window that may be asked for.
    #[serde(default = "four_hours")]
    pub max: String,
}

fn one() -> u32 {
    1
}

fn four_hours() -> String {
    "4h".into()
}

/// The review settings, checked.
#[derive(Debug, Clone)]
pub struct ReviewSettings {
    pub hold: Duration,
    pub expire_after: Duration,
    pub grant_validity: Duration,
    pub webhook_url: Option<reqwest::Url>,
    /// Without a trailing slash.
    pub public_url: String,
    /// Links to a review open it in the web console (else in the REST API).
    pub console_links: bool,
    /// Requestable groups: approvers (group, quorum) and the longest window.
    pub access: BTreeMap<String, (Vec<(String, u32)>, Duration)>,
}

/// Values taken from flags, which override everything else.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub store: Option<String>,
}

/// What the store setting resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Sqlite(PathBuf),
}

/// A loaded, validated configuration.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub store: StoreLocation,
    /// `None` when a listener is disabled with an empty address.
    pub api_addr: Option<SocketAddr>,
    /// Set when `[tls] cert` and `key` are configured: the API is then served over HTTPS.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// Set when `[oidc] issuer` is configured.
    pub oidc: Option<gatehouse_auth::OidcSettings>,
    /// The PostgreSQL listener's address (`None`: disabled) and limits.
    pub postgres_addr: Option<SocketAddr>,
    pub postgres: PostgresLimits,
    /// The HTTP listener's address (`None`: disabled) and settings.
    pub http_addr: Option<SocketAddr>,
    pub http: HttpSettings,
    pub shutdown_grace: Duration,
    pub fsync_each_batch: bool,
    pub reviews: ReviewSettings,
    pub limits: LimitSettings,
    pub console: ConsoleSettings,
}

/// Loads the configuration from an optional file, the process environment and the flags.
pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Loaded, String> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    load_from(file, &env, overrides)
}

fn load_from(file: Option<&Path>, env: &[(String, String)], overrides: &Overrides) -> Result<Loaded, String> {
    let mut table = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("config error: {}: {e}", path.display()))?;
            text.parse::<toml::Table>().map_err(|e| {
                let msg = e.message().to_string();
                let at = e.span().map(|s| line_col(&text, s.start)).unwrap_or_default();
                format!("config error: {}{at}: {msg}", path.display())
            })?
        }
        None => toml::Table::new(),
    };
    let mut from_env: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("GATEHOUSE_") else { continue };
        if NOT_CONFIG_ENV.contains(&name.as_str()) || rest.is_empty() {
            continue;
        }
        let key = rest.to_ascii_lowercase();
        let path = if TOP_LEVEL.contains(&key.as_str()) {
            table.insert(key.clone(), toml::Value::String(value.clone()));
            key
        } else {
            let known = key.split_once('_').filter(|(section, _)| SECTIONS.contains(section));
            let Some((section, field)) = known else {
                eprintln!(
                    "warning: ignoring {name}: not a configuration variable (GATEHOUSE_<SECTION>_<KEY>, SECTION one of {})",
                    SECTIONS.join(", ")
                );
                continue;
            };
            let entry = table.entry(section.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let toml::Value::Table(section_table) = entry else {
                return Err(format!("config error: {name}: {section} is not a section"));
            };
            section_table.insert(field.to_string(), toml::Value::String(value.clone()));
            format!("{section}.{field}")
        };
        from_env.insert(path, name.clone());
    }
    let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let inner = inner.lines().next().unwrap_or_default().trim().to_string();
        // An unknown key is reported at its section: find the variable that named it.
        let source = from_env
            .get(&path)
            .or_else(|| {
                from_env.iter().find_map(|(key, var)| {
                    let field = key.strip_prefix(&format!("{path}."))?;
                    inner.contains(&format!("`{field}`")).then_some(var)
                })
            })
            .map(|v| format!(" (from {v})"))
            .unwrap_or_default();
        if path == "." { format!("config error: {inner}") } else { format!("config error: {path}: {inner}{source}") }
    })?;
    if let Some(d) = &overrides.data_dir {
        config.data_dir = d.clone();
    }
    if let Some(s) = &overrides.store {
        config.store = s.clone();
    }
    validate(config, &from_env)
}

fn line_col(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    format!(" line {line}, column {col}")
}

fn validate(config: Config, from_env: &BTreeMap<String, String>) -> Result<Loaded, String> {
    let err = |key: &str, problem: String| {
        let source = from_env.get(key).map(|v| format!(" (from {v})")).unwrap_or_default();
        format!("config error: {key}: {problem}{source}")
    };
    if config.data_dir.as_os_str().is_empty() {
        return Err(err("data_dir", "must not be empty".into()));
    }
    let store = if config.store.is_empty() {
        StoreLocation::Sqlite(config.data_dir.join("gatehouse.db"))
    } else if let Some(path) = config.store.strip_prefix("sqlite://") {
        StoreLocation::Sqlite(PathBuf::from(path))
    } else if config.store.starts_with("postgres://") || config.store.starts_with("postgresql://") {
        return Err(err(
            "store",
            "the PostgreSQL store back-end is not available in this version; use SQLite (leave store empty)".into(),
        ));
    } else if config.store.contains("://") {
        return Err(err(
            "store",
            format!("unsupported store URL {:?}; use sqlite://PATH or a file path", redact_url(&config.store)),
        ));
    } else {
        StoreLocation::Sqlite(PathBuf::from(&config.store))
    };
    let l = &config.listen;
    let mut api_addr = None;
    let mut postgres_addr = None;
    let mut http_addr = None;
    for (key, value) in [
        ("api", &l.api),
        ("postgres", &l.postgres),
        ("mysql", &l.mysql),
        ("redis", &l.redis),
        ("ssh", &l.ssh),
        ("http", &l.http),
    ] {
        if value.is_empty() {
            continue;
        }
        let addr: SocketAddr = value
            .parse()
            .map_err(|_| err(&format!("listen.{key}"), format!("{value:?} is not an address like 127.0.0.1:8800")))?;
        if key == "api" {
            api_addr = Some(addr);
        }
        if key == "postgres" {
            postgres_addr = Some(addr);
        }
        if key == "http" {
            http_addr = Some(addr);
        }
    }
    let tls = match (config.tls.cert.is_empty(), config.tls.key.is_empty()) {
        (true, true) => None,
        (false, false) => Some(
            crate::tls::server_config(Path::new(&config.tls.cert), Path::new(&config.tls.key), &[b"h2", b"http/1.1"])
                .map_err(|e| {
                let key = if e.starts_with("tls.key") { "tls.key" } else { "tls.cert" };
                let source = from_env.get(key).map(|v| format!(" (from {v})")).unwrap_or_default();
                format!("config error: {e}{source}")
            })?,
        ),
        (false, true) => return Err(err("tls.key", "is required with tls.cert".into())),
        (true, false) => return Err(err("tls.cert", "is required with tls.key".into())),
    };
    if let Some(addr) = api_addr
        && !addr.ip().is_loopback()
        && tls.is_none()
        && !l.allow_plaintext
    {
        return Err(err(
            "listen.api",
            format!(
                "{addr} is not a loopback address; the API would carry tokens in clear. Configure [tls] cert and key, or set listen.allow_plaintext = true"
            ),
        ));
    }
    if let Some(addr) = http_addr
        && !addr.ip().is_loopback()
        && tls.is_none()
        && !l.allow_plaintext
    {
        return Err(err(
            "listen.http",
            format!(
                "{addr} is not a loopback address; callers' tokens would travel in clear. Configure [tls] cert and key, or set listen.allow_plaintext = true"
            ),
        ));
    }
    let oidc = oidc_settings(&config.oidc, &err)?;
    let pg = &config.postgres;
    let duration = |key: &str, v: &str| humantime::parse_duration(v).map_err(|e| err(key, format!("{v:?}: {e}")));
    let idle = duration("postgres.idle_timeout", &pg.idle_timeout)?;
    let postgres = PostgresLimits {
        auth_timeout: duration("postgres.auth_timeout", &pg.auth_timeout)?,
        idle_timeout: (!idle.is_zero()).then_some(idle),
        max_message: parse_size(&pg.max_message).filter(|n| *n >= 1024).ok_or_else(|| {
            err("postgres.max_message", format!("{:?} is not a size like 64MiB (at least 1KiB)", pg.max_message))
        })?,
        connect_timeout: duration("postgres.connect_timeout", &pg.connect_timeout)?,
        max_connections: (pg.max_connections > 0).then(|| usize::try_from(pg.max_connections).unwrap_or(usize::MAX)),
        max_result_bytes: match parse_size(&pg.max_result_bytes) {
            Some(0) => None,
            Some(n) => Some(n as u64),
            None => {
                return Err(err(
                    "postgres.max_result_bytes",
                    format!("{:?} is not a size like 256MiB (0: no limit)", pg.max_result_bytes),
                ));
            }
        },
    };
    let limits = limit_settings(&config.limits, &err)?;
    let h = &config.http;
    let http = HttpSettings {
        connect_timeout: duration("http.connect_timeout", &h.connect_timeout)?,
        read_timeout: duration("http.read_timeout", &h.read_timeout)?,
        max_review_body: parse_size(&h.max_review_body)
            .ok_or_else(|| err("http.max_review_body", format!("{:?} is not a size like 1MiB", h.max_review_body)))?,
        sample_bytes: parse_size(&h.sample_bodies).filter(|n| *n <= 1024 * 1024).ok_or_else(|| {
            err("http.sample_bodies", format!("{:?} is not a size like 4KiB (0: off; at most 1MiB)", h.sample_bodies))
        })?,
        max_connections: (h.max_connections > 0).then(|| usize::try_from(h.max_connections).unwrap_or(usize::MAX)),
    };
    let fsync_each_batch = match config.audit.fsync.as_str() {
        "batch" => true,
        "off" => false,
        other => return Err(err("audit.fsync", format!("{other:?} is not one of \"batch\", \"off\""))),
    };
    if !matches!(config.log.format.as_str(), "text" | "json") {
        return Err(err("log.format", format!("{:?} is not one of \"text\", \"json\"", config.log.format)));
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&config.log.level) {
        return Err(err("log.level", format!("{:?}: {e}", config.log.level)));
    }
    let shutdown_grace = humantime::parse_duration(&config.server.shutdown_grace)
        .map_err(|e| err("server.shutdown_grace", format!("{:?}: {e}", config.server.shutdown_grace)))?;
    let reviews = review_settings(&config, api_addr, tls.is_some(), &err)?;
    let console = ConsoleSettings {
        enabled: config.console.enabled,
        session_lifetime: match humantime::parse_duration(&config.console.session_lifetime) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => return Err(err("console.session_lifetime", "must be longer than zero".into())),
            Err(e) => {
                return Err(err("console.session_lifetime", format!("{:?}: {e}", config.console.session_lifetime)));
            }
        },
        secure_cookies: tls.is_some() || reviews.public_url.starts_with("https://"),
        public_url: reviews.public_url.clone(),
        client_id: if config.oidc.client_id.is_empty() {
            config.oidc.audience.clone()
        } else {
            config.oidc.client_id.clone()
        },
        client_secret: (!config.oidc.client_secret.is_empty())
            .then(|| gatehouse_keys::Secret::new(config.oidc.client_secret.clone())),
    };
    Ok(Loaded {
        config,
        store,
        api_addr,
        tls,
        oidc,
        postgres_addr,
        postgres,
        http_addr,
        http,
        shutdown_grace,
        fsync_each_batch,
        reviews,
        limits,
        console,
    })
}

fn limit_settings(l: &Limits, err: &dyn Fn(&str, String) -> String) -> Result<LimitSettings, String> {
    let count = |key: &str, n: u64| -> Result<Option<std::num::NonZeroU32>, String> {
        match u32::try_from(n) {
            Ok(n) => Ok(std::num::NonZeroU32::new(n)),
            Err(_) => Err(err(key, format!("{n} is too large"))),
        }
    };
    let window = match humantime::parse_duration(&l.auth_failure_window) {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => return Err(err("limits.auth_failure_window", "must be longer than zero".into())),
        Err(e) => return Err(err("limits.auth_failure_window", format!("{:?}: {e}", l.auth_failure_window))),
    };
    let requests = match count("limits.requests_per_second", l.requests_per_second)? {
        None if l.request_burst > 0 => {
            return Err(err("limits.request_burst", "needs limits.requests_per_second".into()));
        }
        None => None,
        Some(rate) => Some((rate, count("limits.request_burst", l.request_burst)?.unwrap_or(rate))),
    };
    Ok(LimitSettings {
        sessions_per_identity: (l.sessions_per_identity > 0)
            .then(|| usize::try_from(l.sessions_per_identity).unwrap_or(usize::MAX)),
        requests,
        auth_failures_per_source: count("limits.auth_failures_per_source", l.auth_failures_per_source)?,
        auth_failures_per_identity: count("limits.auth_failures_per_identity", l.auth_failures_per_identity)?,
        auth_failure_window: window,
    })
}

fn review_settings(
    config: &Config,
    api_addr: Option<SocketAddr>,
    tls: bool,
    err: &dyn Fn(&str, String) -> String,
) -> Result<ReviewSettings, String> {
    let r = &config.reviews;
    let duration = |key: &str, v: &str| match humantime::parse_duration(v) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(err(key, format!("{v:?} must be longer than zero"))),
        Err(e) => Err(err(key, format!("{v:?}: {e}"))),
    };
    if r.hold_seconds > 3600 {
        return Err(err("reviews.hold_seconds", format!("{} is more than an hour (3600)", r.hold_seconds)));
    }
    let webhook_url = match r.webhook_url.as_str() {
        "" => None,
        text => {
            let url = reqwest::Url::parse(text).map_err(|e| err("reviews.webhook_url", format!("{text:?}: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(err("reviews.webhook_url", format!("{text:?} is not an http:// or https:// URL")));
            }
            Some(url)
        }
    };
    let public_url = match r.public_url.as_str() {
        "" => match api_addr {
            Some(addr) => format!("{}://{addr}", if tls { "https" } else { "http" }),
            None => String::new(),
        },
        text => {
            let url = reqwest::Url::parse(text).map_err(|e| err("reviews.public_url", format!("{text:?}: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(err("reviews.public_url", format!("{text:?} is not an http:// or https:// URL")));
            }
            text.trim_end_matches('/').to_string()
        }
    };
    let mut access = BTreeMap::new();
    for (group, g) in &config.access.groups {
        let key = |field: &str| format!("access.groups.{group}.{field}");
        gatehouse_core::validate_group_name(group).map_err(|e| err(&format!("access.groups.{group}"), e))?;
        let approvers: Vec<(String, u32)> = g
            .approvers
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|a| gatehouse_core::validate_group_name(a).map(|()| (a.to_string(), g.quorum)))
            .collect::<Result<_, _>>()
            .map_err(|e| err(&key("approvers"), e))?;
        if approvers.is_empty() {
            return Err(err(&key("approvers"), "names no group; every requestable group needs approvers".into()));
        }
        if g.quorum == 0 {
            return Err(err(&key("quorum"), "must be at least 1".into()));
        }
        access.insert(group.clone(), (approvers, duration(&key("max"), &g.max)?));
    }
    Ok(ReviewSettings {
        hold: Duration::from_secs(r.hold_seconds),
        expire_after: duration("reviews.expire_after", &r.expire_after)?,
        grant_validity: duration("reviews.grant_validity", &r.grant_validity)?,
        webhook_url,
        public_url,
        console_links: config.console.enabled,
        access,
    })
}

fn oidc_settings(
    o: &Oidc,
    err: &dyn Fn(&str, String) -> String,
) -> Result<Option<gatehouse_auth::OidcSettings>, String> {
    if o.issuer.is_empty() {
        return Ok(None);
    }
    let url = reqwest::Url::parse(&o.issuer).map_err(|e| err("oidc.issuer", format!("{:?}: {e}", o.issuer)))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => {
            return Err(err(
                "oidc.issuer",
                format!("{:?} must be https:// (plain http only on a loopback address)", o.issuer),
            ));
        }
    }
    if o.audience.is_empty() {
        return Err(err("oidc.audience", "is required with oidc.issuer".into()));
    }
    for (key, value) in [("oidc.groups_claim", &o.groups_claim), ("oidc.username_claim", &o.username_claim)] {
        if value.is_empty() {
            return Err(err(key, "must not be empty".into()));
        }
    }
    let duration = |key: &str, v: &str| humantime::parse_duration(v).map_err(|e| err(key, format!("{v:?}: {e}")));
    Ok(Some(gatehouse_auth::OidcSettings {
        issuer: o.issuer.clone(),
        audience: o.audience.clone(),
        groups_claim: o.groups_claim.clone(),
        username_claim: o.username_claim.clone(),
        leeway: duration("oidc.leeway", &o.leeway)?,
        jwks_min_refresh: duration("oidc.jwks_min_refresh", &o.jwks_min_refresh)?,
        jwks_max_age: duration("oidc.jwks_max_age", &o.jwks_max_age)?,
    }))
}

/// A URL with any password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}://{user}:***@{}", &url[..scheme_end], &url[at + 1..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl Loaded {
    /// The effective settings as TOML, with secrets redacted.
    pub fn effective_toml(&self) -> String {
        let mut shown = self.config.clone();
        shown.store = match &self.store {
            StoreLocation::Sqlite(p) => format!("sqlite://{}", p.display()),
        };
        shown.store = redact_url(&shown.store);
        if !shown.oidc.client_secret.is_empty() {
            shown.oidc.client_secret = "***".into();
        }
        // A webhook URL often is the secret (Slack's are): show only where it goes.
        if let Some(url) = &self.reviews.webhook_url {
            shown.reviews.webhook_url = format!("{}://{}/***", url.scheme(), url.host_str().unwrap_or_default());
        }
        toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Accepts a value either typed or as a string (as environment variables give it).
mod lenient {
    use serde::{Deserialize, Deserializer, de::Error};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum BoolOrString {
        Bool(bool),
        String(String),
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum U64OrString {
        U64(u64),
        String(String),
    }

    pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match U64OrString::deserialize(d)? {
            U64OrString::U64(n) => Ok(n),
            U64OrString::String(s) => {
                s.trim().parse().map_err(|_| D::Error::custom(format!("{s:?} is not a whole number")))
            }
        }
    }

    pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        match BoolOrString::deserialize(d)? {
            BoolOrString::Bool(b) => Ok(b),
            BoolOrString::String(s) => match s.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" | "" => Ok(false),
                _ => Err(D::Error::custom(format!("{s:?} is not true or false"))),
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn reviews_and_requestable_groups() {
        let l = load_from(None, &[], &Overrides::default()).unwrap();
        assert_eq!(l.reviews.hold, Duration::from_secs(30));
        assert_eq!(l.reviews.grant_validity, Duration::from_secs(900));
        assert_eq!(l.reviews.public_url, "http://127.0.0.1:8800");
        assert!(l.reviews.access.is_empty() && l.reviews.webhook_url.is_none());

        let f = file(
            "[reviews]\nwebhook_url = \"https://hooks.example.com/services/T0/B0/XyZzY\"\n\
             [access.groups.oncall]\napprovers = \"sre, security\"\nquorum = 2\nmax = \"2h\"\n",
        );
        let env = env(&[("GATEHOUSE_REVIEWS_HOLD_SECONDS", "5")]);
        let l = load_from(Some(f.path()), &env, &Overrides::default()).unwrap();
        assert_eq!(l.reviews.hold, Duration::from_secs(5));
        let (approvers, max) = &l.reviews.access["oncall"];
        assert_eq!(approvers, &vec![("sre".to_string(), 2), ("security".to_string(), 2)]);
        assert_eq!(*max, Duration::from_secs(7200));
        let shown = l.effective_toml();
        assert!(!shown.contains("XyZzY"), "the webhook URL is redacted: {shown}");
        assert!(shown.contains("hooks.example.com"));

        for (text, key) in [
            ("[access.groups.x]\napprovers = \"\"\n", "access.groups.x.approvers"),
            ("[access.groups.x]\napprovers = \"a\"\nmax = \"soon\"\n", "access.groups.x.max"),
            ("[access.groups.x]\napprovers = \"a\"\nquorum = 0\n", "access.groups.x.quorum"),
            ("[reviews]\nwebhook_url = \"ftp://x\"\n", "reviews.webhook_url"),
            ("[reviews]\ngrant_validity = \"0s\"\n", "reviews.grant_validity"),
            ("[reviews]\nhold_seconds = \"soon\"\n", "reviews.hold_seconds"),
        ] {
            let f = file(text);
            let e = load_from(Some(f.path()), &[], &Overrides::default()).unwrap_err();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn limits() {
        let l = load_from(None, &[], &Overrides::default()).unwrap();
        assert_eq!(l.postgres.max_connections, Some(5000));
        assert_eq!(l.postgres.max_result_bytes, None);
        assert_eq!(l.limits.sessions_per_identity, None);
        assert!(l.limits.requests.is_none());
        assert_eq!(l.limits.auth_failures_per_source.map(|n| n.get()), Some(30));
        assert_eq!(l.limits.auth_failure_window, Duration::from_secs(60));

        let f = file(
            "[postgres]\nmax_connections = 0\nmax_result_bytes = \"1MiB\"\n\
             [limits]\nsessions_per_identity = 3\nrequests_per_second = 50\nauth_failures_per_identity = 0\n",
        );
        let env = env(&[("GATEHOUSE_LIMITS_REQUEST_BURST", "200")]);
        let l = load_from(Some(f.path()), &env, &Overrides::default()).unwrap();
        assert_eq!(l.postgres.max_connections, None);
        assert_eq!(l.postgres.max_result_bytes, Some(1024 * 1024));
        assert_eq!(l.limits.sessions_per_identity, Some(3));
        assert_eq!(l.limits.requests.map(|(r, b)| (r.get(), b.get())), Some((50, 200)));
        assert_eq!(l.limits.auth_failures_per_identity, None);

        for (text, key) in [
            ("[limits]\nrequest_burst = 5\n", "limits.request_burst"),
            ("[limits]\nauth_failure_window = \"0s\"\n", "limits.auth_failure_window"),
            ("[limits]\nrequests_per_second = 99999999999\n", "limits.requests_per_second"),
            ("[postgres]\nmax_result_bytes = \"lots\"\n", "postgres.max_result_bytes"),
            ("[postgres]\nmax_connections = -1\n", "postgres.max_connections"),
        ] {
            let f = file(text);
            let e = load_from(Some(f.path()), &[], &Overrides::default()).unwrap_err();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn defaults() {
        let l = load_from(None, &[], &Overrides::default()).unwrap();
        assert_eq!(l.api_addr, Some("127.0.0.1:8800".parse().unwrap()));
        assert_eq!(l.store, StoreLocation::Sqlite(PathBuf::from("./gatehouse-data/gatehouse.db")));
        assert!(l.fsync_each_batch);
        assert_eq!(l.config.listen.postgres, "127.0.0.1:15432");
    }

    #[test]
    fn env_overrides_file_and_flags_override_env() {
        let f = file("data_dir = \"/from-file\"\n[listen]\npostgres = \"127.0.0.1:1\"\n");
        let l = load_from(
            Some(f.path()),
            &env(&[
                ("GATEHOUSE_LISTEN_POSTGRES", "127.0.0.1:6432"),
                ("GATEHOUSE_DATA_DIR", "/from-env"),
                ("GATEHOUSE_TOKEN", "ghs_x"),
                ("GATEHOUSE_SERVER", "http://elsewhere"),
                ("GATEHOUSE_MASTER_KEY", "k"),
                ("GATEHOUSE_LISTEN_ALLOW_PLAINTEXT", "true"),
            ]),
            &Overrides { data_dir: Some("/from-flag".into()), store: None },
        )
        .unwrap();
        assert_eq!(l.config.listen.postgres, "127.0.0.1:6432");
        assert!(l.config.listen.allow_plaintext);
        assert_eq!(l.config.data_dir, PathBuf::from("/from-flag"));
    }

    #[test]
    fn errors_are_one_line_and_name_the_key() {
        let e = load_from(None, &env(&[("GATEHOUSE_LISTEN_POSTGRES", "nope")]), &Overrides::default()).unwrap_err();
        assert_eq!(e.lines().count(), 1);
        assert!(e.contains("listen.postgres") && e.contains("GATEHOUSE_LISTEN_POSTGRES"), "{e}");

        let f = file("[listen]\napi = 3\n");
        let e = load_from(Some(f.path()), &[], &Overrides::default()).unwrap_err();
        assert!(e.starts_with("config error: listen.api:"), "{e}");

        let f = file("[lisen]\napi = \"x\"\n");
        let e = load_from(Some(f.path()), &[], &Overrides::default()).unwrap_err();
        assert!(e.contains("lisen") && e.lines().count() == 1, "{e}");

        let f = file("[listen\n");
        let e = load_from(Some(f.path()), &[], &Overrides::default()).unwrap_err();
        assert!(e.contains("line 1") && e.lines().count() == 1, "{e}");

        let e = load_from(None, &env(&[("GATEHOUSE_AUDIT_FSYNC", "sometimes")]), &Overrides::default()).unwrap_err();
        assert!(e.contains("audit.fsync"), "{e}");

        let e = load_from(None, &env(&[("GATEHOUSE_LISTEN_API", "0.0.0.0:8800")]), &Overrides::default()).unwrap_err();
        assert!(e.contains("allow_plaintext"), "{e}");

        let e = load_from(None, &env(&[("GATEHOUSE_STORE", "postgres://u:secret@db/g")]), &Overrides::default())
            .unwrap_err();
        assert!(e.contains("store") && !e.contains("secret"), "{e}");
    }

    #[test]
    fn foreign_variables_are_ignored_but_wrong_keys_are_not() {
        let l = load_from(
            None,
            &env(&[("GATEHOUSE_TEST_USER", "nobody"), ("GATEHOUSE_REVIEWS_HOLD_SECONDS", "10")]),
            &Overrides::default(),
        );
        assert!(l.is_ok(), "{l:?}");
        let e = load_from(None, &env(&[("GATEHOUSE_LISTEN_APII", "x")]), &Overrides::default()).unwrap_err();
        assert!(e.contains("apii") && e.contains("GATEHOUSE_LISTEN_APII"), "{e}");
    }

    #[test]
    fn oidc_settings_are_checked() {
        let ok = load_from(
            None,
            &env(&[("GATEHOUSE_OIDC_ISSUER", "http://127.0.0.1:9000"), ("GATEHOUSE_OIDC_AUDIENCE", "gatehouse")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(ok.oidc.unwrap().username_claim, "email");
        let e = load_from(
            None,
            &env(&[("GATEHOUSE_OIDC_ISSUER", "http://idp.example.com"), ("GATEHOUSE_OIDC_AUDIENCE", "g")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(e.contains("oidc.issuer") && e.contains("https"), "{e}");
        let e = load_from(None, &env(&[("GATEHOUSE_OIDC_ISSUER", "https://idp.example.com")]), &Overrides::default())
            .unwrap_err();
        assert!(e.contains("oidc.audience"), "{e}");
        let shown = load_from(
            None,
            &env(&[
                ("GATEHOUSE_OIDC_ISSUER", "https://idp.example.com"),
                ("GATEHOUSE_OIDC_AUDIENCE", "g"),
                ("GATEHOUSE_OIDC_CLIENT_SECRET", "very-secret-value"),
            ]),
            &Overrides::default(),
        )
        .unwrap()
        .effective_toml();
        assert!(!shown.contains("very-secret-value") && shown.contains("client_secret = \"***\""), "{shown}");
    }

    #[test]
    fn empty_address_disables_a_listener() {
        let l = load_from(None, &env(&[("GATEHOUSE_LISTEN_API", "")]), &Overrides::default()).unwrap();
        assert_eq!(l.api_addr, None);
    }

    #[test]
    fn redaction() {
        assert_eq!(redact_url("postgres://u:pw@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact_url("sqlite:///x"), "sqlite:///x");
    }
}
