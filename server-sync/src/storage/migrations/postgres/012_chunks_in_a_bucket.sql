-- A server may keep attachments' bytes in an S3-compatible bucket (`--attachment-bucket`): a
-- chunk's row then records its arrival, and its `bytes` are NULL.
ALTER TABLE attachment_chunks ALTER COLUMN bytes DROP NOT NULL;
