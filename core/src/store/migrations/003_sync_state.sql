-- What the sync engine remembers between runs: the pull cursor, and records the server refused.

CREATE TABLE sync_state (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- A record stays local when the server refuses it; the app is told why.
CREATE TABLE server_rejections (
    collection TEXT NOT NULL,
    record_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    code TEXT NOT NULL,
    message TEXT NOT NULL,
    rejected_at INTEGER NOT NULL,
    PRIMARY KEY (collection, record_id)
) WITHOUT ROWID;
