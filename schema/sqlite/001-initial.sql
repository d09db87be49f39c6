-- 001-initial: the first schema of the single-node relay (issue 3): accounts, devices, enrolment
-- tokens, streams and events. Why each shape:
-- * events keep their body as the RFC 8785 canonical TEXT that is compared for idempotency and spliced
--   into frames verbatim (never jsonb-like re-encoding), with its UTF-8 size for the byte quota;
-- * streams keep the head, so purging expired events never lowers it, and the latest expires_at of
--   any event appended (max_expires_at): the stream "holds unexpired events" exactly when that one is
--   unexpired, since only expired events are ever purged; listing and the stream quota use it;
-- * users keep held_bytes, the body bytes of their events still in the table (expired ones included
--   until purged): an upper bound of the unexpired bytes, so the exact sum is computed only near the
--   quota;
-- * a device's public key is unique across the server (revoked devices included) for as long as its
--   account exists; its name is unique per user among non-revoked devices by its name key;
-- * enrolment tokens are stored only as SHA-256 hashes.
-- The revocation log, the HTTP nonce cache and the keyed hashes of deleted devices come with the
-- issues that use them, as later migrations.

CREATE TABLE users (
    user_id     TEXT    NOT NULL PRIMARY KEY,
    created_at  INTEGER NOT NULL,
    held_bytes  INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE TABLE devices (
    device_id    TEXT    NOT NULL PRIMARY KEY,
    user_id      TEXT    NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    public_key   BLOB    NOT NULL UNIQUE,
    name         TEXT    NOT NULL,
    name_key     TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER,
    revoked_at   INTEGER
) STRICT;

CREATE INDEX devices_by_user ON devices (user_id, created_at);
CREATE UNIQUE INDEX devices_live_name ON devices (user_id, name_key) WHERE revoked_at IS NULL;

CREATE TABLE enrollment_tokens (
    token_hash  BLOB    NOT NULL PRIMARY KEY,
    user_id     TEXT    NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    issued_by   TEXT             REFERENCES devices (device_id) ON DELETE CASCADE,
    bound_key   BLOB,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER,
    voided_at   INTEGER
) STRICT;

CREATE INDEX enrollment_tokens_by_user ON enrollment_tokens (user_id);
CREATE INDEX enrollment_tokens_by_issuer ON enrollment_tokens (issued_by) WHERE issued_by IS NOT NULL;
CREATE INDEX enrollment_tokens_by_expiry ON enrollment_tokens (expires_at);

CREATE TABLE streams (
    user_id         TEXT    NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    name            TEXT    NOT NULL,
    head            INTEGER NOT NULL,
    last_written_at INTEGER NOT NULL,
    max_expires_at  INTEGER NOT NULL,
    PRIMARY KEY (user_id, name)
) STRICT, WITHOUT ROWID;

CREATE INDEX streams_by_liveness ON streams (user_id, max_expires_at);
CREATE INDEX streams_by_recency ON streams (user_id, last_written_at);

CREATE TABLE events (
    user_id     TEXT    NOT NULL,
    stream      TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    id          TEXT    NOT NULL,
    device_id   TEXT    NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    ts          INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    body        TEXT    NOT NULL,
    body_size   INTEGER NOT NULL,
    PRIMARY KEY (user_id, stream, seq),
    UNIQUE (device_id, id),
    FOREIGN KEY (user_id, stream) REFERENCES streams (user_id, name) ON DELETE CASCADE
) STRICT;

-- The purge walks expiry across all users; the byte quota sums one user's unexpired sizes (covering).
CREATE INDEX events_by_expiry ON events (expires_at);
CREATE INDEX events_by_user_expiry ON events (user_id, expires_at, body_size);
