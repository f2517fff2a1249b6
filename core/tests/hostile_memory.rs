//! Bounded memory under hostile input: decompression bombs and huge declared lengths are
//! refused without the store allocating what they claim.
//!
//! A test binary of its own, because it replaces the global allocator with one that counts
//! live bytes and their peak. It counts allocations, never time, so it gives the same figures
//! on any machine. It counts what Rust code allocates (Automerge, decoding, the store);
//! SQLite allocates through its own allocator, bounded by its page cache, and is not counted.
//! Everything runs in one test function: the counter is process-wide, and tests running side
//! by side would add to each other's peaks.

mod common;

use common::{fields, options, record, schema};
use fieldsync_core::{RemotePayload, Store};
use fieldsync_record::protocol::{self, DecodeError};
use peak_alloc::PeakAlloc;
use serde_json::json;

#[global_allocator]
static ALLOCATOR: PeakAlloc = PeakAlloc;

/// The most live memory the store may add while refusing any one input.
const BOUND: usize = 64 << 20;

/// Runs `work` and returns how far live memory rose above where it started.
fn peak_of<T>(work: impl FnOnce() -> T) -> (T, usize) {
    let start = ALLOCATOR.current_usage();
    ALLOCATOR.reset_peak_usage();
    let result = work();
    (result, ALLOCATOR.peak_usage().saturating_sub(start))
}

#[test]
fn bombs_and_huge_lengths_are_refused_within_the_memory_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("device.db"), schema(), options()).unwrap();
    let existing = store
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Ada", "notes": "Calm visit."})),
        )
        .unwrap();

    let mut inputs: Vec<(String, Vec<u8>)> = vec![
        (
            "compressed change, 1 GiB".into(),
            common::compressed_change_bomb(1024),
        ),
        (
            "document column, 1 GiB".into(),
            common::document_column_bomb(1024),
        ),
        (
            "compressed change, just past the limit".into(),
            common::compressed_change_bomb(17),
        ),
    ];
    for (i, bytes) in common::huge_length_inputs().into_iter().enumerate() {
        inputs.push((format!("huge length {i}"), bytes));
    }
    let (deep, _) = common::nested_client("north", 5_000, false);
    inputs.push(("5,000 nested maps and lists".into(), deep));

    let mut worst = 0;
    for (name, bytes) in &inputs {
        for (id, as_document) in [(existing.as_str(), false), ("new-record", true)] {
            let payload = if as_document {
                RemotePayload::Document(bytes.clone())
            } else {
                RemotePayload::Changes(vec![bytes.clone()])
            };
            let (report, peak) = peak_of(|| {
                store
                    .apply_remote(vec![record("clients", id, "north", payload)])
                    .unwrap()
            });
            assert_eq!(report.rejected.len(), 1, "{name}: {report:?}");
            assert!(
                peak < BOUND,
                "{name} made the store allocate {peak} bytes (bound {BOUND})"
            );
            println!(
                "{name} as {}: peak {peak} bytes",
                if as_document { "document" } else { "change" }
            );
            worst = worst.max(peak);
        }
    }

    // The measuring itself inflates at most the limit, into a counter.
    let (checked, peak) = peak_of(|| {
        protocol::check_inflated_size(
            &common::compressed_change_bomb(4096),
            protocol::MAX_RECORD_INFLATED_BYTES,
        )
    });
    assert!(matches!(checked, Err(DecodeError::TooLarge { .. })));
    assert!(
        peak < 16 << 20,
        "checking a 4 GiB bomb allocated {peak} bytes"
    );
    println!("check_inflated_size of a 4 GiB bomb: peak {peak} bytes");

    // A pull body that inflates to a gigabyte stops at the decoder's limit.
    let body_bomb = common::zero_bomb(1024);
    let (decoded, peak) =
        peak_of(|| protocol::decode::<protocol::PullResponse>(&body_bomb, 1 << 20));
    assert_eq!(decoded, Err(DecodeError::TooLarge { limit: 1 << 20 }));
    assert!(
        peak < 4 << 20,
        "decoding a 1 GiB body allocated {peak} bytes"
    );
    println!("decode of a 1 GiB body with a 1 MiB limit: peak {peak} bytes");

    let merged = store.get("clients", &existing).unwrap().unwrap();
    assert_eq!(merged.fields["name"], "Ada");
    println!(
        "memory: {} inputs tried, worst peak {worst} bytes, bound {BOUND} bytes",
        inputs.len() * 2 + 2
    );
}
