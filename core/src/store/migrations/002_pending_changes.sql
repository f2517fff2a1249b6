-- Remote changes whose dependencies have not arrived yet, kept aside until they do.
CREATE TABLE pending_changes (
    collection TEXT NOT NULL,
    record_id TEXT NOT NULL,
    hash BLOB NOT NULL,
    change BLOB NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (collection, record_id, hash)
) WITHOUT ROWID;
