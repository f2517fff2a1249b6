package org.fieldsync

import java.io.File
import java.io.IOException
import java.nio.file.Path
import java.util.concurrent.TimeUnit
import kotlin.concurrent.thread
import kotlin.io.path.readText

/** The clinic schema of the core's tests, which test.sh points the tests at. */
val clinicSchema: String by lazy { Path.of(property("fieldsync.schema")).readText() }

private fun property(name: String): String =
    checkNotNull(System.getProperty(name)) { "system property $name is not set: run test.sh" }

/** A real fieldsync-server process on a random loopback port, with its admin command line. */
class TestServer(directory: Path) : AutoCloseable {
    private val binary = File(property("fieldsync.server"))
    private val db = directory.resolve("server.db").toString()
    private var process: Process? = null

    init {
        check(binary.canExecute()) {
            "$binary is missing: build it with `cargo build -p fieldsync-server`"
        }
    }

    /** The base URL, once [start] has returned. */
    lateinit var url: String
        private set

    /** Runs an admin command against the server's database and returns what it printed. */
    fun admin(vararg args: String): String {
        val command = ProcessBuilder(listOf(binary.path, "--db", db) + args)
            .redirectError(ProcessBuilder.Redirect.INHERIT)
            .start()
        val out = command.inputStream.bufferedReader().readText()
        check(command.waitFor() == 0) { "`${args.joinToString(" ")}` failed" }
        return out
    }

    /** Starts serving, with `serve`'s [options] if any, and returns once the server listens. */
    fun start(vararg options: String) {
        // The server validates pushed records against the app's schema.
        admin("schema", "set", property("fieldsync.schema"))
        val command = listOf(binary.path, "--db", db, "serve", "--listen", "127.0.0.1:0") + options
        val started = ProcessBuilder(command)
            .redirectError(ProcessBuilder.Redirect.INHERIT)
            .apply { environment()["FIELDSYNC_LOG"] = "warn" }
            .start()
        process = started
        val lines = started.inputStream.bufferedReader()
        // The server prints its address once it listens; reading that line is the wait.
        while (true) {
            val line = lines.readLine() ?: error("the server exited before it listened")
            if (line.startsWith("listening on ")) {
                url = line.removePrefix("listening on ").trim()
                break
            }
        }
        // Keep reading so that the server never blocks on a full pipe, until [stop] closes it.
        thread(isDaemon = true, name = "fieldsync-server-stdout") {
            try {
                lines.useLines { it.count() }
            } catch (_: IOException) {
            }
        }
    }

    /** Creates [user] with write access to [scope] and one device; returns the device's token. */
    fun userWithDevice(user: String, scope: String): String {
        admin("create-user", user)
        admin("grant", "--user", user, "--scope", scope)
        return enroll(user)
    }

    /** Enrolls a new device of [user] and returns its token. */
    fun enroll(user: String): String =
        admin("enroll-device", "--user", user, "--name", "$user's device")
            .lines()
            .first { it.startsWith("token: ") }
            .removePrefix("token: ")

    /** Stops the server (if it runs) and waits for it to exit. */
    fun stop() {
        val running = process ?: return
        running.destroy()
        if (!running.waitFor(10, TimeUnit.SECONDS)) {
            running.destroyForcibly()
            running.waitFor()
        }
        process = null
    }

    override fun close() = stop()
}
