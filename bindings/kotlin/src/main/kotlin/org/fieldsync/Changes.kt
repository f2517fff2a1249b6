// Subscriptions as a Flow, the way Android code observes data.

package org.fieldsync

import kotlinx.coroutines.CoroutineDispatcher
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.channels.awaitClose
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.callbackFlow
import kotlinx.coroutines.flow.conflate
import kotlinx.coroutines.flow.distinctUntilChanged
import kotlinx.coroutines.flow.flow
import kotlinx.coroutines.flow.flowOn
import kotlinx.coroutines.flow.map

/** How many events [changes] holds for a slow collector before it merges them. */
const val DEFAULT_CHANGES_CAPACITY: Int = 64

/**
 * The changes to records of [collection] that match [filter] (before or after the change), as
 * a cold [Flow]: each collection subscribes with [Store.subscribe] when it starts and cancels its
 * [Subscription] when it stops, so a collector scoped to a screen or a `ViewModel` stops the
 * callbacks when it is cancelled. Local writes and merged remote changes alike arrive in commit
 * order; [ChangeEvent.origin] tells them apart.
 *
 * ```
 * store.changes("clients", Filter.Eq("caseload_id", FieldValue.Str("north")))
 *     .collect { event -> reload(event.ids) }
 * ```
 *
 * **A slow collector.** The store calls back on the thread that committed, which never waits
 * for the collector. Up to [capacity] events wait for it; past that, a new event is merged into
 * the latest waiting event of the same origin (their ids joined, each once), so memory stays
 * bounded by [capacity] events and the ids they name. No changed id is ever lost, but a merged
 * event arrives at the place of the one it joined, and a record changed twice may be named
 * once. A collector that only needs to know "something changed" can apply `conflate()` as well.
 * Writes committed before the collection starts are not replayed: for the records themselves,
 * kept current, use [observe].
 *
 * Collecting throws [FieldsyncException] if the collection or the filter is invalid.
 *
 * @param capacity how many events wait for a slow collector before merging; at least 2.
 */
fun Store.changes(
    collection: String,
    filter: Filter = Filter.All,
    capacity: Int = DEFAULT_CHANGES_CAPACITY,
): Flow<ChangeEvent> {
    require(capacity >= 2) { "capacity must be at least 2" }
    val store = this
    return flow {
        val pending = PendingChanges(capacity)
        val subscription = store.subscribe(collection, filter, pending)
        try {
            while (true) emit(pending.take())
        } finally {
            subscription.cancel()
            subscription.close()
        }
    }
}

/**
 * The events a subscription has delivered and the collector not yet taken, at most [capacity]
 * of them: the bounded queue between the committing thread and the collector.
 */
internal class PendingChanges(private val capacity: Int) : ChangeListener {
    private val queue = ArrayDeque<ChangeEvent>()

    // Wakes the collector; conflated, since one wake-up drains the whole queue.
    private val ready = Channel<Unit>(Channel.CONFLATED)

    override fun onChange(event: ChangeEvent) {
        synchronized(queue) {
            if (queue.size < capacity) {
                queue.addLast(event)
            } else {
                mergeInto(event)
            }
        }
        ready.trySend(Unit)
    }

    // With the queue full: into the latest event of the same origin; with none, the two latest
    // events (the same origin, as the other one is absent) merge first to make room.
    private fun mergeInto(event: ChangeEvent) {
        val same = queue.indexOfLast { it.origin == event.origin }
        if (same >= 0) {
            queue[same] = merged(queue[same], event)
        } else {
            val last = queue.removeLast()
            queue[queue.lastIndex] = merged(queue.last(), last)
            queue.addLast(event)
        }
    }

    private fun merged(first: ChangeEvent, second: ChangeEvent) =
        first.copy(ids = (first.ids + second.ids).distinct())

    suspend fun take(): ChangeEvent {
        while (true) {
            synchronized(queue) { queue.removeFirstOrNull() }?.let { return it }
            ready.receive()
        }
    }
}

/**
 * The records of [collection] that [query] finds, kept current: a cold [Flow] that emits the
 * results when collected and again after every commit that changes them, locally or by sync,
 * like a Room query returning a `Flow<List<T>>`:
 *
 * ```
 * store.observe("clients", Query(Filter.Eq("caseload_id", FieldValue.Str("north"))))
 *     .collect { clients -> adapter.submitList(clients) }
 * ```
 *
 * **What it costs.** Each commit that touches a record the query's filter matches (before or
 * after the change) runs the whole query again, on [dispatcher], whatever the order and limit;
 * results equal to the last ones emitted are not emitted again. Commits that come faster than
 * the query runs are folded into one run. Keep observed queries narrow (a scope, an indexed
 * field, a limit), and stop collecting when the screen goes away.
 *
 * The queries run on [dispatcher], so collecting on the main thread is fine. A collector slower
 * than the writes skips intermediate results, never the latest.
 *
 * Collecting throws [FieldsyncException] if the collection or the query is invalid.
 */
fun Store.observe(
    collection: String,
    query: Query,
    dispatcher: CoroutineDispatcher = Dispatchers.IO,
): Flow<List<Record>> {
    val store = this
    return callbackFlow {
        val listener = object : ChangeListener {
            override fun onChange(event: ChangeEvent) {
                trySend(Unit)
            }
        }
        val subscription = store.subscribe(collection, query.filter, listener)
        // The first query comes after subscribing, so that no write falls between the two.
        send(Unit)
        awaitClose {
            subscription.cancel()
            subscription.close()
        }
    }
        // One pending re-run at most, however many commits arrive meanwhile.
        .conflate()
        .map { store.query(collection, query) }
        .distinctUntilChanged()
        .conflate()
        .flowOn(dispatcher)
}
