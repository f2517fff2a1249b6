// Sync with lambdas and flows: progress and tokens as lambdas, the background status as a
// StateFlow.

package org.fieldsync

import kotlin.time.Duration
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.asStateFlow

/**
 * [SyncClient.syncNow] with the progress reported to a lambda, called on a library thread after
 * every pushed batch and pulled page:
 *
 * ```
 * val report = client.syncNow(store) { progress -> showProgress(progress.pushed, progress.pushTotal) }
 * ```
 *
 * Cancelling the calling coroutine cancels the sync; whatever the server already answered is
 * kept.
 *
 * @throws FieldsyncException when the sync fails, for example [FieldsyncException.Network],
 *   [FieldsyncException.Unauthorized], or [FieldsyncException.SignInRequired] with a token
 *   provider.
 */
suspend fun SyncClient.syncNow(store: Store, onProgress: (SyncProgress) -> Unit): SyncReport {
    // Inside the object, `onProgress` names the method being overridden.
    val forward = onProgress
    val listener = object : SyncProgressListener {
        override fun onProgress(progress: SyncProgress) = forward(progress)
    }
    return syncNow(store, listener)
}

/**
 * [SyncClient.syncWithin] with a [Duration]: syncs for at most [budget], the way to sync in the
 * background work an OS allows a suspended app (an Android `CoroutineWorker`; the module's
 * README shows one). No new batch, page or attachment starts once most of the budget is spent,
 * and one still running when it ends is cancelled; what was stored stays stored.
 *
 * ```
 * val report = client.syncWithin(store, 20.seconds)
 * if (!report.complete) rescheduleSoon()            // the next sync carries on from there
 * if (report.rejected > 0) notifyRefused(store.rejectedWrites())
 * ```
 *
 * [onProgress], if given, is called on a library thread after every pushed batch and pulled
 * page. [Duration.INFINITE] syncs to the end, like [SyncClient.syncNow].
 *
 * @throws FieldsyncException.InvalidValue if [budget] is negative.
 * @throws FieldsyncException when the sync fails, as [SyncClient.syncNow] does.
 */
suspend fun SyncClient.syncWithin(
    store: Store,
    budget: Duration,
    onProgress: ((SyncProgress) -> Unit)? = null,
): SyncReport {
    // Checked here so that the message names this parameter, not the library's `budget_ms`.
    if (budget.isNegative()) throw FieldsyncException.InvalidValue("budget must not be negative")
    val forward = onProgress
    val listener = forward?.let {
        object : SyncProgressListener {
            override fun onProgress(progress: SyncProgress) = forward(progress)
        }
    }
    // An infinite Duration has no milliseconds to give (only a sentinel): with no deadline at
    // all, this is a plain sync.
    if (budget.isInfinite()) return syncNow(store, listener)
    return syncWithin(store, budget.inWholeMilliseconds, listener)
}

/**
 * A client whose requests carry tokens from [token], the app's sign-in library, for clinics whose
 * staff sign in through an identity provider (see [SyncClient.withTokenProvider]; the config's
 * `token` is ignored). A new device enrols once and keeps its id:
 *
 * ```
 * val config = SyncConfig(endpoint = url, token = "", deviceId = prefs.deviceId)
 * val client = SyncClient.withTokenProvider(config) { auth.freshAccessToken() }
 * if (prefs.deviceId == null) prefs.deviceId = client.enrollDevice("Ada's tablet")
 * ```
 *
 * [token] runs on a library coroutine before every sync, and once more when the server refused
 * the token it gave. It throws when the person must sign in again (best as
 * [TokenProviderException.SignInRequired]; any exception counts): the sync then fails with
 * [FieldsyncException.SignInRequired], and background sync shows [SyncState.SIGN_IN_REQUIRED]
 * until it asks again (call [ObservableBackgroundSync.syncSoon] once they signed in).
 *
 * @throws FieldsyncException if the configuration cannot be used.
 */
fun SyncClient.Companion.withTokenProvider(config: SyncConfig, token: suspend () -> String): SyncClient {
    // Inside the object, `token` names the method being overridden.
    val provide = token
    val provider = object : TokenProvider {
        override suspend fun token(): String = provide()
    }
    return withTokenProvider(config, provider)
}

/**
 * Starts syncing [store] in the background (see [SyncClient.startBackground]) and returns it
 * with its status as a [StateFlow], for a UI to collect:
 *
 * ```
 * val sync = client.startBackgroundSync(store)
 * sync.status.collect { status -> banner.show(status.state, status.lastError) }
 * // when the user signs out:
 * sync.stop()
 * ```
 *
 * @throws FieldsyncException if the background sync cannot start.
 */
fun SyncClient.startBackgroundSync(
    store: Store,
    options: BackgroundOptions = BackgroundOptions(),
): ObservableBackgroundSync = ObservableBackgroundSync(this, store, options)

/**
 * A running background sync whose [status] is a [StateFlow]. Started by
 * [SyncClient.startBackgroundSync]; it stops when the server refuses a device token, on [stop],
 * or on [close]. With a token provider that has no token it shows [SyncState.SIGN_IN_REQUIRED]
 * and carries on. Keep a reference while it should run: once unreachable, it is stopped when
 * garbage-collected.
 */
class ObservableBackgroundSync internal constructor(
    client: SyncClient,
    store: Store,
    options: BackgroundOptions,
) : AutoCloseable {
    // The status the library starts from; the loop reports every change after it.
    private val state = MutableStateFlow(
        SyncStatus(
            state = SyncState.IDLE,
            progress = SyncProgress(
                pushed = 0L,
                pushTotal = 0L,
                pulled = 0L,
                pulling = false,
                attachmentBytesDone = 0L,
                attachmentBytesTotal = 0L,
            ),
            lastSuccessMs = null,
            lastReport = null,
            lastError = null,
            retryInMs = null,
            stopped = false,
        ),
    )

    private val background: BackgroundSync = client.startBackground(store, options, StatusForwarder(state))

    /**
     * The latest status; [SyncStatus.lastReport] tells what the last successful sync did (writes
     * the server refused, scopes purged). It has [SyncStatus.stopped] set once the loop has stopped for good:
     * after [stop], or when the server refused a device token ([SyncState.ERROR]; enroll again).
     * [SyncState.SIGN_IN_REQUIRED] does not stop it: once the person signed in, [syncSoon] syncs.
     */
    val status: StateFlow<SyncStatus> = state.asStateFlow()

    /** Syncs as soon as possible, for example when the app comes to the foreground. */
    fun syncSoon() = background.syncSoon()

    /**
     * Stops the loop, letting a sync in progress finish, and returns once it has stopped; [status]
     * then has [SyncStatus.stopped] set. Calling it again does nothing.
     */
    suspend fun stop() = background.stop()

    /** Stops the loop without waiting for it, and releases the native object. */
    override fun close() = background.close()

    // Holds the flow only, not this object: like the generated BackgroundSync, an unreachable
    // ObservableBackgroundSync is collected and its loop stopped.
    private class StatusForwarder(private val state: MutableStateFlow<SyncStatus>) : SyncStatusListener {
        override fun onStatus(status: SyncStatus) {
            state.value = status
        }
    }
}
