// The store's calls as suspend functions that move to an IO dispatcher, for code on the main
// thread: Android's StrictMode, and Room before it, treat disk access there as a bug.

package org.fieldsync

import java.io.File
import kotlinx.coroutines.CoroutineDispatcher
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.withContext

/**
 * [store]'s calls as `suspend` functions: each one runs the blocking call on [dispatcher] and
 * resumes the caller with its result, so a coroutine on the main thread can call them directly:
 *
 * ```
 * val records = store.suspending()
 * viewModelScope.launch {
 *     val id = records.insert("clients", fieldsOf("caseload_id" to "north", "name" to "Ada"))
 *     adapter.submitList(records.query("clients", north))
 * }
 * ```
 *
 * A wrapper rather than suspend overloads on [Store] itself: an overload named like the blocking
 * call would be picked silently in a coroutine that meant to block, and the other way round.
 * It holds no state of its own and does not own [store]: closing the store is the caller's.
 * Every call may throw the [FieldsyncException] its blocking counterpart throws; cancelling the
 * caller while a call runs lets that call finish (a native call cannot be interrupted), and a
 * write that finished is committed.
 */
class SuspendingStore(
    /** The store whose calls these are. */
    val store: Store,
    /** Where the calls run; [Dispatchers.IO] unless given. */
    val dispatcher: CoroutineDispatcher = Dispatchers.IO,
) {
    private suspend inline fun <T> io(crossinline call: (Store) -> T): T =
        withContext(dispatcher) { call(store) }

    /** [Store.insert]: inserts a record with a new id and returns the id. */
    suspend fun insert(collection: String, fields: Map<String, FieldValue>): String =
        io { it.insert(collection, fields) }

    /** [Store.insertWithId]: inserts a record with the given id. */
    suspend fun insertWithId(collection: String, id: String, fields: Map<String, FieldValue>) =
        io { it.insertWithId(collection, id, fields) }

    /** [Store.update]: sets the fields in [patch]; `FieldValue.Null` clears an optional one. */
    suspend fun update(collection: String, id: String, patch: Map<String, FieldValue>) =
        io { it.update(collection, id, patch) }

    /**
     * [Store.spliceText]: at [index], deletes [deleteCount] characters of the `text` field and
     * inserts [insert]. Positions are [String] indices (UTF-16 code units), as `indexOf` gives.
     */
    suspend fun spliceText(collection: String, id: String, field: String, index: Int, deleteCount: Int, insert: String) =
        io { it.spliceText(collection, id, field, index, deleteCount, insert) }

    /** [Store.delete]: deletes a record, leaving a tombstone that syncs. */
    suspend fun delete(collection: String, id: String) = io { it.delete(collection, id) }

    /** [Store.writeBatch]: applies the writes in one transaction; returns each one's record id. */
    suspend fun writeBatch(writes: List<Write>): List<String> = io { it.writeBatch(writes) }

    /** [Store.get]: the live record with this id, or null. */
    suspend fun get(collection: String, id: String): Record? = io { it.get(collection, id) }

    /** [Store.query]: the live records [query] finds. */
    suspend fun query(collection: String, query: Query): List<Record> = io { it.query(collection, query) }

    /** [Store.count]: how many live records match [filter]. */
    suspend fun count(collection: String, filter: Filter = Filter.All): Long = io { it.count(collection, filter) }

    /** [Store.orphans]: live records whose references point at a deleted or absent record. */
    suspend fun orphans(collection: String): List<Orphan> = io { it.orphans(collection) }

    /** [Store.conflicts]: the record's fields that concurrent writes set, winner and losers. */
    suspend fun conflicts(collection: String, id: String): List<FieldConflict> = io { it.conflicts(collection, id) }

    /** [Store.history]: every change of the record, oldest first. */
    suspend fun history(collection: String, id: String): List<HistoryEntry> = io { it.history(collection, id) }

    /** [Store.outboxLen]: how many local changes wait to be pushed. */
    suspend fun outboxLen(): Long = io { it.outboxLen() }

    /** [Store.rejectedWrites]: writes that did not reach the server, oldest first. */
    suspend fun rejectedWrites(): List<RejectedWrite> = io { it.rejectedWrites() }

    /** [Store.retryRejectedWrite]: writes a rejected write again, then forgets it. */
    suspend fun retryRejectedWrite(id: Long) = io { it.retryRejectedWrite(id) }

    /** [Store.discardRejectedWrite]: forgets a rejected write. */
    suspend fun discardRejectedWrite(id: Long) = io { it.discardRejectedWrite(id) }

    /** [Store.attach] with a [File]: stores its bytes, a chunk at a time, and references them. */
    suspend fun attach(
        collection: String,
        id: String,
        field: String,
        file: File,
        mediaType: String,
        name: String? = null,
    ): AttachmentRef = io { it.attach(collection, id, field, file, mediaType, name) }

    /** [Store.attach] with bytes in memory. */
    suspend fun attach(
        collection: String,
        id: String,
        field: String,
        bytes: ByteArray,
        mediaType: String,
        name: String? = null,
    ): AttachmentRef = io { it.attach(collection, id, field, bytes, mediaType, name) }

    /** [Store.attachmentOf]: the reference the `attachment` field holds, or null. */
    suspend fun attachmentOf(collection: String, id: String, field: String): AttachmentRef? =
        io { it.attachmentOf(collection, id, field) }

    /** [Store.hasAttachment]: whether the store holds every byte [reference] names. */
    suspend fun hasAttachment(reference: AttachmentRef): Boolean = io { it.hasAttachment(reference) }

    /** [Store.attachmentBytes]: the bytes [reference] names, or null while not all are here. */
    suspend fun attachmentBytes(reference: AttachmentRef): ByteArray? = io { it.attachmentBytes(reference) }

    /** [Store.saveAttachment]: writes the bytes [reference] names to [file]; false if not all are here. */
    suspend fun saveAttachment(reference: AttachmentRef, file: File): Boolean =
        io { it.saveAttachment(reference, file) }

    /** [Store.tidyAttachments]: removes unreferenced bytes and evicts to keep within the budget. */
    suspend fun tidyAttachments(): AttachmentsTidied = io { it.tidyAttachments() }

    /** [Store.rekey]: re-encrypts the store with [newKey]. */
    suspend fun rekey(newKey: ByteArray) = io { it.rekey(newKey) }

    /** [Store.observe], whose queries run on [dispatcher]. */
    fun observe(collection: String, query: Query): Flow<List<Record>> =
        store.observe(collection, query, dispatcher)

    /** [Store.changes]; subscribing does no disk access, so it needs no dispatcher. */
    fun changes(collection: String, filter: Filter = Filter.All, capacity: Int = DEFAULT_CHANGES_CAPACITY): Flow<ChangeEvent> =
        store.changes(collection, filter, capacity)
}

/**
 * This store's calls as `suspend` functions that run on [dispatcher] (see [SuspendingStore]).
 * Cheap: make one where needed, or keep one beside the store.
 */
fun Store.suspending(dispatcher: CoroutineDispatcher = Dispatchers.IO): SuspendingStore =
    SuspendingStore(this, dispatcher)
