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

/// Decodes one change, `None` if it does not decode (or Automerge panics on it). Bound its
/// inflated size first ([`crate::protocol::check_inflated_size`]): Automerge inflates
/// compressed columns in full.
pub fn decode_change(bytes: Vec<u8>) -> Option<Change> {
    guarded(move || Change::from_bytes(bytes).ok()).flatten()
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
}
