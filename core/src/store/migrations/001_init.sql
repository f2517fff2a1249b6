-- The store's own tables. Record tables (one per collection, `rec_<name>`) are derived from the
-- app's schema by tables.rs, not by these migrations.

-- Key/value facts about the file: the device id (Automerge actor) and the app schema.
CREATE TABLE meta (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- Local writes not yet acknowledged by the server, in write order: one Automerge change each,
-- or the saved document for a record's first write (is_document = 1).
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    collection TEXT NOT NULL,
    record_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    is_document INTEGER NOT NULL,
    payload BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
