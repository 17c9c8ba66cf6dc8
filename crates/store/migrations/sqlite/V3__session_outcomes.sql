-- What the console filters sessions by: how many requests were held for review, and how many
-- values were masked in results. Kept on the session row, as `requests` and `denied` are, so a
-- filtered page reads the sessions table only.
ALTER TABLE sessions ADD COLUMN reviewed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN masked INTEGER NOT NULL DEFAULT 0;
CREATE INDEX sessions_protocol ON sessions (protocol, started_at DESC);
-- Sessions with an outcome, newest first: a filter by a rare outcome reads only its matches.
CREATE INDEX sessions_denied ON sessions (started_at DESC, id DESC) WHERE denied > 0;
CREATE INDEX sessions_reviewed ON sessions (started_at DESC, id DESC) WHERE reviewed > 0;
CREATE INDEX sessions_masked ON sessions (started_at DESC, id DESC) WHERE masked > 0;
