-- First syncs page through records in the order they were created, from the feed's head taken
-- when they begin, instead of in the order of their last change. A push moved each record it
-- wrote to the end of `records_by_seq_scope`, rewriting a random page of that index per
-- record (about a third of what a push of 1,000 edits wrote); a record's creation never moves.
-- Records from before keep their last change as their creation: any fixed position will do.
ALTER TABLE records ADD COLUMN created_seq INTEGER NOT NULL DEFAULT 0;
UPDATE records SET created_seq = updated_seq;
DROP INDEX records_by_seq_scope;
CREATE INDEX records_by_creation_scope ON records (created_seq, scope);
