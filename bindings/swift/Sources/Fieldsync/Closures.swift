// Closures where the generated API asks for a listener object: a change listener, a sync's
// progress, the background sync's status and the token provider. The closures are called on
// a library thread (the committing thread, or one of the sync's), hence `@Sendable`; hop to
// the main actor inside them to touch the UI.
import Foundation

/// A `ChangeListener` calling a closure.
final class ChangeClosure: ChangeListener {
    let body: @Sendable (ChangeEvent) -> Void
    init(_ body: @escaping @Sendable (ChangeEvent) -> Void) { self.body = body }
    func onChange(event: ChangeEvent) { body(event) }
}

/// A `SyncProgressListener` calling a closure.
final class ProgressClosure: SyncProgressListener {
    let body: @Sendable (SyncProgress) -> Void
    init(_ body: @escaping @Sendable (SyncProgress) -> Void) { self.body = body }
    func onProgress(progress: SyncProgress) { body(progress) }
}

/// A `SyncStatusListener` calling a closure.
final class StatusClosure: SyncStatusListener {
    let body: @Sendable (SyncStatus) -> Void
    init(_ body: @escaping @Sendable (SyncStatus) -> Void) { self.body = body }
    func onStatus(status: SyncStatus) { body(status) }
}

/// A `TokenProvider` calling an async closure.
final class TokenClosure: TokenProvider {
    let body: @Sendable () async throws -> String
    init(_ body: @escaping @Sendable () async throws -> String) { self.body = body }
    func token() async throws -> String { try await body() }
}

extension Store {
    /// `subscribe` with a closure: `onChange` is called after every commit that changes records
    /// of `collection` matching `filter`, on the committing thread, until the subscription is
    /// cancelled. It may read the store; hand longer work to another thread.
    public func subscribe(
        collection: String, filter: Filter = .all,
        onChange: @escaping @Sendable (ChangeEvent) -> Void
    ) throws -> Subscription {
        try subscribe(collection: collection, filter: filter, listener: ChangeClosure(onChange))
    }
}

extension SyncClient {
    /// A client whose requests carry a token from `token` (the app's sign-in library) instead
    /// of `config.token`. Throw `TokenProviderError.signInRequired(reason:)` from it when the
    /// person must sign in again.
    public static func withTokenProvider(
        config: SyncConfig, token: @escaping @Sendable () async throws -> String
    ) throws -> SyncClient {
        try withTokenProvider(config: config, provider: TokenClosure(token))
    }

    /// `syncNow` telling `progress` after every pushed batch and pulled page:
    /// `try await client.syncNow(store: store) { progress in ... }`.
    public func syncNow(
        store: Store, progress: @escaping @Sendable (SyncProgress) -> Void
    ) async throws -> SyncReport {
        try await syncNow(store: store, progress: ProgressClosure(progress))
    }

    /// `syncWithin` telling `progress` after every pushed batch and pulled page.
    public func syncWithin(
        store: Store, budgetMs: Int64, progress: @escaping @Sendable (SyncProgress) -> Void
    ) async throws -> SyncReport {
        try await syncWithin(store: store, budgetMs: budgetMs, progress: ProgressClosure(progress))
    }

    /// `syncWithin` for at most `budget` seconds, such as the time an iOS background task has
    /// left; rounded down to whole milliseconds.
    public func syncWithin(
        store: Store, budget: TimeInterval,
        progress: (@Sendable (SyncProgress) -> Void)? = nil
    ) async throws -> SyncReport {
        let milliseconds = (budget * 1000).rounded(.down)
        // Clamped, as converting a NaN or out-of-range Double to Int64 traps.
        let budgetMs = milliseconds.isNaN || milliseconds <= 0 ? 0
            : milliseconds >= Double(Int64.max) ? Int64.max : Int64(milliseconds)
        return try await syncWithin(
            store: store, budgetMs: budgetMs, progress: progress.map { ProgressClosure($0) })
    }

    /// `syncWithin` for at most `budget`.
    @available(iOS 16, macOS 13, *)
    public func syncWithin(
        store: Store, budget: Duration,
        progress: (@Sendable (SyncProgress) -> Void)? = nil
    ) async throws -> SyncReport {
        let (seconds, attoseconds) = budget.components
        // One millisecond is 10^15 attoseconds; clamped rather than overflowing.
        let budgetMs = seconds < 0 ? 0
            : seconds >= Int64.max / 1000 ? Int64.max
            : seconds * 1000 + attoseconds / 1_000_000_000_000_000
        return try await syncWithin(
            store: store, budgetMs: budgetMs, progress: progress.map { ProgressClosure($0) })
    }

    /// `startBackground` with a closure told every change of the status, on a library thread.
    public func startBackground(
        store: Store, options: BackgroundOptions = BackgroundOptions(),
        onStatus: @escaping @Sendable (SyncStatus) -> Void
    ) throws -> BackgroundSync {
        try startBackground(store: store, options: options, listener: StatusClosure(onStatus))
    }
}
