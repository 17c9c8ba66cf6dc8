-- Gatehouse store, PostgreSQL back-end, version 1. Same shape as the SQLite schema.
-- Times are Unix milliseconds.
CREATE TABLE identities (
    name            TEXT PRIMARY KEY,
    kind            TEXT NOT NULL CHECK (kind IN ('service', 'user')),
    groups_json     TEXT NOT NULL,
    token_hash      BYTEA UNIQUE,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT,
    last_used_at    BIGINT,
    token_rotated_at BIGINT
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
    secret_sealed   BYTEA,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);

CREATE TABLE connection_credentials (
    connection      TEXT NOT NULL REFERENCES connections(name) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    position        INTEGER NOT NULL,
    groups_json     TEXT NOT NULL,
    user_name       TEXT,
    secret_kind     TEXT,
    secret_header   TEXT,
    secret_sealed   BYTEA,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (connection, name)
);

CREATE TABLE policies (
    version         BIGINT PRIMARY KEY,
    text            TEXT NOT NULL,
    author          TEXT NOT NULL,
    created_at      BIGINT NOT NULL
);

CREATE TABLE sessions (
    id              TEXT PRIMARY KEY,
    identity        TEXT NOT NULL,
    identity_kind   TEXT NOT NULL,
    connection      TEXT,
    protocol        TEXT NOT NULL,
    client_addr     TEXT,
    started_at      BIGINT NOT NULL,
    ended_at        BIGINT,
    end_reason      TEXT,
    requests        BIGINT NOT NULL DEFAULT 0,
    denied          BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX sessions_started ON sessions (started_at DESC);
CREATE INDEX sessions_identity ON sessions (identity, started_at DESC);
CREATE INDEX sessions_connection ON sessions (connection, started_at DESC);

CREATE TABLE audit_events (
    seq             BIGINT PRIMARY KEY,
    ts              BIGINT NOT NULL,
    session_id      TEXT,
    kind            TEXT NOT NULL,
    payload         TEXT NOT NULL,
    mac             BYTEA NOT NULL
);
CREATE INDEX audit_events_session ON audit_events (session_id, seq);
