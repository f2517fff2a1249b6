//! The names records go by: record ids, and the names of collections, fields and indexes.
//! Devices and the server check them alike.

use crate::error::{Error, Result};

/// Checks a record id: 1 to 128 characters from `[A-Za-z0-9_.:-]`. Ids appear in URLs, logs
/// and file names, so they keep to a safe alphabet.
pub fn check_record_id(id: &str) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':');
    if !id.is_empty() && id.len() <= 128 && id.chars().all(ok_char) {
        Ok(())
    } else {
        Err(Error::InvalidId(
            "use 1 to 128 characters from [A-Za-z0-9_.:-]".into(),
        ))
    }
}

/// Whether `name` may name a collection, field or index: `[a-z][a-z0-9_]*`, at most 63
/// characters. Names become SQL identifiers (always quoted), so they keep to a safe alphabet;
/// a leading underscore is reserved for the store's own columns and the tombstone.
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_keep_to_their_alphabet_and_length() {
        for good in ["a", "0193f2-aa.b:c_d", &"x".repeat(128)] {
            assert!(check_record_id(good).is_ok(), "{good}");
        }
        for bad in ["", "a b", "a/b", "é", &"x".repeat(129)] {
            assert!(check_record_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_keep_to_their_alphabet_and_length() {
        for good in ["clients", "a1_b", &"x".repeat(63)] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in ["", "_deleted", "Clients", "1a", "a-b", &"x".repeat(64)] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }
}
