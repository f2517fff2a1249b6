//! Each case builds a record's history of local and concurrent remote changes, stores it as
//! changes, and compares the change `scalar_update` encodes with the one Automerge makes for
//! the same puts on the loaded document.

use automerge::{ActorId, AutoCommit, ROOT, ReadDoc};
use serde_json::{Value, json};

use super::{ColdUpdate, scalar_update};
use crate::document::{self, load_doc, new_doc};
use crate::schema::{Collection, Schema};
use crate::value::Fields;

fn collection() -> Collection {
    let schema = Schema::from_json(
        r#"{"collections": {"clients": {"scope_field": "caseload_id", "fields": {
            "caseload_id": {"type": "string", "required": true},
            "name": {"type": "string", "required": true},
            "risk": {"type": "float"},
            "active": {"type": "boolean"},
            "notes": {"type": "text"},
            "plan": {"type": "json"}}}}}"#,
    )
    .unwrap();
    schema.collection("clients").unwrap().clone()
}

fn fields(value: Value) -> Fields {
    value.as_object().unwrap().clone()
}

/// A small deterministic generator (xorshift), so that a failing case replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn write(doc: &mut AutoCommit, collection: &Collection, patch: &Fields, time: i64) {
    for (name, value) in patch {
        document::put_field(doc, name, &collection.fields[name], value).unwrap();
    }
    document::commit(doc, time);
}

fn random_patch(rng: &mut Rng, round: u64) -> Fields {
    match rng.below(6) {
        0 => fields(json!({"risk": round as f64 / 4.0})),
        1 => fields(json!({"active": rng.below(2) == 0, "name": format!("n{round}")})),
        2 => fields(json!({"risk": null})),
        3 => fields(json!({"notes": format!("note {round}")})),
        4 => fields(json!({"plan": {"goal": round}})),
        _ => fields(json!({"name": format!("m{round}")})),
    }
}

/// A record made by `me`, then edited by `me` and by two other devices, concurrently at
/// times; returns the document as `me` holds it and its changes in the order `me` got them.
fn history(seed: u64, me: &ActorId, collection: &Collection) -> (AutoCommit, Vec<u8>) {
    let mut rng = Rng(seed);
    let mut mine = new_doc(me);
    write(
        &mut mine,
        collection,
        &fields(json!({"caseload_id": "north", "name": "Ada", "risk": 1.0})),
        1,
    );
    let others = [ActorId::random(), ActorId::random()];
    let mut theirs: Vec<AutoCommit> = others
        .iter()
        .map(|a| mine.fork().with_actor(a.clone()))
        .collect();
    for round in 0..rng.below(12) {
        let patch = random_patch(&mut rng, round);
        match rng.below(4) {
            0 | 1 => write(&mut mine, collection, &patch, 10 + round as i64),
            who => {
                let other = &mut theirs[who as usize - 2];
                write(other, collection, &patch, 10 + round as i64);
                if rng.below(2) == 0 {
                    mine.merge(other).unwrap();
                }
            }
        }
        if rng.below(3) == 0 {
            let who = rng.below(2) as usize;
            theirs[who].merge(&mut mine).unwrap();
        }
    }
    let stored: Vec<u8> = mine
        .get_changes(&[])
        .iter()
        .flat_map(|change| change.raw_bytes().to_vec())
        .collect();
    (mine, stored)
}

#[test]
fn the_change_is_the_one_automerge_makes_on_the_loaded_document() {
    let collection = collection();
    let (mut compared, mut unchanged, mut conflicted) = (0, 0, 0);
    for seed in 1..=400u64 {
        let me = ActorId::random();
        let (_, stored) = history(seed, &me, &collection);
        let mut rng = Rng(seed * 7 + 1);
        let patch = match rng.below(4) {
            0 => fields(json!({"risk": seed as f64})),
            1 => fields(json!({"active": true, "risk": 2.5})),
            2 => fields(json!({"caseload_id": "north"})),
            _ => fields(json!({"name": "Bea", "caseload_id": "south"})),
        };
        let encoded = scalar_update(&stored, &me, &collection, &patch, 99);
        let mut loaded = load_doc(&stored, &me).unwrap();
        if patch
            .keys()
            .any(|key| loaded.get_all(ROOT, key.as_str()).unwrap().len() > 1)
        {
            conflicted += 1;
        }
        let heads = loaded.get_heads();
        write(&mut loaded, &collection, &patch, 99);
        let made = loaded.get_changes(&heads);
        let expected = match made.as_slice() {
            [change] => ColdUpdate::Change(change.raw_bytes().to_vec()),
            [] => ColdUpdate::Unchanged,
            _ => panic!("one change at most"),
        };
        // A key that once held an object is left to the document.
        let held_object = patch
            .keys()
            .any(|key| loaded.get_all(ROOT, key.as_str()).unwrap().len() > 1);
        match encoded {
            Some(update) => {
                assert_eq!(update, expected, "seed {seed}");
                compared += 1;
                unchanged += usize::from(update == ColdUpdate::Unchanged);
            }
            None => assert!(held_object, "seed {seed}: no reason to fall back"),
        }
    }
    assert!(compared > 300, "{compared} compared");
    // The cases cover values already there and keys in conflict.
    assert!(
        unchanged > 0 && conflicted > 0,
        "{unchanged} unchanged, {conflicted} in conflict"
    );
}

#[test]
fn a_saved_document_or_a_value_that_is_not_a_plain_scalar_is_left_to_the_document() {
    let collection = collection();
    let me = ActorId::random();
    let (mut doc, stored) = history(3, &me, &collection);
    let saved = doc.save();
    let risk = fields(json!({"risk": 3.0}));
    assert!(scalar_update(&stored, &me, &collection, &risk, 5).is_some());
    assert!(scalar_update(&saved, &me, &collection, &risk, 5).is_none());
    for patch in [
        json!({"risk": null}),
        json!({"notes": "text"}),
        json!({"plan": {"a": 1}}),
        json!({"undeclared": 1}),
    ] {
        assert!(
            scalar_update(&stored, &me, &collection, &fields(patch.clone()), 5).is_none(),
            "{patch}"
        );
    }
    let mut truncated = stored.clone();
    truncated.pop();
    assert!(scalar_update(&truncated, &me, &collection, &risk, 5).is_none());
}
