-- Attachments' bytes (photos, audio notes, signed forms), which records reference by SHA-256.
-- Each is kept under the scope of the record that references it: who may read the scope may
-- read it, and knowing a hash gives nothing in another scope. Bytes arrive in chunks of 1 MiB
-- (the last shorter); `complete` once every chunk is in and the whole matched its hash.
CREATE TABLE attachments (
    scope TEXT NOT NULL,
    sha256 BYTEA NOT NULL,
    size BIGINT NOT NULL,
    complete BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL,
    completed_at BIGINT,
    PRIMARY KEY (scope, sha256)
);

CREATE TABLE attachment_chunks (
    scope TEXT NOT NULL,
    sha256 BYTEA NOT NULL,
    chunk INTEGER NOT NULL,
    bytes BYTEA NOT NULL,
    PRIMARY KEY (scope, sha256, chunk)
);
