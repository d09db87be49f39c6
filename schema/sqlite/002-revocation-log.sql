-- 002-revocation-log: what the "devices and accounts" issue needs the database to remember for a
-- while, and then forget. Why each shape:
-- * revocation_log lets every node and every process (relay admin commands too) learn of revocations
--   and deletions without the bus: nodes poll max(id), which is the end of the rowid b-tree, so it is
--   cheap. AUTOINCREMENT: an id is never reused, even after pruning, so a poller's "after" cursor
--   never skips an entry; pruning also keeps the newest entry, so max(id) never decreases. subject is
--   a keyed hash of the device or user id (label relay-revocation-log-v1), never the id itself;
-- * deleted_devices remembers the device ids of deleted accounts only as keyed hashes (label
--   relay-deleted-device-v1), until expires_at, so that they are answered account_deleted and not
--   unauthorized (PROTOCOL.md §5) while no row holds the ids themselves;
-- * nonces is the HTTP replay cache of PROTOCOL.md §3: each (device, nonce) pair until expires_at
--   (ts + clock_skew_ms). The nonce is kept as sent: it is public and proves nothing alone. Rows go
--   with their device (ON DELETE CASCADE, and delete_user deletes them explicitly too).
-- Each table has an index on its expiry for the batched pruning of purge_housekeeping.

CREATE TABLE revocation_log (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    kind     TEXT    NOT NULL CHECK (kind IN ('device_revoked', 'user_deleted')),
    subject  BLOB    NOT NULL,
    at       INTEGER NOT NULL
) STRICT;

CREATE INDEX revocation_log_by_time ON revocation_log (at);

CREATE TABLE deleted_devices (
    device_hash BLOB    NOT NULL PRIMARY KEY,
    expires_at  INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE INDEX deleted_devices_by_expiry ON deleted_devices (expires_at);

CREATE TABLE nonces (
    device_id  TEXT    NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    nonce      TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (device_id, nonce)
) STRICT, WITHOUT ROWID;

CREATE INDEX nonces_by_expiry ON nonces (expires_at);
