//! What erasing clinical content costs in SQLite, and which way of erasing leaves no trace of it.
//!
//! Erased content must survive nowhere in the database file (free pages, freeblocks inside
//! b-tree pages, overflow pages) nor in the WAL after a checkpoint. The benchmark times the
//! store's edit workload under each `PRAGMA secure_delete` mode, interleaved so that all modes
//! meet the same machine, then erases the records holding a canary string and scans the raw
//! files for it. It does the same for the vacuum approaches with secure_delete off:
//! `auto_vacuum = INCREMENTAL` with `PRAGMA incremental_vacuum`, and a full `VACUUM`. Plain
//! rusqlite, not the Fieldsync store: the question is SQLite's.
//!
//! `cargo bench -p fieldsync-core --bench erasure` runs the full sizes; `-- --quick` smaller
//! ones. Figures go to docs/BENCHMARKS.md.

use std::collections::HashSet;
use std::ffi::c_int;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rusqlite::hooks::Wal;
use rusqlite::wal::CheckpointMode;
use rusqlite::{Connection, params};

/// Automerge documents are compressed binary, so doc blobs are slices of random bytes.
const POOL_BYTES: usize = 64 * 1024;
/// Records that hold the canary until the erasure; the edit workload leaves them alone, so
/// that nothing but the erasure and the vacuum can overwrite what they leave behind.
const CANARY_RECORDS: usize = 64;
/// SQLite's default auto-checkpoint, which the store keeps.
const AUTOCHECKPOINT_FRAMES: c_int = 1000;
/// Each WAL frame is a page plus a 24-byte header.
const WAL_FRAME_HEADER: u64 = 24;

struct Variant {
    label: &'static str,
    secure_delete: &'static str,
    incremental: bool,
}

const VARIANTS: [Variant; 4] = [
    Variant {
        label: "secure_delete=OFF",
        secure_delete: "OFF",
        incremental: false,
    },
    Variant {
        label: "secure_delete=FAST",
        secure_delete: "FAST",
        incremental: false,
    },
    Variant {
        label: "secure_delete=ON",
        secure_delete: "ON",
        incremental: false,
    },
    Variant {
        label: "OFF, auto_vacuum=INCREMENTAL",
        secure_delete: "OFF",
        incremental: true,
    },
];

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (records, updates) = if quick {
        (1_000, 2_000)
    } else {
        (10_000, 20_000)
    };
    println!(
        "fieldsync-core erasure benchmark ({} build)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    let work = Workload::new(records, updates);
    let dbs: Vec<Db> = VARIANTS.iter().map(|v| Db::create(v, &work)).collect();
    let (version, page_size): (String, i64) = dbs[0]
        .conn
        .query_row(
            "SELECT sqlite_version(), (SELECT page_size FROM pragma_page_size)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    println!(
        "SQLite {version}, page size {page_size}, WAL, synchronous=NORMAL, \
         auto-checkpoint every {AUTOCHECKPOINT_FRAMES} frames"
    );
    println!(
        "{records} records, doc blobs 2-8 KiB, {CANARY_RECORDS} of them holding a canary \
         (in the doc's first bytes, its last bytes and the note)\n"
    );

    let times = edit_workload(&dbs, &work);
    report_edits(&dbs, &times, &work, page_size as u64);

    let closed = erase_and_scan(dbs, &work);
    vacuums(closed, &work, page_size as u64);
}

/// Erases the canary records in every database, checkpoints, closes and scans, printing the
/// remnant table.
fn erase_and_scan(dbs: Vec<Db>, work: &Workload) -> Vec<ClosedDb> {
    println!(
        "\nremnants of the erased records: canary copies in the raw files, before the erasure and after it"
    );
    println!(
        "{:<30} {:>8}  {:<52} {:<22} WAL after checkpoint(TRUNCATE)",
        "mode", "before", "database file after checkpoint and close", "WAL before checkpoint",
    );
    VARIANTS
        .iter()
        .zip(dbs)
        .map(|(variant, db)| {
            let before = db.canary_hits_before;
            db.erase(work);
            let (closed, remnant) = db.checkpoint_close_scan(&work.canary);
            println!("{:<30} {before:>8}  {remnant}", variant.label);
            closed
        })
        .collect()
}

/// The vacuum approaches, with secure_delete off: incremental on the auto_vacuum database,
/// full on the plain one.
fn vacuums(closed: Vec<ClosedDb>, work: &Workload, page_size: u64) {
    let mut closed = closed.into_iter();
    let off = closed.next().expect("the OFF database comes first");
    let incremental = closed.last().expect("the incremental database comes last");
    println!(
        "\nvacuum after the erasure, secure_delete=OFF, {} records",
        work.ids.len()
    );
    println!(
        "{:<28} {:>10} {:>11} {:>13} {:>12} {:>18}  canary in database file / WAL",
        "approach", "free pages", "vacuum ms", "checkpoint ms", "WAL written", "file size",
    );
    vacuum(incremental, "PRAGMA incremental_vacuum", work, page_size);
    vacuum(off, "VACUUM", work, page_size);
}

/// The records and edits, generated once so that every database gets the same bytes.
struct Workload {
    ids: Vec<String>,
    pool: Vec<u8>,
    /// Length and pool offset of each record's first doc.
    seed: Vec<(usize, usize)>,
    canary: String,
    canary_records: Vec<usize>,
    edits: Vec<Edit>,
}

struct Edit {
    record: usize,
    len: usize,
    offset: usize,
    note: String,
}

impl Workload {
    fn new(records: usize, updates: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(0x00e5_a5e0);
        let mut pool = vec![0; POOL_BYTES];
        rng.fill(&mut pool[..]);
        let ids = (0..records)
            .map(|i| {
                let mut random = [0; 10];
                rng.fill(&mut random[..]);
                uuid::Builder::from_unix_timestamp_millis(1_796_000_000_000 + i as u64, &random)
                    .into_uuid()
                    .to_string()
            })
            .collect();
        let canary_records: Vec<usize> = (0..CANARY_RECORDS)
            .map(|k| k * records / CANARY_RECORDS + records / (2 * CANARY_RECORDS))
            .collect();
        let mut lens: Vec<usize> = (0..records)
            .map(|_| rng.random_range(2048..=8192))
            .collect();
        // Half the canary docs fit in their leaf page and half spill into overflow pages, so
        // that both places an erased value can stay are scanned.
        for (k, &r) in canary_records.iter().enumerate() {
            lens[r] = if k % 2 == 0 {
                2048 + k * 23
            } else {
                5000 + k * 37
            };
        }
        let seed = lens
            .iter()
            .map(|&len| (len, rng.random_range(0..=POOL_BYTES - len)))
            .collect();
        let protected: HashSet<usize> = canary_records.iter().copied().collect();
        let edits = (0..updates)
            .map(|u| {
                let record = loop {
                    let r = rng.random_range(0..records);
                    if !protected.contains(&r) {
                        break r;
                    }
                };
                // An Automerge document grows a little with each edit and is rewritten whole.
                lens[record] += rng.random_range(32..=160);
                let len = lens[record];
                Edit {
                    record,
                    len,
                    offset: rng.random_range(0..=POOL_BYTES - len),
                    note: format!(
                        "Session {record}, edit {u}: mood {}/10, plan reviewed",
                        u % 10
                    ),
                }
            })
            .collect();
        let mut random = [0u8; 16];
        getrandom::fill(&mut random).expect("the OS provides random bytes");
        let canary = format!(
            "CANARY-{}",
            random
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        Workload {
            ids,
            pool,
            seed,
            canary,
            canary_records,
            edits,
        }
    }

    fn doc(&self, record: usize) -> Vec<u8> {
        let (len, offset) = self.seed[record];
        let mut doc = self.pool[offset..offset + len].to_vec();
        if self.canary_records.contains(&record) {
            let canary = self.canary.as_bytes();
            doc[16..16 + canary.len()].copy_from_slice(canary);
            doc[len - 16 - canary.len()..len - 16].copy_from_slice(canary);
        }
        doc
    }

    fn note(&self, record: usize) -> String {
        if self.canary_records.contains(&record) {
            format!("Session {record}, intake: {}", self.canary)
        } else {
            format!("Session {record}, intake: referred by GP")
        }
    }
}

/// Frames appended to the WAL, counted by the WAL hook that also does SQLite's
/// auto-checkpoint (installing a hook replaces the built-in one).
#[derive(Default)]
struct WalCount {
    frames: u64,
    in_wal: c_int,
}

struct Db {
    dir: tempfile::TempDir,
    conn: Connection,
    wal: Arc<Mutex<WalCount>>,
    canary_hits_before: usize,
}

impl Db {
    fn create(variant: &Variant, work: &Workload) -> Db {
        let dir = tempfile::tempdir().unwrap();
        let wal = Arc::new(Mutex::new(WalCount::default()));
        let path = dir.path().join("erasure.db");
        // auto_vacuum only takes effect if set before the first page is written, which
        // switching to WAL already does; so the table is created first, by its own connection.
        Connection::open(&path)
            .unwrap()
            .execute_batch(&format!(
                "PRAGMA auto_vacuum = {};
                 CREATE TABLE records (id TEXT PRIMARY KEY, doc BLOB NOT NULL, note TEXT);",
                if variant.incremental {
                    "INCREMENTAL"
                } else {
                    "NONE"
                }
            ))
            .unwrap();
        let conn = open(&path, variant.secure_delete, &wal);
        let auto_vacuum: i64 = conn
            .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
            .unwrap();
        assert_eq!(auto_vacuum, if variant.incremental { 2 } else { 0 });
        let tx = conn.unchecked_transaction().unwrap();
        {
            let mut insert = tx
                .prepare("INSERT INTO records (id, doc, note) VALUES (?1, ?2, ?3)")
                .unwrap();
            for (i, id) in work.ids.iter().enumerate() {
                insert
                    .execute(params![id, work.doc(i), work.note(i)])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
        let live: i64 = conn
            .query_row(
                "SELECT count(*) FROM records WHERE instr(note, ?1) > 0",
                [&work.canary],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(live, CANARY_RECORDS as i64);
        let mut db = Db {
            dir,
            conn,
            wal,
            canary_hits_before: 0,
        };
        // The canary must be in the database file itself before anything is erased, or not
        // finding it afterwards would prove nothing.
        db.checkpoint();
        db.canary_hits_before = find_all(&std::fs::read(db.path()).unwrap(), &work.canary).len();
        assert!(db.canary_hits_before > 0);
        *db.wal.lock().unwrap() = WalCount::default();
        db
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("erasure.db")
    }

    fn update(&self, id: &str, doc: &[u8], note: &str) {
        self.conn
            .prepare_cached("UPDATE records SET doc = ?1, note = ?2 WHERE id = ?3")
            .unwrap()
            .execute(params![doc, note, id])
            .unwrap();
    }

    /// Rewrites three in four canary records with new values and deletes the rest, each in a
    /// transaction of its own, as erasing a field or a record would.
    fn erase(&self, work: &Workload) {
        for (k, &r) in work.canary_records.iter().enumerate() {
            if k % 4 == 3 {
                self.conn
                    .execute("DELETE FROM records WHERE id = ?1", [&work.ids[r]])
                    .unwrap();
            } else {
                let len = work.seed[r].0 + 100;
                self.update(&work.ids[r], &work.pool[..len], "erased");
            }
        }
        let live: i64 = self
            .conn
            .query_row(
                "SELECT count(*) FROM records WHERE instr(doc, ?1) > 0 OR instr(note, ?2) > 0",
                params![work.canary.as_bytes(), work.canary],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(live, 0);
    }

    fn checkpoint(&self) {
        let (busy, log, done): (i64, i64, i64) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!((busy, log, done), (0, 0, 0));
        self.wal.lock().unwrap().in_wal = 0;
    }

    fn wal_frames(&self) -> u64 {
        self.wal.lock().unwrap().frames
    }

    /// Checkpoints with TRUNCATE and scans the WAL while the connection is still open (closing
    /// deletes the WAL), then closes and scans the database file.
    fn checkpoint_close_scan(self, canary: &str) -> (ClosedDb, Remnant) {
        let wal_path = wal_path(&self.path());
        // Auto-checkpoints are PASSIVE: they leave the WAL file at its size, old frames and all.
        let before = std::fs::read(&wal_path).unwrap_or_default();
        let wal_before = (find_all(&before, canary).len(), before.len() as u64);
        self.checkpoint();
        let wal = std::fs::read(&wal_path).unwrap_or_default();
        let wal_hits = find_all(&wal, canary).len();
        let path = self.path();
        self.conn.close().unwrap();
        let file = std::fs::read(&path).unwrap();
        let remnant = Remnant {
            places: classify(&file, &find_all(&file, canary)),
            file_bytes: file.len() as u64,
            wal_before,
            wal_bytes: wal.len() as u64,
            wal_hits,
            wal_left_after_close: wal_path.exists(),
        };
        let closed = ClosedDb {
            dir: self.dir,
            wal: self.wal,
            file_bytes: remnant.file_bytes,
        };
        (closed, remnant)
    }
}

struct ClosedDb {
    dir: tempfile::TempDir,
    wal: Arc<Mutex<WalCount>>,
    file_bytes: u64,
}

fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// Opens a connection the way the store does, with the WAL hook counting frames.
fn open(path: &Path, secure_delete: &str, wal: &Arc<Mutex<WalCount>>) -> Connection {
    let mut conn = Connection::open(path).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA synchronous = NORMAL; PRAGMA temp_store = MEMORY; PRAGMA cache_size = -8192;
         PRAGMA secure_delete = {secure_delete};"
    ))
    .unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let expected = match secure_delete {
        "OFF" => 0,
        "ON" => 1,
        _ => 2,
    };
    let set: i64 = conn
        .query_row("PRAGMA secure_delete", [], |r| r.get(0))
        .unwrap();
    assert_eq!(set, expected);
    let counter = Arc::clone(wal);
    conn.wal_hook(Some(move |wal: &mut Wal, frames: c_int| {
        let mut count = counter.lock().expect("no panic while the count is locked");
        // Fewer frames than last time means the WAL started over.
        let written = if frames >= count.in_wal {
            frames - count.in_wal
        } else {
            frames
        };
        count.frames += written as u64;
        count.in_wal = frames;
        if frames >= AUTOCHECKPOINT_FRAMES {
            let (log, done) = wal.checkpoint_v2(CheckpointMode::PASSIVE)?;
            // A complete checkpoint lets the next write start the WAL over from its first frame.
            if log == done {
                count.in_wal = 0;
            }
        }
        Ok(())
    }))
    .unwrap();
    conn
}

/// Runs every edit on every database in turn, rotating which goes first, so that a machine that
/// speeds up or slows down affects all modes alike. Returns each database's sorted times.
fn edit_workload(dbs: &[Db], work: &Workload) -> Vec<Vec<Duration>> {
    let mut times = vec![Vec::with_capacity(work.edits.len()); dbs.len()];
    for (u, edit) in work.edits.iter().enumerate() {
        let doc = &work.pool[edit.offset..edit.offset + edit.len];
        for k in 0..dbs.len() {
            let d = (u + k) % dbs.len();
            let start = Instant::now();
            dbs[d].update(&work.ids[edit.record], doc, &edit.note);
            times[d].push(start.elapsed());
        }
    }
    for t in &mut times {
        t.sort_unstable();
    }
    times
}

fn report_edits(dbs: &[Db], times: &[Vec<Duration>], work: &Workload, page_size: u64) {
    println!(
        "edit workload: {} updates of doc and note, one transaction each (times interleaved)",
        work.edits.len()
    );
    println!(
        "{:<30} {:>8} {:>8} {:>9} {:>9} {:>11} {:>12} {:>10}",
        "mode",
        "p50 µs",
        "p99 µs",
        "total s",
        "p50 ratio",
        "total ratio",
        "WAL written",
        "file size"
    );
    let total = |t: &[Duration]| t.iter().sum::<Duration>();
    let (base_p50, base_total) = (percentile(&times[0], 0.5), total(&times[0]));
    for ((variant, db), t) in VARIANTS.iter().zip(dbs).zip(times) {
        let (p50, sum) = (percentile(t, 0.5), total(t));
        let file = std::fs::metadata(db.path()).unwrap().len();
        println!(
            "{:<30} {:>8.1} {:>8.1} {:>9.2} {:>8.2}x {:>10.2}x {:>8.1} MiB {:>6.1} MiB",
            variant.label,
            us(p50),
            us(percentile(t, 0.99)),
            sum.as_secs_f64(),
            p50.as_secs_f64() / base_p50.as_secs_f64(),
            sum.as_secs_f64() / base_total.as_secs_f64(),
            mib(db.wal_frames() * (page_size + WAL_FRAME_HEADER)),
            mib(file)
        );
    }
}

/// Reopens a closed database with secure_delete off, runs `sql` to the end, checkpoints with
/// TRUNCATE, closes and scans, printing one row of the vacuum table.
fn vacuum(db: ClosedDb, sql: &str, work: &Workload, page_size: u64) {
    let path = db.dir.path().join("erasure.db");
    let conn = open(&path, "OFF", &db.wal);
    let free_before: i64 = conn
        .query_row("PRAGMA freelist_count", [], |r| r.get(0))
        .unwrap();
    *db.wal.lock().unwrap() = WalCount::default();
    let start = Instant::now();
    // `PRAGMA incremental_vacuum` frees one page per row it returns, so it must be stepped to
    // the end; `execute_batch` would step it once and free a single page.
    let mut stmt = conn.prepare(sql).unwrap();
    let mut rows = stmt.query([]).unwrap();
    while rows.next().unwrap().is_some() {}
    drop(rows);
    drop(stmt);
    let vacuumed = start.elapsed();
    let free_after: i64 = conn
        .query_row("PRAGMA freelist_count", [], |r| r.get(0))
        .unwrap();
    assert_eq!(free_after, 0);
    let frames = db.wal.lock().unwrap().frames;
    let reopened = Db {
        dir: db.dir,
        conn,
        wal: db.wal,
        canary_hits_before: 0,
    };
    let start = Instant::now();
    reopened.checkpoint();
    let checkpointed = start.elapsed();
    let (_, remnant) = reopened.checkpoint_close_scan(&work.canary);
    println!(
        "{:<28} {:>10} {:>11.0} {:>13.0} {:>8.1} MiB {:>5.1} -> {:>4.1} MiB  {} / {}",
        sql.trim_start_matches("PRAGMA "),
        free_before,
        ms(vacuumed),
        ms(checkpointed),
        mib(frames * (page_size + WAL_FRAME_HEADER)),
        mib(db.file_bytes),
        mib(remnant.file_bytes),
        remnant.places,
        if remnant.wal_hits > 0 {
            "found"
        } else {
            "not found"
        }
    );
}

/// What a scan found after the erasure.
struct Remnant {
    places: Places,
    file_bytes: u64,
    /// Canary copies in the WAL before the final checkpoint, and its size.
    wal_before: (usize, u64),
    wal_bytes: u64,
    wal_hits: usize,
    wal_left_after_close: bool,
}

impl std::fmt::Display for Remnant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let places = self.places.to_string();
        let found = |hits: usize| {
            if hits > 0 {
                format!("found {hits}")
            } else {
                "not found".to_string()
            }
        };
        let before = format!(
            "{} ({:.1} MiB)",
            found(self.wal_before.0),
            mib(self.wal_before.1)
        );
        write!(
            f,
            "{places:<52} {before:<22} {} ({} bytes){}",
            found(self.wal_hits),
            self.wal_bytes,
            if self.wal_left_after_close {
                ", WAL kept at close"
            } else {
                ""
            }
        )
    }
}

/// Where in the database file the canary copies sit.
#[derive(Default)]
struct Places {
    free_page: usize,
    freeblock: usize,
    unallocated: usize,
    live_cell: usize,
    other_page: usize,
}

impl std::fmt::Display for Places {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = [
            (self.free_page, "free page"),
            (self.freeblock, "freeblock"),
            (self.unallocated, "unallocated"),
            (self.live_cell, "cell"),
            (self.other_page, "other page"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        if parts.is_empty() {
            write!(f, "not found")
        } else {
            write!(f, "found: {}", parts.join(", "))
        }
    }
}

fn find_all(haystack: &[u8], needle: &str) -> Vec<usize> {
    let needle = needle.as_bytes();
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(at, _)| at)
        .collect()
}

/// Sorts each hit by the page it is on (read from the file format: freelist, b-tree page
/// header, freeblock chain), to tell in-page remnants from whole free pages.
fn classify(file: &[u8], hits: &[usize]) -> Places {
    let be16 = |at: usize| u16::from_be_bytes([file[at], file[at + 1]]) as usize;
    let be32 = |at: usize| u32::from_be_bytes(file[at..at + 4].try_into().unwrap()) as usize;
    let page_size = match be16(16) {
        1 => 65_536,
        n => n,
    };
    let mut free = HashSet::new();
    let mut trunk = be32(32);
    while trunk != 0 && free.insert(trunk) {
        let at = (trunk - 1) * page_size;
        for leaf in 0..be32(at + 4) {
            free.insert(be32(at + 8 + 4 * leaf));
        }
        trunk = be32(at);
    }
    let mut places = Places::default();
    for &hit in hits {
        let page = hit / page_size + 1;
        let start = (page - 1) * page_size;
        let offset = hit - start;
        let header = start + if page == 1 { 100 } else { 0 };
        if free.contains(&page) {
            places.free_page += 1;
            continue;
        }
        let kind = file[header];
        if ![2, 5, 10, 13].contains(&kind) {
            places.other_page += 1;
            continue;
        }
        let pointers = header - start + if kind >= 10 { 8 } else { 12 } + 2 * be16(header + 3);
        let content = match be16(header + 5) {
            0 => 65_536,
            n => n,
        };
        let mut block = be16(header + 1);
        let mut in_freeblock = false;
        while block != 0 && !in_freeblock {
            in_freeblock = (block..block + be16(start + block + 2)).contains(&offset);
            block = be16(start + block);
        }
        if in_freeblock {
            places.freeblock += 1;
        } else if (pointers..content).contains(&offset) {
            places.unallocated += 1;
        } else {
            places.live_cell += 1;
        }
    }
    places
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
