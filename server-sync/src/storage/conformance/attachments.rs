//! Checks of attachments' bytes and state, kept per scope.

use crate::error::ServerError;
use crate::storage::{AttachmentState, ChunkStored, Storage, StoredChunk};

pub(super) fn attachments_are_received_in_chunks_per_scope(storage: &dyn Storage) {
    let sha = [7u8; 32];
    assert_eq!(storage.attachment("north", &sha).unwrap(), None);
    assert_eq!(
        storage
            .put_attachment_chunk("north", &sha, 5, 1, Some(b"de"))
            .unwrap(),
        ChunkStored::New
    );
    assert_eq!(
        storage
            .put_attachment_chunk("north", &sha, 5, 1, Some(b"de"))
            .unwrap(),
        ChunkStored::AlreadyHeld,
        "a chunk sent again is not stored again"
    );
    let sized_otherwise = storage.put_attachment_chunk("north", &sha, 6, 0, Some(b"abc"));
    assert!(
        matches!(sized_otherwise, Err(ServerError::Conflict(_))),
        "{sized_otherwise:?}"
    );
    assert_eq!(
        storage.attachment("north", &sha).unwrap(),
        Some(AttachmentState {
            size: 5,
            received: vec![1],
            complete: false
        })
    );
    storage
        .put_attachment_chunk("north", &sha, 5, 0, Some(b"abc"))
        .unwrap();
    storage.complete_attachment("north", &sha).unwrap();
    let state = storage.attachment("north", &sha).unwrap().unwrap();
    assert_eq!((state.received, state.complete), (vec![0, 1], true));
    assert_eq!(
        storage.attachment_chunk("north", &sha, 0).unwrap(),
        Some(StoredChunk::Bytes(b"abc".to_vec()))
    );
    assert_eq!(storage.attachment_chunk("north", &sha, 2).unwrap(), None);
    // The same bytes in another scope are another attachment.
    assert_eq!(storage.attachment("south", &sha).unwrap(), None);
    assert_eq!(storage.attachment_chunk("south", &sha, 0).unwrap(), None);
    assert!(storage.delete_attachment("north", &sha).unwrap());
    assert!(!storage.delete_attachment("north", &sha).unwrap());
    assert_eq!(storage.attachment("north", &sha).unwrap(), None);
    assert_eq!(storage.attachment_chunk("north", &sha, 0).unwrap(), None);
}

pub(super) fn chunks_in_the_bucket_are_recorded_without_bytes(storage: &dyn Storage) {
    let sha = [3u8; 32];
    let size = 3;
    storage
        .put_attachment_chunk("north", &sha, size, 0, None)
        .unwrap();
    assert_eq!(
        storage
            .put_attachment_chunk("north", &sha, size, 0, None)
            .unwrap(),
        ChunkStored::AlreadyHeld
    );
    let state = storage.attachment("north", &sha).unwrap().unwrap();
    assert_eq!(state.received, [0]);
    assert_eq!(
        storage.attachment_chunk("north", &sha, 0).unwrap(),
        Some(StoredChunk::InBucket)
    );
    assert!(storage.delete_attachment("north", &sha).unwrap());
    assert_eq!(storage.attachment_chunk("north", &sha, 0).unwrap(), None);
}

pub(super) fn attachments_are_listed_in_order(storage: &dyn Storage) {
    for (scope, byte) in [("south", 1u8), ("north", 9), ("north", 2), ("a b", 5)] {
        storage
            .put_attachment_chunk(scope, &[byte; 32], 1, 0, Some(b"x"))
            .unwrap();
    }
    let page = storage.attachments_after(None, 3).unwrap();
    let listed: Vec<(&str, u8)> = page
        .iter()
        .map(|a| (a.scope.as_str(), a.sha256[0]))
        .collect();
    assert_eq!(listed, [("a b", 5), ("north", 2), ("north", 9)]);
    assert!(page.iter().all(|a| a.size == 1 && a.created_at > 0));
    let last = page.last().unwrap();
    let rest = storage
        .attachments_after(Some((&last.scope, &last.sha256)), 3)
        .unwrap();
    let listed: Vec<(&str, u8)> = rest
        .iter()
        .map(|a| (a.scope.as_str(), a.sha256[0]))
        .collect();
    assert_eq!(listed, [("south", 1)]);
}
