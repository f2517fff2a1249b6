//! A scalar update encoded as an Automerge change without loading the record's document, when
//! the record is stored as changes only (a new record's first change and the changes appended
//! to it, see [`crate::stored`]): what the change builds on is read from those changes.
//!
//! Loading a document builds Automerge's whole op set, and putting a value into it, committing
//! and saving cost as much again; together they were most of an update of a record not in
//! memory. The change made here is the one Automerge would make for the same puts on the
//! loaded document, byte for byte (the tests compare them).

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU64;

use automerge::{ActorId, Change, ExpandedChange, ScalarValue, hydrate, legacy};

use crate::chunks;
use crate::document::to_hydrate;
use crate::schema::{Collection, FieldType};
use crate::value::Fields;

/// Chunk types of a change, plain and compressed (after the 4 magic bytes and the checksum).
const CHANGE_CHUNK: u8 = 1;
const COMPRESSED_CHANGE_CHUNK: u8 = 2;

/// What a scalar update of a record stored as changes comes to.
#[derive(Debug, PartialEq, Eq)]
pub enum ColdUpdate {
    /// The update's change, to append to the stored changes.
    Change(Vec<u8>),
    /// Every value is the one the record holds: no change, as Automerge makes none.
    Unchanged,
}

/// The change putting each value of `patch` at the document's root, written by `actor` at
/// `time_ms` on top of `stored` (changes only). `None` when that cannot be done without the
/// document: `stored` holds a saved document or does not parse, a value is null, text or
/// nested, or a key holds something other than plain scalars (an object or a counter).
pub fn scalar_update(
    stored: &[u8],
    actor: &ActorId,
    collection: &Collection,
    patch: &Fields,
    time_ms: i64,
) -> Option<ColdUpdate> {
    let mut puts = Vec::with_capacity(patch.len());
    for (name, value) in patch {
        let field_type = collection.fields.get(name)?.field_type;
        if value.is_null() || field_type == FieldType::Text || value.is_array() || value.is_object()
        {
            return None;
        }
        let hydrate::Value::Scalar(scalar) = to_hydrate(field_type, value) else {
            return None;
        };
        puts.push((name, scalar));
    }
    // Stored bytes can be damaged on disk, and Automerge panics on some malformed input: the
    // document's load then reports it.
    let base = std::panic::catch_unwind(|| Base::read(stored, actor)).ok()??;
    let mut operations = Vec::with_capacity(puts.len());
    for (name, scalar) in puts {
        let mut current = base.current(name)?;
        // As Automerge does: a value already there is not put again, but the values it won
        // over in a conflict are deleted.
        let action = match current.last() {
            Some((_, winner)) if *winner == scalar && current.len() == 1 => continue,
            Some((_, winner)) if *winner == scalar => {
                current.pop();
                legacy::OpType::Delete
            }
            _ => legacy::OpType::Put(scalar),
        };
        operations.push(legacy::Op {
            action,
            obj: legacy::ObjectId::Root,
            key: legacy::Key::Map(name.as_str().into()),
            pred: current
                .into_iter()
                .map(|(id, _)| id)
                .collect::<Vec<_>>()
                .into(),
            insert: false,
        });
    }
    if operations.is_empty() {
        return Some(ColdUpdate::Unchanged);
    }
    let change = ExpandedChange {
        operations,
        actor_id: actor.clone(),
        hash: None,
        seq: base.seq,
        start_op: NonZeroU64::new(base.max_op + 1)?,
        time: time_ms,
        message: None,
        deps: base.heads,
        extra_bytes: Vec::new(),
        author: None,
    };
    Some(ColdUpdate::Change(
        Change::from(change).raw_bytes().to_vec(),
    ))
}

/// What a new change of the document builds on.
struct Base {
    /// The new change's dependencies: the heads, and its actor's previous change.
    heads: Vec<automerge::ChangeHash>,
    max_op: u64,
    /// The new change's sequence number for its actor.
    seq: u64,
    /// For each root key, the operations that wrote a value there, with the value when it is
    /// a plain scalar (not an object, a counter or an increment of one).
    root: HashMap<String, Vec<(legacy::OpId, Option<ScalarValue>)>>,
    /// Every operation some later operation overwrote or deleted.
    overwritten: HashSet<legacy::OpId>,
}

impl Base {
    fn read(stored: &[u8], actor: &ActorId) -> Option<Base> {
        let parts = chunks::split(stored);
        if parts.iter().map(|part| part.len()).sum::<usize>() != stored.len() {
            return None;
        }
        let mut base = Base {
            heads: Vec::new(),
            max_op: 0,
            seq: 1,
            root: HashMap::new(),
            overwritten: HashSet::new(),
        };
        let mut hashes = Vec::with_capacity(parts.len());
        let mut depended = HashSet::new();
        let mut own_last = None;
        for part in parts {
            if !matches!(part.get(8), Some(&(CHANGE_CHUNK | COMPRESSED_CHANGE_CHUNK))) {
                return None;
            }
            let change = Change::from_bytes(part.to_vec()).ok()?;
            hashes.push(change.hash());
            depended.extend(change.deps().iter().copied());
            base.max_op = base.max_op.max(change.max_op());
            if change.actor_id() == actor && change.seq() + 1 > base.seq {
                base.seq = change.seq() + 1;
                own_last = Some(change.hash());
            }
            base.add(&change.decode());
        }
        base.heads = hashes
            .into_iter()
            .filter(|hash| !depended.contains(hash))
            .collect();
        // As Automerge does, a change depends on its actor's previous one even when that is
        // no longer a head.
        if let Some(last) = own_last.filter(|last| !base.heads.contains(last)) {
            base.heads.push(last);
        }
        base.heads.sort_unstable();
        Some(base)
    }

    fn add(&mut self, change: &ExpandedChange) {
        for (offset, op) in change.operations.iter().enumerate() {
            let id = legacy::OpId(
                change.start_op.get() + offset as u64,
                change.actor_id.clone(),
            );
            self.overwritten.extend(op.pred.iter().cloned());
            if let (legacy::ObjectId::Root, legacy::Key::Map(key)) = (&op.obj, &op.key) {
                // A deletion is no value: it only overwrites its predecessors.
                if op.action == legacy::OpType::Delete {
                    continue;
                }
                let scalar = match &op.action {
                    legacy::OpType::Put(value) if !matches!(value, ScalarValue::Counter(_)) => {
                        Some(value.clone())
                    }
                    _ => None,
                };
                self.root
                    .entry(key.to_string())
                    .or_default()
                    .push((id, scalar));
            }
        }
    }

    /// The current values at root key `name` and the operations that wrote them, in
    /// Automerge's order (the winner last); `None` when one is not a plain scalar (an object,
    /// a counter or an increment of one), which the document must resolve itself.
    fn current(&self, name: &str) -> Option<Vec<(legacy::OpId, ScalarValue)>> {
        let mut current = Vec::new();
        for (id, value) in self.root.get(name).into_iter().flatten() {
            let value = value.clone()?;
            if !self.overwritten.contains(id) {
                current.push((id.clone(), value));
            }
        }
        current.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Some(current)
    }
}

#[cfg(test)]
mod tests;
