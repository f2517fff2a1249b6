-- A server may keep attachments' bytes in an S3-compatible bucket (`--attachment-bucket`): a
-- chunk's row then records its arrival, and its `bytes` are NULL. SQLite cannot drop a NOT
-- NULL constraint in place, so the table is copied.
CREATE TABLE attachment_chunks_with_bucket (
    scope TEXT NOT NULL,
    sha256 BLOB NOT NULL,
    chunk INTEGER NOT NULL,
    bytes BLOB
);
INSERT INTO attachment_chunks_with_bucket (scope, sha256, chunk, bytes)
    SELECT scope, sha256, chunk, bytes FROM attachment_chunks;
DROP TABLE attachment_chunks;
ALTER TABLE attachment_chunks_with_bucket RENAME TO attachment_chunks;
CREATE UNIQUE INDEX attachment_chunks_by_key ON attachment_chunks (scope, sha256, chunk);
