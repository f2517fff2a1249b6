-- Audit lines by record, in blocks of 4,096 consecutive lines: a line's index entry lands in its
-- block's few dozen pages instead of on a random page of an index over every record, so a push
-- or pull of 1,000 records writes tens of index pages instead of a thousand. Finding a record's
-- lines looks in each block, newest first (`AUDIT_BLOCK_BITS` in sqlite.rs).
DROP INDEX audit_by_record;
CREATE INDEX audit_by_record_in_blocks ON audit (id >> 12, record_id);
