//! Making a push's merges ahead: before the storage's transaction for a small push, on up to
//! four threads alongside it for a large one, and handing each over to the transaction when
//! the record's stored version is still the one merged against (docs/ARCHITECTURE.md, "A
//! push", step 3).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use fieldsync_record::merge::guarded;
use fieldsync_record::protocol::{PushRecord, Rejection};

use crate::merge::{MergeContext, merge};
use crate::storage::{Merge, MergedRecord, SnapshotMark, StoredRecord, StoredVersion};

/// Merges the records of one push. The Automerge work is done by [`Premerges`], ahead of the
/// storage's transaction (or alongside it, for a large push); under the transaction,
/// [`Merge::merged_ahead`] hands each record's merge over if the record's stored version is
/// still the one merged against, and the storage reads the record whole only where another
/// push came between.
pub(crate) struct PushMerger<'a> {
    context: MergeContext<'a>,
    ahead: &'a Premerges,
    /// The mark of the snapshot the merges ahead were made against.
    snapshot: Option<SnapshotMark>,
    /// Records written by this push, and whether each is still the state merged ahead (false
    /// once a copy of it merged again under the transaction).
    written: HashMap<(String, String), bool>,
    /// Changes accepted so far.
    pub(crate) applied: usize,
    /// Time spent in the merges made under the transaction.
    merging: Duration,
}

impl<'a> PushMerger<'a> {
    pub(crate) fn new(
        context: MergeContext<'a>,
        ahead: &'a Premerges,
        snapshot: Option<SnapshotMark>,
    ) -> PushMerger<'a> {
        PushMerger {
            context,
            ahead,
            snapshot,
            written: HashMap::new(),
            applied: 0,
            merging: Duration::ZERO,
        }
    }

    /// Time spent merging the push's records: ahead (summed over the threads) and under the
    /// transaction.
    pub(crate) fn merge_time(&self) -> Duration {
        self.ahead.merge_time() + self.merging
    }

    /// Counts what `outcome` brings to `key`, merged ahead or again.
    fn account(
        &mut self,
        key: (String, String),
        outcome: &Result<MergedRecord, Rejection>,
        as_merged_ahead: bool,
    ) {
        if let Ok(merged) = outcome
            && !merged.new_changes.is_empty()
        {
            self.applied += merged.new_changes.len();
            let intact = self.written.entry(key).or_insert(true);
            *intact &= as_merged_ahead;
        }
    }
}

impl Merge for PushMerger<'_> {
    fn merged_ahead(
        &mut self,
        record: &PushRecord,
        now: StoredVersion,
    ) -> Option<Result<MergedRecord, Rejection>> {
        let key = (record.collection.clone(), record.id.clone());
        let premerged = self.ahead.next_of(&key)?;
        let fits = match now {
            StoredVersion::ThisPush => {
                *self.written.get(&key)? && premerged.against == Some(StoredVersion::ThisPush)
            }
            // Unchanged since the snapshot: a merge against it fits, whatever its version.
            StoredVersion::Current => premerged.against != Some(StoredVersion::ThisPush),
            now => premerged.against == Some(now),
        };
        if !fits {
            return None;
        }
        self.account(key, &premerged.result, true);
        Some(premerged.result)
    }

    fn merge(
        &mut self,
        record: &PushRecord,
        stored: Option<StoredRecord>,
    ) -> Result<MergedRecord, Rejection> {
        let merging = Instant::now();
        let outcome = merge(self.context, record, stored);
        self.merging += merging.elapsed();
        let key = (record.collection.clone(), record.id.clone());
        self.account(key, &outcome, false);
        outcome
    }

    fn snapshot_mark(&self) -> Option<SnapshotMark> {
        self.snapshot
    }
}

/// A merge made ahead of a push's transaction, and the stored state it was made against
/// (`None`: a snapshot of a state without a version, which only [`StoredVersion::Current`]
/// matches).
pub(crate) struct Premerged {
    against: Option<StoredVersion>,
    result: Result<MergedRecord, Rejection>,
}

/// Pushes with fewer distinct records merge on the request's own thread: starting threads
/// would cost more than it saves.
pub(crate) const PARALLEL_MERGE_FROM: usize = 16;
/// At most this many threads merge one push.
pub(crate) const MAX_MERGE_THREADS: usize = 4;

/// The copies of one record in a push (its positions in the push) and the stored state the
/// first is merged against.
type Group = (Vec<usize>, Option<StoredRecord>);

/// The merges of a push made ahead of its transaction, by record: each record's copies merge
/// in turn, the first against the stored state read before the transaction (the snapshot),
/// the next into the first's merge, as the storage will hand them.
///
/// A push with many records merges on threads, in push order; for it the storage's
/// transaction starts at once, so that its reads (the replay check, the stored versions)
/// overlap the merges, and [`Premerges::next_of`] waits for a record's merge only if the
/// transaction asks for it before it is made. The writes follow once every record is merged
/// (`storage/push_pipeline.rs`).
pub(crate) struct Premerges {
    group_of: HashMap<(String, String), usize>,
    merges: Mutex<Vec<GroupMerges>>,
    merged: Condvar,
    /// Nanoseconds spent merging, summed over the threads.
    merging_nanos: AtomicU64,
}

pub(crate) enum GroupMerges {
    Pending,
    Made(VecDeque<Premerged>),
    /// Merging the group failed outside each record's own guard: these records merge again
    /// under the transaction, where a failure is reported as for any request.
    Lost,
}

impl Premerges {
    /// Starts merging `records` against `snapshot` (each record's stored state, in order):
    /// here for a small push, on threads of `scope` for a large one.
    pub(crate) fn start<'scope, 'env: 'scope>(
        &'env self,
        scope: &'scope std::thread::Scope<'scope, 'env>,
        context: MergeContext<'env>,
        records: &'env [PushRecord],
        snapshot: Vec<Option<StoredRecord>>,
    ) {
        let groups = self.groups(records, snapshot);
        let threads = if groups.len() < PARALLEL_MERGE_FROM {
            1
        } else {
            fieldsync_record::parallel::threads(MAX_MERGE_THREADS)
        };
        let queue = Arc::new(Mutex::new(groups.into_iter().enumerate()));
        if threads == 1 {
            self.merge_from(&queue, context, records);
            return;
        }
        for _ in 0..threads {
            let queue = Arc::clone(&queue);
            // The request's span, for what the merge logs (a caught panic).
            let span = tracing::Span::current();
            scope.spawn(move || span.in_scope(|| self.merge_from(&queue, context, records)));
        }
    }

    /// Merges everything before returning (tests).
    #[cfg(test)]
    pub(crate) fn made(
        context: MergeContext<'_>,
        records: &[PushRecord],
        snapshot: Vec<Option<StoredRecord>>,
    ) -> Premerges {
        let premerges = Premerges::for_records(records);
        std::thread::scope(|scope| premerges.start(scope, context, records, snapshot));
        premerges
    }

    /// Groups the copies of each record, in the order of their first copy.
    pub(crate) fn for_records(records: &[PushRecord]) -> Premerges {
        let mut group_of = HashMap::new();
        for record in records {
            let next = group_of.len();
            group_of
                .entry((record.collection.clone(), record.id.clone()))
                .or_insert(next);
        }
        let merges = (0..group_of.len()).map(|_| GroupMerges::Pending).collect();
        Premerges {
            group_of,
            merges: Mutex::new(merges),
            merged: Condvar::new(),
            merging_nanos: AtomicU64::new(0),
        }
    }

    fn groups(&self, records: &[PushRecord], snapshot: Vec<Option<StoredRecord>>) -> Vec<Group> {
        let mut groups: Vec<Group> = Vec::with_capacity(self.group_of.len());
        for (index, (record, stored)) in records.iter().zip(snapshot).enumerate() {
            let key = (record.collection.clone(), record.id.clone());
            let group = self.group_of[&key];
            if group == groups.len() {
                groups.push((vec![index], stored));
            } else {
                groups[group].0.push(index);
            }
        }
        groups
    }

    /// Merges groups taken from `queue` until it is empty.
    fn merge_from(
        &self,
        queue: &Mutex<impl Iterator<Item = (usize, Group)>>,
        context: MergeContext<'_>,
        records: &[PushRecord],
    ) {
        loop {
            let next = lock(queue).next();
            let Some((group, (indices, stored))) = next else {
                return;
            };
            let merging = Instant::now();
            let made = guarded(|| merge_group(context, records, indices, stored))
                .map_or(GroupMerges::Lost, GroupMerges::Made);
            let nanos = u64::try_from(merging.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.merging_nanos.fetch_add(nanos, Ordering::Relaxed);
            lock(&self.merges)[group] = made;
            self.merged.notify_all();
        }
    }

    /// Time spent merging ahead so far, summed over the threads.
    fn merge_time(&self) -> Duration {
        Duration::from_nanos(self.merging_nanos.load(Ordering::Relaxed))
    }

    /// The next merge made ahead for `key`'s copies, once it is made; `None` if there is none
    /// (the record is not in the push, its copies are used up, or merging them failed).
    fn next_of(&self, key: &(String, String)) -> Option<Premerged> {
        let group = *self.group_of.get(key)?;
        let mut merges = lock(&self.merges);
        loop {
            match &mut merges[group] {
                GroupMerges::Pending => {
                    merges = self
                        .merged
                        .wait(merges)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                GroupMerges::Made(made) => return made.pop_front(),
                GroupMerges::Lost => return None,
            }
        }
    }
}

/// Merges one record's copies in turn, the first against `state`.
pub(crate) fn merge_group(
    context: MergeContext<'_>,
    records: &[PushRecord],
    indices: Vec<usize>,
    mut state: Option<StoredRecord>,
) -> VecDeque<Premerged> {
    let mut against = match &state {
        None => Some(StoredVersion::Absent),
        Some(stored) => stored.version.map(StoredVersion::Written),
    };
    let mut merges = VecDeque::with_capacity(indices.len());
    let mut indices = indices.into_iter().peekable();
    while let Some(index) = indices.next() {
        let record = &records[index];
        // Only a copy that another copy follows keeps the state and makes the next one: the
        // last (most often the only) merges without copying either.
        let more = indices.peek().is_some();
        let stored = if more { state.clone() } else { state.take() };
        let result = merge(context, record, stored);
        let next = match &result {
            Ok(merged) if more && !merged.new_changes.is_empty() => {
                Some(merged.to_stored(&record.scope))
            }
            _ => None,
        };
        merges.push_back(Premerged { against, result });
        if next.is_some() {
            state = next;
            against = Some(StoredVersion::ThisPush);
        }
    }
    merges
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use automerge::{ActorId, AutoCommit};
    use fieldsync_record::protocol::{Payload, RejectCode};
    use serde_bytes::ByteBuf;

    use super::*;
    use crate::Limits;
    use crate::merge::tests::{caller, changes, context, document, edit, pushed, stored};

    /// Runs `merge` over a push as a storage does: it names each record's stored version
    /// first and reads the record whole only when no merge made ahead fits; what a merge
    /// writes gets the next version. Returns the outcomes and how many records were read.
    fn run_push(
        records: &[PushRecord],
        mut state: HashMap<String, StoredRecord>,
        merge: &mut dyn Merge,
    ) -> (Vec<Result<MergedRecord, Rejection>>, usize) {
        let mut written = HashSet::new();
        let mut reads = 0;
        let mut next_version = 1000;
        let outcomes = records
            .iter()
            .map(|record| {
                let now = match state.get(&record.id) {
                    _ if written.contains(&record.id) => StoredVersion::ThisPush,
                    Some(stored) => StoredVersion::Written(stored.version.unwrap()),
                    None => StoredVersion::Absent,
                };
                let result = merge.merged_ahead(record, now).unwrap_or_else(|| {
                    reads += 1;
                    merge.merge(record, state.get(&record.id).cloned())
                });
                if let Ok(merged) = &result
                    && !merged.new_changes.is_empty()
                {
                    let mut stored = merged.to_stored(&record.scope);
                    stored.version = Some(next_version);
                    next_version += 1;
                    state.insert(record.id.clone(), stored);
                    written.insert(record.id.clone());
                }
                result
            })
            .collect();
        (outcomes, reads)
    }

    #[test]
    fn merging_ahead_on_threads_gives_what_merging_in_turn_gives() {
        let device = ActorId::random();
        let other = ActorId::random();
        let caller = caller(&device);
        let limits = Limits::default();
        let mut state = HashMap::new();
        let mut records = Vec::new();
        let mut docs: Vec<AutoCommit> = (0..24)
            .map(|i| document(&device, &format!("client {i}")))
            .collect();
        for (i, doc) in docs.iter_mut().enumerate() {
            state.insert(format!("r{i}"), stored(doc));
            records.push(pushed(
                &format!("r{i}"),
                "north",
                changes(edit(doc, "visits", 1)),
            ));
        }
        // Pushed twice in the batch: the second change builds on the first.
        for (i, visits) in [(3, 2), (7, 2), (7, 3)] {
            let change = edit(&mut docs[i], "visits", visits);
            records.push(pushed(&format!("r{i}"), "north", changes(change)));
        }
        for i in 0..5 {
            let mut doc = document(&device, &format!("new {i}"));
            records.push(pushed(
                &format!("n{i}"),
                "north",
                Payload::Document(ByteBuf::from(doc.save())),
            ));
        }
        let mut foreign = document(&other, "someone else's");
        records.push(pushed("f", "north", changes(edit(&mut foreign, "x", 1))));
        records.push(pushed("r1", "south", changes(edit(&mut docs[1], "x", 1))));
        records.push(pushed(
            "r2",
            "north",
            Payload::Changes(vec![ByteBuf::from(vec![1, 2])]),
        ));

        let (in_turn, read_in_turn) = run_push(
            &records,
            state.clone(),
            &mut |record: &PushRecord, stored| merge(context(&caller, &limits), record, stored),
        );
        assert_eq!(read_in_turn, records.len());
        let keys: Vec<(&str, &str)> = records
            .iter()
            .map(|r| (r.collection.as_str(), r.id.as_str()))
            .collect();
        let snapshot = || keys.iter().map(|(_, id)| state.get(*id).cloned()).collect();
        let context = context(&caller, &limits);
        // Merged before the transaction runs, and while it runs.
        let made = Premerges::made(context, &records, snapshot());
        let mut merger = PushMerger::new(context, &made, None);
        let (ahead, read_ahead) = run_push(&records, state.clone(), &mut merger);
        let alongside = Premerges::for_records(&records);
        let (along, read_along) = std::thread::scope(|scope| {
            alongside.start(scope, context, &records, snapshot());
            run_push(
                &records,
                state.clone(),
                &mut PushMerger::new(context, &alongside, None),
            )
        });

        assert_eq!(ahead, in_turn);
        assert_eq!(along, in_turn);
        assert_eq!(
            (read_ahead, read_along),
            (0, 0),
            "no record changed since the snapshot, copies pushed twice included"
        );
        let accepted = ahead.iter().filter(|r| r.is_ok()).count();
        assert_eq!(
            accepted,
            24 + 3 + 5,
            "every record of the device's own scope"
        );
        let codes: Vec<RejectCode> = ahead
            .iter()
            .filter_map(|r| r.as_ref().err().map(|e| e.code))
            .collect();
        assert_eq!(
            codes,
            vec![
                RejectCode::ForeignActor,
                RejectCode::ForbiddenScope,
                RejectCode::Malformed
            ]
        );
        assert_eq!(merger.applied, 24 + 3 + 5);
    }

    #[test]
    fn a_record_changed_since_the_snapshot_merges_again() {
        let device = ActorId::random();
        let colleague = ActorId::random();
        let caller = caller(&device);
        let limits = Limits::default();
        let mut original = document(&device, "Ada");
        let before = stored(&mut original);
        // Another push, through another request, lands between the snapshot and the
        // transaction.
        let mut theirs = original.fork().with_actor(colleague);
        edit(&mut theirs, "phone", 555);
        let moved = stored(&mut theirs);
        let mut mine = original.fork().with_actor(device.clone());
        let record = pushed("a", "north", changes(edit(&mut mine, "visits", 3)));

        let moved = StoredRecord {
            version: Some(2),
            ..moved
        };
        // Pushed twice: the second copy builds on the first.
        let again = pushed("a", "north", changes(edit(&mut mine, "visits", 4)));

        let records = [record, again];
        let snapshot = || vec![Some(before.clone()), Some(before.clone())];
        let context = context(&caller, &limits);
        let made = Premerges::made(context, &records, snapshot());
        let mut unmoved = PushMerger::new(context, &made, None);
        assert!(
            unmoved
                .merged_ahead(&records[0], StoredVersion::Written(1))
                .is_some(),
            "the version merged against"
        );
        assert!(
            unmoved
                .merged_ahead(&records[1], StoredVersion::ThisPush)
                .is_some(),
            "the copy before it was merged ahead"
        );

        let made = Premerges::made(context, &records, snapshot());
        let mut merger = PushMerger::new(context, &made, None);
        let now = StoredVersion::Written(2);
        assert!(merger.merged_ahead(&records[0], now).is_none());
        let merged = merger.merge(&records[0], Some(moved)).unwrap();
        let doc = AutoCommit::load(&merged.doc).unwrap();
        let (fields, _) = fieldsync_record::document::document_values(&doc).unwrap();
        assert_eq!(fields["phone"], 555, "the colleague's change is kept");
        assert_eq!(fields["visits"], 3, "the pushed change is merged");
        assert_eq!(merged.new_changes.len(), 1);
        // The merge ahead of the second copy built on a first merge that did not happen.
        assert!(
            merger
                .merged_ahead(&records[1], StoredVersion::ThisPush)
                .is_none()
        );
        let merged = merger
            .merge(&records[1], Some(merged.to_stored("north")))
            .unwrap();
        let doc = AutoCommit::load(&merged.doc).unwrap();
        let (fields, _) = fieldsync_record::document::document_values(&doc).unwrap();
        assert_eq!(
            (&fields["phone"], &fields["visits"]),
            (&serde_json::json!(555), &serde_json::json!(4))
        );
        assert_eq!(merger.applied, 2);
    }

    #[test]
    fn a_snapshot_nothing_changed_since_fits_whatever_its_version() {
        let device = ActorId::random();
        let caller = caller(&device);
        let limits = Limits::default();
        let mut original = document(&device, "Ada");
        // As stored before versions were kept: no version to name.
        let unversioned = StoredRecord {
            version: None,
            ..stored(&mut original)
        };
        let mut mine = original.fork().with_actor(device.clone());
        let records = [
            pushed("a", "north", changes(edit(&mut mine, "visits", 3))),
            pushed("a", "north", changes(edit(&mut mine, "visits", 4))),
        ];
        let context = context(&caller, &limits);
        let snapshot = || vec![Some(unversioned.clone()), Some(unversioned.clone())];

        let made = Premerges::made(context, &records, snapshot());
        let mut versioned = PushMerger::new(context, &made, None);
        assert!(
            versioned
                .merged_ahead(&records[0], StoredVersion::Written(1))
                .is_none(),
            "no version to match"
        );

        let made = Premerges::made(context, &records, snapshot());
        let mut current = PushMerger::new(context, &made, None);
        assert!(
            current
                .merged_ahead(&records[0], StoredVersion::Current)
                .is_some()
        );
        // The second copy was merged ahead into the first: it fits as this push left it, not
        // as the snapshot read it.
        assert!(
            current
                .merged_ahead(&records[1], StoredVersion::ThisPush)
                .is_some()
        );
        let made = Premerges::made(context, &records, snapshot());
        let mut confused = PushMerger::new(context, &made, None);
        confused.merged_ahead(&records[0], StoredVersion::Current);
        assert!(
            confused
                .merged_ahead(&records[1], StoredVersion::Current)
                .is_none()
        );
    }
}
