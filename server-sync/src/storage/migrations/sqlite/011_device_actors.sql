-- Every actor a device has pushed as. A device whose store was restored from an older copy
-- takes a new actor; the ones it had stay its own, so that no other device can push as them.
-- Where a revoked device's actor was taken over, the live device keeps it.
CREATE TABLE device_actors (
    actor TEXT PRIMARY KEY,
    device_id INTEGER NOT NULL REFERENCES devices (id)
);
INSERT OR IGNORE INTO device_actors (actor, device_id)
SELECT actor, id FROM devices WHERE actor IS NOT NULL ORDER BY revoked_at IS NOT NULL, id;
