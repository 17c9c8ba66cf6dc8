//! `gatehouse serve`: opens the data directory, the store and the audit trail, bootstraps the
//! `admin` identity on an empty store, serves the API, and drains on `SIGTERM`.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use gatehouse_audit::{AuditWriter, FSYNC_INTERVAL, FsyncPolicy, HEAD_FILE, now_ms};
use gatehouse_auth::{Authenticator, OidcVerifier, issue_token};
use gatehouse_core::{ADMIN_GROUP, IdentityKind};
use gatehouse_keys::Keys;
use gatehouse_policy::PolicyEngine;
use gatehouse_store::{IdentityRecord, SqliteStore, Store};
use serde_json::json;
use tokio::sync::RwLock;

use crate::app::App;
use crate::config::{Loaded, StoreLocation};

/// The bootstrap identity's name and its token file.
pub const ADMIN: &str = "admin";
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

pub fn init_logging(level: &str, json: bool) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn create_data_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the data directory {}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    Ok(())
}

/// Opens the data directory, the master key and the store for `serve`. A master key is
/// generated only for a new store: an existing store without its key refuses to start, since a
/// new key would orphan every sealed credential and token and fork the audit chain.
pub async fn open(loaded: &Loaded) -> anyhow::Result<(Arc<dyn Store>, Arc<Keys>)> {
    let data_dir = &loaded.config.data_dir;
    create_data_dir(data_dir)?;
    let StoreLocation::Sqlite(path) = &loaded.store;
    let store_exists = path.exists();
    let (keys, source) = Keys::load(data_dir, !store_exists).with_context(|| {
        if store_exists {
            format!(
                "the store {} exists, so its master key must be given: restore {} or set {}",
                path.display(),
                data_dir.join(gatehouse_keys::MASTER_KEY_FILE).display(),
                gatehouse_keys::MASTER_KEY_ENV
            )
        } else {
            "cannot load the master key".to_string()
        }
    })?;
    tracing::info!(source = %source, "master key loaded");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(path, false)?);
    Ok((store, Arc::new(keys)))
}

/// Opens a data directory read-only, for offline checks.
pub fn open_offline(data_dir: &Path) -> anyhow::Result<(Arc<dyn Store>, Arc<Keys>)> {
    let path = data_dir.join("gatehouse.db");
    if !path.exists() {
        anyhow::bail!("no store at {}", path.display());
    }
    let (keys, _) = Keys::load(data_dir, false).context("cannot load the master key")?;
    Ok((Arc::new(SqliteStore::open_read_only(&path)?), Arc::new(keys)))
}

async fn bootstrap(app: &App) -> anyhow::Result<()> {
    if !app.store.list_identities().await?.is_empty() {
        return Ok(());
    }
    let issued = issue_token(&app.keys)?;
    let path = app.data_dir.join(ADMIN_TOKEN_FILE);
    let now = now_ms();
    app.record_server_event(
        "bootstrap",
        json!({"identity": ADMIN, "groups": [ADMIN_GROUP], "token_file": ADMIN_TOKEN_FILE}),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    app.store
        .create_identity(IdentityRecord {
            name: ADMIN.into(),
            kind: IdentityKind::Service,
            groups: vec![ADMIN_GROUP.into()],
            token_hash: Some(issued.hash),
            created_at: now,
            expires_at: None,
            last_used_at: None,
            token_rotated_at: None,
        })
        .await?;
    // A token file left from an earlier store is useless now: replace it.
    if path.exists() {
        std::fs::remove_file(&path)?;
    }
    gatehouse_keys::write_private(&path, format!("{}\n", issued.token.expose()).as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tracing::info!(path = %path.display(), "created the bootstrap identity 'admin' (group admins); its token is in this file");
    Ok(())
}

/// A file-size limit (`ulimit -f`) reached while writing the store would kill the process by
/// default (SIGXFSZ). The gateway takes the signal instead, so the write fails like a full disk:
/// requests are refused until the store can be written again.
fn survive_file_size_limit() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        // Once registered, tokio's handler stays for the life of the process.
        if let Err(e) = signal(SignalKind::from_raw(libc::SIGXFSZ)) {
            tracing::warn!(error = %e, "cannot take SIGXFSZ; a file-size limit would stop the gateway");
        }
    }
}

pub async fn serve(loaded: Loaded) -> anyhow::Result<()> {
    survive_file_size_limit();
    let (store, keys) = open(&loaded).await?;
    let data_dir = loaded.config.data_dir.clone();
    let fsync = if loaded.fsync_each_batch { FsyncPolicy::Interval(FSYNC_INTERVAL) } else { FsyncPolicy::Off };
    // What a stopped gateway left in the audit journal goes into the store first.
    gatehouse_audit::replay_journal(store.as_ref(), &gatehouse_audit::journal_dir(&data_dir.join(HEAD_FILE))).await?;
    // The chain head as it was before this run writes a new one, for the start-up check.
    let head_at_start = gatehouse_audit::read_head(&data_dir.join(HEAD_FILE));
    let last_at_start = store.last_event().await?.map(|(seq, _)| seq).unwrap_or(0);
    let metrics = crate::metrics::Metrics::new();
    let (audit, writer_task) = AuditWriter::start_observed(
        store.clone(),
        keys.clone(),
        data_dir.join(HEAD_FILE),
        fsync,
        Some(metrics.audit_observer()),
    )
    .await?;

    let policy = PolicyEngine::new();
    if let Some(current) = store.current_policy().await? {
        match policy.set(&current.text) {
            Ok(summary) => {
                tracing::info!(version = current.version, policies = summary.policies.len(), "policy set loaded")
            }
            Err(e) => {
                tracing::error!(version = current.version, error = %e, "the stored policy set does not load; everything but the built-in admin rights is denied until a valid set is applied")
            }
        }
    }

    let oidc = match &loaded.oidc {
        Some(settings) => {
            let verifier = Arc::new(OidcVerifier::new(settings.clone()).map_err(|e| anyhow::anyhow!("oidc: {e}"))?);
            match verifier.prefetch().await {
                Ok(keys) => tracing::info!(issuer = %settings.issuer, keys, "OIDC provider loaded"),
                Err(e) => {
                    tracing::error!(issuer = %settings.issuer, error = %e, "OIDC provider unreachable; JWTs are refused until it answers")
                }
            }
            Some(verifier)
        }
        None => None,
    };
    // One classification cache for the listener and the exec path.
    let statements = Arc::new(gatehouse_proto_postgres::SqlStatements::new(4096));
    let app = Arc::new(App {
        data_dir: data_dir.clone(),
        auth: Authenticator::new(store.clone(), keys.clone(), oidc),
        metrics,
        metrics_enabled: loaded.config.metrics.enabled,
        store,
        keys,
        policy,
        audit,
        chain: RwLock::new(None),
        live: Default::default(),
        reviews: crate::reviews::Reviews::new(loaded.reviews.clone()),
        exec: Some(crate::exec::ExecSettings {
            config: Arc::new(listener_config(&loaded.postgres, None)),
            statements: statements.clone(),
        }),
        limits: crate::limits::Limits::new(loaded.limits.clone()),
        http: crate::exec::HttpExec {
            config: Arc::new(gatehouse_proto_http::ListenerConfig {
                tls: None,
                connect_timeout: loaded.http.connect_timeout,
                read_timeout: loaded.http.read_timeout,
                max_review_body: loaded.http.max_review_body,
                sample_bytes: loaded.http.sample_bytes,
                max_connections: loaded.http.max_connections,
            }),
            upstreams: Arc::default(),
        },
        console: crate::console::Console::new(loaded.console.clone()),
    });
    bootstrap(&app).await?;
    app.reviews.load_access(&app.store.active_access_grants(now_ms()).await?);
    close_left_open(&app).await?;

    let checker = app.clone();
    tokio::spawn(async move {
        let head_path = checker.head_path();
        match gatehouse_audit::verify_with_head(
            checker.store.as_ref(),
            &checker.keys,
            head_at_start,
            Some(last_at_start),
            &head_path,
        )
        .await
        {
            Ok(report) => {
                if report.ok {
                    tracing::info!(events = report.events, "audit chain verified");
                } else {
                    tracing::error!(result = %report.line(), "AUDIT CHAIN BROKEN; the gateway keeps serving and recording");
                    // The finding goes into the chain itself, so it outlives a replaced head file.
                    if let Err(e) =
                        checker.record_server_event("audit.chain_broken", json!({"result": report.line()})).await
                    {
                        tracing::error!(error = %e, "could not record the broken chain");
                    }
                }
                *checker.chain.write().await = Some(report);
            }
            Err(e) => tracing::error!(error = %e, "the audit chain could not be checked"),
        }
    });

    app.record_server_event("server.start", json!({"version": env!("CARGO_PKG_VERSION")}))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    let listener = match loaded.api_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (listen.api)"))?;
            if !addr.ip().is_loopback() && loaded.tls.is_none() {
                tracing::warn!(%addr, "the API listens in plain HTTP on a non-loopback address (listen.allow_plaintext)");
            }
            let scheme = if loaded.tls.is_some() { "https" } else { "http" };
            tracing::info!(addr = %listener.local_addr()?, scheme, "API listening");
            Some(listener)
        }
        None => {
            tracing::info!("API listener disabled (listen.api is empty)");
            None
        }
    };

    let grace = loaded.shutdown_grace;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(crate::reviews::expire_until(app.clone(), stop_rx.clone()));
    let (limits, mut stop) = (app.limits.clone(), stop_rx.clone());
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = every.tick() => limits.prune(),
                _ = stop.wait_for(|s| *s) => break,
            }
        }
    });
    let server = listener.map(|listener| {
        let mut stop = stop_rx.clone();
        let router = crate::api::router(app.clone());
        let tls = loaded.tls.clone();
        tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            match tls {
                Some(config) => {
                    axum::serve(
                        crate::tls::TlsListener::new(listener, config)?,
                        router.into_make_service_with_connect_info::<crate::api::ClientAddr>(),
                    )
                    .with_graceful_shutdown(stopped)
                    .await
                }
                None => {
                    axum::serve(listener, router.into_make_service_with_connect_info::<crate::api::ClientAddr>())
                        .with_graceful_shutdown(stopped)
                        .await
                }
            }
        })
    });

    if let Some(addr) = loaded.postgres_addr {
        let tls = match (&loaded.config.tls.cert, &loaded.config.tls.key) {
            (c, k) if !c.is_empty() && !k.is_empty() => crate::tls::server_config(Path::new(c), Path::new(k), &[]),
            _ => crate::tls::generated(&data_dir).map(|(config, _)| config),
        }
        .map_err(|e| anyhow::anyhow!("TLS for the PostgreSQL listener: {e}"))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (listen.postgres)"))?;
        tracing::info!(addr = %listener.local_addr()?, "PostgreSQL listening");
        let config = Arc::new(listener_config(&loaded.postgres, Some(tls)));
        let pipeline = Arc::new(crate::pipeline::DataPath::new(app.clone()));
        tokio::spawn(gatehouse_proto_postgres::serve(listener, config, pipeline, statements, stop_rx.clone()));
    }

    if let Some(addr) = loaded.http_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (listen.http)"))?;
        let tls = match (&loaded.config.tls.cert, &loaded.config.tls.key) {
            (c, k) if !c.is_empty() && !k.is_empty() => Some(
                crate::tls::server_config(Path::new(c), Path::new(k), &[b"h2", b"http/1.1"])
                    .map_err(|e| anyhow::anyhow!("TLS for the HTTP listener: {e}"))?,
            ),
            _ => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(addr = %listener.local_addr()?, scheme, "HTTP listening");
        let config = Arc::new(gatehouse_proto_http::ListenerConfig { tls, ..(*app.http.config).clone() });
        let pipeline = Arc::new(crate::pipeline::DataPath::new(app.clone()));
        let upstreams = app.http.upstreams.clone();
        tokio::spawn(gatehouse_proto_http::serve(listener, config, pipeline, upstreams, stop_rx.clone()));
    }

    let signal = shutdown_signal().await;
    tracing::info!(%signal, grace = ?grace, "draining: listeners closed, open requests may finish");
    let _ = stop_tx.send(true);
    let deadline = tokio::time::Instant::now() + grace;
    if let Some(server) = server
        && tokio::time::timeout_at(deadline, server).await.is_err()
    {
        tracing::warn!("grace period over; cutting the remaining API connections");
    }
    while !app.live.ids().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let open = app.live.ids();
    if !open.is_empty() {
        tracing::warn!(sessions = open.len(), "grace period over; ending the remaining sessions");
        for id in &open {
            app.live.kill(id, "the gateway is shutting down");
        }
        let cut = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !app.live.ids().is_empty() && tokio::time::Instant::now() < cut {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    if let Err(e) = app.record_server_event("server.stop", json!({"signal": signal})).await {
        tracing::error!(error = %e, "could not record the shutdown");
    }
    drop(app);
    if tokio::time::timeout(std::time::Duration::from_secs(10), writer_task).await.is_err() {
        tracing::error!("the audit writer did not finish flushing in time");
    } else {
        tracing::info!("audit trail flushed; stopped");
    }
    Ok(())
}

/// Ends the sessions a previous run left open (it was killed, or the machine went down): their
/// callers are gone, and the record says so.
async fn close_left_open(app: &App) -> anyhow::Result<()> {
    let open = app.store.open_sessions().await?;
    if open.is_empty() {
        return Ok(());
    }
    for ids in open.chunks(500) {
        let entries = ids
            .iter()
            .map(|id| gatehouse_audit::Entry::session_end(id, "the gateway stopped without ending the session"))
            .collect();
        app.audit.record(entries).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    tracing::warn!(sessions = open.len(), "ended the sessions the previous run left open (it did not stop cleanly)");
    Ok(())
}

fn listener_config(
    limits: &crate::config::PostgresLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> gatehouse_proto_postgres::ListenerConfig {
    gatehouse_proto_postgres::ListenerConfig {
        tls,
        auth_timeout: limits.auth_timeout,
        idle_timeout: limits.idle_timeout,
        max_message: limits.max_message,
        max_backend_message: 1 << 30,
        connect_timeout: limits.connect_timeout,
        max_connections: limits.max_connections,
        max_result_bytes: limits.max_result_bytes,
    }
}

async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup())) {
            (Ok(mut term), Ok(mut int), Ok(mut hup)) => loop {
                tokio::select! {
                    _ = term.recv() => return "SIGTERM",
                    _ = int.recv() => return "SIGINT",
                    _ = hup.recv() => tracing::warn!(
                        "SIGHUP ignored: configuration is read at start (policies, identities and connections apply without a restart)"
                    ),
                }
            },
            _ => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "interrupt"
    }
}
