package org.fieldsync

import java.util.Collections
import java.util.concurrent.atomic.AtomicInteger
import kotlin.coroutines.CoroutineContext
import kotlin.test.assertEquals
import kotlin.time.Duration.Companion.seconds
import kotlin.test.assertFailsWith
import kotlin.test.assertNotNull
import kotlin.test.assertNull
import kotlin.test.assertTrue
import kotlinx.coroutines.CompletableDeferred
import kotlinx.coroutines.CoroutineDispatcher
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.Runnable
import kotlinx.coroutines.delay
import kotlinx.coroutines.cancelAndJoin
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.Test

/** The Flow layer: changes and query results as Flows, the background sync status as a StateFlow. */
class FlowTest : ServerTest() {
    // Listeners the library holds; a subscription that is cancelled no longer holds its own.
    private val heldListeners get() = FfiConverterTypeChangeListener.handleMap.size

    @Test
    fun `changes flow while collected and unsubscribes when cancelled`(): Unit = runBlocking {
        val store = closeLater(Store(dir.resolve("device.db").toString(), clinicSchema))
        val held = heldListeners
        val events = Channel<ChangeEvent>(Channel.UNLIMITED)

        // Unconfined runs the collector, and with it the subscription, before launch returns.
        val collector = launch(Dispatchers.Unconfined) {
            store.changes("clients", Filter.Eq("caseload_id", FieldValue.Str("north"))).collect {
                events.send(it)
            }
        }
        assertEquals(held + 1, heldListeners)

        val north = store.insert("clients", fieldsOf("caseload_id" to "north", "name" to "Ada"))
        store.insert("clients", fieldsOf("caseload_id" to "south", "name" to "Bo"))
        store.update("clients", north, fieldsOf("name" to "Ada L."))
        // The south insert does not match: the update is the very next event.
        assertEquals(ChangeEvent("clients", listOf(north), ChangeOrigin.LOCAL), events.next())
        assertEquals(ChangeEvent("clients", listOf(north), ChangeOrigin.LOCAL), events.next())

        collector.cancelAndJoin()
        assertEquals(held, heldListeners)
        store.update("clients", north, fieldsOf("name" to "Ada"))
        assertNull(events.tryReceive().getOrNull())
    }

    @Test
    fun `observe emits the current records, then again after every matching change`(): Unit = runBlocking {
        val store = closeLater(Store(dir.resolve("device.db").toString(), clinicSchema))
        val held = heldListeners
        val ada = store.insert("clients", fieldsOf("caseload_id" to "north", "name" to "Ada"))
        val names = Channel<List<String?>>(Channel.UNLIMITED)
        val north = Query(Filter.Eq("caseload_id", FieldValue.Str("north")), order = listOf(Order("name")))

        val observer = launch {
            store.observe("clients", north).collect { records -> names.send(records.map { it.string("name") }) }
        }
        // The first results come once subscribed: every write after them is seen.
        assertEquals(listOf("Ada"), names.next())
        store.insert("clients", fieldsOf("caseload_id" to "north", "name" to "Bo"))
        store.insert("clients", fieldsOf("caseload_id" to "south", "name" to "Cy"))
        store.update("clients", ada, fieldsOf("name" to "Ada L."))
        // Results in between may be skipped, never the latest.
        withTimeout(10.seconds) {
            while (names.receive() != listOf("Ada L.", "Bo")) continue
        }

        observer.cancelAndJoin()
        assertEquals(held, heldListeners)
    }

    @Test
    fun `a slow collector gets a bounded number of events that name every change`(): Unit = runBlocking {
        val store = closeLater(Store(dir.resolve("device.db").toString(), clinicSchema))
        val held = heldListeners
        val received = Collections.synchronizedList(mutableListOf<ChangeEvent>())
        val release = CompletableDeferred<Unit>()
        // Stuck on its first event until released, while the writes go on.
        val collector = launch(Dispatchers.Default) {
            store.changes("clients", capacity = 8).collect {
                received += it
                release.await()
            }
        }
        withTimeout(10.seconds) { while (heldListeners == held) delay(10) }

        val ids = (0 until 200).map { store.insert("clients", fieldsOf("caseload_id" to "north", "name" to "C$it")) }
        // Every event here is local, so those past the capacity merge into the latest one.
        release.complete(Unit)
        withTimeout(10.seconds) {
            while (received.toList().flatMap { it.ids }.toSet() != ids.toSet()) delay(10)
        }
        collector.cancelAndJoin()

        // The one being collected, then at most the capacity: not one event per write.
        assertTrue(received.size <= 1 + 8, "${received.size} events")
        assertTrue(received.all { it.origin == ChangeOrigin.LOCAL && it.collection == "clients" })
        assertTrue(received.all { it.ids.size == it.ids.toSet().size }, "an id twice in one event")
        assertEquals(held, heldListeners)
        assertFailsWith<IllegalArgumentException> { store.changes("clients", capacity = 1) }
    }

    @Test
    fun `observe does not emit results equal to the last ones`(): Unit = runBlocking {
        val store = closeLater(Store(dir.resolve("device.db").toString(), clinicSchema))
        store.insert("clients", fieldsOf("caseload_id" to "north", "name" to "Ada"))
        val first = Query(Filter.Eq("caseload_id", FieldValue.Str("north")), order = listOf(Order("name")), limit = 1L)
        val emitted = Channel<List<String?>>(Channel.UNLIMITED)
        val queries = AtomicInteger()
        // Counts the query runs, to know the commit below was looked at.
        val counting = object : CoroutineDispatcher() {
            override fun dispatch(context: CoroutineContext, block: Runnable) {
                queries.incrementAndGet()
                Dispatchers.IO.dispatch(context, block)
            }
        }

        val observer = launch {
            store.observe("clients", first, counting).collect { records -> emitted.send(records.map { it.string("name") }) }
        }
        assertEquals(listOf("Ada"), emitted.next())
        // Matches the filter, so the query runs again, but sorts after the limit: same results.
        val before = queries.get()
        store.insert("clients", fieldsOf("caseload_id" to "north", "name" to "Zed"))
        withTimeout(10.seconds) { while (queries.get() == before) delay(10) }
        delay(500)
        assertNull(emitted.tryReceive().getOrNull())

        // A commit that changes them is emitted, once.
        store.insert("clients", fieldsOf("caseload_id" to "north", "name" to "Abe"))
        assertEquals(listOf("Abe"), emitted.next())
        delay(200)
        assertNull(emitted.tryReceive().getOrNull())
        observer.cancelAndJoin()
    }

    @Test
    fun `invalid subscriptions fail the collector and hold nothing`(): Unit = runBlocking {
        val store = closeLater(Store(dir.resolve("device.db").toString(), clinicSchema))
        val held = heldListeners
        assertFailsWith<FieldsyncException.UnknownCollection> { store.changes("patients").first() }
        assertFailsWith<FieldsyncException.InvalidQuery> {
            store.observe("clients", Query(Filter.Eq("goals", FieldValue.Str("x")))).first()
        }
        assertEquals(held, heldListeners)
    }

    @Test
    fun `background sync status is a StateFlow until stopped`(): Unit = runBlocking {
        val phoneToken = server.userWithDevice("ada", "north")
        val tabletToken = server.userWithDevice("bo", "north")
        server.start()
        val (phone, phoneSync) = device("phone", phoneToken)
        val (tablet, tabletSync) = device("tablet", tabletToken)

        val background = closeLater(phoneSync.startBackgroundSync(phone, BackgroundOptions(debounceMs = 50L)))
        val client = phone.insert("clients", fieldsOf("caseload_id" to "north", "name" to "Ada"))
        // The write wakes the loop (again, if the first sync had started before it), and every
        // sync ends with a new status: the one after the push shows an empty outbox.
        val synced = withTimeout(30.seconds) {
            background.status.first {
                it.state == SyncState.IDLE && it.lastSuccessMs != null && phone.outboxLen() == 0L
            }
        }
        assertNull(synced.lastError)
        assertEquals(false, synced.stopped)
        // What the last successful sync did, for a background task to report.
        assertEquals(0L, checkNotNull(synced.lastReport).rejected)
        tabletSync.syncNow(tablet, null)
        assertNotNull(tablet.get("clients", client))

        background.stop()
        assertTrue(background.status.value.stopped)
        background.stop() // again: nothing happens
    }

    @Test
    fun `a refused token stops the background sync, as its status tells`(): Unit = runBlocking {
        val token = server.userWithDevice("ada", "north")
        server.start()
        val (store, client) = device("phone", token)
        server.admin("revoke-token", token.split("_")[1])

        val background = closeLater(client.startBackgroundSync(store))
        val stopped = withTimeout(30.seconds) { background.status.first { it.stopped } }

        assertEquals(SyncState.ERROR, stopped.state)
        assertNotNull(stopped.lastError)
        assertNull(stopped.retryInMs)
    }

    private suspend fun <T> Channel<T>.next(): T = withTimeout(10.seconds) { receive() }
}
