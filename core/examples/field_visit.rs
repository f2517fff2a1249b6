//! A field visit, told step by step: a therapist's phone and a colleague's tablet both edit
//! the same client's record while offline, then exchange their changes and end up identical.
//!
//! Run with `scripts/demo` (or `cargo run -p fieldsync-core --example field_visit`).

use fieldsync_core::{Fields, Schema, Store, StoreOptions};
use serde_json::json;

const SCHEMA: &str = include_str!("../tests/fixtures/clinic.schema.json");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let schema = Schema::from_json(SCHEMA)?;
    let phone = Store::open(
        dir.path().join("phone.db"),
        schema.clone(),
        StoreOptions::default(),
    )?;
    let tablet = Store::open(
        dir.path().join("tablet.db"),
        schema,
        StoreOptions::default(),
    )?;
    println!("Two devices, each with its own local store file:");
    println!("  phone  (device {})", short(phone.device_id()));
    println!("  tablet (device {})", short(tablet.device_id()));

    let client = fields(json!({
        "caseload_id": "north", "name": "Sam Rivera", "phone": "555-0100",
        "notes": "Prefers morning visits."
    }));
    let id = phone.insert("clients", client)?;
    carry(&phone, &tablet)?;
    println!("\nThe phone creates client {id} and both devices sync: they share the record.");

    println!("\nBoth go offline and edit the same record:");
    phone.splice_text("clients", &id, "notes", 0, 0, "Dog in the yard. ")?;
    phone.update("clients", &id, fields(json!({"phone": "555-0199"})))?;
    println!("  phone:  adds 'Dog in the yard.' to the notes, sets the phone number to 555-0199");
    let end = utf16_len(&note(&tablet, &id)?);
    tablet.splice_text("clients", &id, "notes", end, 0, " Bring the picture cards.")?;
    tablet.update(
        "clients",
        &id,
        fields(json!({"phone": "555-0142", "birth_year": 2016})),
    )?;
    println!(
        "  tablet: appends 'Bring the picture cards.', sets the phone to 555-0142, birth year 2016"
    );

    println!("\nBack online, each device merges the other's changes:");
    carry(&phone, &tablet)?;
    carry(&tablet, &phone)?;
    let on_phone = phone.get("clients", &id)?.expect("the record exists");
    let on_tablet = tablet.get("clients", &id)?.expect("the record exists");
    println!("  notes:      {}", on_phone.fields["notes"]);
    println!("  birth year: {}", on_phone.fields["birth_year"]);
    println!(
        "  phone:      {} (both wrote it; the same winner on both devices)",
        on_phone.fields["phone"]
    );
    for conflict in phone.conflicts("clients", &id)? {
        for loser in conflict.losers {
            println!(
                "  the {} value {} from device {} is kept as a visible conflict",
                conflict.field,
                loser.value,
                short(&loser.device_id)
            );
        }
    }
    assert_eq!(on_phone.fields, on_tablet.fields);
    println!("\nBoth devices now hold identical records. History of the record:");
    for entry in phone.history("clients", &id)? {
        println!(
            "  device {} changed {:?}",
            short(&entry.device_id),
            entry.fields
        );
    }
    Ok(())
}

/// Hands `from`'s unsent changes to `to`, as the sync server will.
fn carry(from: &Store, to: &Store) -> fieldsync_core::Result<()> {
    let entries = from.outbox(10_000)?;
    if let Some(last) = entries.last().map(|e| e.seq) {
        to.apply_remote(entries.into_iter().map(|e| e.into_remote()).collect())?;
        from.acknowledge_outbox(last)?;
    }
    Ok(())
}

fn note(store: &Store, id: &str) -> fieldsync_core::Result<String> {
    let record = store.get("clients", id)?.expect("the record exists");
    Ok(record.fields["notes"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

fn utf16_len(s: &str) -> usize {
    s.encode_utf16().count()
}

fn fields(value: serde_json::Value) -> Fields {
    value.as_object().cloned().unwrap_or_default()
}

fn short(device_id: &str) -> &str {
    &device_id[..8.min(device_id.len())]
}
