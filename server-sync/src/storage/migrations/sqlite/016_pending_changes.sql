-- How many local changes each device last said wait in its outbox (the
-- `fieldsync-pending-changes` header of its pushes and pulls), and when it said so, for the
-- device list. Both NULL until a device says.
ALTER TABLE devices ADD COLUMN pending_changes INTEGER;
ALTER TABLE devices ADD COLUMN pending_reported_at INTEGER;
