-- Gatehouse store, SQLite back-end, version 1. Times are Unix milliseconds.
CREATE TABLE identities (
    name            TEXT PRIMARY KEY,
    kind            TEXT NOT NULL CHECK (kind IN ('service', 'user')),
    groups_json     TEXT NOT NULL,
    token_hash      BLOB UNIQUE,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER,
    last_used_at    INTEGER,
    token_rotated_at INTEGER
);

CREATE TABLE connections (
    name            TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    host            TEXT,
    port            INTEGER,
    url             TEXT,
    database_name   TEXT,
    user_name       TEXT,
    tls_mode        TEXT NOT NULL,
    ca_file         TEXT,
    description     TEXT NOT NULL DEFAULT '',
    tags_json       TEXT NOT NULL DEFAULT '{}',
    mask_json       TEXT NOT NULL DEFAULT '[]',
    mask_columns_json TEXT NOT NULL DEFAULT '[]',
    secret_kind     TEXT,
    secret_header   TEXT,
    secret_sealed   BLOB,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

CREATE TABLE connection_credentials (
    connection      TEXT NOT NULL REFERENCES connections(name) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    position        INTEGER NOT NULL,
    groups_json     TEXT NOT NULL,
    user_name       TEXT,
    secret_kind     TEXT,
    secret_header   TEXT,
    secret_sealed   BLOB,
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (connection, name)
);

CREATE TABLE policies (
    version         INTEGER PRIMARY KEY,
    text            TEXT NOT NULL,
    author          TEXT NOT NULL,
    created_at      INTEGER NOT NULL
);

CREATE TABLE sessions (
    id              TEXT PRIMARY KEY,
    identity        TEXT NOT NULL,
    identity_kind   TEXT NOT NULL,
    connection      TEXT,
    protocol        TEXT NOT NULL,
    client_addr     TEXT,
    started_at      INTEGER NOT NULL,
    ended_at        INTEGER,
    end_reason      TEXT,
    requests        INTEGER NOT NULL DEFAULT 0,
    denied          INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX sessions_started ON sessions (started_at DESC);
CREATE INDEX sessions_identity ON sessions (identity, started_at DESC);
CREATE INDEX sessions_connection ON sessions (connection, started_at DESC);

-- Append-only: the audit writer inserts, nothing updates or deletes.
CREATE TABLE audit_events (
    seq             INTEGER PRIMARY KEY,
    ts              INTEGER NOT NULL,
    session_id      TEXT,
    kind            TEXT NOT NULL,
    payload         TEXT NOT NULL,
    mac             BLOB NOT NULL
);
CREATE INDEX audit_events_session ON audit_events (session_id, seq);
