//! Record tables derived from the app schema: one table per collection with one column per
//! field, so that SQLite indexes and compares materialized values directly.
//!
//! Table `rec_<collection>` has the store's columns `_id`, `_doc` (the saved Automerge
//! document, or the record's first change, possibly followed by changes appended since),
//! `_doc_tail` (how many were appended), `_deleted`, `_created_at`, `_updated_at`, then one
//! column per declared field.
//! Names come from the validated schema (`[a-z][a-z0-9_]*`) and are always quoted.

use std::collections::BTreeSet;

use rusqlite::Transaction;

use crate::error::Result;
use crate::schema::{Collection, FieldType, Schema};

/// The SQL text for one collection, built once at open.
#[derive(Debug)]
pub(crate) struct TableSql {
    /// Field names in column order.
    pub fields: Vec<String>,
    /// Declared types, parallel to `fields`.
    pub types: Vec<FieldType>,
    /// Inserts a new row from the same values as `upsert`; fails on an existing `_id`.
    pub insert: String,
    /// Like `insert`, but does nothing on an existing `_id`.
    pub insert_new: String,
    /// Writes a whole row from the values `_id, _doc, _doc_tail, _deleted, _created_at,
    /// _updated_at, fields...` (see [`row_values`](super::read::row_values)).
    pub upsert: String,
    /// Selects `_doc, _doc_tail, _deleted, _created_at, fields...` of one `_id`.
    pub select_doc: String,
    /// Selects `_id, _deleted, _created_at, _updated_at, fields...`; append a WHERE clause.
    pub select: String,
    /// Selects `_id, _created_at, _updated_at, fields...`, for live records only (a query
    /// filters on `_deleted` and need not read it back); append a WHERE clause.
    pub select_live: String,
    /// Position in `fields` of the collection's scope field.
    pub scope_position: usize,
    /// The table's quoted name.
    pub table: String,
}

impl TableSql {
    /// Updates the row `?1`: `_doc = ?2, _doc_tail = ?3, _updated_at = ?4`, then `_deleted`
    /// when `set_deleted`, then the columns of `fields` (positions in [`TableSql::fields`]),
    /// numbered on from `?5`. SQLite rewrites the index entries of every column an update
    /// sets, changed or not: an update that sets only what changed leaves the others' index
    /// pages alone.
    pub(crate) fn update_sql(&self, set_deleted: bool, fields: &[usize]) -> String {
        let mut sql = format!(
            "UPDATE {} SET _doc = ?2, _doc_tail = ?3, _updated_at = ?4",
            self.table
        );
        let columns = set_deleted
            .then_some("_deleted")
            .into_iter()
            .chain(fields.iter().map(|&i| self.fields[i].as_str()));
        for (column, number) in columns.zip(5..) {
            sql.push_str(&format!(", \"{column}\" = ?{number}"));
        }
        sql.push_str(" WHERE _id = ?1");
        sql
    }
}

impl TableSql {
    /// Sets the text column `field` of the row `?1` to `?2` and `_updated_at` to `?3`: a
    /// keystroke, which leaves the document as it is (see `typing.rs`).
    pub(crate) fn typing_update(&self, field: &str) -> String {
        format!(
            "UPDATE {} SET \"{field}\" = ?2, _updated_at = ?3 WHERE _id = ?1",
            self.table
        )
    }
}

pub(crate) fn table_name(collection: &str) -> String {
    format!("\"rec_{collection}\"")
}

impl TableSql {
    pub(crate) fn new(name: &str, collection: &Collection) -> TableSql {
        let table = table_name(name);
        let fields: Vec<String> = collection.fields.keys().cloned().collect();
        let types = collection.fields.values().map(|f| f.field_type).collect();
        let quoted: Vec<String> = fields.iter().map(|f| format!("\"{f}\"")).collect();
        let columns = [
            "_id",
            "_doc",
            "_doc_tail",
            "_deleted",
            "_created_at",
            "_updated_at",
        ]
        .into_iter()
        .map(str::to_owned)
        .chain(quoted.iter().cloned())
        .collect::<Vec<_>>();
        let placeholders = (1..=columns.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>();
        let updates = columns[1..]
            .iter()
            .filter(|c| c.as_str() != "_created_at")
            .map(|c| format!("{c} = excluded.{c}"))
            .collect::<Vec<_>>();
        let insert = format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            columns.join(", "),
            placeholders.join(", ")
        );
        let insert_new = format!("{insert} ON CONFLICT(_id) DO NOTHING");
        let upsert = format!(
            "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT(_id) DO UPDATE SET {}",
            columns.join(", "),
            placeholders.join(", "),
            updates.join(", ")
        );
        let field_list = quoted.join(", ");
        let select =
            format!("SELECT _id, _deleted, _created_at, _updated_at, {field_list} FROM {table}");
        let select_live =
            format!("SELECT _id, _created_at, _updated_at, {field_list} FROM {table}");
        let scope_position = fields
            .iter()
            .position(|f| *f == collection.scope_field)
            .expect("a validated schema declares its scope field");
        let select_doc = format!(
            "SELECT _doc, _doc_tail, _deleted, _created_at, {field_list} FROM {table} WHERE _id = ?1"
        );
        TableSql {
            fields,
            types,
            insert,
            insert_new,
            upsert,
            select_doc,
            select,
            select_live,
            scope_position,
            table,
        }
    }
}

fn column_type(field_type: FieldType) -> &'static str {
    match field_type {
        FieldType::Integer | FieldType::Timestamp | FieldType::Boolean => "INTEGER",
        FieldType::Float => "REAL",
        FieldType::String
        | FieldType::Text
        | FieldType::Json
        | FieldType::Reference
        | FieldType::Attachment => "TEXT",
    }
}

/// Creates missing tables, columns and indexes, and drops indexes no longer declared.
pub(crate) fn sync_tables(tx: &Transaction<'_>, schema: &Schema) -> Result<()> {
    for (name, collection) in &schema.collections {
        let table = table_name(name);
        tx.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (
                _id TEXT PRIMARY KEY NOT NULL,
                _doc BLOB NOT NULL,
                _doc_tail INTEGER NOT NULL DEFAULT 0,
                _deleted INTEGER NOT NULL DEFAULT 0,
                _created_at INTEGER NOT NULL,
                _updated_at INTEGER NOT NULL
            )"
        ))?;
        let existing: BTreeSet<String> = tx
            .prepare("SELECT name FROM pragma_table_info(?1)")?
            .query_map([format!("rec_{name}")], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        for (field_name, field) in &collection.fields {
            if !existing.contains(field_name) {
                tx.execute_batch(&format!(
                    "ALTER TABLE {table} ADD COLUMN \"{field_name}\" {}",
                    column_type(field.field_type)
                ))?;
            }
        }
        sync_indexes(tx, name, collection)?;
    }
    Ok(())
}

/// Drops the indexes of every record table (a long first sync inserts faster without them,
/// see [`Store::suspend_indexes`](crate::Store)); [`rebuild_indexes`] or the next open puts
/// them back.
pub(crate) fn drop_indexes(tx: &Transaction<'_>, schema: &Schema) -> Result<()> {
    for name in schema.collections.keys() {
        for (index, _) in present_indexes(tx, name)? {
            tx.execute_batch(&format!("DROP INDEX \"{index}\""))?;
        }
    }
    Ok(())
}

/// The store's indexes on a collection's table, with their SQL.
fn present_indexes(tx: &Transaction<'_>, collection: &str) -> Result<Vec<(String, String)>> {
    let present = tx
        .prepare(
            "SELECT name, sql FROM sqlite_master
             WHERE type = 'index' AND tbl_name = ?1 AND name LIKE 'idx:%'",
        )?
        .query_map([format!("rec_{collection}")], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    Ok(present)
}

/// Creates every index the schema wants that is missing.
pub(crate) fn rebuild_indexes(tx: &Transaction<'_>, schema: &Schema) -> Result<()> {
    for (name, collection) in &schema.collections {
        sync_indexes(tx, name, collection)?;
    }
    Ok(())
}

/// The indexes a collection needs: the declared ones, plus one on the scope field (sync and
/// purge select by scope) and one per reference field (deletes look up referencing records),
/// unless a declared index already starts with that field.
fn wanted_indexes(name: &str, collection: &Collection) -> Vec<(String, Vec<String>)> {
    let mut wanted: Vec<(String, Vec<String>)> = collection
        .indexes
        .iter()
        .map(|index| (format!("idx:{name}:{}", index.name), index.fields.clone()))
        .collect();
    let leading: BTreeSet<String> = collection
        .indexes
        .iter()
        .map(|i| i.fields[0].clone())
        .collect();
    let mut implicit = vec![collection.scope_field.clone()];
    implicit.extend(
        collection
            .fields
            .iter()
            .filter(|(_, f)| f.field_type == FieldType::Reference)
            .map(|(n, _)| n.clone()),
    );
    for field in implicit {
        if !leading.contains(&field)
            && !wanted
                .iter()
                .any(|(n, _)| n.ends_with(&format!(":auto_{field}")))
        {
            wanted.push((format!("idx:{name}:auto_{field}"), vec![field]));
        }
    }
    wanted
}

fn sync_indexes(tx: &Transaction<'_>, name: &str, collection: &Collection) -> Result<()> {
    let table = table_name(name);
    let wanted: Vec<(String, String)> = wanted_indexes(name, collection)
        .into_iter()
        .map(|(index, fields)| {
            let columns: Vec<String> = fields
                .iter()
                .map(|f| format!("\"{f}\""))
                .chain(["_id".to_owned()])
                .collect();
            // Partial on live records: every query filters on `_deleted = 0`. Ending with
            // `_id` keeps the entries of equal values in id order, the order queries return
            // by default, so SQLite reads them in order instead of sorting them.
            let sql = format!(
                "CREATE INDEX \"{index}\" ON {table} ({}) WHERE _deleted = 0",
                columns.join(", ")
            );
            (index, sql)
        })
        .collect();
    let present = present_indexes(tx, name)?;
    for (index, sql) in &present {
        if !wanted.iter().any(|(n, s)| n == index && s == sql) {
            tx.execute_batch(&format!("DROP INDEX \"{index}\""))?;
        }
    }
    for (index, sql) in &wanted {
        if !present.iter().any(|(n, s)| n == index && s == sql) {
            tx.execute_batch(sql)?;
        }
    }
    Ok(())
}
