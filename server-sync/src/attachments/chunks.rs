//! Where attachments' chunk bytes are kept: in the server's database with the attachments'
//! state (the default), or in an S3-compatible bucket, the database then recording which
//! chunks arrived. Both ways, the database says what the server holds; the bucket only what
//! the bytes are.

use std::sync::Arc;

use axum::body::Bytes;

use super::bucket::Bucket;
use crate::error::ServerError;
use crate::http::blocking;
use crate::storage::sqlite::{ChunkInBucket, SqliteStorage};
use crate::storage::{ChunkStored, Storage, StoredChunk};

/// Where chunk bytes are kept.
pub enum ChunkStore {
    /// In the database, beside the attachments' state.
    Database,
    /// In a bucket: for clinics whose attachments outgrow one machine's disk.
    Bucket(Bucket),
}

/// An attachment: its scope and SHA-256.
pub type AttachmentKey = (String, [u8; 32]);

impl ChunkStore {
    /// Reaches the bucket, if the bytes are kept in one: a server finds a wrong endpoint,
    /// bucket or credentials as it starts rather than at the first upload.
    pub async fn check(&self) -> Result<(), ServerError> {
        match self {
            Self::Database => Ok(()),
            Self::Bucket(bucket) => bucket.check().await,
        }
    }

    /// Stores chunk `chunk` of the attachment `key` of `size` bytes: see
    /// [`Storage::put_attachment_chunk`].
    pub async fn put(
        &self,
        storage: &Arc<dyn Storage>,
        key: &AttachmentKey,
        size: u64,
        chunk: u32,
        bytes: Bytes,
    ) -> Result<ChunkStored, ServerError> {
        let (scope, sha256) = key.clone();
        let storage = storage.clone();
        let Self::Bucket(bucket) = self else {
            return blocking(move || {
                storage.put_attachment_chunk(&scope, &sha256, size, chunk, Some(&bytes))
            })
            .await;
        };
        // A chunk held already is not written again, nor one of another size's attachment.
        let held = {
            let (storage, scope) = (storage.clone(), scope.clone());
            blocking(move || storage.attachment(&scope, &sha256)).await?
        };
        if let Some(held) = held {
            if held.size != size {
                return Err(ServerError::Conflict(
                    "the server holds this attachment with another size".into(),
                ));
            }
            if held.received.contains(&chunk) {
                return Ok(ChunkStored::AlreadyHeld);
            }
        }
        // The bytes first: a chunk recorded is one the bucket holds.
        bucket.put(&object_key(key, chunk), bytes).await?;
        blocking(move || storage.put_attachment_chunk(&scope, &sha256, size, chunk, None)).await
    }

    /// The bytes of chunk `chunk` of the attachment `key`, if held.
    pub async fn get(
        &self,
        storage: &Arc<dyn Storage>,
        key: &AttachmentKey,
        chunk: u32,
    ) -> Result<Option<Bytes>, ServerError> {
        let stored = {
            let (storage, (scope, sha256)) = (storage.clone(), key.clone());
            blocking(move || storage.attachment_chunk(&scope, &sha256, chunk)).await?
        };
        match (stored, self) {
            (None, _) => Ok(None),
            (Some(StoredChunk::Bytes(bytes)), _) => Ok(Some(bytes.into())),
            (Some(StoredChunk::InBucket), Self::Bucket(bucket)) => bucket
                .get(&object_key(key, chunk))
                .await?
                .map(Some)
                .ok_or_else(|| {
                    ServerError::Corrupt(format!(
                        "chunk {chunk} of an attachment is missing from the bucket"
                    ))
                }),
            (Some(StoredChunk::InBucket), Self::Database) => Err(ServerError::Config(
                "attachments' bytes are in a bucket: start the server with --attachment-bucket"
                    .into(),
            )),
        }
    }

    /// Drops the attachment `key` and its chunks; false if the server held none.
    pub async fn delete(
        &self,
        storage: &Arc<dyn Storage>,
        key: &AttachmentKey,
    ) -> Result<bool, ServerError> {
        let (scope, sha256) = key.clone();
        let storage = storage.clone();
        if let Self::Bucket(bucket) = self {
            // The bucket first: a failure leaves the attachment listed, for the next
            // collection to drop, rather than bytes nothing lists.
            let held = {
                let (storage, scope) = (storage.clone(), scope.clone());
                blocking(move || storage.attachment(&scope, &sha256)).await?
            };
            for chunk in held.map(|held| held.received).unwrap_or_default() {
                bucket.delete(&object_key(key, chunk)).await?;
            }
        }
        blocking(move || storage.delete_attachment(&scope, &sha256)).await
    }
}

/// Copies into the SQLite database `backup` (a copy just written) the bytes of every chunk it
/// lists as in `bucket`, so that the backup holds every attachment whole; returns how many.
pub async fn copy_into_backup(
    backup: Arc<SqliteStorage>,
    bucket: &Bucket,
) -> Result<u64, ServerError> {
    let mut copied = 0;
    let mut after: Option<ChunkInBucket> = None;
    loop {
        let page = {
            let (backup, after) = (backup.clone(), after.clone());
            blocking(move || backup.chunks_in_bucket(after.as_ref(), 100)).await?
        };
        let Some(last) = page.last().cloned() else {
            return Ok(copied);
        };
        for listed in page {
            let (scope, sha256, chunk) = &listed;
            let key = (scope.clone(), *sha256);
            let bytes = bucket
                .get(&object_key(&key, *chunk))
                .await?
                .ok_or_else(|| {
                    ServerError::Corrupt(format!(
                        "chunk {chunk} of an attachment is missing from the bucket"
                    ))
                })?;
            let backup = backup.clone();
            blocking(move || backup.keep_chunk_bytes(&listed, &bytes)).await?;
            copied += 1;
        }
        after = Some(last);
    }
}

/// The bucket's key of a chunk (under the bucket's prefix): the scope in hex, so that any
/// scope name makes one path segment.
pub fn object_key((scope, sha256): &AttachmentKey, chunk: u32) -> String {
    format!(
        "{}/{}/{chunk}",
        hex::encode(scope.as_bytes()),
        hex::encode(sha256)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunks_key_is_one_segment_per_part_whatever_the_scope() {
        let key = ("clinic/north east".to_string(), [0xab; 32]);
        let object = object_key(&key, 7);
        let parts: Vec<&str> = object.split('/').collect();
        assert_eq!(parts.len(), 3, "{object}");
        assert_eq!(parts[0], hex::encode("clinic/north east"));
        assert_eq!(parts[1], "ab".repeat(32));
        assert_eq!(parts[2], "7");
    }
}
