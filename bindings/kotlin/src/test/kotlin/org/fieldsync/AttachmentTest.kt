package org.fieldsync

import java.security.MessageDigest
import java.util.Collections
import kotlin.test.assertContentEquals
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertFalse
import kotlin.test.assertNull
import kotlin.test.assertTrue
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Test

/**
 * Attachments from Kotlin: bytes and files attached on one device reach another through a real
 * fieldsync-server process (eager fields with the sync, on-demand fields when fetched), and what
 * cannot be attached is refused with nothing stored.
 */
class AttachmentTest : ServerTest() {
    @Test
    fun `attachments reach another device eagerly or on demand`(): Unit = runBlocking {
        val phoneToken = server.userWithDevice("ada", "north")
        val tabletToken = server.userWithDevice("bo", "north")
        server.start()
        val (phone, phoneSync) = device("phone", phoneToken)
        val (tablet, tabletSync) = device("tablet", tabletToken)
        val (client, session) = clientAndSession(phone)

        // Over two chunks of the protocol: the progress counts each of them.
        val form = recording(2 * MIB + 4321, 1)
        val consent = phone.attach("clients", client, "consent_form", form, "image/jpeg", "consent.jpg")
        assertEquals(AttachmentRef(sha256Hex(form), form.size.toLong(), "image/jpeg", "consent.jpg"), consent)
        val audio = recording(70_000, 2)
        val audioFile = dir.resolve("note.m4a").toFile().apply { writeBytes(audio) }
        val note = phone.attach("sessions", session, "audio_note", audioFile, "audio/mp4")
        assertEquals(AttachmentRef(sha256Hex(audio), 70_000L, "audio/mp4", null), note)
        assertEquals(note, phone.attachmentOf("sessions", session, "audio_note"))

        val phoneProgress = Collections.synchronizedList(mutableListOf<SyncProgress>())
        val sent = phoneSync.syncNow(phone) { phoneProgress += it }
        // Two inserts and two attachments' references; then the bytes.
        assertEquals(Triple(4L, 2L, 0L), Triple(sent.pushed, sent.attachmentsSent, sent.attachmentsFetched))
        val sentBytes = (form.size + audio.size).toLong()
        assertEquals(sentBytes to sentBytes, phoneProgress.last().let { it.attachmentBytesDone to it.attachmentBytesTotal })

        // The consent form (eager) comes with the sync.
        val tabletProgress = Collections.synchronizedList(mutableListOf<SyncProgress>())
        val pulled = tabletSync.syncNow(tablet) { tabletProgress += it }
        assertEquals(2L to 1L, pulled.pulled to pulled.attachmentsFetched)
        val formBytes = form.size.toLong()
        assertEquals(formBytes to formBytes, tabletProgress.last().let { it.attachmentBytesDone to it.attachmentBytesTotal })
        assertEquals(consent, tablet.get("clients", client)?.attachment("consent_form"))
        assertContentEquals(form, tablet.attachmentBytes(consent))
        val saved = dir.resolve("saved consent.jpg").toFile()
        assertTrue(tablet.saveAttachment(consent, saved))
        assertContentEquals(form, saved.readBytes())

        // The audio note (on demand) only when fetched.
        assertEquals(note, tablet.attachmentOf("sessions", session, "audio_note"))
        assertFalse(tablet.hasAttachment(note))
        assertNull(tablet.attachmentBytes(note))
        val notYet = dir.resolve("note.m4a.saved").toFile()
        assertFalse(tablet.saveAttachment(note, notYet))
        assertFalse(notYet.exists())
        assertTrue(tabletSync.fetchAttachment(tablet, "sessions", session, "audio_note"))
        assertTrue(tablet.hasAttachment(note))
        assertContentEquals(audio, tablet.attachmentBytes(note))
        assertTrue(tablet.saveAttachment(note, notYet))
        assertContentEquals(audio, notYet.readBytes())

        // Nothing moves twice.
        for ((store, sync) in listOf(phone to phoneSync, tablet to tabletSync)) {
            val again = sync.syncNow(store, null)
            assertEquals(0L to 0L, again.attachmentsSent to again.attachmentsFetched)
        }
    }

    @Test
    fun `tidying frees replaced bytes and the budget bounds eager fetches`(): Unit = runBlocking {
        assertEquals(1L shl 30, StoreOptions(synchronous = Synchronous.FULL).attachmentBudgetBytes)
        val phoneToken = server.userWithDevice("ada", "north")
        val tabletToken = server.userWithDevice("bo", "north")
        server.start()
        val (phone, phoneSync) = device("phone", phoneToken)
        val small = StoreOptions(synchronous = Synchronous.FULL, attachmentBudgetBytes = 1000L)
        val tablet = closeLater(Store.openWithOptions(dir.resolve("tablet.db").toString(), clinicSchema, small))
        val tabletSync = closeLater(SyncClient(SyncConfig(endpoint = server.url, token = tabletToken)))
        val (client, _) = clientAndSession(phone)

        val first = phone.attach("clients", client, "consent_form", recording(5000, 3), "image/png")
        phoneSync.syncNow(phone, null)
        // Replaced: the first form's bytes are referenced by nothing any more.
        val secondBytes = recording(3000, 4)
        val second = phone.attach("clients", client, "consent_form", secondBytes, "image/png")
        assertEquals(AttachmentsTidied(unreferenced = 1L, evicted = 0L, bytes = 5000L), phone.tidyAttachments())
        assertFalse(phone.hasAttachment(first))
        assertTrue(phone.hasAttachment(second))
        assertEquals(1L, phoneSync.syncNow(phone, null).attachmentsSent)

        // 3000 bytes do not fit a budget of 1000: left to be fetched on demand.
        assertEquals(0L, tabletSync.syncNow(tablet, null).attachmentsFetched)
        assertFalse(tablet.hasAttachment(second))
        assertTrue(tabletSync.fetchAttachment(tablet, "clients", client, "consent_form"))
        assertContentEquals(secondBytes, tablet.attachmentBytes(second))
        // The server holds it: tidying evicts it to keep within the budget.
        assertEquals(AttachmentsTidied(unreferenced = 0L, evicted = 1L, bytes = 3000L), tablet.tidyAttachments())
        assertFalse(tablet.hasAttachment(second))
    }

    @Test
    fun `what cannot be attached is refused and nothing is stored`() {
        val store = closeLater(Store(dir.resolve("device.db").toString(), clinicSchema))
        val client = store.insert("clients", fieldsOf("caseload_id" to "north", "name" to "Sam"))
        val scan = "a scanned form".toByteArray()
        val wouldBe = AttachmentRef(sha256Hex(scan), scan.size.toLong(), "image/jpeg", null)

        val badType = assertFailsWith<FieldsyncException.InvalidValue> {
            store.attach("clients", client, "consent_form", scan, "jpeg")
        }
        assertTrue("media_type" in badType.message.orEmpty(), badType.message)
        assertFailsWith<FieldsyncException.Io> {
            store.attach("clients", client, "consent_form", dir.resolve("missing.jpg").toFile(), "image/jpeg")
        }
        assertFailsWith<FieldsyncException.WrongType> {
            store.attach("clients", client, "name", scan, "image/jpeg")
        }

        assertNull(store.attachmentOf("clients", client, "consent_form"))
        assertNull(store.get("clients", client)?.attachment("consent_form"))
        assertFalse(store.hasAttachment(wouldBe))
        assertEquals(1L, store.outboxLen()) // the insert only
        assertEquals(AttachmentsTidied(0L, 0L, 0L), store.tidyAttachments())

        // A reference the app altered is refused, naming what is wrong but not its value.
        val altered = wouldBe.copy(sha256 = wouldBe.sha256.uppercase())
        val refused = assertFailsWith<FieldsyncException.InvalidValue> { store.hasAttachment(altered) }
        assertTrue("sha256" in refused.message.orEmpty(), refused.message)
        assertFalse(altered.sha256 in refused.message.orEmpty(), refused.message)
        // Another kind of value is not a reference.
        assertFailsWith<FieldsyncException.WrongType> { store.get("clients", client)?.attachment("name") }
        assertFailsWith<FieldsyncException.NotFound> { store.attachmentOf("clients", "nobody", "consent_form") }
    }

    private fun clientAndSession(store: Store): Pair<String, String> {
        val client = store.insert("clients", fieldsOf("caseload_id" to "north", "name" to "Sam"))
        val session = store.insert(
            "sessions",
            fieldsOf("caseload_id" to "north", "client" to client, "started_at" to 1L),
        )
        return client to session
    }

    private companion object {
        const val MIB = 1 shl 20

        /** [size] bytes that differ from any other [seed]'s, the same on every run. */
        fun recording(size: Int, seed: Int): ByteArray =
            ByteArray(size) { i -> ((i.toLong() * 2_654_435_761L) ushr 8).toInt().xor(seed).toByte() }

        fun sha256Hex(bytes: ByteArray): String =
            MessageDigest.getInstance("SHA-256").digest(bytes).joinToString("") { "%02x".format(it) }
    }
}
