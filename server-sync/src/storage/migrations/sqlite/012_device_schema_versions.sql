-- The version of the app's schema each device last said it runs, for the device list.
ALTER TABLE devices ADD COLUMN schema_version INTEGER;
