-- The records API lists a collection's records in a scope by id.
CREATE INDEX records_by_collection_scope_id ON records (collection, scope, id);

-- Webhooks: URLs that receive, in order, the changes their owner (a service account) may
-- read. The feed is the queue: `cursor` is the position delivered up to, so a receiver that
-- is down gets everything after it once it is back. `lease_until` keeps two instances from
-- delivering one webhook at once; `next_attempt_at` spaces out retries after a failure.
CREATE TABLE webhooks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    user_id INTEGER NOT NULL REFERENCES users (id),
    cursor INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    failing_since INTEGER,
    last_error TEXT,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    lease_until INTEGER NOT NULL DEFAULT 0
);
