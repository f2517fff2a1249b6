//! Attachments' bytes and their state, in SQL (migration 14).

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::ChunkInBucket;
use crate::error::ServerError;
use crate::storage::{AttachmentState, ChunkStored, ListedAttachment, Result, StoredChunk, now_ms};

pub(super) fn attachment(
    conn: &Connection,
    scope: &str,
    sha256: &[u8; 32],
) -> Result<Option<AttachmentState>> {
    let row: Option<(i64, bool)> = conn
        .prepare_cached("SELECT size, complete FROM attachments WHERE scope = ?1 AND sha256 = ?2")?
        .query_row(params![scope, &sha256[..]], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    let Some((size, complete)) = row else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT chunk FROM attachment_chunks WHERE scope = ?1 AND sha256 = ?2 ORDER BY chunk",
    )?;
    let received = stmt
        .query_map(params![scope, &sha256[..]], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(AttachmentState {
        size: size as u64,
        received,
        complete,
    }))
}

pub(super) fn put_chunk(
    conn: &mut Connection,
    (scope, sha256): (&str, &[u8; 32]),
    size: u64,
    chunk: u32,
    bytes: Option<&[u8]>,
) -> Result<ChunkStored> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "INSERT INTO attachments (scope, sha256, size, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (scope, sha256) DO NOTHING",
        params![scope, &sha256[..], size as i64, now_ms()],
    )?;
    let held: i64 = tx.query_row(
        "SELECT size FROM attachments WHERE scope = ?1 AND sha256 = ?2",
        params![scope, &sha256[..]],
        |row| row.get(0),
    )?;
    if held as u64 != size {
        return Err(ServerError::Conflict(
            "the server holds this attachment with another size".into(),
        ));
    }
    let inserted = tx.execute(
        "INSERT INTO attachment_chunks (scope, sha256, chunk, bytes) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (scope, sha256, chunk) DO NOTHING",
        params![scope, &sha256[..], chunk, bytes],
    )?;
    tx.commit()?;
    Ok(if inserted == 1 {
        ChunkStored::New
    } else {
        ChunkStored::AlreadyHeld
    })
}

pub(super) fn chunk(
    conn: &Connection,
    scope: &str,
    sha256: &[u8; 32],
    chunk: u32,
) -> Result<Option<StoredChunk>> {
    let bytes: Option<Option<Vec<u8>>> = conn
        .prepare_cached(
            "SELECT bytes FROM attachment_chunks WHERE scope = ?1 AND sha256 = ?2 AND chunk = ?3",
        )?
        .query_row(params![scope, &sha256[..], chunk], |row| row.get(0))
        .optional()?;
    Ok(bytes.map(|bytes| bytes.map_or(StoredChunk::InBucket, StoredChunk::Bytes)))
}

pub(super) fn complete(conn: &Connection, scope: &str, sha256: &[u8; 32]) -> Result<()> {
    conn.execute(
        "UPDATE attachments SET complete = 1, completed_at = ?3
         WHERE scope = ?1 AND sha256 = ?2 AND complete = 0",
        params![scope, &sha256[..], now_ms()],
    )?;
    Ok(())
}

pub(super) fn delete(conn: &mut Connection, scope: &str, sha256: &[u8; 32]) -> Result<bool> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "DELETE FROM attachment_chunks WHERE scope = ?1 AND sha256 = ?2",
        params![scope, &sha256[..]],
    )?;
    let deleted = tx.execute(
        "DELETE FROM attachments WHERE scope = ?1 AND sha256 = ?2",
        params![scope, &sha256[..]],
    )?;
    tx.commit()?;
    Ok(deleted > 0)
}

pub(super) fn after(
    conn: &Connection,
    after: Option<(&str, &[u8; 32])>,
    limit: u32,
) -> Result<Vec<ListedAttachment>> {
    let (scope, sha256): (&str, &[u8]) = after.map_or(("", &[][..]), |(s, h)| (s, &h[..]));
    let mut stmt = conn.prepare_cached(
        "SELECT scope, sha256, size, created_at FROM attachments
         WHERE (scope, sha256) > (?1, ?2) ORDER BY scope, sha256 LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![scope, sha256, limit], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, Vec<u8>>(1)?,
            row.get::<_, i64>(2)?,
            row.get::<_, i64>(3)?,
        ))
    })?;
    rows.map(|row| {
        let (scope, sha256, size, created_at) = row?;
        Ok(ListedAttachment {
            scope,
            sha256: sha256
                .try_into()
                .map_err(|_| ServerError::Corrupt("an attachment's hash is not 32 bytes".into()))?,
            size: size as u64,
            created_at,
        })
    })
    .collect()
}

pub(super) fn chunks_in_bucket(
    conn: &Connection,
    after: Option<&ChunkInBucket>,
    limit: u32,
) -> Result<Vec<ChunkInBucket>> {
    let (scope, sha256, chunk): (&str, &[u8], i64) =
        after.map_or(("", &[][..], -1), |(s, h, c)| (s, &h[..], i64::from(*c)));
    let mut stmt = conn.prepare_cached(
        "SELECT scope, sha256, chunk FROM attachment_chunks
         WHERE bytes IS NULL AND (scope, sha256, chunk) > (?1, ?2, ?3)
         ORDER BY scope, sha256, chunk LIMIT ?4",
    )?;
    let rows = stmt.query_map(params![scope, sha256, chunk, limit], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, Vec<u8>>(1)?,
            row.get::<_, u32>(2)?,
        ))
    })?;
    rows.map(|row| {
        let (scope, sha256, chunk) = row?;
        let sha256 = sha256
            .try_into()
            .map_err(|_| ServerError::Corrupt("an attachment's hash is not 32 bytes".into()))?;
        Ok((scope, sha256, chunk))
    })
    .collect()
}

pub(super) fn keep_chunk_bytes(
    conn: &mut Connection,
    (scope, sha256, chunk): &ChunkInBucket,
    bytes: &[u8],
) -> Result<()> {
    conn.execute(
        "UPDATE attachment_chunks SET bytes = ?4 WHERE scope = ?1 AND sha256 = ?2 AND chunk = ?3",
        params![scope, &sha256[..], chunk, bytes],
    )?;
    Ok(())
}
