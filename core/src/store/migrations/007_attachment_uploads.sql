-- Attachments stored here that the server does not hold yet, under the scope of the record
-- that references them: the sync sends them after the records' push, chunk by chunk, asking
-- the server first which chunks it has, so that an upload cut off resumes where it stopped.
CREATE TABLE attachment_uploads (
    scope TEXT NOT NULL,
    sha256 BLOB NOT NULL,
    queued_at INTEGER NOT NULL,
    PRIMARY KEY (scope, sha256)
) WITHOUT ROWID;
