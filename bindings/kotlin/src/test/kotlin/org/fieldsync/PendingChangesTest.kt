package org.fieldsync

import kotlin.test.assertEquals
import kotlin.test.assertNull
import kotlin.time.Duration.Companion.milliseconds
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeoutOrNull
import org.junit.jupiter.api.Test

/** The bounded queue behind [changes]: what a slow collector is handed once it is full. */
class PendingChangesTest {
    private fun local(vararg ids: String) = ChangeEvent("clients", ids.toList(), ChangeOrigin.LOCAL)

    private fun remote(vararg ids: String) = ChangeEvent("clients", ids.toList(), ChangeOrigin.REMOTE)

    private fun PendingChanges.drain(): List<ChangeEvent> = runBlocking {
        buildList {
            while (true) add(withTimeoutOrNull(50.milliseconds) { take() } ?: break)
        }
    }

    @Test
    fun `below capacity every event waits as it came`() {
        val pending = PendingChanges(capacity = 3)
        listOf(local("a"), remote("b"), local("a")).forEach(pending::onChange)
        assertEquals(listOf(local("a"), remote("b"), local("a")), pending.drain())
    }

    @Test
    fun `once full an event merges into the latest of its origin, each id once`() {
        val pending = PendingChanges(capacity = 3)
        listOf(local("a"), remote("b"), local("c"), local("d", "c"), remote("b", "e")).forEach(pending::onChange)
        assertEquals(listOf(local("a"), remote("b", "e"), local("c", "d")), pending.drain())
    }

    @Test
    fun `with none of its origin waiting the two latest merge to make room`() {
        val pending = PendingChanges(capacity = 2)
        listOf(remote("a"), remote("b"), local("c")).forEach(pending::onChange)
        assertEquals(listOf(remote("a", "b"), local("c")), pending.drain())
        // Taken, it waits for the next one.
        assertNull(runBlocking { withTimeoutOrNull(50.milliseconds) { pending.take() } })
        pending.onChange(local("d"))
        assertEquals(listOf(local("d")), pending.drain())
    }
}
