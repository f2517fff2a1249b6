package org.fieldsync

import com.sun.jna.Platform
import java.nio.file.Path
import java.util.jar.JarFile
import kotlin.test.assertEquals
import kotlin.test.assertNotNull
import kotlin.test.assertNull
import kotlin.test.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir

/**
 * The packaged jar, as an app that depends on it sees it: run by Failsafe after `package`, with
 * the jar on the class path instead of the compiled classes and no library override, so the
 * library can only come from the jar's JNA resource.
 */
class NativeLibraryIT {
    @TempDir
    lateinit var dir: Path

    @Test
    fun `the jar carries the native library where JNA looks for it`() {
        val resource = "${Platform.RESOURCE_PREFIX}/libfieldsync_ffi.so"
        assertEquals("linux-x86-64/libfieldsync_ffi.so", resource)
        val url = assertNotNull(Store::class.java.classLoader.getResource(resource), "$resource is not on the class path")
        // From the jar, not from a classes directory.
        assertEquals("jar", url.protocol, "$url")
        val jar = url.path.removePrefix("file:").substringBefore("!/")
        JarFile(jar).use { file ->
            assertNotNull(file.getEntry(resource))
            assertNotNull(file.getEntry("META-INF/LICENSE"))
            assertNotNull(file.getEntry("org/fieldsync/SuspendingStore.class"))
        }
    }

    @Test
    fun `the library loads from the class path without an override`() {
        assertNull(System.getProperty("uniffi.component.fieldsync.libraryOverride"))
        assertNull(System.getProperty("jna.library.path"))
        Store(dir.resolve("device.db").toString(), clinicSchema).use { store ->
            val id = store.insert("clients", fieldsOf("caseload_id" to "north", "name" to "Ada"))
            assertEquals("Ada", store.get("clients", id)?.string("name"))
            assertTrue(store.deviceId().isNotEmpty())
        }
    }
}
