//! Two (or more) devices exchange outbox changes through `apply_remote` and converge.

use fieldsync_core::{Filter, Query, Store};
use fieldsync_tests::{carry, deliver, fields, open_device};
use serde_json::json;

struct Devices {
    _dir: tempfile::TempDir,
    phone: Store,
    tablet: Store,
}

/// Two devices sharing one client record, fully synced.
fn two_devices_sharing_a_client() -> (Devices, String) {
    let dir = tempfile::tempdir().unwrap();
    let phone = open_device(&dir.path().join("phone.db"));
    let tablet = open_device(&dir.path().join("tablet.db"));
    let id = phone
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Sam", "notes": "Likes trains."})),
        )
        .unwrap();
    carry(&phone, &tablet);
    (
        Devices {
            _dir: dir,
            phone,
            tablet,
        },
        id,
    )
}

fn exchange(devices: &Devices) {
    carry(&devices.phone, &devices.tablet);
    carry(&devices.tablet, &devices.phone);
}

fn client(store: &Store, id: &str) -> Option<fieldsync_core::Fields> {
    store.get("clients", id).unwrap().map(|r| r.fields)
}

#[test]
fn concurrent_edits_to_different_fields_both_survive() {
    let (devices, id) = two_devices_sharing_a_client();
    devices
        .phone
        .update("clients", &id, fields(json!({"phone": "555-0100"})))
        .unwrap();
    devices
        .tablet
        .update("clients", &id, fields(json!({"birth_year": 2015})))
        .unwrap();
    exchange(&devices);
    let on_phone = client(&devices.phone, &id).unwrap();
    assert_eq!(on_phone["phone"], "555-0100");
    assert_eq!(on_phone["birth_year"], 2015);
    assert_eq!(Some(on_phone), client(&devices.tablet, &id));
    assert!(devices.phone.conflicts("clients", &id).unwrap().is_empty());
}

#[test]
fn concurrent_edits_to_one_text_merge_characters() {
    let (devices, id) = two_devices_sharing_a_client();
    devices
        .phone
        .splice_text("clients", &id, "notes", 0, 0, "Calm today. ")
        .unwrap();
    // "Likes trains." -> "Likes red trains."
    devices
        .tablet
        .splice_text("clients", &id, "notes", 6, 0, "red ")
        .unwrap();
    exchange(&devices);
    let expected = json!("Calm today. Likes red trains.");
    assert_eq!(client(&devices.phone, &id).unwrap()["notes"], expected);
    assert_eq!(client(&devices.tablet, &id).unwrap()["notes"], expected);
}

#[test]
fn whole_text_updates_merge_as_diffs() {
    let (devices, id) = two_devices_sharing_a_client();
    devices
        .phone
        .update(
            "clients",
            &id,
            fields(json!({"notes": "Likes trains. Tired."})),
        )
        .unwrap();
    devices
        .tablet
        .update(
            "clients",
            &id,
            fields(json!({"notes": "Really likes trains."})),
        )
        .unwrap();
    exchange(&devices);
    let expected = json!("Really likes trains. Tired.");
    assert_eq!(client(&devices.phone, &id).unwrap()["notes"], expected);
    assert_eq!(client(&devices.tablet, &id).unwrap()["notes"], expected);
}

#[test]
fn concurrent_edits_to_one_json_field_merge_by_key() {
    let (devices, id) = two_devices_sharing_a_client();
    devices
        .phone
        .update(
            "clients",
            &id,
            fields(json!({"goals": {"speech": "s-sounds"}})),
        )
        .unwrap();
    carry(&devices.phone, &devices.tablet);
    devices
        .phone
        .update(
            "clients",
            &id,
            fields(json!({"goals": {"speech": "s-sounds", "motor": "stairs"}})),
        )
        .unwrap();
    devices
        .tablet
        .update(
            "clients",
            &id,
            fields(json!({"goals": {"speech": "r-sounds"}})),
        )
        .unwrap();
    exchange(&devices);
    let goals = client(&devices.phone, &id).unwrap()["goals"].clone();
    assert_eq!(goals["motor"], "stairs");
    assert_eq!(goals["speech"], "r-sounds");
    assert_eq!(client(&devices.tablet, &id).unwrap()["goals"], goals);
}

#[test]
fn concurrent_edits_to_one_scalar_pick_one_winner_and_show_a_conflict() {
    let (devices, id) = two_devices_sharing_a_client();
    devices
        .phone
        .update("clients", &id, fields(json!({"phone": "111"})))
        .unwrap();
    devices
        .tablet
        .update("clients", &id, fields(json!({"phone": "222"})))
        .unwrap();
    exchange(&devices);
    let winner = client(&devices.phone, &id).unwrap()["phone"].clone();
    assert_eq!(client(&devices.tablet, &id).unwrap()["phone"], winner);
    for store in [&devices.phone, &devices.tablet] {
        let conflicts = store.conflicts("clients", &id).unwrap();
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].winner.value, winner);
        let loser = &conflicts[0].losers[0].value;
        assert_ne!(*loser, winner);
        assert!(*loser == json!("111") || *loser == json!("222"));
    }
}

#[test]
fn delete_wins_over_a_concurrent_edit_in_either_order() {
    for phone_first in [true, false] {
        let (devices, id) = two_devices_sharing_a_client();
        devices.phone.delete("clients", &id).unwrap();
        devices
            .tablet
            .update("clients", &id, fields(json!({"phone": "999"})))
            .unwrap();
        devices
            .tablet
            .splice_text("clients", &id, "notes", 0, 0, "Edited offline. ")
            .unwrap();
        if phone_first {
            carry(&devices.phone, &devices.tablet);
            carry(&devices.tablet, &devices.phone);
        } else {
            carry(&devices.tablet, &devices.phone);
            carry(&devices.phone, &devices.tablet);
        }
        for store in [&devices.phone, &devices.tablet] {
            assert_eq!(
                client(store, &id),
                None,
                "the record came back (phone first: {phone_first})"
            );
            assert_eq!(store.count("clients", &Filter::All).unwrap(), 0);
            // The offline edits are kept in the document's history, not lost.
            assert!(
                store
                    .history("clients", &id)
                    .unwrap()
                    .iter()
                    .any(|e| e.fields.contains(&"phone".to_owned()))
            );
        }
        assert!(
            devices
                .tablet
                .update("clients", &id, fields(json!({"phone": "1"})))
                .is_err()
        );
    }
}

#[test]
fn three_devices_converge_whatever_the_exchange_order() {
    let dir = tempfile::tempdir().unwrap();
    let devices: Vec<Store> = (0..3)
        .map(|i| open_device(&dir.path().join(format!("d{i}.db"))))
        .collect();
    let id = devices[0]
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Sam", "notes": ""})),
        )
        .unwrap();
    // Every device sees the record first, through a hub, as a server would relay it.
    let hub = open_device(&dir.path().join("hub.db"));
    let relay = |devices: &[Store], hub: &Store| {
        for device in devices {
            carry(device, hub);
        }
        for device in devices {
            let all = hub.query("clients", &Query::default()).unwrap();
            let docs = all
                .iter()
                .map(|r| fieldsync_core::RemoteRecord {
                    epoch: 0,
                    collection: "clients".into(),
                    id: r.id.clone(),
                    scope: r.scope.clone(),
                    payload: fieldsync_core::RemotePayload::Document(
                        hub.document("clients", &r.id).unwrap(),
                    ),
                })
                .collect();
            device.apply_remote(docs).unwrap();
        }
    };
    relay(&devices, &hub);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..20 {
        for (n, device) in devices.iter().enumerate() {
            let len = device.get("clients", &id).unwrap().unwrap().fields["notes"]
                .as_str()
                .unwrap()
                .encode_utf16()
                .count();
            let at = (next() as usize) % (len + 1);
            device
                .splice_text("clients", &id, "notes", at, 0, &format!("[{n}.{round}]"))
                .unwrap();
            if next() % 3 == 0 {
                device
                    .update(
                        "clients",
                        &id,
                        fields(json!({"birth_year": (next() % 20) as i64 + 2000})),
                    )
                    .unwrap();
            }
        }
        if next() % 2 == 0 {
            let (a, b) = ((next() % 3) as usize, (next() % 3) as usize);
            if a != b {
                deliver(&devices[a], &devices[b]);
            }
        }
    }
    relay(&devices, &hub);
    let reference = client(&devices[0], &id).unwrap();
    for device in &devices[1..] {
        assert_eq!(client(device, &id).unwrap(), reference);
    }
    // Later inserts may land inside earlier ones, so compare characters, not substrings: every
    // inserted character is present exactly once.
    let mut expected: Vec<char> = (0..3)
        .flat_map(|n| (0..20).map(move |round| format!("[{n}.{round}]")))
        .flat_map(|marker| marker.chars().collect::<Vec<_>>())
        .collect();
    let mut actual: Vec<char> = reference["notes"].as_str().unwrap().chars().collect();
    expected.sort_unstable();
    actual.sort_unstable();
    assert_eq!(actual, expected);
}

#[test]
fn a_store_reopened_after_its_process_ended_keeps_every_returned_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fieldsync-device"))
        .args(["write", path.to_str().unwrap(), "25"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let ids: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(ids.len(), 25);

    let store = open_device(&path);
    for (i, id) in ids.iter().enumerate() {
        let record = client(&store, id).unwrap_or_else(|| panic!("write {i} is missing"));
        assert_eq!(record["notes"], format!("note {i}"));
    }
    assert_eq!(store.outbox(100).unwrap().len(), 25);
}
