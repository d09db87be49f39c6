-- 004-nodes: every server process using this database records a heartbeat here, so that a node whose
-- bus is the in-process one can tell it is not alone (two such nodes would each fan out only to their
-- own sessions and silently lose live events): it then reports not ready (PROTOCOL.md §6, /readyz).
-- Rows expire; housekeeping deletes the expired ones.

CREATE TABLE nodes (
    node_id     TEXT    COLLATE "C" NOT NULL PRIMARY KEY,
    shared_bus  BOOLEAN NOT NULL,
    expires_at  BIGINT  NOT NULL
);

CREATE INDEX nodes_by_expiry ON nodes (expires_at);
