-- What the server knows of each record's Automerge history without loading its document
-- (MessagePack, see `Lineage` in storage.rs): lets a change that follows the stored document in
-- line be appended without a load. Rows written before have none until their next merge.
ALTER TABLE records ADD COLUMN lineage BLOB;
