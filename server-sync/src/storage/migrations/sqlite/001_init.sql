-- Users, their devices and tokens, and their grants on scopes.
CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE devices (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users (id),
    name TEXT NOT NULL,
    -- The Automerge actor the device pushes as, bound by its first push.
    actor TEXT,
    created_at INTEGER NOT NULL,
    last_sync_at INTEGER,
    revoked_at INTEGER
);

-- A token is `fs_<id>_<secret>`; only the SHA-256 of the secret is kept.
CREATE TABLE tokens (
    id TEXT PRIMARY KEY NOT NULL,
    device_id INTEGER NOT NULL REFERENCES devices (id),
    secret_hash BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    revoked_at INTEGER
) WITHOUT ROWID;

CREATE TABLE grants (
    user_id INTEGER NOT NULL REFERENCES users (id),
    scope TEXT NOT NULL,
    access TEXT NOT NULL CHECK (access IN ('read', 'write')),
    PRIMARY KEY (user_id, scope)
) WITHOUT ROWID;

-- Each record's merged document, and the feed position of its last change.
CREATE TABLE records (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    scope TEXT NOT NULL,
    doc BLOB NOT NULL,
    fields TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    updated_seq INTEGER NOT NULL,
    PRIMARY KEY (collection, id)
);
CREATE INDEX records_by_scope_seq ON records (scope, updated_seq);

-- The change feed: what each accepted push brought to each record, in commit order.
CREATE TABLE feed (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    collection TEXT NOT NULL,
    record_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    device_id INTEGER NOT NULL,
    changes BLOB NOT NULL,
    committed_at INTEGER NOT NULL
);
CREATE INDEX feed_by_scope_seq ON feed (scope, seq);

-- Answers to pushes, so that a replayed batch gets the same answer and changes nothing.
CREATE TABLE push_batches (
    device_id INTEGER NOT NULL,
    batch_id TEXT NOT NULL,
    response BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (device_id, batch_id)
) WITHOUT ROWID;

-- Who pushed and pulled which records when. Append-only.
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    device_id INTEGER NOT NULL,
    action TEXT NOT NULL,
    collection TEXT NOT NULL,
    record_id TEXT NOT NULL,
    scope TEXT NOT NULL
);
CREATE INDEX audit_by_record ON audit (record_id, at);
CREATE INDEX audit_by_user ON audit (user_id, at);
CREATE TRIGGER audit_is_append_only_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_is_append_only_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
