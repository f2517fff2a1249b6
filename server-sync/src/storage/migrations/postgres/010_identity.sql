-- People who sign in through the clinic's identity provider are found by the provider's
-- stable id for them (`sub`); their display name and email are kept as it last sent them.
-- Users created by an administrator have no subject.
ALTER TABLE users ADD COLUMN subject TEXT;
ALTER TABLE users ADD COLUMN display_name TEXT;
ALTER TABLE users ADD COLUMN email TEXT;
CREATE UNIQUE INDEX users_by_subject ON users (subject);
CREATE INDEX devices_by_user ON devices (user_id);

-- Every scope that holds a record, so that a grant on `caseload-*` finds its scopes without
-- reading every record. A record's scope never changes, so inserting records keeps it whole.
CREATE TABLE scopes (
    name TEXT PRIMARY KEY
);
INSERT INTO scopes (name) SELECT DISTINCT scope FROM records;
CREATE FUNCTION records_name_their_scope() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO scopes (name) VALUES (NEW.scope) ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;
CREATE TRIGGER records_name_their_scope AFTER INSERT ON records
FOR EACH ROW EXECUTE FUNCTION records_name_their_scope();

-- What the members of each group of the identity provider may read or write: `scopes` is a
-- scope, or a prefix followed by `*`.
CREATE TABLE group_grants (
    group_name TEXT NOT NULL,
    scopes TEXT NOT NULL,
    access TEXT NOT NULL CHECK (access IN ('read', 'write')),
    PRIMARY KEY (group_name, scopes)
);
