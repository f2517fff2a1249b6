//! Attachments' bytes and their state, in SQL (migration 11).

use postgres::Client;

use crate::error::ServerError;
use crate::storage::{AttachmentState, ChunkStored, ListedAttachment, Result, StoredChunk, now_ms};

pub(super) fn attachment(
    conn: &mut Client,
    scope: &str,
    sha256: &[u8; 32],
) -> Result<Option<AttachmentState>> {
    let sha256 = &sha256[..];
    let Some(row) = conn.query_opt(
        "SELECT size, complete FROM attachments WHERE scope = $1 AND sha256 = $2",
        &[&scope, &sha256],
    )?
    else {
        return Ok(None);
    };
    let received = conn
        .query(
            "SELECT chunk FROM attachment_chunks WHERE scope = $1 AND sha256 = $2 ORDER BY chunk",
            &[&scope, &sha256],
        )?
        .iter()
        .map(|row| row.get::<_, i32>(0) as u32)
        .collect();
    Ok(Some(AttachmentState {
        size: row.get::<_, i64>(0) as u64,
        received,
        complete: row.get(1),
    }))
}

pub(super) fn put_chunk(
    conn: &mut Client,
    (scope, sha256): (&str, &[u8; 32]),
    size: u64,
    chunk: u32,
    bytes: Option<&[u8]>,
) -> Result<ChunkStored> {
    let sha256 = &sha256[..];
    let size = size as i64;
    let chunk = chunk as i32;
    let mut tx = conn.transaction()?;
    tx.execute(
        "INSERT INTO attachments (scope, sha256, size, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (scope, sha256) DO NOTHING",
        &[&scope, &sha256, &size, &now_ms()],
    )?;
    let held: i64 = tx
        .query_one(
            "SELECT size FROM attachments WHERE scope = $1 AND sha256 = $2",
            &[&scope, &sha256],
        )?
        .get(0);
    if held != size {
        return Err(ServerError::Conflict(
            "the server holds this attachment with another size".into(),
        ));
    }
    let inserted = tx.execute(
        "INSERT INTO attachment_chunks (scope, sha256, chunk, bytes) VALUES ($1, $2, $3, $4)
         ON CONFLICT (scope, sha256, chunk) DO NOTHING",
        &[&scope, &sha256, &chunk, &bytes],
    )?;
    tx.commit()?;
    Ok(if inserted == 1 {
        ChunkStored::New
    } else {
        ChunkStored::AlreadyHeld
    })
}

pub(super) fn chunk(
    conn: &mut Client,
    scope: &str,
    sha256: &[u8; 32],
    chunk: u32,
) -> Result<Option<StoredChunk>> {
    Ok(conn
        .query_opt(
            "SELECT bytes FROM attachment_chunks WHERE scope = $1 AND sha256 = $2 AND chunk = $3",
            &[&scope, &&sha256[..], &(chunk as i32)],
        )?
        .map(|row| {
            row.get::<_, Option<Vec<u8>>>(0)
                .map_or(StoredChunk::InBucket, StoredChunk::Bytes)
        }))
}

pub(super) fn complete(conn: &mut Client, scope: &str, sha256: &[u8; 32]) -> Result<()> {
    conn.execute(
        "UPDATE attachments SET complete = TRUE, completed_at = $3
         WHERE scope = $1 AND sha256 = $2 AND NOT complete",
        &[&scope, &&sha256[..], &now_ms()],
    )?;
    Ok(())
}

pub(super) fn delete(conn: &mut Client, scope: &str, sha256: &[u8; 32]) -> Result<bool> {
    let sha256 = &sha256[..];
    let mut tx = conn.transaction()?;
    tx.execute(
        "DELETE FROM attachment_chunks WHERE scope = $1 AND sha256 = $2",
        &[&scope, &sha256],
    )?;
    let deleted = tx.execute(
        "DELETE FROM attachments WHERE scope = $1 AND sha256 = $2",
        &[&scope, &sha256],
    )?;
    tx.commit()?;
    Ok(deleted > 0)
}

pub(super) fn after(
    conn: &mut Client,
    after: Option<(&str, &[u8; 32])>,
    limit: u32,
) -> Result<Vec<ListedAttachment>> {
    let (scope, sha256): (&str, &[u8]) = after.map_or(("", &[][..]), |(s, h)| (s, &h[..]));
    // `COLLATE "C"`: byte order, as SQLite compares, whatever the database's locale.
    let rows = conn.query(
        "SELECT scope, sha256, size, created_at FROM attachments
         WHERE (scope COLLATE \"C\", sha256) > ($1, $2)
         ORDER BY scope COLLATE \"C\", sha256 LIMIT $3",
        &[&scope, &sha256, &i64::from(limit)],
    )?;
    rows.iter()
        .map(|row| {
            Ok(ListedAttachment {
                scope: row.get(0),
                sha256: row.get::<_, Vec<u8>>(1).try_into().map_err(|_| {
                    ServerError::Corrupt("an attachment's hash is not 32 bytes".into())
                })?,
                size: row.get::<_, i64>(2) as u64,
                created_at: row.get(3),
            })
        })
        .collect()
}
