-- A device restored from an older copy of its store sends new records under batch ids it used
-- before, and reads from behind what it pushed: each stored batch keeps a hash of its records,
-- so that only the same records get its answer again, and each device the highest outbox
-- position it pushed.
ALTER TABLE push_batches ADD COLUMN body_hash BLOB;
ALTER TABLE devices ADD COLUMN outbox_seq INTEGER;
