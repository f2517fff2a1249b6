-- An instance from before lineages updates a record's document without its lineage, which then
-- no longer describes the document: it is dropped, and the next merge loads the document and
-- records a new one. (This release always writes both.)
CREATE FUNCTION records_lineage_follows_doc() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.doc IS DISTINCT FROM OLD.doc AND NEW.lineage IS NOT DISTINCT FROM OLD.lineage THEN
        NEW.lineage := NULL;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER records_lineage_follows_doc BEFORE UPDATE ON records
    FOR EACH ROW EXECUTE FUNCTION records_lineage_follows_doc();
