//! What the sync engine needs of the store's attachments: the queue of attachments to send
//! (filled by `Store::attach` in the same transaction as the bytes), their bytes by the
//! protocol's chunks, and the bookkeeping of downloads, chunk by chunk, so that both resume
//! where they stopped.

use fieldsync_record::attachment::AttachmentRef;
use fieldsync_record::protocol::ATTACHMENT_CHUNK_BYTES;
use fieldsync_record::{Collection, Download, FieldType};
use rusqlite::params;
use sha2::{Digest, Sha256};

use super::attachments::STORED_CHUNK_BYTES;
use super::{Store, now_ms};
use crate::error::{Error, Result};

/// Stored chunks in one chunk of the protocol.
const STORED_PER_SENT: u64 = (ATTACHMENT_CHUNK_BYTES / STORED_CHUNK_BYTES) as u64;

/// An attachment waiting to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueuedUpload {
    /// The scope it goes to.
    pub scope: String,
    /// Its SHA-256.
    pub sha256: [u8; 32],
    /// Its size.
    pub size: u64,
}

impl Store {
    /// Attachments waiting to be sent, with the scope they go to, oldest first.
    pub(crate) fn attachment_uploads(&self) -> Result<Vec<QueuedUpload>> {
        let db = self.shared.lock();
        let mut stmt = db.conn.prepare_cached(
            "SELECT u.scope, u.sha256, a.size FROM attachment_uploads u
             JOIN attachments a ON a.sha256 = u.sha256 ORDER BY u.queued_at, u.scope",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, Vec<u8>>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })?;
        rows.map(|row| {
            let (scope, sha256, size) = row?;
            Ok(QueuedUpload {
                scope,
                sha256: sha256.try_into().map_err(|_| {
                    Error::Corrupt("a queued attachment's hash is not 32 bytes".into())
                })?,
                size: size as u64,
            })
        })
        .collect()
    }

    /// Chunk `chunk` (of the protocol's size) of an attachment of `size` bytes, read from the
    /// stored chunks it spans.
    pub(crate) fn attachment_chunk_to_send(
        &self,
        sha256: &[u8; 32],
        size: u64,
        chunk: u64,
    ) -> Result<Vec<u8>> {
        let start = chunk * ATTACHMENT_CHUNK_BYTES as u64;
        let len = (size.saturating_sub(start)).min(ATTACHMENT_CHUNK_BYTES as u64) as usize;
        let mut bytes = Vec::with_capacity(len);
        let mut stored = chunk * STORED_PER_SENT;
        while bytes.len() < len {
            let piece = self.chunk(sha256, stored)?.ok_or_else(|| {
                Error::Corrupt("a queued attachment's bytes are missing from the store".into())
            })?;
            if piece.is_empty() || bytes.len() + piece.len() > len {
                return Err(Error::Corrupt(
                    "a stored attachment chunk has the wrong length".into(),
                ));
            }
            bytes.extend_from_slice(&piece);
            stored += 1;
        }
        Ok(bytes)
    }

    /// The server holds the attachment whole: it leaves the queue, and its bytes may be
    /// evicted from here.
    pub(crate) fn attachment_uploaded(&self, scope: &str, sha256: &[u8; 32]) -> Result<()> {
        let mut db = self.shared.lock();
        let tx = db.conn.transaction()?;
        tx.execute(
            "DELETE FROM attachment_uploads WHERE scope = ?1 AND sha256 = ?2",
            params![scope, &sha256[..]],
        )?;
        tx.execute(
            "UPDATE attachments SET on_server = 1 WHERE sha256 = ?1",
            [&sha256[..]],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The server refused the attachment (its scope is not the user's to write): it leaves the
    /// queue, and its bytes stay here, not known to be on the server.
    pub(crate) fn attachment_upload_refused(&self, scope: &str, sha256: &[u8; 32]) -> Result<()> {
        let db = self.shared.lock();
        db.conn.execute(
            "DELETE FROM attachment_uploads WHERE scope = ?1 AND sha256 = ?2",
            params![scope, &sha256[..]],
        )?;
        Ok(())
    }

    /// Attachments that eager fields of live records reference and the store does not hold
    /// whole, each with the scope of a record that references it.
    pub(crate) fn wanted_downloads(&self) -> Result<Vec<(String, AttachmentRef)>> {
        let mut wanted = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (name, collection) in &self.schema().collections {
            for (field, declared) in &collection.fields {
                if declared.field_type != FieldType::Attachment
                    || Collection::download(declared) != Download::Eager
                {
                    continue;
                }
                for (scope, reference) in
                    self.references_in(name, field, &collection.scope_field)?
                {
                    if seen.insert(reference.sha256) && !self.has_attachment(&reference)? {
                        wanted.push((scope, reference));
                    }
                }
            }
        }
        Ok(wanted)
    }

    /// The attachment references of `field` in live records of `collection`, with their scope.
    fn references_in(
        &self,
        collection: &str,
        field: &str,
        scope_field: &str,
    ) -> Result<Vec<(String, AttachmentRef)>> {
        let table = super::tables::table_name(collection);
        let db = self.shared.lock();
        // The names are the schema's identifiers, checked when it was declared.
        let mut stmt = db.conn.prepare_cached(&format!(
            "SELECT \"{scope_field}\", \"{field}\" FROM {table}
             WHERE _deleted = 0 AND \"{field}\" IS NOT NULL"
        ))?;
        let rows = stmt.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?;
        let mut references = Vec::new();
        for row in rows {
            let (scope, json) = row?;
            let value: serde_json::Value = serde_json::from_str(&json)
                .map_err(|_| Error::Corrupt("an attachment column does not hold JSON".into()))?;
            // Merged from elsewhere, a reference that does not read is not downloaded.
            if let Ok(reference) = AttachmentRef::from_value(&value) {
                references.push((scope, reference));
            }
        }
        Ok(references)
    }

    /// The chunks (of the protocol's size) the store holds of an attachment being downloaded.
    pub(crate) fn downloaded_chunks(&self, sha256: &[u8; 32]) -> Result<Vec<u64>> {
        let db = self.shared.lock();
        let mut stmt = db.conn.prepare_cached(
            "SELECT chunk FROM attachment_chunks WHERE sha256 = ?1 AND chunk % ?2 = 0
             ORDER BY chunk",
        )?;
        let per = STORED_PER_SENT as i64;
        let rows = stmt.query_map(params![&sha256[..], per], |row| row.get::<_, i64>(0))?;
        rows.map(|row| Ok(row? as u64 / STORED_PER_SENT)).collect()
    }

    /// Stores chunk `chunk` (of the protocol's size) of a downloaded attachment as the stored
    /// chunks it spans, in one transaction: a chunk is held whole or not at all.
    pub(crate) fn store_downloaded_chunk(
        &self,
        reference: &AttachmentRef,
        chunk: u64,
        bytes: &[u8],
    ) -> Result<()> {
        let mut db = self.shared.lock();
        let tx = db.conn.transaction()?;
        let now = now_ms();
        tx.execute(
            "INSERT INTO attachments (sha256, size, on_server, stored_at, used_at)
             VALUES (?1, ?2, 1, ?3, ?3) ON CONFLICT (sha256) DO NOTHING",
            params![&reference.sha256[..], reference.size as i64, now],
        )?;
        for (index, piece) in bytes.chunks(STORED_CHUNK_BYTES).enumerate() {
            tx.execute(
                "INSERT INTO attachment_chunks (sha256, chunk, bytes) VALUES (?1, ?2, ?3)
                 ON CONFLICT (sha256, chunk) DO UPDATE SET bytes = excluded.bytes",
                params![
                    &reference.sha256[..],
                    (chunk * STORED_PER_SENT + index as u64) as i64,
                    piece
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Checks a downloaded attachment whole against its hash; one that does not match is
    /// dropped, to be fetched again. True if it matched.
    pub(crate) fn check_download(&self, reference: &AttachmentRef) -> Result<bool> {
        let mut hasher = Sha256::new();
        let mut left = reference.size;
        let mut stored = 0;
        while left > 0 {
            let Some(piece) = self.chunk(&reference.sha256, stored)? else {
                return Ok(false);
            };
            hasher.update(&piece);
            left = left.saturating_sub(piece.len() as u64);
            stored += 1;
        }
        if <[u8; 32]>::from(hasher.finalize()) == reference.sha256 {
            return Ok(true);
        }
        let mut db = self.shared.lock();
        let tx = db.conn.transaction()?;
        tx.execute(
            "DELETE FROM attachment_chunks WHERE sha256 = ?1",
            [&reference.sha256[..]],
        )?;
        tx.execute(
            "DELETE FROM attachments WHERE sha256 = ?1",
            [&reference.sha256[..]],
        )?;
        tx.commit()?;
        Ok(false)
    }
}
