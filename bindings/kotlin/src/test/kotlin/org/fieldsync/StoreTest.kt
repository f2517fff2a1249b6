package org.fieldsync

import java.nio.file.Path
import java.util.Collections
import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit
import kotlin.concurrent.thread
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertFalse
import kotlin.test.assertNull
import kotlin.test.assertTrue
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir

/** The store through the generated API: writes, queries, subscriptions, history, errors. */
class StoreTest {
    @TempDir
    lateinit var dir: Path

    private val opened = mutableListOf<Store>()

    @AfterEach
    fun closeStores() = opened.forEach { it.close() }

    private fun openStore(name: String = "device.db", schema: String = clinicSchema): Store =
        Store(dir.resolve(name).toString(), schema).also { opened += it }

    @Test
    fun `insert, get, update and query`() {
        val store = openStore()
        val ada = store.insert(
            "clients",
            fieldsOf(
                "caseload_id" to "north",
                "name" to "Ada",
                "birth_year" to 1990,
                "active" to true,
                "goals" to FieldValue.Json("""{"walk": [1, 2]}"""),
            ),
        )
        store.insert("clients", fieldsOf("caseload_id" to "north", "name" to "Bo", "birth_year" to 1985))
        store.insert("clients", fieldsOf("caseload_id" to "south", "name" to "Cy", "birth_year" to 2001))

        val record = checkNotNull(store.get("clients", ada))
        assertEquals("north", record.scope)
        assertEquals(
            mapOf(
                "caseload_id" to FieldValue.Str("north"),
                "name" to FieldValue.Str("Ada"),
                "birth_year" to FieldValue.Integer(1990),
                "active" to FieldValue.Boolean(true),
                "goals" to FieldValue.Json("""{"walk":[1,2]}"""),
            ),
            record.fields,
        )

        store.update("clients", ada, fieldsOf("birth_year" to null, "phone" to "555"))
        val updated = checkNotNull(store.get("clients", ada))
        assertNull(updated.fields["birth_year"])
        assertEquals(FieldValue.Str("555"), updated.fields["phone"])

        val north = Query(
            filter = Filter.Eq("caseload_id", FieldValue.Str("north")),
            order = listOf(Order(field = "name", descending = true)),
        )
        val found = store.query("clients", north)
        assertEquals(listOf("Bo", "Ada"), found.map { it.string("name") })
        assertEquals(ada, found[1].id)
        val bornBefore = Filter.And(
            listOf(Filter.IsNotNull("birth_year"), Filter.Lt("birth_year", FieldValue.Integer(2000))),
        )
        assertEquals(1L, store.count("clients", bornBefore))
        assertEquals(3L, store.count("clients", Filter.All))
        val paged = store.query("clients", Query(filter = Filter.All, order = listOf(Order("name")), limit = 1L, offset = 1L))
        assertEquals(listOf("Bo"), paged.map { it.string("name") })

        store.delete("clients", ada)
        assertNull(store.get("clients", ada))
        assertEquals(2L, store.count("clients", Filter.All))
    }

    @Test
    fun `text splices and all-or-nothing batches`() {
        val store = openStore()
        val ids = store.writeBatch(
            listOf(
                Write.Insert(
                    "clients",
                    "client-1",
                    fieldsOf("caseload_id" to "north", "name" to "Ada", "notes" to "Visit."),
                ),
                Write.SpliceText("clients", "client-1", "notes", 0, 0, "Calm. "),
            ),
        )
        assertEquals(listOf("client-1", "client-1"), ids)
        store.spliceText("clients", "client-1", "notes", 6, 5, "Call")
        assertEquals("Calm. Call.", store.get("clients", "client-1")?.string("notes"))

        // The second write fails, so the first is not kept either.
        assertFailsWith<FieldsyncException.NotFound> {
            store.writeBatch(
                listOf(
                    Write.Update("clients", "client-1", fieldsOf("name" to "Ada L.")),
                    Write.Delete("clients", "no-such-client"),
                ),
            )
        }
        assertEquals("Ada", store.get("clients", "client-1")?.string("name"))

        val history = store.history("clients", "client-1")
        assertEquals(3, history.size)
        assertTrue(history.all { it.deviceId == store.deviceId() })
        assertTrue("notes" in history.last().fields)
    }

    @Test
    fun `text positions count UTF-16 code units, as Kotlin strings do`() {
        val store = openStore()
        val note = "Mood \uD83D\uDE00 ok" // the emoji is two UTF-16 units
        val id = store.insert("clients", fieldsOf("caseload_id" to "north", "name" to "Ada", "notes" to note))
        val at = note.indexOf(" ok")
        store.spliceText("clients", id, "notes", at, 0, "!")
        assertEquals("Mood \uD83D\uDE00! ok", store.get("clients", id)?.string("notes"))
    }

    @Test
    fun `a subscription is told until cancelled`() {
        val store = openStore()
        val events = Collections.synchronizedList(mutableListOf<ChangeEvent>())
        val listener = object : ChangeListener {
            override fun onChange(event: ChangeEvent) {
                events += event
            }
        }
        val subscription = store.subscribe("clients", Filter.Eq("caseload_id", FieldValue.Str("north")), listener)
        val north = store.insert("clients", fieldsOf("caseload_id" to "north", "name" to "Ada"))
        store.insert("clients", fieldsOf("caseload_id" to "south", "name" to "Bo"))
        // Listeners run on the committing thread, before the write returns.
        assertEquals(listOf(ChangeEvent("clients", listOf(north), ChangeOrigin.LOCAL)), events.toList())

        subscription.cancel()
        store.update("clients", north, fieldsOf("name" to "Ada L."))
        assertEquals(1, events.size)
        subscription.close()
    }

    @Test
    fun `a listener may run on other threads`() {
        val store = openStore()
        val seen = CountDownLatch(1)
        val listener = object : ChangeListener {
            override fun onChange(event: ChangeEvent) = seen.countDown()
        }
        store.subscribe("clients", Filter.All, listener).use { subscription ->
            thread { store.insert("clients", fieldsOf("caseload_id" to "north", "name" to "Ada")) }.join()
            assertTrue(seen.await(10, TimeUnit.SECONDS))
            subscription.cancel()
        }
    }

    @Test
    fun `errors are typed exceptions`() {
        assertFailsWith<FieldsyncException.InvalidSchema> {
            openStore("bad.db", schema = """{"collections": {"Bad Name": {}}}""")
        }

        val store = openStore()
        // Each case carries what an app acts on beside the reason.
        val unknownCollection = assertFailsWith<FieldsyncException.UnknownCollection> {
            store.insert("patients", fieldsOf("name" to "Ada"))
        }
        assertEquals("patients", unknownCollection.collection)
        val unknownField = assertFailsWith<FieldsyncException.UnknownField> {
            store.insert("clients", fieldsOf("caseload_id" to "north", "name" to "Ada", "shoe_size" to 9))
        }
        assertEquals("clients" to "shoe_size", unknownField.collection to unknownField.field)
        val wrongType = assertFailsWith<FieldsyncException.WrongType> {
            store.insert("clients", fieldsOf("caseload_id" to "north", "name" to "Ada", "birth_year" to "secret"))
        }
        assertEquals("clients" to "birth_year", wrongType.collection to wrongType.field)
        assertFalse("secret" in wrongType.reason, wrongType.reason)
        val missing = assertFailsWith<FieldsyncException.MissingField> {
            store.insert("clients", fieldsOf("caseload_id" to "north"))
        }
        assertEquals("name", missing.field)
        val notFound = assertFailsWith<FieldsyncException.NotFound> {
            store.update("clients", "nobody", fieldsOf("name" to "Ada"))
        }
        assertEquals("clients" to "nobody", notFound.collection to notFound.id)
        assertTrue("nobody" in notFound.reason, notFound.reason)
        assertFailsWith<FieldsyncException.InvalidValue> {
            store.insert("clients", fieldsOf("caseload_id" to "north", "name" to "Ada", "goals" to FieldValue.Json("{not json")))
        }
        assertFailsWith<FieldsyncException.InvalidQuery> {
            store.query("clients", Query(filter = Filter.Eq("goals", FieldValue.Str("x"))))
        }
        // Nothing above was written.
        assertEquals(0L, store.count("clients", Filter.All))
        assertEquals(0L, store.outboxLen())

        store.insertWithId("clients", "client-1", fieldsOf("caseload_id" to "north", "name" to "Ada"))
        val duplicate = assertFailsWith<FieldsyncException.DuplicateId> {
            store.insertWithId("clients", "client-1", fieldsOf("caseload_id" to "north", "name" to "Bo"))
        }
        assertEquals("client-1", duplicate.id)
        val badEdit = assertFailsWith<FieldsyncException.InvalidTextEdit> {
            store.spliceText("clients", "client-1", "notes", 99, 0, "x")
        }
        assertEquals("notes", badEdit.field)
        store.delete("clients", "client-1")

        // Reopening the file with a schema that drops a field is refused, and the file still opens.
        store.close()
        val narrower = clinicSchema.replace(""""phone": { "type": "string" },""", "")
        assertTrue(narrower != clinicSchema)
        assertFailsWith<FieldsyncException.IncompatibleSchema> { openStore(schema = narrower) }
        openStore()
    }
}
