-- 001-initial: the PostgreSQL twin of schema/sqlite/001-initial.sql (accounts, devices, enrolment tokens,
-- streams and events), for several relay nodes sharing one database. The same shapes, for the same
-- reasons (see that file); what PostgreSQL needs besides, and why:
-- * every text key is COLLATE "C": stream names list in byte order (PROTOCOL.md §4.4) whatever the
--   database's locale, and every node sorts user ids the same way, which is the order in which
--   transactions lock users' rows (relay/store/postgres_writer.py), so two nodes never deadlock;
-- * events keep their body as the RFC 8785 canonical TEXT (never jsonb, which would re-encode it),
--   with its UTF-8 size for the byte quota;
-- * streams.head is the row whose lock assigns seqs: an append increments it (INSERT ... ON CONFLICT
--   DO UPDATE ... RETURNING head) inside its transaction, so commit order is seq order, without gaps,
--   across nodes; purging events never lowers it;
-- * users.held_bytes also makes the user's row the lock of its account (append groups, enrolment,
--   revocation and deletion take it first), so quotas and device counts are exact under concurrency;
-- * PostgreSQL has no rowid: "ordinal" (insertion order) breaks ties of created_at, as SQLite's rowid
--   does, for listing users and devices oldest first;
-- * constraints are named, so that a unique violation says which rule it broke (name_taken,
--   key_in_use).

CREATE TABLE users (
    user_id     TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    created_at  BIGINT           NOT NULL,
    held_bytes  BIGINT           NOT NULL DEFAULT 0,
    ordinal     BIGINT           GENERATED ALWAYS AS IDENTITY
);

CREATE INDEX users_by_age ON users (created_at, ordinal);

CREATE TABLE devices (
    device_id    TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    user_id      TEXT COLLATE "C" NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    public_key   BYTEA            NOT NULL CONSTRAINT devices_public_key UNIQUE,
    name         TEXT             NOT NULL,
    name_key     TEXT COLLATE "C" NOT NULL,
    created_at   BIGINT           NOT NULL,
    last_seen_at BIGINT,
    revoked_at   BIGINT,
    ordinal      BIGINT           GENERATED ALWAYS AS IDENTITY
);

CREATE INDEX devices_by_user ON devices (user_id, created_at, ordinal);
CREATE UNIQUE INDEX devices_live_name ON devices (user_id, name_key) WHERE revoked_at IS NULL;

CREATE TABLE enrollment_tokens (
    token_hash  BYTEA            NOT NULL PRIMARY KEY,
    user_id     TEXT COLLATE "C" NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    issued_by   TEXT COLLATE "C"          REFERENCES devices (device_id) ON DELETE CASCADE,
    bound_key   BYTEA,
    created_at  BIGINT           NOT NULL,
    expires_at  BIGINT           NOT NULL,
    used_at     BIGINT,
    voided_at   BIGINT
);

CREATE INDEX enrollment_tokens_by_user ON enrollment_tokens (user_id);
CREATE INDEX enrollment_tokens_by_issuer ON enrollment_tokens (issued_by) WHERE issued_by IS NOT NULL;
CREATE INDEX enrollment_tokens_by_expiry ON enrollment_tokens (expires_at);

CREATE TABLE streams (
    user_id         TEXT COLLATE "C" NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    name            TEXT COLLATE "C" NOT NULL,
    head            BIGINT           NOT NULL,
    last_written_at BIGINT           NOT NULL,
    max_expires_at  BIGINT           NOT NULL,
    PRIMARY KEY (user_id, name)
);

CREATE INDEX streams_by_liveness ON streams (user_id, max_expires_at);
CREATE INDEX streams_by_recency ON streams (user_id, last_written_at);

CREATE TABLE events (
    user_id     TEXT COLLATE "C" NOT NULL,
    stream      TEXT COLLATE "C" NOT NULL,
    seq         BIGINT           NOT NULL,
    id          TEXT COLLATE "C" NOT NULL,
    device_id   TEXT COLLATE "C" NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    ts          BIGINT           NOT NULL,
    received_at BIGINT           NOT NULL,
    expires_at  BIGINT           NOT NULL,
    body        TEXT             NOT NULL,
    body_size   BIGINT           NOT NULL,
    PRIMARY KEY (user_id, stream, seq),
    CONSTRAINT events_device_event UNIQUE (device_id, id),
    FOREIGN KEY (user_id, stream) REFERENCES streams (user_id, name) ON DELETE CASCADE
);

-- The purge walks expiry across all users; the byte quota sums one user's unexpired sizes (covering).
CREATE INDEX events_by_expiry ON events (expires_at);
CREATE INDEX events_by_user_expiry ON events (user_id, expires_at) INCLUDE (body_size);
