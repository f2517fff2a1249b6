//! Attachments on the device: the bytes a record's `attachment` field references, kept in the
//! store file in chunks (see migration 006), written in the same transaction as the reference,
//! read back as a stream so that a large recording is never held in memory whole, and stored
//! once however many records reference them.

use std::io::Read;
use std::path::Path;

use fieldsync_record::FieldType;
use fieldsync_record::attachment::AttachmentRef;
use rusqlite::{OptionalExtension, Transaction, params};
use sha2::{Digest, Sha256};

use super::{Store, now_ms, write};
use crate::error::{Error, Result};
use crate::subscription::ChangeOrigin;
use crate::value::Fields;

/// The size of each stored chunk but an attachment's last: large enough that a 200 MiB video
/// is 800 rows, small enough that reading one holds little memory.
pub const STORED_CHUNK_BYTES: usize = 256 * 1024;

/// Where an attachment's bytes come from.
#[derive(Debug, Clone, Copy)]
pub enum AttachmentSource<'a> {
    /// Bytes in memory.
    Bytes(&'a [u8]),
    /// A file, read in chunks (twice: once to hash it, once to store it).
    File(&'a Path),
}

impl Store {
    /// Stores `source`'s bytes and makes `collection/id`'s attachment field `field` reference
    /// them, in one transaction: the record never references bytes the store does not hold.
    /// `media_type` (`image/jpeg`) and `name` (`consent.jpg`) go into the reference. Bytes the
    /// store holds already (the same photo attached twice) are not stored again.
    pub fn attach(
        &self,
        collection: &str,
        id: &str,
        field: &str,
        source: AttachmentSource<'_>,
        media_type: &str,
        name: Option<&str>,
    ) -> Result<AttachmentRef> {
        let declared = self
            .schema()
            .collection(collection)?
            .field(collection, field)?;
        if declared.field_type != FieldType::Attachment {
            return Err(Error::WrongType {
                collection: collection.to_owned(),
                field: field.to_owned(),
                expected: FieldType::Attachment,
            });
        }
        let scope = self
            .get(collection, id)?
            .ok_or_else(|| Error::NotFound {
                collection: collection.to_owned(),
                id: id.to_owned(),
            })?
            .scope;
        let (sha256, size) = match source {
            AttachmentSource::Bytes(bytes) => (Sha256::digest(bytes).into(), bytes.len() as u64),
            AttachmentSource::File(path) => hash_file(path)?,
        };
        let reference = AttachmentRef {
            sha256,
            size,
            media_type: media_type.to_owned(),
            name: name.map(str::to_owned),
        };
        let value = reference.to_value();
        // Checked before anything is written: a bad media type or name fails here.
        crate::value::check_type(collection, field, declared, &value)?;
        let mut patch = Fields::new();
        patch.insert(field.to_owned(), value);
        let update = write::Write::Update {
            collection: collection.to_owned(),
            id: id.to_owned(),
            patch,
        };
        let changed = {
            let mut db = self.shared.lock()?;
            let (_, changed) = write::apply_with(&self.shared, &mut db, vec![update], |tx| {
                store_bytes(tx, &reference, source)?;
                tx.execute(
                    "INSERT INTO attachment_uploads (scope, sha256, queued_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (scope, sha256) DO NOTHING",
                    params![scope, &reference.sha256[..], now_ms()],
                )?;
                Ok(())
            })?;
            changed
        };
        self.shared
            .subscriptions
            .notify(&changed, ChangeOrigin::Local);
        Ok(reference)
    }

    /// Whether the store holds every byte `reference` names (it may not yet have downloaded
    /// them, or may have evicted them).
    pub fn has_attachment(&self, reference: &AttachmentRef) -> Result<bool> {
        let db = self.shared.lock()?;
        Ok(held(&db.conn, &reference.sha256)? == Some(reference.size))
    }

    /// The bytes `reference` names, as a stream read a chunk at a time, or `None` while the
    /// store does not hold them all.
    pub fn attachment(&self, reference: &AttachmentRef) -> Result<Option<AttachmentReader>> {
        if !self.has_attachment(reference)? {
            return Ok(None);
        }
        self.touch(&reference.sha256)?;
        Ok(Some(AttachmentReader {
            store: self.clone(),
            sha256: reference.sha256,
            next_chunk: 0,
            chunk: Vec::new(),
            at: 0,
            left: reference.size,
        }))
    }

    /// The bytes `reference` names, in memory; `None` while the store does not hold them all.
    /// For large attachments, prefer [`Store::attachment`] or [`Store::save_attachment`].
    pub fn attachment_bytes(&self, reference: &AttachmentRef) -> Result<Option<Vec<u8>>> {
        let Some(mut reader) = self.attachment(reference)? else {
            return Ok(None);
        };
        let mut bytes = Vec::with_capacity(usize::try_from(reference.size).unwrap_or(0));
        reader.read_to_end(&mut bytes).map_err(read_error)?;
        Ok(Some(bytes))
    }

    /// Writes the bytes `reference` names to the file `path` (created or replaced), a chunk at
    /// a time; false, writing nothing, while the store does not hold them all.
    pub fn save_attachment(&self, reference: &AttachmentRef, path: &Path) -> Result<bool> {
        let Some(mut reader) = self.attachment(reference)? else {
            return Ok(false);
        };
        let io = |err: std::io::Error| Error::Io(format!("writing the attachment: {}", err.kind()));
        let mut file = std::fs::File::create(path).map_err(io)?;
        std::io::copy(&mut reader, &mut file).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(true)
    }

    /// Marks the bytes as used now, for evicting the least recently used first.
    fn touch(&self, sha256: &[u8; 32]) -> Result<()> {
        let db = self.shared.lock()?;
        db.conn.execute(
            "UPDATE attachments SET used_at = ?2 WHERE sha256 = ?1",
            params![&sha256[..], now_ms()],
        )?;
        Ok(())
    }

    pub(crate) fn chunk(&self, sha256: &[u8; 32], chunk: u64) -> Result<Option<Vec<u8>>> {
        let db = self.shared.lock()?;
        Ok(db
            .conn
            .prepare_cached("SELECT bytes FROM attachment_chunks WHERE sha256 = ?1 AND chunk = ?2")?
            .query_row(params![&sha256[..], chunk as i64], |row| row.get(0))
            .optional()?)
    }
}

/// The bytes of an attachment, read from the store a chunk at a time.
pub struct AttachmentReader {
    store: Store,
    sha256: [u8; 32],
    next_chunk: u64,
    chunk: Vec<u8>,
    at: usize,
    /// Bytes not yet returned.
    left: u64,
}

impl std::fmt::Debug for AttachmentReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachmentReader")
            .field("left", &self.left)
            .finish_non_exhaustive()
    }
}

impl Read for AttachmentReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 || out.is_empty() {
            return Ok(0);
        }
        if self.at == self.chunk.len() {
            let chunk = self
                .store
                .chunk(&self.sha256, self.next_chunk)
                .map_err(std::io::Error::other)?
                // Evicted while being read.
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "the attachment's bytes are no longer in the store",
                    )
                })?;
            if chunk.is_empty() || chunk.len() as u64 > self.left {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "a stored attachment chunk has the wrong length",
                ));
            }
            self.chunk = chunk;
            self.at = 0;
            self.next_chunk += 1;
        }
        let n = out.len().min(self.chunk.len() - self.at);
        out[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        self.left -= n as u64;
        Ok(n)
    }
}

fn read_error(err: std::io::Error) -> Error {
    match err.kind() {
        std::io::ErrorKind::NotFound => Error::Io(err.to_string()),
        _ => Error::Corrupt(format!("reading an attachment: {err}")),
    }
}

/// How many bytes of `sha256` the store holds, if it has a row for them.
fn held(conn: &rusqlite::Connection, sha256: &[u8; 32]) -> Result<Option<u64>> {
    let stored: Option<(i64, i64)> = conn
        .prepare_cached(
            "SELECT a.size, coalesce(sum(length(c.bytes)), 0) FROM attachments a
             LEFT JOIN attachment_chunks c ON c.sha256 = a.sha256
             WHERE a.sha256 = ?1 GROUP BY a.size",
        )?
        .query_row([&sha256[..]], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    Ok(stored.map(|(_, bytes)| bytes as u64))
}

/// SHA-256 and length of the file at `path`, read in chunks.
fn hash_file(path: &Path) -> Result<([u8; 32], u64)> {
    let mut file = open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; STORED_CHUNK_BYTES];
    let mut size = 0u64;
    loop {
        let n = read_full(&mut file, &mut buffer)?;
        if n == 0 {
            return Ok((hasher.finalize().into(), size));
        }
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
}

/// Stores the bytes of `reference` from `source` unless the store holds them already.
fn store_bytes(
    tx: &Transaction<'_>,
    reference: &AttachmentRef,
    source: AttachmentSource<'_>,
) -> Result<()> {
    let now = now_ms();
    let inserted = tx.execute(
        "INSERT INTO attachments (sha256, size, stored_at, used_at) VALUES (?1, ?2, ?3, ?3)
         ON CONFLICT (sha256) DO NOTHING",
        params![&reference.sha256[..], reference.size as i64, now],
    )?;
    if inserted == 0 && held(tx, &reference.sha256)? == Some(reference.size) {
        return Ok(());
    }
    // Anything held before of these bytes (an interrupted download) is written again whole.
    tx.execute(
        "DELETE FROM attachment_chunks WHERE sha256 = ?1",
        [&reference.sha256[..]],
    )?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO attachment_chunks (sha256, chunk, bytes) VALUES (?1, ?2, ?3)",
    )?;
    let mut put = |index: usize, bytes: &[u8]| -> Result<()> {
        insert.execute(params![&reference.sha256[..], index as i64, bytes])?;
        Ok(())
    };
    match source {
        AttachmentSource::Bytes(bytes) => {
            for (index, chunk) in bytes.chunks(STORED_CHUNK_BYTES).enumerate() {
                put(index, chunk)?;
            }
        }
        AttachmentSource::File(path) => {
            // Hashed again as it is stored: a file that changed since it was hashed is refused
            // rather than stored under another content's hash.
            let mut file = open(path)?;
            let mut hasher = Sha256::new();
            let mut buffer = vec![0u8; STORED_CHUNK_BYTES];
            for index in 0.. {
                let n = read_full(&mut file, &mut buffer)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buffer[..n]);
                put(index, &buffer[..n])?;
            }
            if <[u8; 32]>::from(hasher.finalize()) != reference.sha256 {
                return Err(Error::Io(
                    "the attached file changed while it was being stored".into(),
                ));
            }
        }
    }
    Ok(())
}

fn open(path: &Path) -> Result<std::fs::File> {
    std::fs::File::open(path).map_err(|err| {
        Error::Io(format!(
            "the attachment's file cannot be read: {}",
            err.kind()
        ))
    })
}

/// Fills `buffer` as far as the file goes; the number of bytes read.
fn read_full(file: &mut std::fs::File, buffer: &mut [u8]) -> Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => {
                return Err(Error::Io(format!(
                    "the attachment's file cannot be read: {}",
                    err.kind()
                )));
            }
        }
    }
    Ok(filled)
}
