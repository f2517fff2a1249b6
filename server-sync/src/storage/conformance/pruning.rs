//! Checks of pruning: the feed up to where every reader in use has read, push answers by age,
//! and audit lines by date.

use crate::storage::conformance::{accept, record};
use crate::storage::{AuditQuery, Batch, Pruned, Role, Storage, now_ms};

pub(super) fn the_feed_push_answers_and_audit_lines_are_pruned(storage: &dyn Storage) {
    let user = storage.create_user("ada", Role::Member).unwrap();
    let phone = storage.create_device(user, "phone").unwrap();
    let tablet = storage.create_device(user, "tablet").unwrap();
    let started = now_ms();
    for n in 0..4 {
        let (batch, id) = (format!("b{n}"), format!("r{n}"));
        storage
            .push(
                phone,
                &Batch::new(&batch, &[record(&id, "north")]),
                &mut accept,
            )
            .unwrap();
    }
    let head = storage.feed_head().unwrap();
    // The phone pushed but never pulled: it holds the whole feed back.
    assert_eq!(storage.feed_read_by_all(started - 1000).unwrap(), 0);
    storage.record_pull(phone, &[], None, head).unwrap();
    storage.record_pull(tablet, &[], None, head - 1).unwrap();
    assert_eq!(storage.feed_read_by_all(started - 1000).unwrap(), head - 1);
    // A position only moves forward.
    storage.record_pull(tablet, &[], None, 0).unwrap();
    assert_eq!(storage.feed_read_by_all(started - 1000).unwrap(), head - 1);
    // Devices that did not sync since are not waited for.
    assert_eq!(storage.feed_read_by_all(now_ms() + 1000).unwrap(), head);

    let pruned = storage.prune_feed(head - 1, started - 1000).unwrap();
    assert_eq!(
        pruned,
        Pruned {
            feed_entries: 3,
            push_answers: 0
        }
    );
    assert_eq!(
        storage.device_sync(tablet).unwrap().feed_pruned_through,
        head - 1
    );
    let page = storage.feed_page(&["north".into()], 0, 10).unwrap();
    let left: Vec<&str> = page.entries.iter().map(|e| e.record_id.as_str()).collect();
    assert_eq!(left, ["r3"]);
    // An earlier horizon moves nothing back.
    storage.prune_feed(0, 0).unwrap();
    assert_eq!(
        storage.device_sync(phone).unwrap().feed_pruned_through,
        head - 1
    );
    let pruned = storage.prune_feed(head - 1, now_ms() + 1000).unwrap();
    assert_eq!(
        pruned,
        Pruned {
            feed_entries: 0,
            push_answers: 4
        }
    );
    // The head stays past what was pruned, the whole feed included.
    storage.prune_feed(head, 0).unwrap();
    assert_eq!(storage.feed_head().unwrap(), head);

    let lines = |storage: &dyn Storage| {
        storage
            .audit(&AuditQuery {
                limit: 100,
                ..AuditQuery::default()
            })
            .unwrap()
    };
    let before = lines(storage).len();
    assert!(before >= 4);
    assert_eq!(storage.prune_audit(started - 60_000, 0).unwrap(), 0);
    let pruned = storage.prune_audit(now_ms() + 1, 0).unwrap();
    assert_eq!(
        pruned as usize,
        before + 1,
        "every line, the first prune's included"
    );
    let [line] = lines(storage).try_into().unwrap();
    assert_eq!(
        (line.action.as_str(), line.collection.as_str()),
        ("audit-prune", "admin")
    );
    assert!(line.detail.unwrap().contains("lines before"));
}
