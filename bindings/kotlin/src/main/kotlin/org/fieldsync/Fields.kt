// Plain Kotlin values in and out of records, so that app code rarely spells out a FieldValue.

package org.fieldsync

import java.time.Instant

/**
 * The [FieldValue] of a plain Kotlin value:
 *
 * - `null` is [FieldValue.Null] (in an update, it clears an optional field);
 * - [Boolean] is [FieldValue.Boolean];
 * - [Long], [Int], [Short] and [Byte] are [FieldValue.Integer];
 * - [Double] and [Float] are [FieldValue.Float];
 * - a [CharSequence] is [FieldValue.Str] (`string`, `text` and `reference` fields);
 * - an [Instant] is [FieldValue.Integer] milliseconds since the epoch (`timestamp` fields);
 * - a [FieldValue] is itself.
 *
 * There is no JSON encoder here: give a `json` field's maps and lists as
 * `FieldValue.Json(text)`, encoded with the app's JSON library.
 *
 * @throws FieldsyncException.InvalidValue for a value of any other type (the message names the
 *   type, not the value).
 */
fun fieldValueOf(value: Any?): FieldValue = when (value) {
    null -> FieldValue.Null
    is FieldValue -> value
    is Boolean -> FieldValue.Boolean(value)
    is Long -> FieldValue.Integer(value)
    is Int -> FieldValue.Integer(value.toLong())
    is Short -> FieldValue.Integer(value.toLong())
    is Byte -> FieldValue.Integer(value.toLong())
    is Double -> FieldValue.Float(value)
    is Float -> FieldValue.Float(value.toDouble())
    is CharSequence -> FieldValue.Str(value.toString())
    is Instant -> FieldValue.Integer(value.toEpochMilli())
    else -> throw FieldsyncException.InvalidValue("no field value for a ${value::class.qualifiedName}")
}

/**
 * A field map for [Store.insert], [Store.update] and [Write], from plain Kotlin values
 * converted by [fieldValueOf]:
 *
 * ```
 * store.insert("clients", fieldsOf("caseload_id" to "north", "name" to "Ada", "birth_year" to 1990))
 * store.update("clients", id, fieldsOf("birth_year" to null))  // clears the field
 * ```
 *
 * @throws FieldsyncException.InvalidValue if a value has no [FieldValue]; the message names the
 *   field and the value's type.
 */
fun fieldsOf(vararg fields: Pair<String, Any?>): Map<String, FieldValue> =
    fields.associate { (name, value) ->
        val converted = try {
            fieldValueOf(value)
        } catch (e: FieldsyncException.InvalidValue) {
            throw FieldsyncException.InvalidValue("field '$name': ${e.reason}")
        }
        name to converted
    }

/**
 * The `string`, `text` or `reference` field [name], or null when the record has no value for it.
 *
 * @throws FieldsyncException.WrongType if the field holds another kind of value; it names the
 *   field ([FieldsyncException.WrongType.field]) and the kind found, never the value.
 */
fun Record.string(name: String): String? = when (val value = fields[name]) {
    null, FieldValue.Null -> null
    is FieldValue.Str -> value.value
    else -> throw wrongKind(name, value, "a string")
}

/**
 * The `integer` or `timestamp` field [name], or null when the record has no value for it.
 *
 * @throws FieldsyncException.WrongType if the field holds another kind of value; it names the
 *   field ([FieldsyncException.WrongType.field]) and the kind found, never the value.
 */
fun Record.long(name: String): Long? = when (val value = fields[name]) {
    null, FieldValue.Null -> null
    is FieldValue.Integer -> value.value
    else -> throw wrongKind(name, value, "an integer")
}

/**
 * The `float` field [name], or null when the record has no value for it. A whole number is
 * accepted too, since JSON does not tell `2` from `2.0`.
 *
 * @throws FieldsyncException.WrongType if the field holds another kind of value; it names the
 *   field ([FieldsyncException.WrongType.field]) and the kind found, never the value.
 */
fun Record.double(name: String): Double? = when (val value = fields[name]) {
    null, FieldValue.Null -> null
    is FieldValue.Float -> value.value
    is FieldValue.Integer -> value.value.toDouble()
    else -> throw wrongKind(name, value, "a number")
}

/**
 * The `boolean` field [name], or null when the record has no value for it.
 *
 * @throws FieldsyncException.WrongType if the field holds another kind of value; it names the
 *   field ([FieldsyncException.WrongType.field]) and the kind found, never the value.
 */
fun Record.boolean(name: String): Boolean? = when (val value = fields[name]) {
    null, FieldValue.Null -> null
    is FieldValue.Boolean -> value.value
    else -> throw wrongKind(name, value, "a boolean")
}

/**
 * The `timestamp` field [name] as an [Instant], or null when the record has no value for it.
 *
 * @throws FieldsyncException.WrongType if the field holds another kind of value; it names the
 *   field ([FieldsyncException.WrongType.field]) and the kind found, never the value.
 */
fun Record.instant(name: String): Instant? = long(name)?.let(Instant::ofEpochMilli)

/**
 * The JSON map or list in the `json` field [name], as JSON text for the app's JSON library, or
 * null when the record has no value for it. (A `json` field holding a single number, string or
 * boolean reads with the accessor of that kind instead.)
 *
 * @throws FieldsyncException.WrongType if the field holds another kind of value; it names the
 *   field ([FieldsyncException.WrongType.field]) and the kind found, never the value.
 */
fun Record.json(name: String): String? = when (val value = fields[name]) {
    null, FieldValue.Null -> null
    is FieldValue.Json -> value.json
    else -> throw wrongKind(name, value, "a JSON map or list")
}

/**
 * The reference the `attachment` field [name] holds, or null when the record has no value for
 * it. Read its bytes with [Store.attachmentBytes] or [Store.saveAttachment].
 *
 * @throws FieldsyncException.WrongType if the field holds another kind of value, or a map that
 *   is not an attachment reference; it names the field and what is wrong, never the value.
 */
fun Record.attachment(name: String): AttachmentRef? = when (val value = fields[name]) {
    null, FieldValue.Null -> null
    is FieldValue.Json -> try {
        attachmentRefOf(value)
    } catch (e: FieldsyncException.InvalidValue) {
        // The library's reason names the member that is wrong, never its value.
        throw FieldsyncException.WrongType(collection, name, "field '$name' of $collection '$id': ${e.reason}")
    }
    else -> throw wrongKind(name, value, "an attachment reference")
}

// The library's exception, so that one catch handles a store's refusal and a reader's alike.
// Names the kind only: field values must not end up in logs through exception messages.
private fun Record.wrongKind(name: String, value: FieldValue, expected: String) =
    FieldsyncException.WrongType(
        collection,
        name,
        "field '$name' of $collection '$id' holds ${value::class.simpleName}, not $expected",
    )
