-- 003-server-secrets: the server's secrets in the database (PostgreSQL only; SQLite keeps them as two
-- files in its data directory), because several nodes share one database and must share one server
-- key (what clients pin, PROTOCOL.md §4.1) and one token secret (replay tokens and keyed hashes signed
-- by one node are checked by another). One row per secret, each 32 random bytes made by the first
-- node that needs it: INSERT ... ON CONFLICT DO NOTHING, then SELECT, so nodes starting together agree
-- on whichever committed first. A secret is never replaced: a row of the wrong size stops the server.

CREATE TABLE server_secrets (
    name   TEXT  NOT NULL PRIMARY KEY CHECK (name IN ('server_key', 'token_secret')),
    secret BYTEA NOT NULL
);
