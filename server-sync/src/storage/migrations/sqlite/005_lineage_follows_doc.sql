-- An instance from before lineages updates a record's document without its lineage, which then
-- no longer describes the document: it is dropped, and the next merge loads the document and
-- records a new one. (This release always writes both.)
CREATE TRIGGER records_lineage_follows_doc AFTER UPDATE OF doc ON records
WHEN NEW.lineage IS NOT NULL AND NEW.lineage IS OLD.lineage AND NEW.doc IS NOT OLD.doc
BEGIN
    UPDATE records SET lineage = NULL WHERE collection = NEW.collection AND id = NEW.id;
END;
