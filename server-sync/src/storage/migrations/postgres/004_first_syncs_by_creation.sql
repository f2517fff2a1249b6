-- First syncs page through records in the order they were created, from the feed's head taken
-- when they begin, instead of in the order of their last change: a record's creation never
-- moves, so a push no longer rewrites two index entries per record it changes. Records from
-- before keep their last change as their creation: any fixed position will do.
ALTER TABLE records ADD COLUMN created_seq BIGINT;
UPDATE records SET created_seq = updated_seq;
ALTER TABLE records ALTER COLUMN created_seq SET NOT NULL;
-- Instances from before this step, still running while an upgrade replaces them, insert
-- records without it: their position then is their creation.
CREATE FUNCTION records_created_seq_from_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.created_seq := NEW.updated_seq;
    RETURN NEW;
END;
$$;
CREATE TRIGGER records_created_seq_from_insert BEFORE INSERT ON records
    FOR EACH ROW WHEN (NEW.created_seq IS NULL)
    EXECUTE FUNCTION records_created_seq_from_insert();
DROP INDEX records_by_scope_seq;
DROP INDEX records_by_seq;
CREATE INDEX records_by_creation_scope ON records (created_seq, scope);
