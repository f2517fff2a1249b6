// Attachments with java.io.File: attaching a photo or a recording from a file, and saving one to
// a file, so that large attachments never pass through a ByteArray.

package org.fieldsync

import java.io.File

/**
 * Stores the bytes of [file] (read a chunk at a time, never whole in memory) and makes the
 * `attachment` field [field] of [collection]/[id] reference them, in one transaction. [mediaType]
 * (`image/jpeg`) and [name] go into the reference; pass `file.name` as [name] to offer it when
 * the attachment is saved or shared. The next sync sends the bytes.
 *
 * ```
 * val photo = store.attach("clients", id, "consent_form", File(dir, "consent.jpg"), "image/jpeg")
 * ```
 *
 * @throws FieldsyncException.Io if the file cannot be read; nothing is stored then.
 * @throws FieldsyncException.InvalidValue if [mediaType] or [name] cannot go into a reference.
 */
fun Store.attach(
    collection: String,
    id: String,
    field: String,
    file: File,
    mediaType: String,
    name: String? = null,
): AttachmentRef =
    // Absolute: the JVM resolves relative paths against `user.dir`, the library against the
    // process's working directory, and the two may differ.
    attachFile(collection, id, field, file.absolutePath, mediaType, name)

/**
 * Like the [File] overload, with bytes already in memory (a small signature image).
 *
 * @throws FieldsyncException.InvalidValue if [mediaType] or [name] cannot go into a reference.
 */
fun Store.attach(
    collection: String,
    id: String,
    field: String,
    bytes: ByteArray,
    mediaType: String,
    name: String? = null,
): AttachmentRef = attachBytes(collection, id, field, bytes, mediaType, name)

/**
 * Writes the bytes [reference] names to [file] (created or replaced), a chunk at a time: the way
 * to read a large attachment. Returns false, writing nothing, while the store does not hold them
 * all (an `on_demand` field not yet fetched with [SyncClient.fetchAttachment]).
 *
 * @throws FieldsyncException.Io if the file cannot be written.
 */
fun Store.saveAttachment(reference: AttachmentRef, file: File): Boolean =
    saveAttachment(reference, file.absolutePath)
