package org.fieldsync

import java.util.Collections
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit
import java.util.concurrent.atomic.AtomicInteger
import java.util.concurrent.atomic.AtomicReference
import kotlin.test.assertEquals
import kotlin.time.Duration.Companion.seconds
import kotlin.test.assertFailsWith
import kotlin.test.assertFalse
import kotlin.test.assertNotNull
import kotlin.test.assertNull
import kotlin.test.assertTrue
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.cancelAndJoin
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.Test

/** Two stores syncing through a real fieldsync-server process. */
class SyncTest : ServerTest() {
    @Test
    fun `two stores converge and keep both text edits`(): Unit = runBlocking {
        val phoneToken = server.userWithDevice("ada", "north")
        val tabletToken = server.userWithDevice("bo", "north")
        server.start()
        val (phone, phoneSync) = device("phone", phoneToken)
        val (tablet, tabletSync) = device("tablet", tabletToken)

        val client = phone.insert(
            "clients",
            fieldsOf("caseload_id" to "north", "name" to "Ada", "notes" to "Visit went well."),
        )
        val pushed = phoneSync.syncNow(phone, null)
        assertEquals(1L to 0L, pushed.pushed to pushed.rejected)
        assertEquals(0L, phone.outboxLen())

        // The merge reaches the tablet's observers as a remote change.
        val merged = Channel<ChangeEvent>(Channel.UNLIMITED)
        // Unconfined runs the collector, and with it the subscription, before launch returns.
        val observer = launch(Dispatchers.Unconfined) {
            tablet.changes("clients").collect { merged.send(it) }
        }
        assertEquals(1L, tabletSync.syncNow(tablet, null).pulled)
        assertEquals(ChangeEvent("clients", listOf(client), ChangeOrigin.REMOTE), merged.next())
        // Events come in commit order: the next one is this write, so the merge told only once.
        tablet.update("clients", client, fieldsOf("active" to true))
        assertEquals(ChangeEvent("clients", listOf(client), ChangeOrigin.LOCAL), merged.next())
        observer.cancelAndJoin()

        // Both edit the note offline, at different places; both edits survive the merge.
        phone.spliceText("clients", client, "notes", 0, 0, "Calm. ")
        tablet.spliceText("clients", client, "notes", "Visit went well.".length, 0, " Call mum.")
        for ((store, sync) in listOf(phone to phoneSync, tablet to tabletSync, phone to phoneSync)) {
            sync.syncNow(store, null)
        }

        val expected = "Calm. Visit went well. Call mum."
        assertEquals(expected, phone.get("clients", client)?.string("notes"))
        assertEquals(expected, tablet.get("clients", client)?.string("notes"))
        assertEquals(phone.get("clients", client)?.fields, tablet.get("clients", client)?.fields)
    }

    @Test
    fun `a conflict has one winner everywhere and keeps the loser`(): Unit = runBlocking {
        val phoneToken = server.userWithDevice("ada", "north")
        val tabletToken = server.userWithDevice("bo", "north")
        server.start()
        val (phone, phoneSync) = device("phone", phoneToken)
        val (tablet, tabletSync) = device("tablet", tabletToken)

        val client = phone.insert("clients", fieldsOf("caseload_id" to "north", "name" to "Ada"))
        phoneSync.syncNow(phone, null)
        tabletSync.syncNow(tablet, null)

        phone.update("clients", client, fieldsOf("phone" to "555-0100"))
        tablet.update("clients", client, fieldsOf("phone" to "555-0199"))
        for ((store, sync) in listOf(phone to phoneSync, tablet to tabletSync, phone to phoneSync)) {
            sync.syncNow(store, null)
        }

        val winner = phone.get("clients", client)?.string("phone")
        assertEquals(winner, tablet.get("clients", client)?.string("phone"))
        val loser = if (winner == "555-0199") "555-0100" else "555-0199"
        for (store in listOf(phone, tablet)) {
            val conflict = store.conflicts("clients", client).single()
            assertEquals("phone", conflict.field)
            assertEquals(fieldValueOf(winner), conflict.winner.value)
            assertEquals(listOf(fieldValueOf(loser)), conflict.losers.map { it.value })
        }
        val devices = phone.history("clients", client).map { it.deviceId }.toSet()
        assertEquals(setOf(phone.deviceId(), tablet.deviceId()), devices)

        // People, not actor ids: the server named who writes as each actor.
        val both = setOf(Author("ada", "ada's device"), Author("bo", "bo's device"))
        for (store in listOf(phone, tablet)) {
            assertEquals(both, store.history("clients", client).map { it.author }.toSet())
            val conflict = store.conflicts("clients", client).single()
            assertEquals(both, (conflict.losers + conflict.winner).map { it.author }.toSet())
        }
    }

    @Test
    fun `progress is reported`(): Unit = runBlocking {
        val token = server.userWithDevice("ada", "north")
        server.start()
        val (store, _) = device("phone", token)
        store.writeBatch(
            (0 until 30).map { Write.Insert("clients", null, fieldsOf("caseload_id" to "north", "name" to "C$it")) },
        )
        val smallBatches = closeLater(SyncClient(SyncConfig(endpoint = server.url, token = token, pushBatchSize = 10)))

        val seen = Collections.synchronizedList(mutableListOf<SyncProgress>())
        val report = smallBatches.syncNow(store) { seen += it }

        assertEquals(30L, report.pushed)
        assertEquals(listOf(10L, 20L, 30L), seen.filter { !it.pulling }.map { it.pushed })
        assertTrue(seen.all { it.pushTotal == 30L })
        assertTrue(seen.last().pulling)
    }

    @Test
    fun `a refused write is taken back and kept for a retry`(): Unit = runBlocking {
        val token = server.userWithDevice("ada", "north")
        server.start()
        val (store, client) = device("phone", token)
        val refused = store.insert("clients", fieldsOf("caseload_id" to "south", "name" to "Cy"))

        val report = client.syncNow(store, null)

        assertEquals(0L to 1L, report.pushed to report.rejected)
        val write = store.rejectedWrites().single()
        assertEquals(refused to "forbidden_scope", write.recordId to write.code)
        assertTrue(write.created)
        assertEquals(FieldValue.Str("Cy"), write.fields["name"])
        assertNull(store.get("clients", refused))

        server.admin("grant", "--user", "ada", "--scope", "south")
        store.retryRejectedWrite(write.id)
        assertTrue(store.rejectedWrites().isEmpty())
        assertEquals(1L to 0L, client.syncNow(store, null).let { it.pushed to it.rejected })
        assertNotNull(store.get("clients", refused))
    }

    @Test
    fun `a revoked token and an unreachable server raise typed errors`(): Unit = runBlocking {
        val token = server.userWithDevice("ada", "north")
        server.start()
        val (store, client) = device("phone", token)
        store.insert("clients", fieldsOf("caseload_id" to "north", "name" to "Ada"))
        client.syncNow(store, null)

        val tokenId = token.split("_")[1]
        server.admin("revoke-token", tokenId)
        store.insert("clients", fieldsOf("caseload_id" to "north", "name" to "Bo"))
        assertFailsWith<FieldsyncException.Unauthorized> { client.syncNow(store, null) }
        assertEquals(1L, store.outboxLen()) // nothing is lost

        assertFailsWith<FieldsyncException.InvalidConfig> {
            SyncClient(SyncConfig(endpoint = "ftp://example", token = token))
        }

        server.stop()
        val gone = closeLater(SyncClient(SyncConfig(endpoint = server.url, token = token)))
        assertFailsWith<FieldsyncException.Network> { gone.syncNow(store, null) }
        assertEquals(1L, store.outboxLen())
    }

    @Test
    fun `background sync reports its status and stops`(): Unit = runBlocking {
        val phoneToken = server.userWithDevice("ada", "north")
        val tabletToken = server.userWithDevice("bo", "north")
        server.start()
        val (phone, phoneSync) = device("phone", phoneToken)
        val (tablet, tabletSync) = device("tablet", tabletToken)

        val statuses = LinkedBlockingQueue<SyncStatus>()
        val listener = object : SyncStatusListener {
            override fun onStatus(status: SyncStatus) {
                statuses += status
            }
        }
        val seen = mutableListOf<SyncStatus>()
        // The next status after a successful sync, skipping the ones before it.
        fun nextSuccess(): SyncStatus {
            while (true) {
                val status = checkNotNull(statuses.poll(30, TimeUnit.SECONDS)) { "no success in $seen" }
                seen += status
                if (status.state == SyncState.IDLE && status.lastSuccessMs != null) return status
            }
        }

        val background = closeLater(
            phoneSync.startBackground(phone, BackgroundOptions(debounceMs = 50L), listener),
        )
        val client = phone.insert("clients", fieldsOf("caseload_id" to "north", "name" to "Ada"))
        nextSuccess()
        // The first sync may have started before the write: the write wakes the loop again,
        // and syncSoon asks for one more, so a bounded number of syncs pushes it.
        var syncs = 1
        while (phone.outboxLen() > 0L && syncs < 10) {
            background.syncSoon()
            nextSuccess()
            syncs++
        }
        assertEquals(0L, phone.outboxLen())
        tabletSync.syncNow(tablet, null)
        assertNotNull(tablet.get("clients", client))
        assertTrue(seen.any { it.state == SyncState.SYNCING })

        background.stop()
        assertTrue(background.status().stopped)
    }

    @Test
    fun `a refused token is asked for again and the fresh one syncs`(): Unit = runBlocking {
        // Without an identity provider, device tokens stand in for its access tokens: the
        // revoked one plays a token that expired since the sign-in library handed it out.
        val expired = server.userWithDevice("ada", "north")
        val fresh = server.enroll("ada")
        val tabletToken = server.userWithDevice("bo", "north")
        server.admin("revoke-token", expired.split("_")[1])
        server.start()
        val store = closeLater(Store(dir.resolve("phone.db").toString(), clinicSchema))
        val ids = (0 until 3).map { store.insert("clients", fieldsOf("caseload_id" to "north", "name" to "C$it")) }
        val calls = AtomicInteger()
        val client = closeLater(
            SyncClient.withTokenProvider(SyncConfig(endpoint = server.url, token = "")) {
                if (calls.incrementAndGet() == 1) expired else fresh
            },
        )

        val report = client.syncNow(store, null)

        assertEquals(3L to 0L, report.pushed to report.rejected)
        assertEquals(2, calls.get())
        assertEquals(0L, store.outboxLen())
        // The server has the writes: another person's device pulls them.
        val (tablet, tabletSync) = device("tablet", tabletToken)
        assertEquals(3L, tabletSync.syncNow(tablet, null).pulled)
        assertTrue(ids.all { tablet.get("clients", it) != null })
    }

    @Test
    fun `a provider without a token asks for a sign-in and nothing is lost`(): Unit = runBlocking {
        val token = server.userWithDevice("ada", "north")
        server.start()
        val (store, deviceSync) = device("phone", token)
        store.insert("clients", fieldsOf("caseload_id" to "north", "name" to "Ada"))
        val signedOut = CountingProvider { throw TokenProviderException.SignInRequired("signed out") }
        val client = closeLater(SyncClient.withTokenProvider(SyncConfig(endpoint = server.url, token = ""), signedOut))

        val err = assertFailsWith<FieldsyncException.SignInRequired> { client.syncNow(store, null) }
        assertTrue("signed out" in err.message.orEmpty(), err.message)
        assertEquals(1, signedOut.calls.get()) // no second ask without a refused token
        assertEquals(1L, store.outboxLen())

        // Any exception of the sign-in library counts as a sign-in to make.
        val broken = closeLater(
            SyncClient.withTokenProvider(SyncConfig(endpoint = server.url, token = "")) {
                error("no account")
            },
        )
        assertFailsWith<FieldsyncException.SignInRequired> { broken.syncNow(store, null) }
        assertEquals(1L, store.outboxLen())

        // The write is still there to push once a token can be had.
        assertEquals(1L, deviceSync.syncNow(store, null).pushed)
    }

    @Test
    fun `a fresh token refused too asks for a sign-in`(): Unit = runBlocking {
        val token = server.userWithDevice("ada", "north")
        server.admin("revoke-token", token.split("_")[1])
        server.start()
        val store = closeLater(Store(dir.resolve("phone.db").toString(), clinicSchema))
        store.insert("clients", fieldsOf("caseload_id" to "north", "name" to "Ada"))
        val refused = CountingProvider { token }
        val client = closeLater(SyncClient.withTokenProvider(SyncConfig(endpoint = server.url, token = ""), refused))

        assertFailsWith<FieldsyncException.SignInRequired> { client.syncNow(store, null) }
        assertEquals(2, refused.calls.get())
        assertEquals(1L, store.outboxLen())
    }

    @Test
    fun `enrolling takes an identity provider's token`(): Unit = runBlocking {
        val token = server.userWithDevice("ada", "north")
        server.start()
        val (_, plain) = device("phone", token)
        assertFailsWith<FieldsyncException.InvalidConfig> { plain.enrollDevice("Ada's tablet") }

        // A device token names its device already: the server refuses it (403).
        val withDeviceToken = CountingProvider { token }
        val client = closeLater(SyncClient.withTokenProvider(SyncConfig(endpoint = server.url, token = ""), withDeviceToken))
        val err = assertFailsWith<FieldsyncException.Server> { client.enrollDevice("Ada's tablet") }
        assertEquals(403, err.status)
        assertEquals(1, withDeviceToken.calls.get())
    }

    @Test
    fun `background sync waits for a sign-in and carries on after it`(): Unit = runBlocking {
        val token = server.userWithDevice("ada", "north")
        server.start()
        val store = closeLater(Store(dir.resolve("phone.db").toString(), clinicSchema))
        store.insert("clients", fieldsOf("caseload_id" to "north", "name" to "Ada"))
        // Signed out until the test signs in.
        val signedIn = AtomicReference<String?>(null)
        val client = closeLater(
            SyncClient.withTokenProvider(SyncConfig(endpoint = server.url, token = "")) {
                signedIn.get() ?: throw TokenProviderException.SignInRequired("signed out")
            },
        )
        val background = closeLater(client.startBackgroundSync(store, BackgroundOptions(debounceMs = 50L)))

        val waiting = withTimeout(30.seconds) {
            background.status.first { it.state == SyncState.SIGN_IN_REQUIRED }
        }
        assertFalse(waiting.stopped)
        assertTrue("signed out" in waiting.lastError.orEmpty(), waiting.lastError)
        assertEquals(1L, store.outboxLen())

        signedIn.set(token)
        background.syncSoon()
        withTimeout(30.seconds) {
            background.status.first { it.state == SyncState.IDLE && it.lastSuccessMs != null }
        }
        assertEquals(0L, store.outboxLen())
        background.stop()
        assertTrue(background.status.value.stopped)
    }

    private suspend fun <T> Channel<T>.next(): T = withTimeout(10.seconds) { receive() }
}

/** A token provider that counts how often the sync asked it. */
private class CountingProvider(private val provide: () -> String) : TokenProvider {
    val calls = AtomicInteger()

    override suspend fun token(): String {
        calls.incrementAndGet()
        return provide()
    }
}
