//! Typing: a run of keystrokes on one text field, made into one Automerge change.
//!
//! A keystroke ([`Store::splice_text`](crate::Store::splice_text)) commits the new text to its
//! record's row and the splice to the `typing` journal, and touches no document: its cost
//! depends on the note's length only through copying the text. The run's splices become one
//! change of the record's document when the run settles: before anything else reads or writes
//! documents or the outbox (every lock of the store but the row reads'), when another field is
//! typed into, and after [`KEYSTROKES_PER_CHANGE`] keystrokes. A note typed in one go is then
//! pushed as a few dozen changes rather than one per keystroke, its document keeps a short
//! history, and a crash loses nothing: the journal is in the file, and settles on the next
//! lock after opening.

use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde_json::Value;

use super::{Db, DocKey, Shared, Synchronous, read, write};
use crate::document::TextEdit;
use crate::error::{Error, Result};
use crate::schema::FieldType;
use crate::subscription::Changed;
use crate::value::Fields;

/// Keystrokes made into one change at most. Settling replays them into the document (about
/// 10 µs each) and saves it, so a run that settles while typing costs its keystroke some
/// milliseconds, once in this many.
pub(crate) const KEYSTROKES_PER_CHANGE: u32 = 1000;

/// The run being typed: which field, how many keystrokes the journal holds, and the record's
/// values as its row now holds them.
pub(super) struct TypingRun {
    key: DocKey,
    field: String,
    keystrokes: u32,
    /// Read from the row at the first keystroke after the store opened.
    fields: Option<Fields>,
}

/// One journaled splice, replayed into the document when its run settles.
pub(super) struct Keystroke {
    pub index: usize,
    pub delete: usize,
    pub insert: String,
}

/// The run the journal of a store just opened holds, if any.
pub(super) fn run_in_journal(conn: &rusqlite::Connection) -> Result<Option<TypingRun>> {
    let run = conn
        .query_row(
            "SELECT collection, record_id, field, count(*) FROM typing
             GROUP BY collection, record_id, field ORDER BY max(seq) DESC LIMIT 1",
            [],
            |row| {
                Ok(TypingRun {
                    key: (row.get(0)?, row.get(1)?),
                    field: row.get(2)?,
                    keystrokes: row.get(3)?,
                    fields: None,
                })
            },
        )
        .optional()?;
    Ok(run)
}

/// Applies one keystroke: checks it against the row's text, commits it to the row and the
/// journal, and settles the run once it is long enough. Returns what changed.
#[allow(clippy::too_many_arguments)]
pub(super) fn splice(
    shared: &Shared,
    db: &mut Db,
    collection: &str,
    id: &str,
    field: &str,
    index: usize,
    delete: usize,
    insert: &str,
) -> Result<Changed> {
    let decl = shared.schema.collection(collection)?;
    if decl.field(collection, field)?.field_type != FieldType::Text {
        return Err(Error::InvalidTextEdit {
            collection: collection.to_owned(),
            field: field.to_owned(),
            reason: "the field is not of type text".into(),
        });
    }
    let same_run =
        |run: &TypingRun| run.key.0 == collection && run.key.1 == id && run.field == field;
    if db.typing.as_ref().is_some_and(|run| !same_run(run)) {
        settle(shared, db)?;
    }
    let before = match db.typing.as_mut().and_then(|run| run.fields.take()) {
        Some(fields) => fields,
        None => {
            read::get(shared, &db.conn, collection, id)?
                .ok_or_else(|| Error::NotFound {
                    collection: collection.to_owned(),
                    id: id.to_owned(),
                })?
                .fields
        }
    };
    let text = before
        .get(field)
        .and_then(Value::as_str)
        .unwrap_or_default();
    let edit = TextEdit::check(text, collection, field, index, delete)?;
    let mut after = before.clone();
    after.insert(field.to_owned(), Value::String(edit.apply(text, insert)));
    let now = super::now_ms();
    commit_keystroke(
        shared,
        db,
        (collection, id, field),
        (index, delete, insert),
        &after,
        now,
    )?;
    let run = db.typing.get_or_insert_with(|| TypingRun {
        key: (collection.to_owned(), id.to_owned()),
        field: field.to_owned(),
        keystrokes: 0,
        fields: None,
    });
    run.keystrokes += 1;
    run.fields = Some(after.clone());
    if run.keystrokes >= KEYSTROKES_PER_CHANGE
        && let Err(err) = settle(shared, db)
    {
        // The keystroke is stored; the next lock settles the run or reports why it cannot.
        tracing::warn!(error = %err, "a run of keystrokes could not be made into a change");
    }
    Ok(super::changed(collection, id, Some(before), Some(after)))
}

/// Commits the row's new text and the journaled splice in one transaction, and asks the
/// checkpoint thread to flush the WAL. At [`Synchronous::Full`] the commit does not wait for
/// the disk: the flush follows within 50 ms, so a power cut loses at most the last moment's
/// keystrokes, and an app crash none.
fn commit_keystroke(
    shared: &Shared,
    db: &mut Db,
    (collection, id, field): (&str, &str, &str),
    (index, delete, insert): (usize, usize, &str),
    after: &Fields,
    now: i64,
) -> Result<()> {
    let table = shared.table(collection)?;
    let deferred = shared.options.synchronous == Synchronous::Full && db.checkpointer.is_some();
    if deferred {
        db.conn.pragma_update(None, "synchronous", "NORMAL")?;
    }
    let committed = (|| -> Result<()> {
        let tx = db
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.prepare_cached(
            "INSERT INTO typing (collection, record_id, field, position, deleted, inserted, typed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            collection,
            id,
            field,
            index as i64,
            delete as i64,
            insert,
            now
        ])?;
        tx.prepare_cached(&table.typing_update(field))?
            .execute(params![id, after[field].as_str(), now])?;
        tx.commit()?;
        Ok(())
    })();
    if deferred {
        db.conn.pragma_update(None, "synchronous", "FULL")?;
    }
    // At NORMAL too: a checkpoint flushes the WAL before copying it, and a flush of the
    // megabytes that fast typing leaves unflushed stalled the keystrokes meanwhile.
    if committed.is_ok()
        && let Some(checkpointer) = &db.checkpointer
    {
        checkpointer.flush_soon(&shared.wal_path);
    }
    committed
}

/// Makes the journal's keystrokes into changes of their records' documents, one per run, and
/// empties it. Nothing to do when no run is open.
pub(super) fn settle(shared: &Shared, db: &mut Db) -> Result<()> {
    if db.typing.is_none() {
        return Ok(());
    }
    let journal = read_journal(&db.conn)?;
    let mut start = 0;
    while start < journal.len() {
        let (key, field, _, _) = &journal[start];
        let end = journal[start..]
            .iter()
            .position(|(k, f, _, _)| k != key || f != field)
            .map_or(journal.len(), |offset| start + offset);
        let run = &journal[start..end];
        let keystrokes: Vec<&Keystroke> = run.iter().map(|(_, _, k, _)| k).collect();
        let typed_at = run.last().map_or(0, |(_, _, _, at)| *at);
        let last_seq = run.len() as i64;
        write::replay_typing(shared, db, key, field, &keystrokes, typed_at, |tx| {
            // The journal's oldest rows are this run's.
            tx.execute(
                "DELETE FROM typing WHERE seq IN
                     (SELECT seq FROM typing ORDER BY seq LIMIT ?1)",
                [last_seq],
            )?;
            Ok(())
        })?;
        start = end;
    }
    db.typing = None;
    Ok(())
}

type JournalRow = (DocKey, String, Keystroke, i64);

fn read_journal(conn: &rusqlite::Connection) -> Result<Vec<JournalRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT collection, record_id, field, position, deleted, inserted, typed_at
         FROM typing ORDER BY seq",
    )?;
    let rows = stmt.query_map([], |row| {
        let count = |i: usize| {
            row.get::<_, i64>(i)
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
        };
        Ok((
            (row.get(0)?, row.get(1)?),
            row.get(2)?,
            Keystroke {
                index: count(3)?,
                delete: count(4)?,
                insert: row.get(5)?,
            },
            row.get(6)?,
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

#[cfg(test)]
mod tests;
