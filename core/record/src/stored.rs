//! How a record's document is stored, on devices and on the server alike: a saved document
//! (or a new record's one change, which Automerge loads as it loads a save), followed by the
//! changes appended since, up to [`APPENDED_AT_MOST`]. Appending skips loading the document,
//! most of a write's or a merge's cost; each appended change makes the next load slower, so
//! the document is saved whole again after that many.

/// How many changes a stored document takes appended before it is saved whole again.
pub const APPENDED_AT_MOST: u32 = 32;

/// Whether stored bytes start with a saved document (chunk type 0, after the 4 magic bytes and
/// the 4-byte checksum) rather than a change. Automerge loads a record kept as its first change
/// more slowly than a save of it (about 1.8 times for a note of a hundred characters), so such a
/// record is saved whole on its first write after a cold load.
pub fn starts_with_saved_document(bytes: &[u8]) -> bool {
    bytes.get(8) == Some(&0)
}
