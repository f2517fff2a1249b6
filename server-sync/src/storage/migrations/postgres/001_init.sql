-- The same tables as the SQLite backend's (migrations/sqlite/), in PostgreSQL types.
-- Times are milliseconds since the epoch (BIGINT), as on SQLite.

-- Users, their devices and tokens, and their grants on scopes.
CREATE TABLE users (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE devices (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id),
    name TEXT NOT NULL,
    -- The Automerge actor the device pushes as, bound by its first push.
    actor TEXT,
    created_at BIGINT NOT NULL,
    last_sync_at BIGINT,
    revoked_at BIGINT
);

-- A token is `fs_<id>_<secret>`; only the SHA-256 of the secret is kept.
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    device_id BIGINT NOT NULL REFERENCES devices (id),
    secret_hash BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT
);

CREATE TABLE grants (
    user_id BIGINT NOT NULL REFERENCES users (id),
    scope TEXT NOT NULL,
    access TEXT NOT NULL CHECK (access IN ('read', 'write')),
    PRIMARY KEY (user_id, scope)
);

-- Each record's merged document, and the feed position of its last change.
CREATE TABLE records (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    scope TEXT NOT NULL,
    doc BYTEA NOT NULL,
    fields TEXT NOT NULL,
    deleted BOOLEAN NOT NULL,
    updated_seq BIGINT NOT NULL,
    PRIMARY KEY (collection, id)
);
CREATE INDEX records_by_scope_seq ON records (scope, updated_seq);
CREATE INDEX records_by_seq ON records (updated_seq);

-- The change feed: what each accepted push brought to each record, in commit order.
-- A push takes its positions only while it holds the feed lock, which it keeps until it
-- commits (see postgres.rs), so positions become visible in order.
CREATE TABLE feed (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    collection TEXT NOT NULL,
    record_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    device_id BIGINT NOT NULL,
    changes BYTEA NOT NULL,
    committed_at BIGINT NOT NULL
);
CREATE INDEX feed_by_scope_seq ON feed (scope, seq);

-- Answers to pushes, so that a replayed batch gets the same answer and changes nothing.
CREATE TABLE push_batches (
    device_id BIGINT NOT NULL,
    batch_id TEXT NOT NULL,
    response BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (device_id, batch_id)
);

-- Who pushed and pulled which records when. Append-only.
CREATE TABLE audit (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at BIGINT NOT NULL,
    user_id BIGINT NOT NULL,
    device_id BIGINT NOT NULL,
    action TEXT NOT NULL,
    collection TEXT NOT NULL,
    record_id TEXT NOT NULL,
    scope TEXT NOT NULL
);
CREATE INDEX audit_by_record ON audit (record_id, at);
CREATE INDEX audit_by_user ON audit (user_id, at);
CREATE FUNCTION audit_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END
$$;
CREATE TRIGGER audit_is_append_only_rows BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_is_append_only();
CREATE TRIGGER audit_is_append_only_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_is_append_only();
