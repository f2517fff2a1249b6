-- The devices that wrote each record, so that a pull names the people behind the actors of the
-- records it sends. Pushes add to it and an erasure, which drops a record's history, clears
-- it. Records written before it existed get the writers the feed still holds.
CREATE TABLE record_writers (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    device_id BIGINT NOT NULL,
    PRIMARY KEY (collection, id, device_id)
);
INSERT INTO record_writers (collection, id, device_id)
SELECT DISTINCT collection, record_id, device_id FROM feed WHERE device_id > 0
ON CONFLICT DO NOTHING;
-- A pull names a record's writers through their devices' actors.
CREATE INDEX device_actors_by_device ON device_actors (device_id);
