//! Checks of what devices say of their outbox: the count of local changes waiting to be
//! pushed, kept with the last sync time and listed for administrators.

use super::{accept, device, record};
use crate::storage::{Batch, DeviceInfo, Storage, now_ms};

/// The device `id` as the device list shows it.
fn listed(storage: &dyn Storage, id: i64) -> DeviceInfo {
    let devices = storage.list_devices().unwrap();
    devices.into_iter().find(|d| d.id == id).unwrap()
}

/// Waits until the clock has passed `ms`, so that a time written after differs.
fn after(ms: i64) {
    while now_ms() <= ms {
        std::hint::spin_loop();
    }
}

pub(super) fn a_reported_count_of_pending_changes_is_kept_and_listed(storage: &dyn Storage) {
    let phone = device(storage, "ada");
    let tablet = device(storage, "ada");
    let fresh = listed(storage, phone);
    assert_eq!(
        (fresh.pending_changes, fresh.pending_reported_at),
        (None, None),
        "a device that never said has no count"
    );

    // A push keeps the count with the last sync time, in the same write.
    let records = [record("a", "north")];
    let batch = Batch {
        pending_changes: Some(3),
        ..Batch::new("b1", &records)
    };
    storage.push(phone, &batch, &mut accept).unwrap();
    let pushed = listed(storage, phone);
    assert_eq!(pushed.pending_changes, Some(3));
    assert!(pushed.pending_reported_at.is_some());
    assert_eq!(pushed.pending_reported_at, pushed.last_sync_at);

    // The pull after it says the outbox is empty: recorded, though it brought nothing and the
    // last sync time is recent (an idle pull that says nothing new writes nothing).
    after(pushed.last_sync_at.unwrap());
    storage.record_pull(phone, &[], Some(0), 0).unwrap();
    let emptied = listed(storage, phone);
    assert_eq!(
        emptied.pending_changes,
        Some(0),
        "an idle pull with a new count is recorded"
    );
    assert!(emptied.pending_reported_at > pushed.pending_reported_at);
    assert_eq!(emptied.pending_reported_at, emptied.last_sync_at);
    after(emptied.last_sync_at.unwrap());
    storage.record_pull(phone, &[], Some(0), 0).unwrap();
    assert_eq!(
        listed(storage, phone),
        emptied,
        "an idle pull within the minute saying the same count writes nothing"
    );

    // Requests that say nothing (an app from before the header) keep the count and its time.
    storage
        .record_pull(
            phone,
            &[("clients".into(), "a".into(), "north".into())],
            None,
            0,
        )
        .unwrap();
    let silent = listed(storage, phone);
    assert!(silent.last_sync_at > emptied.last_sync_at);
    assert_eq!(
        (silent.pending_changes, silent.pending_reported_at),
        (Some(0), emptied.pending_reported_at),
        "a pull without a count keeps the one said before"
    );
    after(silent.last_sync_at.unwrap());
    let more = [record("b", "north")];
    storage
        .push(phone, &Batch::new("b2", &more), &mut accept)
        .unwrap();
    let unsaid = listed(storage, phone);
    assert!(unsaid.last_sync_at > silent.last_sync_at);
    assert_eq!(
        (unsaid.pending_changes, unsaid.pending_reported_at),
        (Some(0), emptied.pending_reported_at),
        "a push without a count keeps the one said before"
    );

    // A replayed batch changes nothing, its count included.
    let replay = Batch {
        pending_changes: Some(7),
        ..Batch::new("b1", &records)
    };
    storage.push(phone, &replay, &mut accept).unwrap();
    assert_eq!(listed(storage, phone), unsaid, "a replay records nothing");

    // Each device has its own; the largest count a column holds comes back whole, in both
    // listings.
    let largest = i64::MAX as u64;
    let batch = Batch {
        pending_changes: Some(largest),
        ..Batch::new("t1", &[])
    };
    storage.push(tablet, &batch, &mut accept).unwrap();
    assert_eq!(listed(storage, tablet).pending_changes, Some(largest));
    assert_eq!(listed(storage, phone).pending_changes, Some(0));
    let user = storage.user_id("ada").unwrap().unwrap();
    let of_user = storage.devices_of(user).unwrap();
    let counts: Vec<(i64, Option<u64>)> =
        of_user.iter().map(|d| (d.id, d.pending_changes)).collect();
    assert_eq!(counts, [(phone, Some(0)), (tablet, Some(largest))]);
}
