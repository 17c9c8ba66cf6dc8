-- Reviews: pending approvals of one request or of time-bound group access, and their grants.
-- The record itself is `body` (JSON); the columns hold what is searched.
CREATE TABLE reviews (
    id              TEXT PRIMARY KEY,
    kind            TEXT NOT NULL CHECK (kind IN ('request', 'access')),
    status          TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'expired')),
    requester       TEXT NOT NULL,
    connection      TEXT,
    digest          TEXT,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    grant_until     BIGINT,
    used_at         BIGINT,
    version         BIGINT NOT NULL,
    body            JSONB NOT NULL
);
CREATE INDEX reviews_created ON reviews (created_at DESC);
CREATE INDEX reviews_status ON reviews (status, expires_at);
CREATE INDEX reviews_request ON reviews (requester, connection, digest);
