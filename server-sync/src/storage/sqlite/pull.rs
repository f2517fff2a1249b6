//! What a pull reads from SQLite: feed pages and first syncs' document pages, and the
//! device's sync recorded.

use fieldsync_record::protocol::Author;
use rusqlite::{Connection, params, params_from_iter};

use super::{page_params, placeholders};
use crate::storage::{
    DocumentEntry, FeedEntry, Page, Result, decode_changes, listed_epoch, now_ms,
};

/// Feed entries after `?1` in `scopes` scopes (`?4`…), in order, at most `?2`; the second
/// column says whether device `?3` (or none, if null) pushed the entry, which then comes
/// without its changes and finds no record to join. The join's key is null for such an entry
/// so that SQLite skips the record lookup (a condition on the entry alone is only tested after
/// it): the pull after a device's push reads mostly its own entries.
pub(super) fn feed_page_sql(scopes: usize) -> String {
    format!(
        "SELECT f.seq, f.device_id IS ?3, f.collection, f.record_id, f.scope, f.device_id,
                CASE WHEN f.device_id IS NOT ?3 THEN f.changes END, r.fields, r.deleted,
                f.committed_at, f.epoch, f.erased
         FROM feed f INDEXED BY feed_by_seq_scope
         LEFT JOIN records r
           ON r.collection = CASE WHEN f.device_id IS NOT ?3 THEN f.collection END
              AND r.id = f.record_id AND r.updated_seq = f.seq
         WHERE f.seq > ?1 AND f.scope IN ({}) ORDER BY f.seq LIMIT ?2",
        placeholders(4, scopes)
    )
}

/// Records created after position `?1` and up to `?3` in `scopes` scopes (`?4`…), in that
/// order, at most `?2`.
pub(super) fn documents_page_sql(scopes: usize) -> String {
    format!(
        "SELECT created_seq, updated_seq, collection, id, scope, doc, fields, deleted, epoch
         FROM records INDEXED BY records_by_creation_scope
         WHERE created_seq > ?1 AND created_seq <= ?3 AND scope IN ({})
         ORDER BY created_seq LIMIT ?2",
        placeholders(4, scopes)
    )
}

pub(super) fn feed_page_in(
    conn: &Connection,
    reader: Option<i64>,
    scopes: &[String],
    after: i64,
    limit: u32,
) -> Result<Page<FeedEntry>> {
    if scopes.is_empty() {
        return Ok(Page::empty(after));
    }
    let mut stmt = conn.prepare_cached(&feed_page_sql(scopes.len()))?;
    let reader = reader.map_or(rusqlite::types::Value::Null, Into::into);
    let values = page_params(after, limit, &[reader], scopes);
    let mut rows = stmt.query(params_from_iter(values))?;
    let mut read = Vec::new();
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        if row.get::<_, bool>(1)? {
            read.push((seq, None));
            continue;
        }
        let latest = match row.get::<_, Option<String>>(7)? {
            Some(fields) => Some((fields, row.get::<_, Option<bool>>(8)?.unwrap_or(false))),
            None => None,
        };
        read.push((
            seq,
            Some(FeedEntry {
                seq,
                collection: row.get(2)?,
                record_id: row.get(3)?,
                scope: row.get(4)?,
                device_id: row.get(5)?,
                changes: decode_changes(&row.get::<_, Vec<u8>>(6)?)?,
                latest,
                committed_at: row.get(9)?,
                epoch: listed_epoch(row.get(10)?),
                erased: row.get(11)?,
            }),
        ));
    }
    Ok(Page::from_rows_leaving_out(read, after, limit))
}

pub(super) fn documents_page_in(
    conn: &Connection,
    scopes: &[String],
    after: i64,
    up_to: i64,
    limit: u32,
) -> Result<Page<DocumentEntry>> {
    if scopes.is_empty() {
        return Ok(Page::empty(after));
    }
    let mut stmt = conn.prepare_cached(&documents_page_sql(scopes.len()))?;
    let values = page_params(after, limit, &[up_to.into()], scopes);
    let rows = stmt.query_map(params_from_iter(values), |row| {
        Ok(DocumentEntry {
            created_seq: row.get(0)?,
            seq: row.get(1)?,
            collection: row.get(2)?,
            record_id: row.get(3)?,
            scope: row.get(4)?,
            doc: row.get(5)?,
            fields_json: row.get(6)?,
            deleted: row.get(7)?,
            epoch: listed_epoch(row.get(8)?),
        })
    })?;
    let entries = rows.collect::<Result<Vec<_>, _>>()?;
    Ok(Page::from_rows(entries, after, limit, |e| e.created_seq))
}

pub(super) fn record_pull_in(
    conn: &mut Connection,
    device_id: i64,
    records: &[(String, String, String)],
    (pending_changes, reached): (Option<i64>, i64),
) -> Result<()> {
    let tx = conn.transaction()?;
    let now = now_ms();
    let user_id: i64 = tx.query_row(
        "SELECT user_id FROM devices WHERE id = ?1",
        [device_id],
        |row| row.get(0),
    )?;
    for (collection, record_id, scope) in records {
        tx.prepare_cached(
            "INSERT INTO audit (at, user_id, device_id, action, collection, record_id, scope)
                 VALUES (?1, ?2, ?3, 'pull', ?4, ?5, ?6)",
        )?
        .execute(params![
            now, user_id, device_id, collection, record_id, scope
        ])?;
    }
    tx.execute(
        "UPDATE devices SET last_sync_at = ?2,
             pending_changes = coalesce(?3, pending_changes),
             pending_reported_at = CASE WHEN ?3 IS NULL THEN pending_reported_at ELSE ?2 END,
             feed_position = max(coalesce(feed_position, 0), ?4), feed_position_at = ?2
         WHERE id = ?1",
        params![device_id, now, pending_changes, reached],
    )?;
    tx.commit()?;
    Ok(())
}

/// Who wrote the records `keys` name (see [`crate::storage::Storage::authors_of`]).
pub(super) fn authors_in(conn: &Connection, keys: &[(&str, &str)]) -> Result<Vec<Author>> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.actor, coalesce(nullif(u.display_name, ''), u.name), d.name
         FROM record_writers w
         JOIN device_actors a ON a.device_id = w.device_id
         JOIN devices d ON d.id = w.device_id
         JOIN users u ON u.id = d.user_id
         WHERE w.collection = ?1 AND w.id = ?2",
    )?;
    let mut authors = std::collections::BTreeMap::new();
    for (collection, id) in keys {
        let rows = stmt.query_map(params![collection, id], |row| {
            Ok(Author {
                actor: row.get(0)?,
                user: row.get(1)?,
                device: row.get(2)?,
            })
        })?;
        for author in rows {
            let author = author?;
            authors.insert(author.actor.clone(), author);
        }
    }
    Ok(authors.into_values().collect())
}
