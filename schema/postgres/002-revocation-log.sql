-- 002-revocation-log: the PostgreSQL twin of schema/sqlite/002-revocation-log.sql: what the "devices and
-- accounts" issue needs the database to remember for a while, and then forget. The same shapes, for the
-- same reasons (see that file); what PostgreSQL needs besides, and why:
-- * revocation_log.id is max(id) + 1, taken under this table's EXCLUSIVE lock (which readers, ACCESS
--   SHARE, never wait for), held by the writer to its commit: ids come in commit order, so a poller
--   reading "id > after" never steps over an entry committed late (a sequence hands out ids in the
--   order transactions ask, not the order they commit), and without gaps (a sequence skips values
--   after a rollback or a crash), so a poller that sees a gap knows entries were pruned before it read
--   them. An id is never reused: pruning keeps the newest entry, so max(id) never decreases;
-- * subject is a keyed hash of the device or user id (label relay-revocation-log-v1), never the id;
-- * deleted_devices remembers the device ids of deleted accounts only as keyed hashes (label
--   relay-deleted-device-v1), until expires_at;
-- * nonces is the HTTP replay cache of PROTOCOL.md §3 (ON DELETE CASCADE with its device, and
--   delete_user deletes them explicitly too).
-- Each table has an index on its expiry for the batched pruning of purge_housekeeping.

CREATE TABLE revocation_log (
    id       BIGINT NOT NULL PRIMARY KEY,
    kind     TEXT   NOT NULL CHECK (kind IN ('device_revoked', 'user_deleted')),
    subject  BYTEA  NOT NULL,
    at       BIGINT NOT NULL
);

CREATE INDEX revocation_log_by_time ON revocation_log (at);

CREATE TABLE deleted_devices (
    device_hash BYTEA  NOT NULL PRIMARY KEY,
    expires_at  BIGINT NOT NULL
);

CREATE INDEX deleted_devices_by_expiry ON deleted_devices (expires_at);

CREATE TABLE nonces (
    device_id  TEXT COLLATE "C" NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    nonce      TEXT COLLATE "C" NOT NULL,
    expires_at BIGINT           NOT NULL,
    PRIMARY KEY (device_id, nonce)
);

CREATE INDEX nonces_by_expiry ON nonces (expires_at);
