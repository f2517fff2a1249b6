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
        let db = self.shared.lock()?;
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
        let mut db = self.shared.lock()?;
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
        let db = self.shared.lock()?;
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
        let db = self.shared.lock()?;
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
        let db = self.shared.lock()?;
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
        let mut db = self.shared.lock()?;
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
        let mut db = self.shared.lock()?;
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

/// What [`Store::tidy_attachments`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttachmentsTidied {
    /// Attachments no record, refused write or queued upload references any more.
    pub unreferenced: usize,
    /// Attachments the server holds, evicted (least recently used first) to keep within the
    /// budget; fetched again when needed.
    pub evicted: usize,
    /// Bytes freed in all.
    pub bytes: u64,
}

impl Store {
    /// Removes the bytes of attachments nothing references any more (no live record, no
    /// refused write kept for the app, no queued upload), then evicts attachments the server
    /// holds, least recently used first, until those take at most
    /// [`StoreOptions::attachment_budget_bytes`](super::StoreOptions). Bytes the server does not
    /// hold are never evicted. The sync calls it after each sync.
    pub fn tidy_attachments(&self) -> Result<AttachmentsTidied> {
        // Most syncs of most apps hold no attachment: they need not read every record's
        // attachment fields to find that out.
        let any: bool = self.shared.lock()?.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM attachments)",
            [],
            |row| row.get(0),
        )?;
        if !any {
            return Ok(AttachmentsTidied::default());
        }
        let referenced = self.referenced_attachments()?;
        let budget = self.shared.options.attachment_budget_bytes;
        let mut db = self.shared.lock()?;
        let tx = db.conn.transaction()?;
        // Whole and on the server, nothing of it waiting to be sent: safe to evict.
        let on_server: std::collections::HashSet<[u8; 32]> = {
            let mut stmt = tx.prepare(
                "SELECT sha256 FROM attachments WHERE on_server = 1
                 AND sha256 NOT IN (SELECT sha256 FROM attachment_uploads)",
            )?;
            let rows = stmt.query_map([], |row| row.get::<_, Vec<u8>>(0))?;
            rows.filter_map(|row| row.ok()?.try_into().ok()).collect()
        };
        // Least recently used first.
        let mut held: Vec<([u8; 32], u64, bool)> = Vec::new();
        {
            let mut stmt =
                tx.prepare("SELECT sha256, size FROM attachments ORDER BY used_at, sha256")?;
            let rows = stmt.query_map([], |row| {
                Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, i64>(1)?))
            })?;
            for row in rows {
                let (sha256, size) = row?;
                let sha256: [u8; 32] = sha256
                    .try_into()
                    .map_err(|_| Error::Corrupt("an attachment's hash is not 32 bytes".into()))?;
                held.push((sha256, size as u64, on_server.contains(&sha256)));
            }
        }
        let mut tidied = AttachmentsTidied::default();
        let remove = |sha256: &[u8; 32]| -> Result<()> {
            tx.execute(
                "DELETE FROM attachment_chunks WHERE sha256 = ?1",
                [&sha256[..]],
            )?;
            tx.execute("DELETE FROM attachments WHERE sha256 = ?1", [&sha256[..]])?;
            Ok(())
        };
        let mut kept_on_server = 0u64;
        let mut evictable = Vec::new();
        for (sha256, size, safe) in &held {
            if !referenced.contains(sha256) {
                remove(sha256)?;
                tidied.unreferenced += 1;
                tidied.bytes += size;
            } else if *safe {
                kept_on_server += size;
                evictable.push((*sha256, *size));
            }
        }
        for (sha256, size) in evictable {
            if kept_on_server <= budget {
                break;
            }
            remove(&sha256)?;
            kept_on_server -= size;
            tidied.evicted += 1;
            tidied.bytes += size;
        }
        tx.commit()?;
        Ok(tidied)
    }

    /// How many more bytes of attachments the server holds fit the budget: eager fetches stop
    /// there, rather than fetch what the next tidying would evict.
    pub(crate) fn attachment_room(&self) -> Result<u64> {
        let db = self.shared.lock()?;
        let held: i64 = db.conn.query_row(
            "SELECT coalesce(sum(size), 0) FROM attachments WHERE on_server = 1",
            [],
            |row| row.get(0),
        )?;
        Ok(self
            .shared
            .options
            .attachment_budget_bytes
            .saturating_sub(held as u64))
    }

    /// Every attachment something still references: live records' attachment fields (of any
    /// download mode), refused writes kept for the app, and the upload queue.
    fn referenced_attachments(&self) -> Result<std::collections::HashSet<[u8; 32]>> {
        let mut referenced = std::collections::HashSet::new();
        for (name, collection) in &self.schema().collections {
            for (field, declared) in &collection.fields {
                if declared.field_type == FieldType::Attachment {
                    for (_, reference) in
                        self.references_in(name, field, &collection.scope_field)?
                    {
                        referenced.insert(reference.sha256);
                    }
                }
            }
        }
        let db = self.shared.lock()?;
        let mut stmt = db.conn.prepare("SELECT fields FROM rejected_writes")?;
        for fields in stmt.query_map([], |row| row.get::<_, String>(0))? {
            if let Ok(serde_json::Value::Object(fields)) = serde_json::from_str(&fields?) {
                for value in fields.values() {
                    if let Ok(reference) = AttachmentRef::from_value(value) {
                        referenced.insert(reference.sha256);
                    }
                }
            }
        }
        let mut stmt = db.conn.prepare("SELECT sha256 FROM attachment_uploads")?;
        for sha256 in stmt.query_map([], |row| row.get::<_, Vec<u8>>(0))? {
            if let Ok(sha256) = sha256?.try_into() {
                referenced.insert(sha256);
            }
        }
        Ok(referenced)
    }
}
