package org.fieldsync

import java.io.File
import kotlin.test.assertEquals
import kotlin.test.assertTrue
import kotlin.time.Duration.Companion.seconds
import kotlinx.coroutines.cancelAndJoin
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.coroutineScope
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.Test

/**
 * The repository README's Kotlin sample, run against a real server: the region between the
 * `readme:kotlin` markers is the README's code block (scripts/check-readme-samples compares them).
 */
class ReadmeTest : ServerTest() {
    @Test
    fun `the README's Kotlin sample runs`(): Unit = runBlocking {
        val token = server.userWithDevice("ada", "north")
        server.start()
        // What an app has at hand: its files directory, its schema, the server and a token.
        val filesDir: File = dir.toFile()
        val schemaJson = clinicSchema
        val url = server.url
        val shown = Channel<List<Record>>(Channel.UNLIMITED)
        fun show(clients: List<Record>) {
            shown.trySend(clients)
        }
        fun showProgress(done: Long, total: Long) = assertTrue(done <= total)

        coroutineScope {
            // Stands in for an Android ViewModel's scope.
            val viewModelScope = this
            // [readme:kotlin]
            val store = Store(File(filesDir, "clinic.db").path, schemaJson)
            val id = store.insert("clients", fieldsOf("caseload_id" to "north", "name" to "Ada", "birth_year" to 1990))

            // Suspend calls for coroutines on the main thread: each moves to Dispatchers.IO.
            val records = store.suspending()
            records.spliceText("clients", id, "notes", 0, 0, "First visit.")
            val north = Query(Filter.Eq("caseload_id", FieldValue.Str("north")), order = listOf(Order("name")))
            val names = records.query("clients", north).map { it.string("name") } // ["Ada"]

            // Query results kept current, Room-style: the query runs again after each commit
            // that touches a matching record; equal results are not emitted twice.
            val watching = viewModelScope.launch { store.observe("clients", north).collect { show(it) } }

            val client = SyncClient(SyncConfig(endpoint = url, token = token))
            val report = client.syncNow(store) { p -> showProgress(p.pushed, p.pushTotal) }
            // [/readme:kotlin]

            assertEquals(listOf("Ada"), names)
            assertEquals(0L, report.rejected)
            assertEquals(0L, store.outboxLen())
            withTimeout(10.seconds) {
                assertEquals(listOf("First visit."), shown.receive().map { it.string("notes") })
            }
            watching.cancelAndJoin()
            closeLater(client)
            closeLater(store)
        }
    }
}
