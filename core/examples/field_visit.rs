//! A field visit, told step by step: a therapist's phone and a colleague's tablet both edit the
//! same client's record and session note while offline, the phone photographs a signed consent
//! form, then both sync through the server and end up identical, the photo on the tablet too.
//!
//! `scripts/demo` starts a real `fieldsync-server`, enrolls the two devices and runs this with
//! `field_visit <server url> <phone token> <tablet token> <work dir>`.

use std::path::Path;

use fieldsync_core::{
    AttachmentSource, Fields, Schema, Store, StoreOptions, SyncClient, SyncConfig,
};
use serde_json::json;

const SCHEMA: &str = include_str!("../tests/fixtures/clinic.schema.json");

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, phone_token, tablet_token, dir] = args.as_slice() else {
        eprintln!("usage: field_visit <server url> <phone token> <tablet token> <work dir>");
        std::process::exit(2);
    };
    let dir = Path::new(dir);
    let phone = Device::open(dir, "phone", url, phone_token)?;
    let tablet = Device::open(dir, "tablet", url, tablet_token)?;
    println!("Two devices, each with its own local store file:");
    println!(
        "  Ada's phone  (device {})",
        short(&phone.store.device_id())
    );
    println!(
        "  Bo's tablet  (device {})",
        short(&tablet.store.device_id())
    );

    step("At the clinic, with signal: Ada records a new client and a session, and syncs.");
    let client = phone.store.insert(
        "clients",
        fields(
            json!({"caseload_id": "caseload-north", "name": "Sam Rivera", "phone": "555-0100",
                      "notes": "Prefers morning visits."}),
        ),
    )?;
    let session = phone.store.insert(
        "sessions",
        fields(json!({"caseload_id": "caseload-north", "client": client, "started_at": 1_700_000_000_000i64,
                      "note": "Worked on s-sounds."})),
    )?;
    phone.sync("phone").await?;
    tablet.sync("tablet").await?;
    println!(
        "  Bo's tablet now has client {} and the session.",
        short(&client)
    );

    step("In the field, no signal. Both edit the same record and the same session note.");
    phone
        .store
        .splice_text("clients", &client, "notes", 0, 0, "Dog in the yard. ")?;
    phone
        .store
        .update("clients", &client, fields(json!({"phone": "555-0199"})))?;
    phone
        .store
        .splice_text("sessions", &session, "note", 0, 0, "Good focus. ")?;
    println!("  phone:  notes += 'Dog in the yard.' (at the start), phone = 555-0199,");
    println!("          session note += 'Good focus.' (at the start)");
    let note_end = text_len(&tablet.store, "sessions", &session, "note")?;
    tablet.store.splice_text(
        "sessions",
        &session,
        "note",
        note_end,
        0,
        " Next: r-sounds.",
    )?;
    let notes_end = text_len(&tablet.store, "clients", &client, "notes")?;
    tablet.store.splice_text(
        "clients",
        &client,
        "notes",
        notes_end,
        0,
        " Bring picture cards.",
    )?;
    tablet.store.update(
        "clients",
        &client,
        fields(json!({"phone": "555-0142", "birth_year": 2016})),
    )?;
    println!(
        "  tablet: notes += 'Bring picture cards.' (at the end), phone = 555-0142, birth year 2016,"
    );
    println!("          session note += 'Next: r-sounds.' (at the end)");
    // Bytes standing in for the camera's: a JPEG's first marker, then 300 KiB of pixels.
    let photo: Vec<u8> = [0xFF, 0xD8, 0xFF, 0xE0]
        .into_iter()
        .chain((0u32..300 * 1024).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8))
        .collect();
    let consent = phone.store.attach(
        "clients",
        &client,
        "consent_form",
        AttachmentSource::Bytes(&photo),
        "image/jpeg",
        Some("consent-sam-rivera.jpg"),
    )?;
    println!(
        "  phone:  photographs the signed consent form ({} KiB), attached to the client",
        consent.size / 1024
    );

    step("Back in signal, both sync through the server.");
    phone.sync("phone").await?;
    tablet.sync("tablet").await?;
    phone.sync("phone").await?;

    step("Both devices now show:");
    let on_phone = phone
        .store
        .get("clients", &client)?
        .expect("the client exists");
    let on_tablet = tablet
        .store
        .get("clients", &client)?
        .expect("the client exists");
    let note = phone
        .store
        .get("sessions", &session)?
        .expect("the session exists");
    println!("  client notes:  {}", on_phone.fields["notes"]);
    println!("  session note:  {}", note.fields["note"]);
    println!("  birth year:    {}", on_phone.fields["birth_year"]);
    println!(
        "  phone number:  {}  (both wrote it; every device shows the same winner)",
        on_phone.fields["phone"]
    );
    for conflict in phone.store.conflicts("clients", &client)? {
        for loser in conflict.losers {
            println!(
                "  the other {} value, {}, from {}, is kept as a visible conflict",
                conflict.field,
                loser.value,
                who(loser.author.as_ref(), &loser.device_id)
            );
        }
    }
    match tablet.store.attachment_bytes(&consent)? {
        Some(bytes) if bytes == photo => println!(
            "  consent form:  {} ({}, {} KiB), on the tablet too, its SHA-256 checked",
            consent.name.as_deref().unwrap_or("unnamed"),
            consent.media_type,
            bytes.len() / 1024
        ),
        _ => println!("  consent form:  NOT on the tablet"),
    }
    let identical = on_phone.fields == on_tablet.fields
        && tablet.store.get("sessions", &session)?.map(|r| r.fields) == Some(note.fields.clone());
    println!(
        "  identical on both devices: {}",
        if identical { "yes" } else { "NO" }
    );

    // The server named the person and device behind each actor with the pulled pages.
    step("The record's history (the audit trail), as the phone shows it:");
    for entry in phone.store.history("clients", &client)? {
        let who = who(entry.author.as_ref(), &entry.device_id);
        println!("  {who:<22} changed {}", entry.fields.join(", "));
    }
    if !identical {
        return Err("the devices did not converge".into());
    }
    Ok(())
}

struct Device {
    store: Store,
    client: SyncClient,
}

impl Device {
    fn open(
        dir: &Path,
        name: &str,
        url: &str,
        token: &str,
    ) -> Result<Device, Box<dyn std::error::Error>> {
        let schema = Schema::from_json(SCHEMA)?;
        let store = Store::open(
            dir.join(format!("{name}.db")),
            schema,
            StoreOptions::default(),
        )?;
        let client = SyncClient::new(SyncConfig::new(url, token))?;
        Ok(Device { store, client })
    }

    async fn sync(&self, name: &str) -> fieldsync_core::Result<()> {
        let report = self.client.sync_now(&self.store).await?;
        println!(
            "  {name} synced: sent {}, received {}{}",
            report.pushed,
            report.pulled,
            match (report.attachments_sent, report.attachments_fetched) {
                (0, 0) => String::new(),
                (sent, fetched) => format!("; attachments sent {sent}, fetched {fetched}"),
            }
        );
        Ok(())
    }
}

/// "user on device" as the server named them, or the actor id when no sync named it.
fn who(author: Option<&fieldsync_core::Author>, actor: &str) -> String {
    match author {
        Some(author) => format!("{} on {}", author.user, author.device),
        None => format!("device {}", short(actor)),
    }
}

fn step(text: &str) {
    println!("\n{text}");
}

fn text_len(
    store: &Store,
    collection: &str,
    id: &str,
    field: &str,
) -> fieldsync_core::Result<usize> {
    let record = store.get(collection, id)?.expect("the record exists");
    Ok(record.fields[field]
        .as_str()
        .unwrap_or_default()
        .encode_utf16()
        .count())
}

fn fields(value: serde_json::Value) -> Fields {
    value.as_object().cloned().unwrap_or_default()
}

fn short(id: &str) -> &str {
    &id[..8.min(id.len())]
}
