-- The bytes of attachments (photos, audio notes, signed forms), which records reference by
-- SHA-256 and never hold. They are kept inside the store file, in chunks, so that SQLCipher
-- encrypts them with the records and a commit that wrote them survives a crash whole; the
-- same bytes referenced twice are stored once.
CREATE TABLE attachments (
    sha256 BLOB PRIMARY KEY NOT NULL,
    size INTEGER NOT NULL,
    -- 1 once the server holds every byte (uploaded from here, or downloaded from it): only
    -- then may the bytes be evicted from this device.
    on_server INTEGER NOT NULL DEFAULT 0,
    stored_at INTEGER NOT NULL,
    -- When the app last read them, for evicting the least recently used.
    used_at INTEGER NOT NULL
) WITHOUT ROWID;

-- Chunk `chunk` (from 0) of an attachment: 256 KiB each but the last. A rowid table with its
-- key in an index of its own, so that finding which chunks are held reads the index only (a
-- WITHOUT ROWID table's rows would be read whole, bytes included).
CREATE TABLE attachment_chunks (
    sha256 BLOB NOT NULL,
    chunk INTEGER NOT NULL,
    bytes BLOB NOT NULL
);
CREATE UNIQUE INDEX attachment_chunks_by_key ON attachment_chunks (sha256, chunk);
