//! The command line: argument parsing, the API client, and human-readable output.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// `println!` that ends the program quietly when stdout is closed (`gatehouse … | head`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout().lock(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

/// `print!` with the same closed-stdout handling as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if write!(std::io::stdout().lock(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

use crate::api::{CheckInput, ConnectionInput, CredentialInput, NewIdentity, SecretInput};
use crate::config::{self, Overrides};

#[derive(Debug, Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "Gatehouse: an access gateway that decides, masks and records every request"
)]
struct Cli {
    /// The gateway's API address.
    #[arg(
        long,
        global = true,
        env = "GATEHOUSE_SERVER",
        default_value = "http://127.0.0.1:8800",
        hide_env_values = true
    )]
    server: String,
    /// Bearer token for the API (else the one saved in ~/.config/gatehouse/token).
    #[arg(long, global = true, env = "GATEHOUSE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A CA certificate (PEM) to trust for an https:// server, besides the system's. (Not
    /// `--ca-file`: that is a connection's own CA, for `connections add`.)
    #[arg(long, global = true, value_name = "FILE", env = "GATEHOUSE_SERVER_CA")]
    server_ca: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(ServerArgs),
    /// Validate the configuration and print the effective settings (no secrets).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Service identities and their tokens.
    #[command(subcommand)]
    Identities(IdentitiesCommand),
    /// Registered resources and their credentials.
    #[command(subcommand)]
    Connections(Box<ConnectionsCommand>),
    /// The Cedar policy set.
    #[command(subcommand)]
    Policies(PoliciesCommand),
    /// Recorded sessions.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// The tamper-evident audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Requests held for approval, and access requests: list, show, approve, deny.
    #[command(subcommand)]
    Reviews(ReviewsCommand),
    /// Ask for time-bound membership of a group.
    #[command(subcommand)]
    Access(AccessCommand),
    /// Run one statement on a connection through policy, review, masking and recording.
    Exec {
        /// The connection.
        name: String,
        /// One SQL statement ($1, $2, … take --param values); for an HTTP connection, a request
        /// line: 'GET /v1/invoices?status=open'.
        statement: String,
        /// A value for the next placeholder ($1 first); repeat for more. NULL is not expressible
        /// here: use the API for it.
        #[arg(long = "param", value_name = "VALUE")]
        params: Vec<String>,
        /// Rows returned at most (default 1000, at most 10000).
        #[arg(long)]
        max_rows: Option<usize>,
        /// HTTP: the request body.
        #[arg(long)]
        body: Option<String>,
        /// HTTP: a request header, 'Name: value'; repeat for more.
        #[arg(long = "header", short = 'H', value_name = "HEADER")]
        headers: Vec<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// The certificates the gateway presents.
    #[command(subcommand)]
    Tls(TlsCommand),
}

#[derive(Debug, Subcommand)]
enum TlsCommand {
    /// Print the CA certificate (PEM) that signs the database listeners' generated certificate,
    /// for callers to pin (`sslrootcert=`); generates it in the data directory if needed.
    Ca {
        /// Data directory (default ./gatehouse-data).
        #[arg(long, default_value = "./gatehouse-data")]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (default ./gatehouse-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Store URL (default <data_dir>/gatehouse.db).
    #[arg(long)]
    store: Option<String>,
}

impl ServerArgs {
    fn load(&self) -> Result<config::Loaded, String> {
        config::load(self.config.as_deref(), &Overrides { data_dir: self.data_dir.clone(), store: self.store.clone() })
    }
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check the configuration and print the effective settings.
    Check(ServerArgs),
}

#[derive(Debug, Args)]
struct JsonFlag {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum IdentitiesCommand {
    /// Create a service identity; prints its token, alone, on stdout (shown only this once).
    Add {
        name: String,
        /// Comma-separated groups.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Token lifetime, e.g. 90d or 12h.
        #[arg(long)]
        ttl: Option<String>,
    },
    List(JsonFlag),
    Show {
        name: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Delete an identity; its token stops working at once.
    Rm {
        name: String,
    },
    /// Issue a new token; the old one stops working at once. Prints the new token.
    Rotate {
        name: String,
        /// New lifetime, e.g. 90d (default: the old token's lifetime, from now).
        #[arg(long)]
        ttl: Option<String>,
    },
}

#[derive(Debug, Args, Default)]
struct SecretFlags {
    /// Read the password from this environment variable.
    #[arg(long, value_name = "VAR", group = "secret")]
    password_env: Option<String>,
    /// Read the password from standard input.
    #[arg(long, group = "secret")]
    password_stdin: bool,
    /// A private key file (SSH).
    #[arg(long, value_name = "FILE", group = "secret")]
    key_file: Option<PathBuf>,
    /// Send header Name with the value of environment variable VAR (HTTP).
    #[arg(long, value_name = "Name=VAR", group = "secret")]
    header_env: Option<String>,
    /// Send `Authorization: Bearer` with the value of this environment variable (HTTP).
    #[arg(long, value_name = "VAR", group = "secret")]
    bearer_env: Option<String>,
}

impl SecretFlags {
    fn read(&self) -> Result<Option<SecretInput>, String> {
        let from_env = |var: &str| -> Result<String, String> {
            match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(v),
                _ => Err(format!("environment variable {var} is not set or empty")),
            }
        };
        let secret =
            |kind: &str, header: Option<String>, value: String| Some(SecretInput { kind: kind.into(), header, value });
        if let Some(var) = &self.password_env {
            return Ok(secret("password", None, from_env(var)?));
        }
        if self.password_stdin {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).map_err(|e| format!("reading standard input: {e}"))?;
            let s = s.strip_suffix('\n').unwrap_or(&s);
            let s = s.strip_suffix('\r').unwrap_or(s).to_string();
            if s.is_empty() {
                return Err("standard input held no password".into());
            }
            return Ok(secret("password", None, s));
        }
        if let Some(path) = &self.key_file {
            let key = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            return Ok(secret("key_file", None, key));
        }
        if let Some(spec) = &self.header_env {
            let (name, var) = spec.split_once('=').ok_or("--header-env takes Name=VAR")?;
            return Ok(secret("header", Some(name.to_string()), from_env(var)?));
        }
        if let Some(var) = &self.bearer_env {
            return Ok(secret("bearer", None, from_env(var)?));
        }
        Ok(None)
    }
}

#[derive(Debug, Args)]
struct ConnectionFlags {
    /// postgres, mysql, redis, ssh, http or kubernetes.
    #[arg(long = "type")]
    kind: Option<String>,
    #[arg(long)]
    host: Option<String>,
    #[arg(long)]
    port: Option<u16>,
    #[arg(long)]
    url: Option<String>,
    #[arg(long)]
    database: Option<String>,
    #[arg(long)]
    user: Option<String>,
    /// disable, require or verify-full (default).
    #[arg(long)]
    tls: Option<String>,
    /// CA certificate file on the gateway host.
    #[arg(long)]
    ca_file: Option<String>,
    #[arg(long)]
    description: Option<String>,
    /// A tag k=v; repeat for several (on update, the given tags replace all tags).
    #[arg(long = "tag", value_name = "k=v")]
    tags: Vec<String>,
    /// Comma-separated detectors: email, credit_card, iban, ssn, phone, ip, secret, and custom
    /// ones as custom:NAME=REGEX (a regex with a comma must be set through the API).
    #[arg(long, value_delimiter = ',')]
    mask: Option<Vec<String>>,
    /// A column rule: schema.table.column (with * for one name) or a JSON path; repeatable.
    #[arg(long = "mask-column", value_name = "PATTERN")]
    mask_columns: Vec<String>,
    #[command(flatten)]
    secret: SecretFlags,
}

impl ConnectionFlags {
    fn input(&self, name: &str) -> Result<ConnectionInput, String> {
        let mut tags = BTreeMap::new();
        for t in &self.tags {
            let (k, v) = t.split_once('=').ok_or_else(|| format!("--tag {t:?} must be k=v"))?;
            tags.insert(k.to_string(), v.to_string());
        }
        Ok(ConnectionInput {
            name: Some(name.to_string()),
            kind: self.kind.clone(),
            host: self.host.clone(),
            port: self.port,
            url: self.url.clone(),
            database: self.database.clone(),
            user: self.user.clone(),
            tls: self.tls.clone(),
            ca_file: self.ca_file.clone(),
            description: self.description.clone(),
            tags: (!self.tags.is_empty()).then_some(tags),
            mask: self.mask.clone(),
            mask_columns: (!self.mask_columns.is_empty()).then(|| self.mask_columns.clone()),
            secret: self.secret.read()?,
        })
    }
}

#[derive(Debug, Subcommand)]
enum ConnectionsCommand {
    /// Register a resource.
    Add {
        name: String,
        #[command(flatten)]
        flags: ConnectionFlags,
    },
    /// Change some fields of a connection.
    Update {
        name: String,
        #[command(flatten)]
        flags: ConnectionFlags,
    },
    /// Check that the gateway can reach the resource's address.
    Test {
        name: String,
    },
    List(JsonFlag),
    Show {
        name: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    Rm {
        name: String,
    },
    /// Extra credentials for callers in some groups.
    #[command(subcommand)]
    Credential(CredentialCommand),
}

#[derive(Debug, Subcommand)]
enum CredentialCommand {
    /// Add a narrower credential for callers in the given groups (first match in order wins).
    Add {
        connection: String,
        credential: String,
        #[arg(long, value_delimiter = ',', required = true)]
        groups: Vec<String>,
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        secret: SecretFlags,
    },
    Rm {
        connection: String,
        credential: String,
    },
}

#[derive(Debug, Subcommand)]
enum PoliciesCommand {
    /// Replace the policy set with the policies in FILE (refused, keeping the old set, if invalid).
    Set { file: PathBuf },
    /// Print the policy set in force.
    Show(JsonFlag),
    /// Print the Cedar schema policies are written against.
    Schema,
    /// Decide a hypothetical request: prints allow, deny or review, then the reasons.
    Check {
        /// e.g. 'Service::"fn-billing"' (default: yourself, with your token's groups)
        #[arg(long)]
        principal: Option<String>,
        /// e.g. sql.delete
        #[arg(long)]
        action: String,
        /// e.g. 'Table::"pg-prod/public.t"'; repeat for a request on several objects.
        #[arg(long = "resource", required = true)]
        resources: Vec<String>,
        /// Context attributes as a JSON object.
        #[arg(long)]
        context: Option<String>,
        /// Groups to assume (default: a service identity's stored groups).
        #[arg(long, value_delimiter = ',')]
        groups: Option<Vec<String>>,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Debug, Subcommand)]
enum SessionsCommand {
    List {
        #[arg(long)]
        identity: Option<String>,
        #[arg(long)]
        connection: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// A session and the timeline of its events.
    Show {
        id: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// End a live session now; its caller gets a clear error.
    Kill { id: String },
}

#[derive(Debug, Subcommand)]
enum ReviewsCommand {
    /// Reviews you asked for or may decide (all, for admins), pending first.
    List {
        /// pending, approved, denied or expired.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// One review: the exact request, who asked, why, who must approve, the votes so far.
    Show {
        id: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Approve a review (you must be in one of its approver groups, and not its requester).
    Approve {
        id: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Deny a review; the held request ends with an error quoting your comment.
    Deny {
        id: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
}

#[derive(Debug, Subcommand)]
enum AccessCommand {
    /// Ask to be a member of a requestable group for a while; prints the review to approve.
    Request {
        #[arg(long)]
        group: String,
        /// How long, e.g. 1h or 30m (at most the group's configured max).
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain: through the API, or offline on a data directory.
    Verify {
        /// Verify offline on this data directory instead of asking the server.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        json: JsonFlag,
    },
}

/// A failure to report on stderr; the process then exits with status 1.
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Serve(args) = &cli.command {
        let loaded = match args.load() {
            Ok(l) => l,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        };
        crate::serve::init_logging(&loaded.config.log.level, loaded.config.log.format == "json");
        // Store calls run on the blocking pool, and the SQLite store has one writer and four
        // readers: more threads would only wait on their locks. A bound keeps a burst (hundreds
        // of sessions held for review at once) from starting a thread each.
        let runtime = match tokio::runtime::Builder::new_multi_thread().max_blocking_threads(16).enable_all().build() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: cannot start the runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        return match runtime.block_on(crate::serve::serve(loaded)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(Failure(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

fn saved_token() -> Option<String> {
    let dir = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    std::fs::read_to_string(dir.join("gatehouse").join("token"))
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

impl Client {
    fn new(cli: &Cli) -> Result<Client, Failure> {
        let base = cli.server.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Failure(format!("--server {base:?} must be an http:// or https:// URL")));
        }
        let mut builder = reqwest::Client::builder().user_agent(concat!("gatehouse-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &cli.server_ca {
            let pem = std::fs::read(path).map_err(|e| Failure(format!("--server-ca {}: {e}", path.display())))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| Failure(format!("--server-ca {}: {e}", path.display())))?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build()?;
        Ok(Client { base, token: cli.token.clone().or_else(saved_token), http })
    }

    /// Sends a request and returns the body of a successful answer; an error answer becomes a
    /// [`Failure`] with the API's message, problems and deciding policies.
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<String, Failure> {
        let token = self.token.as_deref().ok_or_else(|| {
            Failure(
                "no token: pass --token or set GATEHOUSE_TOKEN (a new gateway writes the admin token to <data_dir>/admin.token)"
                    .into(),
            )
        })?;
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url).bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Failure(format!("cannot reach the gateway at {}: {}", self.base, chain(&e))))?;
        let status = resp.status();
        let text = resp.text().await?;
        if status.is_success() {
            return Ok(text);
        }
        let parsed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let err = &parsed["error"];
        let mut message = err["message"].as_str().map(String::from).unwrap_or_else(|| format!("HTTP {status}: {text}"));
        if let Some(problems) = err["problems"].as_array() {
            for p in problems {
                message.push_str(&format!("\n  {}", p.as_str().unwrap_or_default()));
            }
        }
        if let Some(review) = err["review_id"].as_str() {
            message.push_str(&format!(
                "\n  once approved (gatehouse reviews approve {review}), run the same request again"
            ));
        }
        if let Some(policies) = err["policies"].as_array().filter(|p| !p.is_empty()) {
            let ids: Vec<&str> = policies.iter().filter_map(Value::as_str).collect();
            message.push_str(&format!("\n  deciding policies: {}", ids.join(", ")));
        }
        Err(Failure(message))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, Failure> {
        let text = self.send(method, path, body).await?;
        let text = if text.is_empty() { "null" } else { &text };
        serde_json::from_str(text).map_err(|e| Failure(format!("unexpected answer from the gateway: {e}")))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        self.call(reqwest::Method::GET, path, None).await
    }
}

/// An error with its causes, `outer: inner: innermost`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn print_json(v: &impl serde::Serialize) -> Result<(), Failure> {
    outln!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Prints rows as aligned columns under a header.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        outln!("{}", parts.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(s).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn show_object(v: &Value) {
    if let Some(obj) = v.as_object() {
        for (k, val) in obj {
            match val {
                Value::Object(_) | Value::Array(_)
                    if !val.as_array().is_some_and(|a| a.iter().all(|x| !x.is_object())) =>
                {
                    outln!("{k}: {}", serde_json::to_string(val).unwrap_or_default());
                }
                _ => outln!("{k}: {}", s(val)),
            }
        }
    }
}

fn path_part(s: &str) -> String {
    // Names are validated to [A-Za-z0-9._@-]; anything else is percent-encoded.
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"._@-".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    match &cli.command {
        Command::Serve(_) => unreachable_serve(),
        Command::Config(ConfigCommand::Check(args)) => match args.load() {
            Ok(loaded) => {
                outln!("# configuration is valid; effective settings:");
                out!("{}", loaded.effective_toml());
                let key = if std::env::var_os(gatehouse_keys::MASTER_KEY_ENV).is_some() {
                    format!("environment variable {}", gatehouse_keys::MASTER_KEY_ENV)
                } else {
                    format!("file {}", loaded.config.data_dir.join(gatehouse_keys::MASTER_KEY_FILE).display())
                };
                outln!("# master key: {key}");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::from(2))
            }
        },
        Command::Tls(TlsCommand::Ca { data_dir }) => {
            if !data_dir.is_dir() {
                return Err(Failure(format!(
                    "data directory {} does not exist; start the server once",
                    data_dir.display()
                )));
            }
            let (_, ca) = crate::tls::generated(data_dir).map_err(Failure)?;
            out!("{ca}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(AuditCommand::Verify { data_dir: Some(dir), json }) => {
            let (store, keys) = crate::serve::open_offline(dir)?;
            let report = gatehouse_audit::verify(store.as_ref(), &keys, &dir.join(gatehouse_audit::HEAD_FILE)).await?;
            if json.json {
                print_json(&json!({"ok": report.ok, "events": report.events, "first_bad": report.first_bad,
                    "problem": report.problem, "line": report.line()}))?;
            } else {
                outln!("{}", report.line());
            }
            Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        _ => {
            let client = Client::new(&cli)?;
            client_command(&client, &cli.command).await
        }
    }
}

fn unreachable_serve() -> Result<ExitCode, Failure> {
    Err(Failure("serve is handled before the client runs".into()))
}

async fn client_command(c: &Client, command: &Command) -> Result<ExitCode, Failure> {
    use reqwest::Method;
    match command {
        Command::Identities(cmd) => match cmd {
            IdentitiesCommand::Add { name, groups, ttl } => {
                let body = NewIdentity { name: name.clone(), groups: groups.clone(), ttl: ttl.clone() };
                let v: Value = c.call(Method::POST, "/api/v1/identities", Some(serde_json::to_value(body)?)).await?;
                outln!("{}", s(&v["token"]));
            }
            IdentitiesCommand::List(f) => {
                let v: Vec<Value> = c.get("/api/v1/identities").await?;
                if f.json {
                    print_json(&v)?;
                } else {
                    let rows = v
                        .iter()
                        .map(|i| {
                            let expires = if i["expired"] == json!(true) {
                                format!("{} (expired)", s(&i["expires_at"]))
                            } else {
                                s(&i["expires_at"])
                            };
                            vec![s(&i["name"]), s(&i["kind"]), s(&i["groups"]), expires, s(&i["last_used_at"])]
                        })
                        .collect();
                    table(&["NAME", "KIND", "GROUPS", "EXPIRES", "LAST USED"], rows);
                }
            }
            IdentitiesCommand::Show { name, json } => {
                let v: Value = c.get(&format!("/api/v1/identities/{}", path_part(name))).await?;
                if json.json { print_json(&v)? } else { show_object(&v) }
            }
            IdentitiesCommand::Rm { name } => {
                let _: Value = c.call(Method::DELETE, &format!("/api/v1/identities/{}", path_part(name)), None).await?;
                eprintln!("identity {name} deleted");
            }
            IdentitiesCommand::Rotate { name, ttl } => {
                let path = format!("/api/v1/identities/{}/rotate", path_part(name));
                let v: Value = c.call(Method::POST, &path, Some(json!({"ttl": ttl}))).await?;
                outln!("{}", s(&v["token"]));
            }
        },
        Command::Connections(cmd) => match cmd.as_ref() {
            ConnectionsCommand::Add { name, flags } => {
                let input = flags.input(name).map_err(Failure)?;
                let v: Value = c.call(Method::POST, "/api/v1/connections", Some(serde_json::to_value(input)?)).await?;
                eprintln!("connection {} added ({})", s(&v["name"]), s(&v["type"]));
            }
            ConnectionsCommand::Update { name, flags } => {
                let input = flags.input(name).map_err(Failure)?;
                let _: Value = c
                    .call(
                        Method::PATCH,
                        &format!("/api/v1/connections/{}", path_part(name)),
                        Some(serde_json::to_value(input)?),
                    )
                    .await?;
                eprintln!("connection {name} updated");
            }
            ConnectionsCommand::Test { name } => {
                let v: Value =
                    c.call(Method::POST, &format!("/api/v1/connections/{}/test", path_part(name)), None).await?;
                if v["reachable"] == json!(true) {
                    outln!("reachable: {} ({:.1} ms)", s(&v["address"]), v["latency_ms"].as_f64().unwrap_or_default());
                } else {
                    outln!("unreachable: {}: {}", s(&v["address"]), s(&v["error"]));
                    return Ok(ExitCode::FAILURE);
                }
            }
            ConnectionsCommand::List(f) => {
                let v: Vec<Value> = c.get("/api/v1/connections").await?;
                if f.json {
                    print_json(&v)?;
                } else {
                    let rows = v
                        .iter()
                        .map(|x| {
                            let addr = if x["url"].is_string() {
                                s(&x["url"])
                            } else {
                                format!("{}:{}", s(&x["host"]), s(&x["port"]))
                            };
                            let cred =
                                if x["credential"].is_object() { s(&x["credential"]["kind"]) } else { "-".into() };
                            vec![s(&x["name"]), s(&x["type"]), addr, s(&x["tls"]), cred, s(&x["description"])]
                        })
                        .collect();
                    table(&["NAME", "TYPE", "ADDRESS", "TLS", "CREDENTIAL", "DESCRIPTION"], rows);
                }
            }
            ConnectionsCommand::Show { name, json } => {
                let v: Value = c.get(&format!("/api/v1/connections/{}", path_part(name))).await?;
                if json.json { print_json(&v)? } else { show_object(&v) }
            }
            ConnectionsCommand::Rm { name } => {
                let _: Value =
                    c.call(Method::DELETE, &format!("/api/v1/connections/{}", path_part(name)), None).await?;
                eprintln!("connection {name} removed");
            }
            ConnectionsCommand::Credential(CredentialCommand::Add { connection, credential, groups, user, secret }) => {
                let input = CredentialInput {
                    name: credential.clone(),
                    groups: groups.clone(),
                    user: user.clone(),
                    secret: secret.read().map_err(Failure)?,
                };
                let _: Value = c
                    .call(
                        Method::POST,
                        &format!("/api/v1/connections/{}/credentials", path_part(connection)),
                        Some(serde_json::to_value(input)?),
                    )
                    .await?;
                eprintln!("credential {credential} added to {connection}");
            }
            ConnectionsCommand::Credential(CredentialCommand::Rm { connection, credential }) => {
                let _: Value = c
                    .call(
                        Method::DELETE,
                        &format!("/api/v1/connections/{}/credentials/{}", path_part(connection), path_part(credential)),
                        None,
                    )
                    .await?;
                eprintln!("credential {credential} removed from {connection}");
            }
        },
        Command::Policies(cmd) => match cmd {
            PoliciesCommand::Set { file } => {
                let text = std::fs::read_to_string(file).map_err(|e| Failure(format!("{}: {e}", file.display())))?;
                let v: Value = c.call(Method::PUT, "/api/v1/policies", Some(json!({"text": text}))).await?;
                let n = v["policies"].as_array().map(Vec::len).unwrap_or_default();
                outln!("policy set version {} applied: {n} policies", s(&v["version"]));
                for w in v["warnings"].as_array().into_iter().flatten() {
                    eprintln!("warning: {}", s(w));
                }
            }
            PoliciesCommand::Show(f) => {
                let v: Value = c.get("/api/v1/policies").await?;
                if f.json {
                    print_json(&v)?;
                } else {
                    outln!("// version {} by {} at {}", s(&v["version"]), s(&v["author"]), s(&v["updated_at"]));
                    out!("{}", s(&v["text"]));
                }
            }
            PoliciesCommand::Schema => {
                out!("{}", c.send(Method::GET, "/api/v1/policies/schema", None).await?);
            }
            PoliciesCommand::Check { principal, action, resources, context, groups, json } => {
                let context = match context {
                    Some(text) => match serde_json::from_str::<Value>(text)? {
                        Value::Object(m) => m,
                        _ => return Err(Failure("--context must be a JSON object".into())),
                    },
                    None => Default::default(),
                };
                let input = CheckInput {
                    principal: principal.clone(),
                    action: action.clone(),
                    resources: resources.clone(),
                    context,
                    groups: groups.clone(),
                };
                let v: Value =
                    c.call(Method::POST, "/api/v1/policies/check", Some(serde_json::to_value(input)?)).await?;
                if json.json { print_json(&v)? } else { outln!("{}", s(&v["report"])) }
            }
        },
        Command::Sessions(cmd) => match cmd {
            SessionsCommand::Kill { id } => {
                let _: Value = c.call(Method::POST, &format!("/api/v1/sessions/{}/kill", path_part(id)), None).await?;
                eprintln!("session {id} killed");
            }
            SessionsCommand::List { identity, connection, limit, json } => {
                let mut query = vec![format!("limit={limit}")];
                if let Some(i) = identity {
                    query.push(format!("identity={}", path_part(i)));
                }
                if let Some(cn) = connection {
                    query.push(format!("connection={}", path_part(cn)));
                }
                let v: Vec<Value> = c.get(&format!("/api/v1/sessions?{}", query.join("&"))).await?;
                if json.json {
                    print_json(&v)?;
                } else {
                    let rows = v
                        .iter()
                        .map(|x| {
                            let status =
                                if x["live"] == json!(true) { "live".to_string() } else { s(&x["end_reason"]) };
                            vec![
                                s(&x["id"]),
                                s(&x["started_at"]),
                                s(&x["identity"]),
                                s(&x["connection"]),
                                s(&x["protocol"]),
                                s(&x["requests"]),
                                s(&x["denied"]),
                                status,
                            ]
                        })
                        .collect();
                    table(
                        &["ID", "STARTED", "IDENTITY", "CONNECTION", "PROTOCOL", "REQUESTS", "DENIED", "STATUS"],
                        rows,
                    );
                }
            }
            SessionsCommand::Show { id, json } => {
                let v: Value = c.get(&format!("/api/v1/sessions/{}", path_part(id))).await?;
                if json.json {
                    print_json(&v)?;
                } else {
                    outln!("session {}", s(&v["id"]));
                    outln!("identity: {} ({})", s(&v["identity"]), s(&v["identity_kind"]));
                    outln!(
                        "connection: {}  protocol: {}  client: {}",
                        s(&v["connection"]),
                        s(&v["protocol"]),
                        s(&v["client_addr"])
                    );
                    outln!("started: {}  ended: {} ({})", s(&v["started_at"]), s(&v["ended_at"]), s(&v["end_reason"]));
                    outln!("requests: {}  denied: {}", s(&v["requests"]), s(&v["denied"]));
                    outln!();
                    for e in v["events"].as_array().into_iter().flatten() {
                        outln!(
                            "{}  #{:<6} {:<15} {}",
                            s(&e["time"]),
                            s(&e["seq"]),
                            s(&e["kind"]),
                            summarize(&e["kind"], &e["data"])
                        );
                    }
                }
            }
        },
        Command::Audit(AuditCommand::Verify { json, .. }) => {
            let v: Value = c.call(Method::POST, "/api/v1/audit/verify", None).await?;
            if json.json {
                print_json(&v)?
            } else {
                outln!("{}", s(&v["line"]))
            }
            if v["ok"] != json!(true) {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Reviews(cmd) => review_command(c, cmd).await?,
        Command::Exec { name, statement, params, max_rows, body: http_body, headers, json } => {
            let body = match http_request_line(statement) {
                Some((method, path, query)) => {
                    let mut header_map = serde_json::Map::new();
                    for h in headers {
                        let (k, v) =
                            h.split_once(':').ok_or_else(|| anyhow::anyhow!("--header {h:?} is not 'Name: value'"))?;
                        header_map.insert(k.trim().to_string(), json!(v.trim()));
                    }
                    json!({"method": method, "path": path, "query": query, "headers": header_map, "body": http_body})
                }
                None => {
                    if http_body.is_some() || !headers.is_empty() {
                        return Err(
                            anyhow::anyhow!("--body and --header go with an HTTP request line ('GET /path')").into()
                        );
                    }
                    let mut body = json!({"sql": statement, "params": params});
                    if let Some(n) = max_rows {
                        body["max_rows"] = json!(n);
                    }
                    body
                }
            };
            let v: Value = c
                .call(reqwest::Method::POST, &format!("/api/v1/connections/{}/exec", path_part(name)), Some(body))
                .await?;
            if json.json {
                print_json(&v)?;
            } else if v.get("status").is_some() {
                eprintln!("HTTP {}", v["status"]);
                match &v["body"] {
                    Value::String(text) => out!("{text}"),
                    other => outln!("{}", serde_json::to_string_pretty(other)?),
                }
            } else {
                print_result(&v);
            }
        }
        Command::Access(AccessCommand::Request { group, duration, reason, json }) => {
            let body = json!({"group": group, "for": duration, "reason": reason});
            let v: Value = c.call(Method::POST, "/api/v1/access/requests", Some(body)).await?;
            if json.json {
                print_json(&v)?;
            } else {
                outln!("{}", s(&v["id"]));
                eprintln!(
                    "review {} created: {} needs approval by {}",
                    s(&v["id"]),
                    s(&v["request"]),
                    approvers_line(&v["approvers"])
                );
            }
        }
        Command::Serve(_) | Command::Config(_) | Command::Tls(_) => return unreachable_serve(),
    }
    Ok(ExitCode::SUCCESS)
}

/// A statement's result as psql would print it: a table, then the row count; notices and
/// masked-value counts on stderr.
fn print_result(v: &Value) {
    for notice in v["notices"].as_array().into_iter().flatten() {
        eprintln!("NOTICE: {}", s(notice));
    }
    let columns: Vec<String> = v["columns"].as_array().into_iter().flatten().map(|c| s(&c["name"])).collect();
    if columns.is_empty() {
        outln!("{}", s(&v["command"]));
    } else {
        let rows = v["rows"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                r.as_array().into_iter().flatten().map(|x| if x.is_null() { String::new() } else { s(x) }).collect()
            })
            .collect();
        let header: Vec<&str> = columns.iter().map(String::as_str).collect();
        table(&header, rows);
        let n = v["row_count"].as_u64().unwrap_or_default();
        let more = if v["truncated"] == json!(true) { ", truncated: more rows exist (--max-rows)" } else { "" };
        outln!("({n} row{}{more})", if n == 1 { "" } else { "s" });
    }
    if let Some(masked) = v["masked"].as_object().filter(|m| !m.is_empty()) {
        let parts: Vec<String> = masked
            .iter()
            .flat_map(|(column, by)| {
                by.as_object().into_iter().flatten().map(move |(d, n)| format!("{column}: {n} {d}"))
            })
            .collect();
        eprintln!("masked: {}", parts.join(", "));
    }
}

fn approvers_line(approvers: &Value) -> String {
    let groups: Vec<String> = approvers
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| match a["quorum"].as_u64() {
            Some(q) if q > 1 => format!("{} (quorum {q})", s(&a["group"])),
            _ => s(&a["group"]),
        })
        .collect();
    groups.join(" and ")
}

async fn review_command(c: &Client, cmd: &ReviewsCommand) -> Result<(), Failure> {
    match cmd {
        ReviewsCommand::List { status, limit, json } => {
            let mut query = vec![format!("limit={limit}")];
            if let Some(st) = status {
                query.push(format!("status={}", path_part(st)));
            }
            let v: Vec<Value> = c.get(&format!("/api/v1/reviews?{}", query.join("&"))).await?;
            if json.json {
                return print_json(&v);
            }
            let rows = v
                .iter()
                .map(|x| {
                    let request: String = s(&x["request"]).chars().take(60).collect();
                    vec![
                        s(&x["id"]),
                        s(&x["status"]),
                        s(&x["requester"]),
                        s(&x["connection"]),
                        request,
                        approvers_line(&x["approvers"]),
                        s(&x["created_at"]),
                    ]
                })
                .collect();
            table(&["ID", "STATUS", "REQUESTER", "CONNECTION", "REQUEST", "APPROVERS", "CREATED"], rows);
        }
        ReviewsCommand::Show { id, json } => {
            let v: Value = c.get(&format!("/api/v1/reviews/{}", path_part(id))).await?;
            if json.json {
                return print_json(&v);
            }
            outln!("review {} ({}, {})", s(&v["id"]), s(&v["kind"]), s(&v["status"]));
            outln!("requester: {}", s(&v["requester"]));
            if v["connection"].is_string() {
                outln!("connection: {}  session: {}", s(&v["connection"]), s(&v["session_id"]));
            }
            outln!("request: {}", s(&v["request"]));
            if v["params"].as_array().is_some_and(|p| !p.is_empty()) {
                outln!("parameters: {}", serde_json::to_string(&v["params"])?);
            }
            outln!("reason: {}", s(&v["reason"]));
            outln!("approvers: {}", approvers_line(&v["approvers"]));
            outln!("created: {}  expires: {}", s(&v["created_at"]), s(&v["expires_at"]));
            if v["grant_until"].is_string() {
                outln!("grant until: {}  used: {}", s(&v["grant_until"]), s(&v["used_at"]));
            }
            for vote in v["votes"].as_array().into_iter().flatten() {
                outln!(
                    "  {} {} by {} (as {}){}",
                    s(&vote["at"]),
                    s(&vote["decision"]),
                    s(&vote["approver"]),
                    s(&vote["groups"]),
                    vote["comment"].as_str().filter(|c| !c.is_empty()).map(|c| format!(": {c}")).unwrap_or_default()
                );
            }
        }
        ReviewsCommand::Approve { id, comment } | ReviewsCommand::Deny { id, comment } => {
            let verb = if matches!(cmd, ReviewsCommand::Approve { .. }) { "approve" } else { "deny" };
            let v: Value = c
                .call(
                    reqwest::Method::POST,
                    &format!("/api/v1/reviews/{}/{verb}", path_part(id)),
                    Some(json!({"comment": comment})),
                )
                .await?;
            let status = s(&v["status"]);
            if status == "pending" {
                eprintln!(
                    "review {id}: your approval is counted; it still needs more approvals ({})",
                    approvers_line(&v["approvers"])
                );
            } else {
                eprintln!("review {id} is now {status}");
            }
        }
    }
    Ok(())
}

/// One line per event for `sessions show`.
fn summarize(kind: &Value, data: &Value) -> String {
    match kind.as_str().unwrap_or_default() {
        "request" => {
            let what = if data["operation"].is_string() {
                format!("{} {}", s(&data["operation"]), s(&data["target"]))
            } else {
                s(&data["request"])
            };
            let policies = data["policies"]
                .as_array()
                .filter(|p| !p.is_empty())
                .map(|_| format!(" [{}]", s(&data["policies"])))
                .unwrap_or_default();
            format!("{} {} -> {}{}", s(&data["action"]), what, s(&data["decision"]), policies)
        }
        "request.result" => match data["error"].as_str() {
            Some(e) => {
                format!("{} ({:.1} ms): {e}", s(&data["status"]), data["duration_ms"].as_f64().unwrap_or_default())
            }
            None => format!("{} ({:.1} ms)", s(&data["status"]), data["duration_ms"].as_f64().unwrap_or_default()),
        },
        "session.start" => format!("{} via {}", s(&data["identity"]), s(&data["protocol"])),
        "session.end" => s(&data["reason"]),
        _ => data.to_string(),
    }
}

/// `METHOD /path?query` as a request for an HTTP connection, or `None` (SQL).
fn http_request_line(text: &str) -> Option<(String, String, Option<String>)> {
    let (method, target) = text.trim().split_once(' ')?;
    let target = target.trim();
    if !target.starts_with('/') || target.contains(char::is_whitespace) {
        return None;
    }
    if !["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"].contains(&method.to_ascii_uppercase().as_str()) {
        return None;
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    Some((method.to_ascii_uppercase(), path, query))
}
