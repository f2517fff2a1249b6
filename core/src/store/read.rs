//! Reads: records by id, queries, counts, orphans, and documents for the write paths.

use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};
use rusqlite::{Connection, OptionalExtension, Row};

use super::{CachedDoc, Shared};
use crate::error::{Error, Result};
use crate::query::{self, Filter, Query};
use crate::store::tables::{TableSql, table_name};
use crate::value::{self, Fields};

/// A live record as queries return it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// Collection of the record.
    pub collection: String,
    /// Record id.
    pub id: String,
    /// The record's scope (the value of its collection's scope field).
    pub scope: String,
    /// Declared fields that have a value.
    pub fields: Fields,
    /// When the record was first stored on this device (ms since the Unix epoch).
    pub created_at_ms: i64,
    /// When the record last changed on this device, locally or by merge.
    pub updated_at_ms: i64,
}

/// A live record whose reference field points at a deleted or absent record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Orphan {
    /// Id of the referencing record.
    pub id: String,
    /// Its reference field.
    pub field: String,
    /// The id it points at.
    pub target_id: String,
}

pub(super) fn get(
    shared: &Shared,
    conn: &Connection,
    collection: &str,
    id: &str,
) -> Result<Option<Record>> {
    let table = shared.table(collection)?;
    let sql = format!("{} WHERE _id = ?1 AND _deleted = 0", table.select_live);
    let mut stmt = conn.prepare_cached(&sql)?;
    let record = stmt
        .query_row([id], |row| Ok(row_to_record(collection, table, row)))
        .optional()?;
    record.transpose()
}

pub(super) fn query(
    shared: &Shared,
    conn: &Connection,
    collection: &str,
    query: &Query,
) -> Result<Vec<Record>> {
    let table = shared.table(collection)?;
    let (sql, params) = query_statement(shared, collection, query)?;
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(params.iter()), |row| {
        Ok(row_to_record(collection, table, row))
    })?;
    let mut records = Vec::new();
    for row in rows {
        records.push(row??);
    }
    Ok(records)
}

/// The statement [`query`] runs for `query` and its parameters, built in one place so that
/// [`query_plan`] explains exactly that statement.
fn query_statement(
    shared: &Shared,
    collection: &str,
    query: &Query,
) -> Result<(String, Vec<SqlValue>)> {
    let table = shared.table(collection)?;
    let decl = shared.schema.collection(collection)?;
    let mut filter = query::compile_filter(collection, decl, &query.filter)?;
    let order = query::compile_order(collection, decl, &query.order)?;
    let limit = query.limit.map_or(-1, |l| l.min(i64::MAX as u64) as i64);
    filter.params.push(SqlValue::Integer(limit));
    filter
        .params
        .push(SqlValue::Integer(query.offset.min(i64::MAX as u64) as i64));
    let n = filter.params.len();
    let sql = format!(
        "{} WHERE _deleted = 0 AND {} ORDER BY {order} LIMIT ?{} OFFSET ?{n}",
        table.select_live,
        filter.sql,
        n - 1
    );
    Ok((sql, filter.params))
}

/// The steps of SQLite's `EXPLAIN QUERY PLAN` for the statement [`query`] runs, in the order
/// SQLite lists them.
pub(super) fn query_plan(
    shared: &Shared,
    conn: &Connection,
    collection: &str,
    query: &Query,
) -> Result<Vec<String>> {
    let (sql, params) = query_statement(shared, collection, query)?;
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
    let steps = stmt
        .query_map(rusqlite::params_from_iter(params.iter()), |row| row.get(3))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(steps)
}

pub(super) fn count(
    shared: &Shared,
    conn: &Connection,
    collection: &str,
    filter: &Filter,
) -> Result<u64> {
    let table = shared.table(collection)?;
    let decl = shared.schema.collection(collection)?;
    let filter = query::compile_filter(collection, decl, filter)?;
    let sql = format!(
        "SELECT count(*) FROM {} WHERE _deleted = 0 AND {}",
        table.table, filter.sql
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let count: i64 = stmt.query_row(rusqlite::params_from_iter(filter.params.iter()), |row| {
        row.get(0)
    })?;
    Ok(count as u64)
}

pub(super) fn orphans(shared: &Shared, conn: &Connection, collection: &str) -> Result<Vec<Orphan>> {
    let table = shared.table(collection)?;
    let decl = shared.schema.collection(collection)?;
    let mut orphans = Vec::new();
    for (field, declared) in &decl.fields {
        let Some(target) = declared.target.as_deref() else {
            continue;
        };
        let sql = format!(
            "SELECT r._id, r.\"{field}\" FROM {} r WHERE r._deleted = 0 AND r.\"{field}\" IS NOT NULL
             AND NOT EXISTS (SELECT 1 FROM {} t WHERE t._id = r.\"{field}\" AND t._deleted = 0)
             ORDER BY r._id",
            table.table,
            table_name(target)
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map([], |row| {
            Ok(Orphan {
                id: row.get(0)?,
                field: field.clone(),
                target_id: row.get(1)?,
            })
        })?;
        for row in rows {
            orphans.push(row?);
        }
    }
    Ok(orphans)
}

/// Loads a record's document and row facts from the file; `None` if there is no such row.
pub(super) fn load_cached_doc(
    shared: &Shared,
    conn: &Connection,
    collection: &str,
    id: &str,
) -> Result<Option<CachedDoc>> {
    read_doc_row(shared, conn, collection, id)?
        .map(|row| row.load(shared, collection))
        .transpose()
}

/// A record's stored document and row, read but not yet loaded.
pub(super) struct DocRow {
    pub bytes: Vec<u8>,
    pub tail: u32,
    pub deleted: bool,
    pub created_at: i64,
    pub fields: Result<Fields>,
}

/// Reads what [`DocRow::load`] turns into a loaded document: the database part of
/// [`load_cached_doc`].
pub(super) fn read_doc_row(
    shared: &Shared,
    conn: &Connection,
    collection: &str,
    id: &str,
) -> Result<Option<DocRow>> {
    let table = shared.table(collection)?;
    let mut stmt = conn.prepare_cached(&table.select_doc)?;
    Ok(stmt
        .query_row([id], |row| {
            Ok(DocRow {
                bytes: row.get(0)?,
                tail: row.get(1)?,
                deleted: row.get(2)?,
                created_at: row.get(3)?,
                fields: read_fields(table, row, 4),
            })
        })
        .optional()?)
}

impl DocRow {
    /// Loads the document: the CPU part of [`load_cached_doc`], which needs no connection.
    pub(super) fn load(self, shared: &Shared, collection: &str) -> Result<CachedDoc> {
        let fields = self.fields?;
        let scope = scope_of(shared.table(collection)?, &fields)?;
        let doc = crate::document::load_doc(&self.bytes, &shared.actor())?;
        let compact_next = self.tail > 0 || !crate::stored::starts_with_saved_document(&self.bytes);
        Ok(CachedDoc {
            doc,
            fields,
            scope,
            created_at: self.created_at,
            deleted: self.deleted,
            stored: self.bytes,
            tail: self.tail,
            compact_next,
        })
    }
}

/// Every record (live or deleted) of a scope: its id, and its values when live.
pub(super) fn records_in_scope(
    shared: &Shared,
    conn: &Connection,
    collection: &str,
    scope_field: &str,
    scope: &str,
) -> Result<Vec<(String, Option<Fields>)>> {
    let table = shared.table(collection)?;
    let sql = format!("{} WHERE \"{scope_field}\" = ?1", table.select);
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([scope], |row| {
        let deleted: bool = row.get(1)?;
        Ok((
            row.get::<_, String>(0)?,
            deleted,
            read_fields(table, row, 4),
        ))
    })?;
    let mut records = Vec::new();
    for row in rows {
        let (id, deleted, fields) = row?;
        records.push((id, if deleted { None } else { Some(fields?) }));
    }
    Ok(records)
}

/// Ids of live records of `collection` whose `field` holds `target_id`.
pub(super) fn referencing(
    shared: &Shared,
    conn: &Connection,
    collection: &str,
    field: &str,
    target_id: &str,
) -> Result<Vec<String>> {
    let table = shared.table(collection)?;
    let sql = format!(
        "SELECT _id FROM {} WHERE \"{field}\" = ?1 AND _deleted = 0 ORDER BY _id",
        table.table
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let ids = stmt.query_map([target_id], |row| row.get(0))?;
    Ok(ids.collect::<Result<_, _>>()?)
}

/// A record from a row of [`TableSql::select_live`].
fn row_to_record(collection: &str, table: &TableSql, row: &Row<'_>) -> Result<Record> {
    let fields = read_fields(table, row, 3)?;
    Ok(Record {
        collection: collection.to_owned(),
        id: row.get(0)?,
        scope: scope_of(table, &fields)?,
        fields,
        created_at_ms: row.get(1)?,
        updated_at_ms: row.get(2)?,
    })
}

pub(super) fn scope_of(table: &TableSql, fields: &Fields) -> Result<String> {
    fields
        .get(&table.fields[table.scope_position])
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .ok_or_else(|| Error::Corrupt("a record has no scope".into()))
}

/// The declared fields from the row's columns starting at `first`; unset fields are left out.
fn read_fields(table: &TableSql, row: &Row<'_>, first: usize) -> Result<Fields> {
    let mut fields = Fields::new();
    for (i, (name, field_type)) in table.fields.iter().zip(&table.types).enumerate() {
        let value = value::from_sql(*field_type, row.get_ref(first + i)?)?;
        if !value.is_null() {
            fields.insert(name.clone(), value);
        }
    }
    Ok(fields)
}

/// What one row of a record table holds, for [`row_values`].
pub(super) struct RowData<'a> {
    pub id: &'a str,
    /// The stored document bytes (a whole save, then any appended changes).
    pub stored: &'a [u8],
    pub tail: u32,
    pub deleted: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub fields: &'a Fields,
}

impl CachedDoc {
    pub(super) fn row<'a>(&'a self, id: &'a str, updated_at: i64) -> RowData<'a> {
        RowData {
            id,
            stored: &self.stored,
            tail: self.tail,
            deleted: self.deleted,
            created_at: self.created_at,
            updated_at,
            fields: &self.fields,
        }
    }
}

/// The values `upsert` takes: `_id, _doc, _doc_tail, _deleted, _created_at, _updated_at,
/// fields...`.
/// Rewrites the existing row `row.id`, which held `before` (its values) and `was_deleted`:
/// the document columns always, `_deleted` and the fields only where they changed (see
/// [`TableSql::update_sql`]).
pub(super) fn update_row(
    conn: &Connection,
    table: &TableSql,
    row: &RowData<'_>,
    before: &Fields,
    was_deleted: bool,
) -> Result<()> {
    let set_deleted = row.deleted != was_deleted;
    let changed: Vec<usize> = table
        .fields
        .iter()
        .enumerate()
        .filter(|(_, name)| row.fields.get(*name) != before.get(*name))
        .map(|(position, _)| position)
        .collect();
    let mut values: Vec<ToSqlOutput<'_>> = vec![
        ToSqlOutput::Borrowed(ValueRef::Text(row.id.as_bytes())),
        ToSqlOutput::Borrowed(ValueRef::Blob(row.stored)),
        ToSqlOutput::Owned(SqlValue::Integer(i64::from(row.tail))),
        ToSqlOutput::Owned(SqlValue::Integer(row.updated_at)),
    ];
    if set_deleted {
        values.push(ToSqlOutput::Owned(SqlValue::Integer(i64::from(
            row.deleted,
        ))));
    }
    for &position in &changed {
        let value = row
            .fields
            .get(&table.fields[position])
            .unwrap_or(&serde_json::Value::Null);
        values.push(value::to_sql_output(table.types[position], value));
    }
    conn.prepare_cached(&table.update_sql(set_deleted, &changed))?
        .execute(rusqlite::params_from_iter(values))?;
    Ok(())
}

pub(super) fn row_values<'a>(table: &TableSql, row: &RowData<'a>) -> Vec<ToSqlOutput<'a>> {
    let mut values = Vec::with_capacity(6 + table.fields.len());
    values.push(ToSqlOutput::Borrowed(ValueRef::Text(row.id.as_bytes())));
    values.push(ToSqlOutput::Borrowed(ValueRef::Blob(row.stored)));
    values.push(ToSqlOutput::Owned(SqlValue::Integer(i64::from(row.tail))));
    values.push(ToSqlOutput::Owned(SqlValue::Integer(i64::from(
        row.deleted,
    ))));
    values.push(ToSqlOutput::Owned(SqlValue::Integer(row.created_at)));
    values.push(ToSqlOutput::Owned(SqlValue::Integer(row.updated_at)));
    for (name, field_type) in table.fields.iter().zip(&table.types) {
        let value = row.fields.get(name).unwrap_or(&serde_json::Value::Null);
        values.push(value::to_sql_output(*field_type, value));
    }
    values
}

/// The person and device the server named as writing as `actor`, if a sync named them.
pub(super) fn author(conn: &Connection, actor: &str) -> Result<Option<crate::protocol::Author>> {
    Ok(conn
        .prepare_cached("SELECT user_name, device_name FROM authors WHERE actor = ?1")?
        .query_row([actor], |row| {
            Ok(crate::protocol::Author {
                actor: actor.to_owned(),
                user: row.get(0)?,
                device: row.get(1)?,
            })
        })
        .optional()?)
}
