-- First syncs page through records in feed order; with many readable scopes, walking this
-- index in order beats merging one range per scope and sorting on every page.
CREATE INDEX records_by_seq ON records (updated_seq);
