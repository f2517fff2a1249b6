-- Attachments' bytes (photos, audio notes, signed forms), which records reference by SHA-256.
-- Each is kept under the scope of the record that references it: who may read the scope may
-- read it, and knowing a hash gives nothing in another scope. Bytes arrive in chunks of 1 MiB
-- (the last shorter); `complete` once every chunk is in and the whole matched its hash.
CREATE TABLE attachments (
    scope TEXT NOT NULL,
    sha256 BLOB NOT NULL,
    size INTEGER NOT NULL,
    complete INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    completed_at INTEGER,
    PRIMARY KEY (scope, sha256)
) WITHOUT ROWID;

-- A rowid table with its key in an index of its own: listing an attachment's chunks reads the
-- index only. As a WITHOUT ROWID table, every row listed was read whole, its 1 MiB included,
-- and a chunk's arrival (which lists those held) cost more with each chunk held.
CREATE TABLE attachment_chunks (
    scope TEXT NOT NULL,
    sha256 BLOB NOT NULL,
    chunk INTEGER NOT NULL,
    bytes BLOB NOT NULL
);
CREATE UNIQUE INDEX attachment_chunks_by_key ON attachment_chunks (scope, sha256, chunk);
