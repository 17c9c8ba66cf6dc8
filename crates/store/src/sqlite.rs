//! The embedded SQLite back-end: one write connection, a few read connections, WAL journal.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use gatehouse_core::IdentityKind;
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::{
    AuditBatch, ConnectionRecord, CredentialRecord, IdentityRecord, PolicyVersion, Result, ReviewFilter, ReviewKind,
    ReviewRecord, ReviewStatus, SealedSecret, SecretKind, SessionChange, SessionFilter, SessionOutcome, SessionRecord,
    Store, StoreError, StoredEvent,
};

mod embedded {
    refinery::embed_migrations!("migrations/sqlite");
}

const READERS: usize = 4;

/// WAL pages after which the committing connection checkpoints by itself, forcing the log and
/// the database to disk while the commit waits. The audit writer's background checkpoints
/// ([`Store::checkpoint`]) copy most of the log before then, but the log starts over only when
/// one has caught up as a commit begins: under steady load it grows to this bound (64 MiB at the
/// default 4 KiB page size), which keeps its size bounded.
const WAL_BACKSTOP_PAGES: i64 = 16_384;

/// Gatehouse's embedded store: a SQLite file in WAL mode.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    /// Runs checkpoints beside the writer (none when opened read-only).
    checkpointer: Option<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.inner.path).finish()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn db_err(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic while holding the lock leaves the connection usable: SQLite rolls back.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and runs pending migrations.
    /// `fsync_each_commit` selects `synchronous=FULL` (every commit forced to disk) over
    /// `NORMAL` (committed to the WAL, forced to disk at checkpoints; survives a killed process;
    /// [`Store::log_files`] names the WAL for whoever forces it to disk between checkpoints).
    pub fn open(path: &Path, fsync_each_commit: bool) -> Result<SqliteStore> {
        let open = |write: bool| -> Result<Connection> {
            let conn = Connection::open(path).map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
            conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(db_err)?;
            conn.pragma_update(None, "journal_mode", "WAL").map_err(db_err)?;
            conn.pragma_update(None, "foreign_keys", "ON").map_err(db_err)?;
            if write {
                conn.pragma_update(None, "synchronous", if fsync_each_commit { "FULL" } else { "NORMAL" })
                    .map_err(db_err)?;
            }
            Ok(conn)
        };
        let mut writer = open(true)?;
        restrict_to_owner(path)?;
        embedded::migrations::runner().run(&mut writer).map_err(|e| unavailable(format!("migration failed: {e}")))?;
        // Checkpoints are the audit writer's background work; a commit makes one only when the
        // log has grown far beyond what those keep it at.
        writer.pragma_update(None, "wal_autocheckpoint", WAL_BACKSTOP_PAGES).map_err(db_err)?;
        let readers = (0..READERS).map(|_| open(false).map(Mutex::new)).collect::<Result<Vec<_>>>()?;
        let checkpointer = Some(Mutex::new(open(true)?));
        Ok(SqliteStore {
            inner: Arc::new(Inner { path: path.to_path_buf(), writer: Mutex::new(writer), readers, checkpointer }),
        })
    }

    /// Opens an existing database for reading only: no migrations, no writes (for offline
    /// checks such as `audit verify --data-dir`, which must not change what it checks).
    pub fn open_read_only(path: &Path) -> Result<SqliteStore> {
        let open = || -> Result<Connection> {
            let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let conn = Connection::open_with_flags(path, flags)
                .map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
            conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(db_err)?;
            Ok(conn)
        };
        let writer = open()?;
        let readers = (0..1).map(|_| open().map(Mutex::new)).collect::<Result<Vec<_>>>()?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                writer: Mutex::new(writer),
                readers,
                checkpointer: None,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&mut lock(&inner.writer))).await.map_err(unavailable)?
    }

    async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            for reader in &inner.readers {
                if let Ok(conn) = reader.try_lock() {
                    return f(&conn);
                }
            }
            let conn = lock(&inner.readers[0]);
            f(&conn)
        })
        .await
        .map_err(unavailable)?
    }
}

/// The database holds sealed credentials and token hashes: owner-only (SQLite gives its WAL and
/// shared-memory files the same mode).
fn restrict_to_owner(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
}

fn kind_to_str(kind: IdentityKind) -> &'static str {
    match kind {
        IdentityKind::Service => "service",
        IdentityKind::User => "user",
    }
}

fn kind_from_str(s: &str) -> rusqlite::Result<IdentityKind> {
    match s {
        "service" => Ok(IdentityKind::Service),
        "user" => Ok(IdentityKind::User),
        other => Err(rusqlite::Error::InvalidColumnName(format!("identity kind {other}"))),
    }
}

const IDENTITY_COLS: &str =
    "name, kind, groups_json, token_hash, created_at, expires_at, last_used_at, token_rotated_at";

fn identity_row(row: &Row<'_>) -> rusqlite::Result<IdentityRecord> {
    Ok(IdentityRecord {
        name: row.get(0)?,
        kind: kind_from_str(&row.get::<_, String>(1)?)?,
        groups: from_json(&row.get::<_, String>(2)?)?,
        token_hash: row.get(3)?,
        created_at: row.get(4)?,
        expires_at: row.get(5)?,
        last_used_at: row.get(6)?,
        token_rotated_at: row.get(7)?,
    })
}

fn secret_cols(secret: &Option<SealedSecret>) -> (Option<&'static str>, Option<String>, Option<Vec<u8>>) {
    match secret {
        None => (None, None, None),
        Some(s) => {
            let header = match &s.kind {
                SecretKind::Header { name } => Some(name.clone()),
                _ => None,
            };
            (Some(s.kind.tag()), header, Some(s.sealed.clone()))
        }
    }
}

fn secret_from(
    kind: Option<String>,
    header: Option<String>,
    sealed: Option<Vec<u8>>,
) -> rusqlite::Result<Option<SealedSecret>> {
    let (Some(kind), Some(sealed)) = (kind, sealed) else { return Ok(None) };
    let kind = match kind.as_str() {
        "password" => SecretKind::Password,
        "key_file" => SecretKind::KeyFile,
        "bearer" => SecretKind::Bearer,
        "header" => SecretKind::Header { name: header.unwrap_or_default() },
        other => return Err(rusqlite::Error::InvalidColumnName(format!("secret kind {other}"))),
    };
    Ok(Some(SealedSecret { kind, sealed }))
}

const CONNECTION_COLS: &str = "name, kind, host, port, url, database_name, user_name, tls_mode, ca_file, description, \
     tags_json, mask_json, mask_columns_json, secret_kind, secret_header, secret_sealed, created_at, updated_at";

fn connection_row(row: &Row<'_>) -> rusqlite::Result<ConnectionRecord> {
    Ok(ConnectionRecord {
        name: row.get(0)?,
        kind: row.get(1)?,
        host: row.get(2)?,
        port: row.get(3)?,
        url: row.get(4)?,
        database: row.get(5)?,
        user: row.get(6)?,
        tls_mode: row.get(7)?,
        ca_file: row.get(8)?,
        description: row.get(9)?,
        tags: from_json(&row.get::<_, String>(10)?)?,
        mask: from_json(&row.get::<_, String>(11)?)?,
        mask_columns: from_json(&row.get::<_, String>(12)?)?,
        secret: secret_from(row.get(13)?, row.get(14)?, row.get(15)?)?,
        credentials: vec![],
        created_at: row.get(16)?,
        updated_at: row.get(17)?,
    })
}

fn load_credentials(conn: &Connection, record: &mut ConnectionRecord) -> Result<()> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT name, groups_json, user_name, secret_kind, secret_header, secret_sealed, created_at \
             FROM connection_credentials WHERE connection = ?1 ORDER BY position",
        )
        .map_err(db_err)?;
    let rows = stmt
        .query_map([&record.name], |row| {
            Ok(CredentialRecord {
                name: row.get(0)?,
                groups: from_json(&row.get::<_, String>(1)?)?,
                user: row.get(2)?,
                secret: secret_from(row.get(3)?, row.get(4)?, row.get(5)?)?,
                created_at: row.get(6)?,
            })
        })
        .map_err(db_err)?;
    record.credentials = rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)?;
    Ok(())
}

const SESSION_COLS: &str = "id, identity, identity_kind, connection, protocol, client_addr, started_at, ended_at, end_reason, requests, denied, reviewed, masked";

fn session_row(row: &Row<'_>) -> rusqlite::Result<SessionRecord> {
    Ok(SessionRecord {
        id: row.get(0)?,
        identity: row.get(1)?,
        identity_kind: kind_from_str(&row.get::<_, String>(2)?)?,
        connection: row.get(3)?,
        protocol: row.get(4)?,
        client_addr: row.get(5)?,
        started_at: row.get(6)?,
        ended_at: row.get(7)?,
        end_reason: row.get(8)?,
        requests: row.get(9)?,
        denied: row.get(10)?,
        reviewed: row.get(11)?,
        masked: row.get(12)?,
    })
}

fn event_row(row: &Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        seq: row.get(0)?,
        ts: row.get(1)?,
        session_id: row.get(2)?,
        kind: row.get(3)?,
        payload: row.get(4)?,
        mac: row.get(5)?,
    })
}

fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

/// The audit batch's statements, in one transaction.
fn append_audit_tx(c: &mut Connection, batch: &AuditBatch) -> Result<()> {
    let tx = c.transaction().map_err(db_err)?;
    {
        let mut ins = tx
            .prepare_cached(
                "INSERT INTO audit_events (seq, ts, session_id, kind, payload, mac) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(db_err)?;
        for e in &batch.events {
            ins.execute(params![e.seq, e.ts, e.session_id, e.kind, e.payload, e.mac]).map_err(db_err)?;
        }
        // A session's counters only add up, so each session's are summed over the batch and
        // written once (after the sessions it opens, before those it closes): an import of
        // thousands of events updates each session's row once, not once per event.
        let mut counted: std::collections::HashMap<&str, [i64; 4]> = std::collections::HashMap::new();
        for change in &batch.sessions {
            let (id, add) = match change {
                SessionChange::Request { id, denied, reviewed } => {
                    (id, [1, i64::from(*denied), i64::from(*reviewed), 0])
                }
                SessionChange::Masked { id, values } => (id, [0, 0, 0, *values]),
                SessionChange::Open(_) | SessionChange::Close { .. } => continue,
            };
            let sums = counted.entry(id.as_str()).or_default();
            sums.iter_mut().zip(add).for_each(|(sum, n)| *sum += n);
        }
        let opened = batch.sessions.iter().filter_map(|c| if let SessionChange::Open(s) = c { Some(s) } else { None });
        for s in opened {
            tx.prepare_cached(&format!(
                "INSERT INTO sessions ({SESSION_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
            ))
            .map_err(db_err)?
            .execute(params![
                s.id,
                s.identity,
                kind_to_str(s.identity_kind),
                s.connection,
                s.protocol,
                s.client_addr,
                s.started_at,
                s.ended_at,
                s.end_reason,
                s.requests,
                s.denied,
                s.reviewed,
                s.masked
            ])
            .map_err(db_err)?;
        }
        for (id, [requests, denied, reviewed, masked]) in counted {
            tx.prepare_cached(
                "UPDATE sessions SET requests = requests + ?2, denied = denied + ?3, reviewed = reviewed + ?4, \
                 masked = masked + ?5 WHERE id = ?1",
            )
            .map_err(db_err)?
            .execute(params![id, requests, denied, reviewed, masked])
            .map_err(db_err)?;
        }
        for change in &batch.sessions {
            if let SessionChange::Close { id, ended_at, reason } = change {
                tx.prepare_cached(
                    "UPDATE sessions SET ended_at = ?2, end_reason = ?3 WHERE id = ?1 AND ended_at IS NULL",
                )
                .map_err(db_err)?
                .execute(params![id, ended_at, reason])
                .map_err(db_err)?;
            }
        }
    }
    tx.commit().map_err(db_err)
}

#[async_trait]
impl Store for SqliteStore {
    fn log_files(&self) -> Vec<std::path::PathBuf> {
        let mut wal = self.inner.path.clone().into_os_string();
        wal.push("-wal");
        vec![wal.into()]
    }

    fn checkpoint(&self) -> Result<()> {
        let Some(checkpointer) = &self.inner.checkpointer else { return Ok(()) };
        // Passive: copies what no reader still needs, without waiting for the writer or the
        // readers. Once it has caught up, the next commit starts the log over from its beginning.
        // Another checkpoint under way (a commit's, past the backstop) is no failure: it does
        // the work.
        match lock(checkpointer).query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) =>
            {
                Ok(())
            }
            other => other.map_err(db_err),
        }
    }

    async fn ping(&self) -> Result<()> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(db_err)).await
    }

    async fn create_identity(&self, id: IdentityRecord) -> Result<()> {
        self.write(move |c| {
            let groups = to_json(&id.groups)?;
            c.execute(
                &format!("INSERT INTO identities ({IDENTITY_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
                params![
                    id.name,
                    kind_to_str(id.kind),
                    groups,
                    id.token_hash,
                    id.created_at,
                    id.expires_at,
                    id.last_used_at,
                    id.token_rotated_at
                ],
            )
            .map_err(|e| {
                if is_constraint(&e) { StoreError::Conflict(format!("identity {:?}", id.name)) } else { db_err(e) }
            })?;
            Ok(())
        })
        .await
    }

    async fn get_identity(&self, name: &str) -> Result<Option<IdentityRecord>> {
        let name = name.to_string();
        self.read(move |c| {
            c.query_row(&format!("SELECT {IDENTITY_COLS} FROM identities WHERE name = ?1"), [name], identity_row)
                .optional()
                .map_err(db_err)
        })
        .await
    }

    async fn identity_by_token_hash(&self, hash: &[u8]) -> Result<Option<IdentityRecord>> {
        let hash = hash.to_vec();
        self.read(move |c| {
            c.query_row(&format!("SELECT {IDENTITY_COLS} FROM identities WHERE token_hash = ?1"), [hash], identity_row)
                .optional()
                .map_err(db_err)
        })
        .await
    }

    async fn list_identities(&self) -> Result<Vec<IdentityRecord>> {
        self.read(|c| {
            let mut stmt =
                c.prepare(&format!("SELECT {IDENTITY_COLS} FROM identities ORDER BY name")).map_err(db_err)?;
            let rows = stmt.query_map([], identity_row).map_err(db_err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
        })
        .await
    }

    async fn rotate_identity_token(
        &self,
        name: &str,
        new_hash: &[u8],
        now: i64,
        expires_at: Option<i64>,
    ) -> Result<()> {
        let (name, hash) = (name.to_string(), new_hash.to_vec());
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE identities SET token_hash = ?2, token_rotated_at = ?3, expires_at = ?4 WHERE name = ?1",
                    params![name, hash, now, expires_at],
                )
                .map_err(db_err)?;
            if n == 0 { Err(StoreError::NotFound(format!("identity {name:?}"))) } else { Ok(()) }
        })
        .await
    }

    async fn touch_identity(&self, name: &str, now: i64) -> Result<()> {
        let name = name.to_string();
        self.write(move |c| {
            c.execute("UPDATE identities SET last_used_at = ?2 WHERE name = ?1", params![name, now]).map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn delete_identity(&self, name: &str) -> Result<()> {
        let name = name.to_string();
        self.write(move |c| {
            let n = c.execute("DELETE FROM identities WHERE name = ?1", [&name]).map_err(db_err)?;
            if n == 0 { Err(StoreError::NotFound(format!("identity {name:?}"))) } else { Ok(()) }
        })
        .await
    }

    async fn create_connection(&self, r: ConnectionRecord) -> Result<()> {
        self.write(move |c| {
            let (sk, sh, ss) = secret_cols(&r.secret);
            c.execute(
                &format!("INSERT INTO connections ({CONNECTION_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)"),
                params![r.name, r.kind, r.host, r.port, r.url, r.database, r.user, r.tls_mode, r.ca_file, r.description,
                    to_json(&r.tags)?, to_json(&r.mask)?, to_json(&r.mask_columns)?, sk, sh, ss, r.created_at, r.updated_at],
            )
            .map_err(|e| if is_constraint(&e) { StoreError::Conflict(format!("connection {:?}", r.name)) } else { db_err(e) })?;
            Ok(())
        })
        .await
    }

    async fn update_connection(&self, r: ConnectionRecord) -> Result<()> {
        self.write(move |c| {
            let (sk, sh, ss) = secret_cols(&r.secret);
            let n = c
                .execute(
                    "UPDATE connections SET kind = ?2, host = ?3, port = ?4, url = ?5, database_name = ?6, user_name = ?7, \
                     tls_mode = ?8, ca_file = ?9, description = ?10, tags_json = ?11, mask_json = ?12, mask_columns_json = ?13, \
                     secret_kind = ?14, secret_header = ?15, secret_sealed = ?16, updated_at = ?17 WHERE name = ?1",
                    params![r.name, r.kind, r.host, r.port, r.url, r.database, r.user, r.tls_mode, r.ca_file, r.description,
                        to_json(&r.tags)?, to_json(&r.mask)?, to_json(&r.mask_columns)?, sk, sh, ss, r.updated_at],
                )
                .map_err(db_err)?;
            if n == 0 { Err(StoreError::NotFound(format!("connection {:?}", r.name))) } else { Ok(()) }
        })
        .await
    }

    async fn get_connection(&self, name: &str) -> Result<Option<ConnectionRecord>> {
        let name = name.to_string();
        self.read(move |c| {
            let rec = c
                .query_row(
                    &format!("SELECT {CONNECTION_COLS} FROM connections WHERE name = ?1"),
                    [name],
                    connection_row,
                )
                .optional()
                .map_err(db_err)?;
            match rec {
                Some(mut rec) => {
                    load_credentials(c, &mut rec)?;
                    Ok(Some(rec))
                }
                None => Ok(None),
            }
        })
        .await
    }

    async fn list_connections(&self) -> Result<Vec<ConnectionRecord>> {
        self.read(|c| {
            let mut stmt =
                c.prepare(&format!("SELECT {CONNECTION_COLS} FROM connections ORDER BY name")).map_err(db_err)?;
            let mut out = stmt
                .query_map([], connection_row)
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            for rec in &mut out {
                load_credentials(c, rec)?;
            }
            Ok(out)
        })
        .await
    }

    async fn delete_connection(&self, name: &str) -> Result<()> {
        let name = name.to_string();
        self.write(move |c| {
            let n = c.execute("DELETE FROM connections WHERE name = ?1", [&name]).map_err(db_err)?;
            if n == 0 { Err(StoreError::NotFound(format!("connection {name:?}"))) } else { Ok(()) }
        })
        .await
    }

    async fn add_credential(&self, connection: &str, cred: CredentialRecord) -> Result<()> {
        let connection = connection.to_string();
        self.write(move |c| {
            let tx = c.transaction().map_err(db_err)?;
            let exists: bool = tx
                .query_row("SELECT EXISTS(SELECT 1 FROM connections WHERE name = ?1)", [&connection], |r| r.get(0))
                .map_err(db_err)?;
            if !exists {
                return Err(StoreError::NotFound(format!("connection {connection:?}")));
            }
            let position: i64 = tx
                .query_row("SELECT COALESCE(MAX(position), 0) + 1 FROM connection_credentials WHERE connection = ?1", [&connection], |r| r.get(0))
                .map_err(db_err)?;
            let (sk, sh, ss) = secret_cols(&cred.secret);
            tx.execute(
                "INSERT INTO connection_credentials (connection, name, position, groups_json, user_name, secret_kind, secret_header, secret_sealed, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![connection, cred.name, position, to_json(&cred.groups)?, cred.user, sk, sh, ss, cred.created_at],
            )
            .map_err(|e| if is_constraint(&e) { StoreError::Conflict(format!("credential {:?} of connection {connection:?}", cred.name)) } else { db_err(e) })?;
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn remove_credential(&self, connection: &str, credential: &str) -> Result<()> {
        let (connection, credential) = (connection.to_string(), credential.to_string());
        self.write(move |c| {
            let n = c
                .execute(
                    "DELETE FROM connection_credentials WHERE connection = ?1 AND name = ?2",
                    [&connection, &credential],
                )
                .map_err(db_err)?;
            if n == 0 {
                Err(StoreError::NotFound(format!("credential {credential:?} of connection {connection:?}")))
            } else {
                Ok(())
            }
        })
        .await
    }

    async fn put_policy(&self, text: &str, author: &str, now: i64) -> Result<i64> {
        let (text, author) = (text.to_string(), author.to_string());
        self.write(move |c| {
            let tx = c.transaction().map_err(db_err)?;
            let version: i64 =
                tx.query_row("SELECT COALESCE(MAX(version), 0) + 1 FROM policies", [], |r| r.get(0)).map_err(db_err)?;
            tx.execute(
                "INSERT INTO policies (version, text, author, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![version, text, author, now],
            )
            .map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            Ok(version)
        })
        .await
    }

    async fn current_policy(&self) -> Result<Option<PolicyVersion>> {
        self.read(|c| {
            c.query_row(
                "SELECT version, text, author, created_at FROM policies ORDER BY version DESC LIMIT 1",
                [],
                |r| Ok(PolicyVersion { version: r.get(0)?, text: r.get(1)?, author: r.get(2)?, created_at: r.get(3)? }),
            )
            .optional()
            .map_err(db_err)
        })
        .await
    }

    async fn append_audit(&self, batch: AuditBatch) -> Result<()> {
        self.write(move |c| append_audit_tx(c, &batch)).await
    }

    async fn append_audit_inline(&self, batch: &AuditBatch) -> Result<()> {
        append_audit_tx(&mut lock(&self.inner.writer), batch)
    }

    async fn last_event(&self) -> Result<Option<(i64, Vec<u8>)>> {
        self.read(|c| {
            c.query_row("SELECT seq, mac FROM audit_events ORDER BY seq DESC LIMIT 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(db_err)
        })
        .await
    }

    async fn events_after(&self, after: i64, limit: usize) -> Result<Vec<StoredEvent>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached("SELECT seq, ts, session_id, kind, payload, mac FROM audit_events WHERE seq > ?1 ORDER BY seq LIMIT ?2")
                .map_err(db_err)?;
            let rows = stmt.query_map(params![after, limit], event_row).map_err(db_err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
        })
        .await
    }

    async fn session_events(&self, session_id: &str) -> Result<Vec<StoredEvent>> {
        let id = session_id.to_string();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached("SELECT seq, ts, session_id, kind, payload, mac FROM audit_events WHERE session_id = ?1 ORDER BY seq")
                .map_err(db_err)?;
            let rows = stmt.query_map([id], event_row).map_err(db_err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
        })
        .await
    }

    async fn open_sessions(&self) -> Result<Vec<String>> {
        self.read(|c| {
            let mut stmt = c
                .prepare_cached("SELECT id FROM sessions WHERE ended_at IS NULL ORDER BY started_at")
                .map_err(db_err)?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(db_err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
        })
        .await
    }

    async fn list_sessions(&self, f: SessionFilter) -> Result<Vec<SessionRecord>> {
        let limit = i64::try_from(f.limit).unwrap_or(i64::MAX);
        self.read(move |c| {
            // Only the conditions asked for, written so that SQLite can seek an index: a
            // generic `?1 IS NULL OR …` form would make every page deep in the past scan from the
            // newest session.
            let mut conditions: Vec<&str> = vec![];
            let mut values: Vec<rusqlite::types::Value> = vec![];
            if let Some(identity) = f.identity {
                conditions.push("identity = ?");
                values.push(identity.into());
            }
            if let Some(connection) = f.connection {
                conditions.push("connection = ?");
                values.push(connection.into());
            }
            if let Some(protocol) = f.protocol {
                conditions.push("protocol = ?");
                values.push(protocol.into());
            }
            if let Some(since) = f.since {
                conditions.push("started_at >= ?");
                values.push(since.into());
            }
            match (f.before, f.before_id) {
                (Some(before), Some(id)) => {
                    conditions.push("started_at <= ? AND (started_at < ? OR id < ?)");
                    values.extend([before.into(), before.into(), id.into()]);
                }
                (Some(before), None) => {
                    conditions.push("started_at < ?");
                    values.push(before.into());
                }
                (None, _) => {}
            }
            // Each matches a partial index (migration V3), so a rare outcome is found without
            // reading every session.
            match f.outcome {
                Some(SessionOutcome::Denied) => conditions.push("denied > 0"),
                Some(SessionOutcome::Reviewed) => conditions.push("reviewed > 0"),
                Some(SessionOutcome::Masked) => conditions.push("masked > 0"),
                None => {}
            }
            let filter =
                if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
            values.push(limit.into());
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {SESSION_COLS} FROM sessions {filter} ORDER BY started_at DESC, id DESC LIMIT ?"
                ))
                .map_err(db_err)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(values), session_row).map_err(db_err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
        })
        .await
    }

    async fn get_session(&self, id: &str) -> Result<Option<SessionRecord>> {
        let id = id.to_string();
        self.read(move |c| {
            c.query_row(&format!("SELECT {SESSION_COLS} FROM sessions WHERE id = ?1"), [id], session_row)
                .optional()
                .map_err(db_err)
        })
        .await
    }

    async fn create_review(&self, review: &ReviewRecord) -> Result<()> {
        let review = review.clone();
        let body = to_json(&review)?;
        self.write(move |c| {
            c.execute(
                "INSERT INTO reviews (id, kind, status, requester, connection, digest, created_at, expires_at, \
                 grant_until, used_at, version, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    review.id,
                    review.kind.as_str(),
                    review.status.as_str(),
                    review.requester,
                    review.connection,
                    review.digest,
                    review.created_at,
                    review.expires_at,
                    review.grant_until,
                    review.used_at,
                    review.version,
                    body
                ],
            )
            .map_err(|e| {
                if is_constraint(&e) { StoreError::Conflict(format!("review {}", review.id)) } else { db_err(e) }
            })?;
            Ok(())
        })
        .await
    }

    async fn get_review(&self, id: &str) -> Result<Option<ReviewRecord>> {
        let id = id.to_string();
        self.read(move |c| {
            c.query_row("SELECT body FROM reviews WHERE id = ?1", [id], review_row).optional().map_err(db_err)
        })
        .await
    }

    async fn list_reviews(&self, f: ReviewFilter) -> Result<Vec<ReviewRecord>> {
        let limit = i64::try_from(f.limit).unwrap_or(i64::MAX);
        let status = f.status.map(ReviewStatus::as_str);
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT body FROM reviews WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR requester = ?2) \
                     ORDER BY created_at DESC, id DESC LIMIT ?3",
                )
                .map_err(db_err)?;
            let rows = stmt.query_map(params![status, f.requester, limit], review_row).map_err(db_err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
        })
        .await
    }

    async fn pending_review(
        &self,
        requester: &str,
        connection: &str,
        digest: &str,
        now: i64,
    ) -> Result<Option<ReviewRecord>> {
        let (requester, connection, digest) = (requester.to_string(), connection.to_string(), digest.to_string());
        self.read(move |c| {
            c.query_row(
                "SELECT body FROM reviews WHERE requester = ?1 AND connection = ?2 AND digest = ?3 AND kind = 'request' \
                 AND status = 'pending' AND expires_at > ?4 ORDER BY created_at LIMIT 1",
                params![requester, connection, digest, now],
                review_row,
            )
            .optional()
            .map_err(db_err)
        })
        .await
    }

    async fn update_review(&self, review: &ReviewRecord) -> Result<bool> {
        let mut next = review.clone();
        next.version += 1;
        self.write(move |c| store_review(c, &next)).await
    }

    async fn use_grant(
        &self,
        requester: &str,
        connection: &str,
        digest: &str,
        id: Option<&str>,
        now: i64,
    ) -> Result<Option<ReviewRecord>> {
        let (requester, connection, digest) = (requester.to_string(), connection.to_string(), digest.to_string());
        let id = id.map(str::to_string);
        self.write(move |c| {
            let found = c
                .query_row(
                    "SELECT body FROM reviews WHERE requester = ?1 AND connection = ?2 AND digest = ?3 \
                     AND kind = 'request' AND status = 'approved' AND used_at IS NULL AND grant_until > ?4 \
                     AND (?5 IS NULL OR id = ?5) ORDER BY created_at LIMIT 1",
                    params![requester, connection, digest, now, id],
                    review_row,
                )
                .optional()
                .map_err(db_err)?;
            let Some(mut review) = found else { return Ok(None) };
            review.used_at = Some(now);
            review.version += 1;
            Ok(store_review(c, &review)?.then_some(review))
        })
        .await
    }

    async fn expire_reviews(&self, now: i64) -> Result<Vec<ReviewRecord>> {
        self.write(move |c| {
            let due = {
                let mut stmt = c
                    .prepare_cached("SELECT body FROM reviews WHERE status = 'pending' AND expires_at <= ?1")
                    .map_err(db_err)?;
                let rows = stmt.query_map([now], review_row).map_err(db_err)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)?
            };
            let mut expired = Vec::with_capacity(due.len());
            for mut review in due {
                review.status = ReviewStatus::Expired;
                review.decided_at = Some(now);
                review.version += 1;
                if store_review(c, &review)? {
                    expired.push(review);
                }
            }
            Ok(expired)
        })
        .await
    }

    async fn active_access_grants(&self, now: i64) -> Result<Vec<ReviewRecord>> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT body FROM reviews WHERE kind = 'access' AND status = 'approved' AND grant_until > ?1",
                )
                .map_err(db_err)?;
            let rows = stmt.query_map([now], review_row).map_err(db_err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
        })
        .await
    }
}

fn review_row(row: &Row<'_>) -> rusqlite::Result<ReviewRecord> {
    from_json(&row.get::<_, String>(0)?)
}

/// Writes `review` (already at its new version) over the stored one at the version before.
fn store_review(c: &Connection, review: &ReviewRecord) -> Result<bool> {
    let body = to_json(review)?;
    let kind: &str = ReviewKind::as_str(review.kind);
    let n = c
        .execute(
            "UPDATE reviews SET kind = ?2, status = ?3, grant_until = ?4, used_at = ?5, version = ?6, body = ?7 \
             WHERE id = ?1 AND version = ?6 - 1",
            params![review.id, kind, review.status.as_str(), review.grant_until, review.used_at, review.version, body],
        )
        .map_err(db_err)?;
    Ok(n == 1)
}
