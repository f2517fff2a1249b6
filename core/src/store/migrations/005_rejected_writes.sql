-- Writes the server refused, or that a revoked scope took away. The record returns to what the
-- server has; what the user wrote waits here, by field, for the app to retry or discard it.
CREATE TABLE rejected_writes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    collection TEXT NOT NULL,
    record_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    fields TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    created INTEGER NOT NULL,
    code TEXT NOT NULL,
    message TEXT NOT NULL,
    rejected_at INTEGER NOT NULL,
    -- 0 for records refused before writes were taken back: their documents still hold the
    -- refused changes, so pulled changes are never appended to them unread.
    reverted INTEGER NOT NULL DEFAULT 1
);

INSERT INTO rejected_writes
    (collection, record_id, scope, fields, deleted, created, code, message, rejected_at, reverted)
SELECT collection, record_id, scope, '{}', 0, 0, code, message, rejected_at, 0
FROM server_rejections ORDER BY rejected_at;

DROP TABLE server_rejections;
