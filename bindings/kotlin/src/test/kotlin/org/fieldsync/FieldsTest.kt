package org.fieldsync

import java.time.Instant
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertFalse
import kotlin.test.assertNull
import kotlin.test.assertTrue
import org.junit.jupiter.api.Test

/** Plain Kotlin values to field values and back; no store needed. */
class FieldsTest {
    @Test
    fun `plain values become field values`() {
        val visit = Instant.parse("2024-05-01T09:30:00Z")
        assertEquals(
            mapOf(
                "none" to FieldValue.Null,
                "yes" to FieldValue.Boolean(true),
                "int" to FieldValue.Integer(1990),
                "long" to FieldValue.Integer(Long.MAX_VALUE),
                "short" to FieldValue.Integer(7),
                "double" to FieldValue.Float(0.25),
                "float" to FieldValue.Float(0.5),
                "string" to FieldValue.Str("Ada"),
                "builder" to FieldValue.Str("Bo"),
                "instant" to FieldValue.Integer(visit.toEpochMilli()),
                "json" to FieldValue.Json("[1]"),
            ),
            fieldsOf(
                "none" to null,
                "yes" to true,
                "int" to 1990,
                "long" to Long.MAX_VALUE,
                "short" to 7.toShort(),
                "double" to 0.25,
                "float" to 0.5f,
                "string" to "Ada",
                "builder" to StringBuilder("Bo"),
                "instant" to visit,
                "json" to FieldValue.Json("[1]"),
            ),
        )
        // The library's exception, naming the type and the field but never the value.
        val noValue = assertFailsWith<FieldsyncException.InvalidValue> { fieldValueOf(listOf("secret")) }
        assertFalse("secret" in noValue.reason, noValue.reason)
        val named = assertFailsWith<FieldsyncException.InvalidValue> { fieldsOf("goals" to listOf("secret")) }
        assertTrue("'goals'" in named.reason, named.reason)
        assertFalse("secret" in named.reason, named.reason)
    }

    @Test
    fun `accessors read typed values, null when unset, and refuse another kind`() {
        val visit = Instant.parse("2024-05-01T09:30:00Z")
        val record = Record(
            collection = "clients",
            id = "client-1",
            scope = "north",
            fields = fieldsOf(
                "name" to "Ada",
                "birth_year" to 1990,
                "risk_score" to 0.5,
                "active" to false,
                "next_visit" to visit,
                "goals" to FieldValue.Json("""{"walk":[1,2]}"""),
            ),
            createdAtMs = 0,
            updatedAtMs = 0,
        )
        assertEquals("Ada", record.string("name"))
        assertEquals(1990L, record.long("birth_year"))
        assertEquals(0.5, record.double("risk_score"))
        assertEquals(1990.0, record.double("birth_year"))
        assertEquals(false, record.boolean("active"))
        assertEquals(visit, record.instant("next_visit"))
        assertEquals("""{"walk":[1,2]}""", record.json("goals"))
        assertNull(record.string("phone"))
        assertNull(record.long("phone"))

        // The library's exception, so one catch covers the store and the readers; it names the
        // field, never the value.
        val wrong = assertFailsWith<FieldsyncException.WrongType> { record.long("name") }
        assertEquals("clients" to "name", wrong.collection to wrong.field)
        assertEquals("field 'name' of clients 'client-1' holds Str, not an integer", wrong.reason)
        assertFalse("Ada" in wrong.message.orEmpty(), wrong.message)
        val readers = listOf<(Record) -> Any?>(
            { it.string("birth_year") },
            { it.double("name") },
            { it.boolean("name") },
            { it.instant("name") },
            { it.json("name") },
            { it.attachment("name") },
        )
        for (read in readers) {
            val e = assertFailsWith<FieldsyncException.WrongType> { read(record) }
            assertEquals("clients", e.collection)
        }
        // A map that is not an attachment reference: the member named, not its value.
        val notAReference = record.copy(fields = fieldsOf("goals" to FieldValue.Json("""{"sha256":"secret"}""")))
        val bad = assertFailsWith<FieldsyncException.WrongType> { notAReference.attachment("goals") }
        assertEquals("goals", bad.field)
        assertFalse("secret" in bad.reason, bad.reason)
    }
}
