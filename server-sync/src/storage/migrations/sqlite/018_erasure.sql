-- Erasure: a record written again without erased content or any history starts a new epoch
-- (`records.epoch`, one more at each erasure). Every feed entry of the old epoch goes; the
-- entry that starts the new one holds its whole document in `changes`, and in `erased` what
-- was taken out (field names, `history` or `record`, never a value). Other entries keep
-- `erased` NULL and name the epoch they belong to.
ALTER TABLE records ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
ALTER TABLE feed ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
ALTER TABLE feed ADD COLUMN erased TEXT;
-- An erasure deletes a record's feed entries without reading the whole feed.
CREATE INDEX feed_by_record ON feed (collection, record_id);
-- What an audit line says beyond its action: an erasure's what and why.
ALTER TABLE audit ADD COLUMN detail TEXT;
