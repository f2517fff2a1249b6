package org.fieldsync

import java.nio.file.Path
import java.util.Collections
import java.util.concurrent.Executors
import java.util.concurrent.atomic.AtomicInteger
import kotlin.coroutines.CoroutineContext
import kotlin.test.assertContentEquals
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertNotEquals
import kotlin.test.assertNull
import kotlin.test.assertTrue
import kotlinx.coroutines.CoroutineDispatcher
import kotlinx.coroutines.Runnable
import kotlinx.coroutines.asCoroutineDispatcher
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withContext
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir

/**
 * The suspend calls: each one runs on the dispatcher given, never on the caller's thread (a main
 * thread that Room and StrictMode keep disk access off), and returns what the blocking call does.
 */
class SuspendingStoreTest {
    @TempDir
    lateinit var dir: Path

    private val ioThreads = Executors.newSingleThreadExecutor { task -> Thread(task, "store-io").apply { isDaemon = true } }
    private val io = CountingDispatcher(ioThreads.asCoroutineDispatcher())

    // Stands in for Android's main thread: the caller whose thread must stay free.
    private val mainThread = Executors.newSingleThreadExecutor { task -> Thread(task, "main").apply { isDaemon = true } }
    private val main = mainThread.asCoroutineDispatcher()

    private lateinit var store: Store

    @AfterEach
    fun close() {
        if (::store.isInitialized) store.close()
        ioThreads.shutdown()
        mainThread.shutdown()
    }

    @Test
    fun `writes commit on the IO dispatcher, not the caller's thread`(): Unit = runBlocking(main) {
        store = Store(dir.resolve("device.db").toString(), clinicSchema)
        // Listeners run on the committing thread: they tell where each write ran.
        val committedOn = Collections.synchronizedList(mutableListOf<String>())
        val listener = object : ChangeListener {
            override fun onChange(event: ChangeEvent) {
                committedOn += threadName()
            }
        }
        store.subscribe("clients", Filter.All, listener).use { subscription ->
            val records = store.suspending(io)
            val id = records.insert("clients", fieldsOf("caseload_id" to "north", "name" to "Ada"))
            records.update("clients", id, fieldsOf("phone" to "555"))
            records.insertWithId("clients", "client-2", fieldsOf("caseload_id" to "north", "name" to "Bo"))
            records.writeBatch(listOf(Write.Update("clients", "client-2", fieldsOf("active" to true))))
            records.delete("clients", "client-2")
            assertEquals("main", threadName())
            assertEquals(List(5) { "store-io" }, committedOn.toList())

            // The default is Dispatchers.IO, whose threads are not the caller's either.
            store.suspending().update("clients", id, fieldsOf("name" to "Ada L."))
            assertNotEquals("main", committedOn.last())
            assertTrue(committedOn.last().startsWith("DefaultDispatcher-worker"), committedOn.last())
            subscription.cancel()
        }
    }

    @Test
    fun `every call of the record API moves to the dispatcher and returns its result`(): Unit = runBlocking(main) {
        store = Store(dir.resolve("device.db").toString(), clinicSchema)
        val records = store.suspending(io)
        assertEquals(io, records.dispatcher)
        // Each call asserts the dispatcher ran something for it: a call that stayed on the
        // caller would leave the count where it was.
        suspend fun <T> moved(call: suspend () -> T): T {
            val before = io.dispatched.get()
            return call().also { assertTrue(io.dispatched.get() > before, "ran on the caller's thread") }
        }

        val note = "Mood \uD83D\uDE00 ok"
        val id = moved { records.insert("clients", fieldsOf("caseload_id" to "north", "name" to "Ada", "notes" to note)) }
        // Text positions are Int String indices, as indexOf gives them.
        val at: Int = note.indexOf(" ok")
        moved { records.spliceText("clients", id, "notes", at, 0, "!") }
        assertEquals("Mood \uD83D\uDE00! ok", moved { records.get("clients", id) }?.string("notes"))
        moved { records.update("clients", id, fieldsOf("birth_year" to 1990)) }
        val ids = moved {
            records.writeBatch(
                listOf(
                    Write.Insert("clients", "client-2", fieldsOf("caseload_id" to "north", "name" to "Bo")),
                    Write.SpliceText("clients", "client-2", "notes", 0, 0, "First."),
                ),
            )
        }
        assertEquals(listOf("client-2", "client-2"), ids)

        val north = Query(Filter.Eq("caseload_id", FieldValue.Str("north")), order = listOf(Order("name")), limit = 10L)
        assertEquals(listOf("Ada", "Bo"), moved { records.query("clients", north) }.map { it.string("name") })
        // Counts and sizes are Long, never unsigned.
        val count: Long = moved { records.count("clients") }
        assertEquals(2L, count)
        assertEquals(1L, moved { records.count("clients", Filter.Eq("name", FieldValue.Str("Bo"))) })
        val outbox: Long = moved { records.outboxLen() }
        assertTrue(outbox >= 3L, "$outbox")
        assertTrue(moved { records.conflicts("clients", id) }.isEmpty())
        assertEquals(3, moved { records.history("clients", id) }.size)
        assertTrue(moved { records.orphans("sessions") }.isEmpty())
        assertTrue(moved { records.rejectedWrites() }.isEmpty())

        val scan = "a scanned form".toByteArray()
        val form = moved { records.attach("clients", id, "consent_form", scan, "image/jpeg", "form.jpg") }
        val size: Long = form.size
        assertEquals(scan.size.toLong(), size)
        assertEquals(form, moved { records.attachmentOf("clients", id, "consent_form") })
        assertTrue(moved { records.hasAttachment(form) })
        assertContentEquals(scan, moved { records.attachmentBytes(form) })
        val saved = dir.resolve("saved.jpg").toFile()
        assertTrue(moved { records.saveAttachment(form, saved) })
        assertContentEquals(scan, saved.readBytes())
        val file = dir.resolve("other.jpg").toFile().apply { writeBytes("another form".toByteArray()) }
        val replaced = moved { records.attach("clients", id, "consent_form", file, "image/jpeg") }
        assertNull(replaced.name)
        // Nothing is on a server yet, so nothing may be evicted.
        assertEquals(0L, moved { records.tidyAttachments() }.evicted)
        assertTrue(moved { records.hasAttachment(replaced) })

        moved { records.delete("clients", "client-2") }
        assertNull(moved { records.get("clients", "client-2") })
        // Failures are the blocking call's exceptions, with their fields.
        val missing = assertFailsWith<FieldsyncException.NotFound> { moved { records.update("clients", "nobody", fieldsOf("name" to "X")) } }
        assertEquals("clients" to "nobody", missing.collection to missing.id)
        assertFailsWith<FieldsyncException.NotFound> { moved { records.retryRejectedWrite(12345L) } }
        assertEquals("main", threadName())
    }

    @Test
    fun `the dispatcher's thread is not the caller's`(): Unit = runBlocking(main) {
        store = Store(dir.resolve("device.db").toString(), clinicSchema)
        val records = store.suspending(io)
        withContext(records.dispatcher) { assertEquals("store-io", threadName()) }
        // Discarding what is not there does nothing, as the blocking call does.
        records.discardRejectedWrite(1L)
        assertEquals("main", threadName())
    }

    // The thread's own name: with assertions on, coroutines' debug mode appends the coroutine's.
    private fun threadName(): String = Thread.currentThread().name.substringBefore(" @coroutine#")

    /** A dispatcher that counts what it was given to run. */
    private class CountingDispatcher(private val inner: CoroutineDispatcher) : CoroutineDispatcher() {
        val dispatched = AtomicInteger()

        override fun dispatch(context: CoroutineContext, block: Runnable) {
            dispatched.incrementAndGet()
            inner.dispatch(context, block)
        }
    }
}
