//! Walking Automerge's binary chunks without Automerge: how much they inflate to, and whether
//! each one's checksum matches its contents. Automerge inflates compressed data in full before
//! looking at it, and does not check a change's checksum when it decodes one alone (only when
//! it loads a document), so both are checked here before Automerge sees bytes from elsewhere.
//!
//! The format: each chunk is the magic bytes `85 6f 4a 83`, a 4-byte checksum, the chunk type
//! (0 document, 1 change, 2 compressed change) and the LEB128 length of the chunk's body. The
//! checksum is the first 4 bytes of the SHA-256 of the type, the length and the body (for a
//! compressed change, of the change it inflates to); a change's hash is that whole SHA-256.

use std::io::Read;

use sha2::{Digest, Sha256};

use crate::protocol::DecodeError;

const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];

/// Checks that Automerge bytes (a saved document, a change, or several such chunks one after
/// the other) inflate to at most `limit` bytes, inflating no more than `limit + 1` bytes of
/// them and keeping none of it.
///
/// Automerge inflates compressed changes, and the compressed columns of documents, in full
/// before it looks at them, so a few kilobytes can claim gigabytes. This reads the chunk
/// headers of the Automerge binary format: the magic bytes `85 6f 4a 83`, a 4-byte checksum,
/// the chunk type (0 document, 1 change, 2 compressed change) and the LEB128 length of the
/// chunk's body. A document's body lists its columns; those with the DEFLATE bit are inflated
/// into a counter. A compressed change's body is raw DEFLATE, counted the same way. Bundles
/// (type 3, experimental in Automerge and never sent by Fieldsync) are refused, as is a chunk
/// whose declared length runs past the end of the bytes.
///
/// Checksums and operations are not checked here: Automerge does that when it loads the
/// bytes, which this makes safe to do. Empty input passes (it holds nothing).
pub fn check_inflated_size(bytes: &[u8], limit: usize) -> Result<(), DecodeError> {
    inflated_size(bytes, limit).map(|_| ())
}

/// The bytes `bytes` inflate to, or `TooLarge` as soon as that is known to exceed `limit`.
pub fn inflated_size(bytes: &[u8], limit: usize) -> Result<usize, DecodeError> {
    let too_large = || DecodeError::TooLarge { limit };
    let mut input = Reader { rest: bytes };
    let mut total = 0usize;
    while !input.rest.is_empty() {
        if input.take(4)? != MAGIC {
            return Err(malformed(
                "an Automerge chunk does not start with the magic bytes",
            ));
        }
        input.take(4)?;
        let chunk_type = input.take(1)?[0];
        let len = input.length()?;
        let body = input.take(len)?;
        let budget = limit.saturating_sub(total);
        let size = match chunk_type {
            0 => document_size(body, budget),
            1 => Ok(body.len()),
            2 => inflate_counted(body, budget),
            3 => Err(malformed("Automerge bundles are not accepted")),
            other => Err(malformed(&format!("unknown Automerge chunk type {other}"))),
        };
        // The parts report what was left of the budget; the caller wants the whole limit.
        let size = match size {
            Err(DecodeError::TooLarge { .. }) => return Err(too_large()),
            other => other?,
        };
        total = total.checked_add(size).ok_or_else(too_large)?;
        if total > limit {
            return Err(too_large());
        }
    }
    Ok(total)
}

/// The inflated size of a document chunk's body: its own bytes, with each compressed
/// column's bytes replaced by what they inflate to.
fn document_size(body: &[u8], budget: usize) -> Result<usize, DecodeError> {
    let mut input = Reader { rest: body };
    let actors = input.leb128()?;
    for _ in 0..actors {
        let len = input.length()?;
        input.take(len)?;
    }
    let heads = input.length()?;
    input.take(heads.checked_mul(32).ok_or_else(|| truncated(heads))?)?;
    let change_columns = input.columns()?;
    let op_columns = input.columns()?;
    let mut size = body.len();
    for (spec, len) in change_columns.into_iter().chain(op_columns) {
        let data = input.take(len)?;
        if spec & DEFLATE_BIT != 0 {
            let inflated = inflate_counted(data, budget.saturating_sub(size - len))?;
            size = size - len + inflated;
            if size > budget {
                return Err(DecodeError::TooLarge { limit: budget });
            }
        }
    }
    Ok(size)
}

/// The column specification bit that marks a column's data as DEFLATE-compressed.
const DEFLATE_BIT: u32 = 0b1000;

/// How many bytes raw DEFLATE `data` inflates to, counting at most `limit + 1` of them.
fn inflate_counted(data: &[u8], limit: usize) -> Result<usize, DecodeError> {
    let bound = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    let mut inflater = flate2::read::DeflateDecoder::new(data).take(bound);
    let inflated =
        std::io::copy(&mut inflater, &mut std::io::sink()).map_err(|_| DecodeError::Compression)?;
    match usize::try_from(inflated) {
        Ok(inflated) if inflated <= limit => Ok(inflated),
        _ => Err(DecodeError::TooLarge { limit }),
    }
}

fn malformed(reason: &str) -> DecodeError {
    DecodeError::Malformed(reason.to_owned())
}

fn truncated(declared: impl std::fmt::Display) -> DecodeError {
    DecodeError::Malformed(format!(
        "Automerge data declares {declared} bytes or items beyond its end"
    ))
}

/// A cursor over Automerge bytes that fails cleanly where they end early.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.rest.len() {
            return Err(truncated(n));
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(taken)
    }

    fn leb128(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1)?[0];
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                break;
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed("an Automerge LEB128 number overflows 64 bits"))
    }

    /// A LEB128 length, which must fit in what remains.
    fn length(&mut self) -> Result<usize, DecodeError> {
        let len = self.leb128()?;
        match usize::try_from(len) {
            Ok(len) if len <= self.rest.len() => Ok(len),
            _ => Err(truncated(len)),
        }
    }

    /// A column list: a count, then per column its specification and data length.
    fn columns(&mut self) -> Result<Vec<(u32, usize)>, DecodeError> {
        let count = self.leb128()?;
        let mut columns = Vec::new();
        // Each column takes at least two bytes, so a huge count runs out of input quickly.
        for _ in 0..count {
            let spec = u32::try_from(self.leb128()?)
                .map_err(|_| malformed("an Automerge column specification overflows 32 bits"))?;
            let len = self.leb128()?;
            let len = usize::try_from(len).map_err(|_| truncated(len))?;
            columns.push((spec, len));
        }
        Ok(columns)
    }
}

/// Checks that every chunk of `bytes` carries the checksum of its contents, inflating no more
/// than `limit` bytes of compressed changes (and keeping none of it). A single flipped bit in a
/// stored document or change fails this: Automerge would refuse to load the bytes, so they
/// must never be stored or appended to a stored document.
pub fn verify_checksums(bytes: &[u8], limit: usize) -> Result<(), DecodeError> {
    let mut input = Reader { rest: bytes };
    let mut budget = limit;
    while !input.rest.is_empty() {
        if input.take(4)? != MAGIC {
            return Err(malformed(
                "an Automerge chunk does not start with the magic bytes",
            ));
        }
        let checksum = input.take(4)?;
        let chunk_type = input.take(1)?[0];
        let len = input.length()?;
        let body = input.take(len)?;
        let hash = match chunk_type {
            0 | 1 => chunk_hash(chunk_type, body),
            2 => {
                let mut inflated = Vec::new();
                let bound = u64::try_from(budget).unwrap_or(u64::MAX).saturating_add(1);
                flate2::read::DeflateDecoder::new(body)
                    .take(bound)
                    .read_to_end(&mut inflated)
                    .map_err(|_| DecodeError::Compression)?;
                if inflated.len() > budget {
                    return Err(DecodeError::TooLarge { limit });
                }
                budget -= inflated.len();
                chunk_hash(1, &inflated)
            }
            3 => return Err(malformed("Automerge bundles are not accepted")),
            other => return Err(malformed(&format!("unknown Automerge chunk type {other}"))),
        };
        if hash[..4] != *checksum {
            return Err(malformed(
                "an Automerge chunk's checksum does not match its contents",
            ));
        }
    }
    Ok(())
}

/// The chunks of stored bytes (a save followed by appended changes), each whole with its
/// header, as far as their framing reads: a repair keeps those whose checksums hold. Stops at
/// the first chunk whose header is broken, since nothing after it can be found.
pub fn split(bytes: &[u8]) -> Vec<&[u8]> {
    let mut chunks = Vec::new();
    let mut input = Reader { rest: bytes };
    while !input.rest.is_empty() {
        let start = input.rest;
        let framed = (|| {
            if input.take(4)? != MAGIC {
                return Err(malformed("no magic bytes"));
            }
            input.take(5)?;
            let len = input.length()?;
            input.take(len)?;
            Ok(())
        })();
        if framed.is_err() {
            break;
        }
        chunks.push(&start[..start.len() - input.rest.len()]);
    }
    chunks
}

/// The SHA-256 Automerge names a chunk by: of its type, its LEB128 length and its body.
fn chunk_hash(chunk_type: u8, body: &[u8]) -> [u8; 32] {
    let mut header = vec![chunk_type];
    let mut len = body.len() as u64;
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            header.push(byte);
            break;
        }
        header.push(byte | 0x80);
    }
    let mut hasher = Sha256::new();
    hasher.update(&header);
    hasher.update(body);
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use automerge::{AutoCommit, ROOT, transaction::Transactable};

    use super::*;

    fn document_and_change() -> (Vec<u8>, Vec<u8>) {
        let mut doc = AutoCommit::new();
        doc.put(ROOT, "name", "Ada").unwrap();
        let saved = doc.save();
        doc.put(ROOT, "name", "Ben").unwrap();
        let change = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
        (saved, change)
    }

    #[test]
    fn intact_chunks_verify_and_any_flipped_bit_is_found() {
        let (saved, change) = document_and_change();
        let stored = [saved.as_slice(), &change].concat();
        assert_eq!(verify_checksums(&stored, 1 << 20), Ok(()));
        assert_eq!(verify_checksums(&[], 1 << 20), Ok(()));
        for byte in 0..stored.len() {
            for bit in 0..8 {
                let mut damaged = stored.clone();
                damaged[byte] ^= 1 << bit;
                assert!(
                    verify_checksums(&damaged, 1 << 20).is_err(),
                    "bit {bit} of byte {byte} flipped went unnoticed"
                );
            }
        }
    }

    #[test]
    fn stored_bytes_split_into_their_chunks_up_to_a_broken_header() {
        let (saved, change) = document_and_change();
        let stored = [saved.as_slice(), &change, &change].concat();
        assert_eq!(split(&stored), vec![&saved[..], &change[..], &change[..]]);
        let mut broken = stored.clone();
        broken[saved.len()] ^= 0xff;
        assert_eq!(split(&broken), vec![&saved[..]]);
        assert!(split(&[]).is_empty());
    }

    #[test]
    fn a_compressed_change_is_checked_against_what_it_inflates_to() {
        let mut doc = AutoCommit::new();
        doc.put(ROOT, "notes", "a".repeat(4096)).unwrap();
        let mut change = doc.get_last_local_change().unwrap().clone();
        let compressed = change.bytes().to_vec();
        assert_eq!(compressed[8], 2, "a change this large is stored compressed");
        assert_eq!(verify_checksums(&compressed, 1 << 20), Ok(()));
        let mut damaged = compressed.clone();
        damaged[5] ^= 1;
        assert!(verify_checksums(&damaged, 1 << 20).is_err());
        assert_eq!(
            verify_checksums(&compressed, 100),
            Err(DecodeError::TooLarge { limit: 100 })
        );
    }
}
