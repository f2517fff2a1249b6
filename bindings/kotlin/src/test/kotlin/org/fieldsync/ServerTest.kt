package org.fieldsync

import java.nio.file.Path
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.BeforeEach
import org.junit.jupiter.api.io.TempDir

/**
 * Base of the tests that sync: a fresh server per test (not yet started, so that users can be
 * set up first), and stores and clients that are closed, with the server stopped, after each
 * test whatever its outcome.
 */
abstract class ServerTest {
    @TempDir
    lateinit var dir: Path

    lateinit var server: TestServer

    private val opened = mutableListOf<AutoCloseable>()

    @BeforeEach
    fun createServer() {
        server = TestServer(dir)
    }

    @AfterEach
    fun closeEverything() {
        try {
            opened.asReversed().forEach { it.close() }
        } finally {
            server.close()
        }
    }

    /** Closes [closeable] after the test. */
    fun <T : AutoCloseable> closeLater(closeable: T): T = closeable.also { opened += it }

    /** A device: its own store file, and a client syncing it with the server as [token]. */
    fun device(name: String, token: String): Pair<Store, SyncClient> {
        val store = closeLater(Store(dir.resolve("$name.db").toString(), clinicSchema))
        val client = closeLater(SyncClient(SyncConfig(endpoint = server.url, token = token)))
        return store to client
    }
}
