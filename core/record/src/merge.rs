//! What every merge of Automerge data from elsewhere goes through: a guard against panics,
//! and decoding that cannot panic. Automerge panics on some crafted input in places no single
//! check covers (a change that applies can still break a later lookup), so devices and the
//! server run every operation on such bytes under [`guarded`] and refuse the record when it
//! panics.

use std::panic::{AssertUnwindSafe, catch_unwind};

use automerge::Change;

/// Runs Automerge on bytes from outside; a panic inside the library becomes `None`. Whatever
/// the work touched is discarded by the caller when it panicked.
pub fn guarded<T>(work: impl FnOnce() -> T) -> Option<T> {
    catch_unwind(AssertUnwindSafe(work)).ok()
}

/// Decodes one change, `None` if it does not decode, if its checksum does not match its
/// contents, or if Automerge panics on it. Bound its inflated size first
/// ([`crate::protocol::check_inflated_size`]): Automerge inflates compressed columns in full.
///
/// Automerge decodes a lone change without checking its checksum (it checks when it loads a
/// document): appended to a stored document as it came, a change with a flipped bit would leave
/// bytes that no longer load.
pub fn decode_change(bytes: Vec<u8>) -> Option<Change> {
    let checksum: [u8; 4] = bytes.get(4..8)?.try_into().ok()?;
    let change = guarded(move || Change::from_bytes(bytes).ok()).flatten()?;
    (change.hash().0[..4] == checksum).then_some(change)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_contained_and_garbage_does_not_decode() {
        assert_eq!(guarded(|| 7), Some(7));
        assert_eq!(guarded(|| -> u8 { panic!("inside") }), None);
        assert!(decode_change(b"not a change".to_vec()).is_none());
        assert!(decode_change(Vec::new()).is_none());
    }

    #[test]
    fn a_change_whose_checksum_does_not_match_does_not_decode() {
        use automerge::{AutoCommit, ROOT, transaction::Transactable};
        let mut doc = AutoCommit::new();
        doc.put(ROOT, "name", "Ada").unwrap();
        let bytes = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
        assert!(decode_change(bytes.clone()).is_some());
        for byte in 4..8 {
            let mut damaged = bytes.clone();
            damaged[byte] ^= 0x10;
            assert!(decode_change(damaged).is_none(), "checksum byte {byte}");
        }
    }
}
