// Subscriptions as a Flow, the way Android code observes data.

package org.fieldsync

import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.channels.awaitClose
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.buffer
import kotlinx.coroutines.flow.callbackFlow
import kotlinx.coroutines.flow.conflate
import kotlinx.coroutines.flow.flowOn
import kotlinx.coroutines.flow.map

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
 * The store calls back on the thread that committed, which must not wait for a slow collector,
 * so no event is dropped: they queue until collected. Apply `conflate()` when only the latest
 * matters. Writes committed before the collection starts are not replayed: for the records
 * themselves, kept current, use [observe].
 *
 * Collecting throws [FieldsyncException] if the collection or the filter is invalid.
 */
fun Store.changes(collection: String, filter: Filter = Filter.All): Flow<ChangeEvent> {
    val store = this
    return callbackFlow {
        val listener = object : ChangeListener {
            override fun onChange(event: ChangeEvent) {
                // Only fails once the flow is closed, when the event has nobody to go to.
                trySend(event)
            }
        }
        val subscription = store.subscribe(collection, filter, listener)
        awaitClose {
            subscription.cancel()
            subscription.close()
        }
    }.buffer(Channel.UNLIMITED)
}

/**
 * The records of [collection] that [query] finds, kept current: a cold [Flow] that emits the
 * results when collected and again after every commit that changes a record the query's filter
 * matches, locally or by sync, like a Room query returning a `Flow<List<T>>`:
 *
 * ```
 * store.observe("clients", Query(Filter.Eq("caseload_id", FieldValue.Str("north"))))
 *     .collect { clients -> adapter.submitList(clients) }
 * ```
 *
 * The queries run on [Dispatchers.IO], so collecting on the main thread is fine. A collector
 * slower than the writes skips intermediate results, never the latest.
 *
 * Collecting throws [FieldsyncException] if the collection or the query is invalid.
 */
fun Store.observe(collection: String, query: Query): Flow<List<Record>> {
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
        .conflate()
        .map { store.query(collection, query) }
        .conflate()
        .flowOn(Dispatchers.IO)
}
