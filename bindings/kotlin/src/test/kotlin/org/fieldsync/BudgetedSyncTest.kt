package org.fieldsync

import java.util.Collections
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertFalse
import kotlin.test.assertTrue
import kotlin.time.Duration
import kotlin.time.Duration.Companion.milliseconds
import kotlin.time.Duration.Companion.seconds
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Test

/**
 * The budgeted sync an OS background task runs (an Android CoroutineWorker), and the errors a
 * scheduler acts on, against a real fieldsync-server process.
 */
class BudgetedSyncTest : ServerTest() {
    @Test
    fun `a budgeted sync stops at its budget and the next one carries on`(): Unit = runBlocking {
        val token = server.userWithDevice("ada", "north")
        server.start()
        val (store, client) = device("phone", token)
        repeat(3) { store.insert("clients", fieldsOf("caseload_id" to "north", "name" to "C$it")) }
        val refused = store.insert("clients", fieldsOf("caseload_id" to "south", "name" to "Cy"))

        // No budget at all: nothing starts, nothing is lost.
        val none = client.syncWithin(store, Duration.ZERO)
        assertFalse(none.complete)
        assertEquals(0L, none.pushed)
        assertEquals(4L, store.outboxLen())

        val progress = Collections.synchronizedList(mutableListOf<SyncProgress>())
        val report = client.syncWithin(store, 30.seconds) { progress += it }
        assertTrue(report.complete)
        // What a worker reports: the writes the server refused, kept for a retry.
        assertEquals(3L to 1L, report.pushed to report.rejected)
        assertEquals(refused, store.rejectedWrites().single().recordId)
        assertEquals(0L, store.outboxLen())
        assertTrue(progress.isNotEmpty())

        // The generated call in milliseconds, and an unbounded budget, sync to the end too.
        assertTrue(client.syncWithin(store, 30_000L).complete)
        assertTrue(client.syncWithin(store, Duration.INFINITE).complete)
        val negative = assertFailsWith<FieldsyncException.InvalidValue> { client.syncWithin(store, (-1).milliseconds) }
        assertTrue("budget" in negative.reason, negative.reason)
    }

    @Test
    fun `a budgeted sync reports the scopes it purged`(): Unit = runBlocking {
        val token = server.userWithDevice("ada", "north")
        server.admin("grant", "--user", "ada", "--scope", "south")
        server.start()
        val (store, client) = device("phone", token)
        store.insert("clients", fieldsOf("caseload_id" to "north", "name" to "Ada"))
        store.insert("clients", fieldsOf("caseload_id" to "south", "name" to "Bo"))
        assertEquals(2L, client.syncWithin(store, 30.seconds).pushed)

        server.admin("revoke-grant", "--user", "ada", "--scope", "south")
        val report = client.syncWithin(store, 30.seconds)
        assertEquals(listOf("south"), report.purgedScopes)
        assertEquals(1L, store.count("clients", Filter.All))
    }

    @Test
    fun `a rate-limited sync says how long to wait`(): Unit = runBlocking {
        val token = server.userWithDevice("ada", "north")
        server.start("--requests-per-second", "1", "--request-burst", "1")
        val (store, client) = device("phone", token)
        store.insert("clients", fieldsOf("caseload_id" to "north", "name" to "Ada"))

        // A sync makes several requests; one second allows one.
        val limited = assertFailsWith<FieldsyncException.RateLimited> {
            repeat(3) { client.syncWithin(store, 30.seconds) }
        }
        assertTrue(limited.retryAfterMs >= 1000L, "${limited.retryAfterMs}")
        assertTrue(store.outboxLen() <= 1L)
    }
}
