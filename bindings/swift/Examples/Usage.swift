// Usage examples of the Fieldsync Swift package, the README's Swift sample among them (the
// region marked `readme:swift`). On a Mac, `swift build` compiles them (the FieldsyncExamples
// target); where no Swift compiler runs, generate.sh --check runs scripts/check_examples.py,
// which checks that every type, case, method and argument label they use is declared.
import Fieldsync
import Foundation

#if canImport(BackgroundTasks) && os(iOS)
import BackgroundTasks
#endif

let clinicSchema = """
    {"collections": {"clients": {
        "scope_field": "caseload_id",
        "fields": {
            "caseload_id": {"type": "string", "required": true},
            "name": {"type": "string", "required": true},
            "birth_year": {"type": "integer"},
            "notes": {"type": "text"}
        }
    }}}
    """

enum Examples {
    /// A quick tour: the README's sample.
    static func tour(directory: URL, token: String, show: @escaping @Sendable ([String]) -> Void) async throws {
        // [readme:swift]
        let store = try Store(path: directory.appendingPathComponent("clinic.db").path, schema: clinicSchema)
        // In async code the store's calls run off the caller's actor: `try await`.
        let id = try await store.insert(collection: "clients", fields: ["caseload_id": "north", "name": "Ada"])
        try await store.spliceText(collection: "clients", id: id, field: "notes", index: 0, deleteCount: 0, insert: "Calm visit.")
        let north = Query(filter: .eq(field: "caseload_id", value: "north"), order: [Order(field: "name")])

        // Query results kept current: again after every matching commit, local or synced.
        let observer = Task {
            for try await records in store.observe(collection: "clients", query: north) {
                show(records.compactMap { $0["name"]?.string })
            }
        }

        do {
            try await store.update(collection: "clients", id: "nobody", patch: ["name": "Bo"])
        } catch FieldsyncError.notFound(let collection, let missing, _) {
            print("no \(collection) record \(missing)")
        }

        let client = try SyncClient(config: SyncConfig(endpoint: "https://sync.clinic.example", token: token))
        let report = try await client.syncNow(store: store) { progress in
            print("sent \(progress.pushed) of \(progress.pushTotal)")
        }
        print("pulled \(report.pulled), refused \(report.rejected)")
        // [/readme:swift]
        observer.cancel()
    }

    /// Reads and writes, each an async overload of the blocking call of the same name.
    static func records(store: Store) async throws {
        let ada = try await store.insert(
            collection: "clients", fields: ["caseload_id": "north", "name": "Ada", "birth_year": 1990])
        try await store.insertWithId(
            collection: "clients", id: "client-bo", fields: ["caseload_id": "north", "name": "Bo"])
        try await store.update(collection: "clients", id: ada, patch: ["birth_year": nil])

        let born = 1991
        let ids = try await store.writeBatch(writes: [
            .insert(collection: "clients", id: nil, fields: ["caseload_id": "south", "name": "Cy", "birth_year": FieldValue(born)]),
            .update(collection: "clients", id: "client-bo", patch: ["name": "Bo B."]),
            .delete(collection: "clients", id: ada),
        ])
        print("wrote \(ids.count) records")

        if let record = try await store.get(collection: "clients", id: "client-bo") {
            print(record.id, record["name"]?.string ?? "", record.updatedAtMs)
        }
        let adults = Query(
            filter: .and(filters: [.eq(field: "caseload_id", value: "north"), .lt(field: "birth_year", value: 2008)]),
            order: [Order(field: "name", descending: false)], limit: 50)
        for record in try await store.query(collection: "clients", query: adults) {
            print(record.fields["name"]?.string ?? "", record["birth_year"]?.int ?? 0)
        }
        let south = try await store.count(collection: "clients", filter: .eq(field: "caseload_id", value: "south"))
        let waiting = try await store.outboxLen()
        print("\(south) in the south caseload; \(waiting) changes to push")

        for entry in try await store.history(collection: "clients", id: "client-bo") {
            print(entry.deviceId, entry.timestampMs, entry.fields, entry.deleted)
        }
        for conflict in try await store.conflicts(collection: "clients", id: "client-bo") {
            print(conflict.field, conflict.winner.value, conflict.losers.map(\.deviceId))
        }
        for write in try await store.rejectedWrites() {
            print(write.code, write.message, write.recordId)
            try await store.discardRejectedWrite(id: write.id)
        }
    }

    /// Text edits at Swift's positions: a `String.Index` range, a UIKit `NSRange`, or `Int`s.
    static func textEdits(store: Store, id: String) async throws {
        let shown = "Calm visit. Slept well."
        if let range = shown.range(of: "Slept") {
            try await store.spliceText(
                collection: "clients", id: id, field: "notes", replacing: range, in: shown, with: "Ate")
        }
        // From `textView(_:shouldChangeTextIn:replacementText:)`, whose range counts UTF-16.
        let selection = NSRange(location: 0, length: 4)
        try store.spliceText(collection: "clients", id: id, field: "notes", replacing: selection, with: "Calmer")
        let end = shown.utf16.count
        try await store.spliceText(collection: "clients", id: id, field: "notes", index: end, deleteCount: 0, insert: " 🩺")
    }

    /// Errors: one enum, a case per failure, each with what an app acts on and a `reason`.
    static func errors(store: Store, client: SyncClient) async {
        do {
            _ = try await store.insert(collection: "patients", fields: ["name": "Ada"])
        } catch FieldsyncError.unknownCollection(let collection, _) {
            print("the schema declares no \(collection)")
        } catch FieldsyncError.missingField(_, let field, _) {
            print("\(field) is required")
        } catch let error as FieldsyncError {
            print(error.reason)
        } catch {
            print(error)
        }

        do {
            _ = try await client.syncNow(store: store)
        } catch let error as FieldsyncError {
            switch error {
            case .rateLimited(let retryAfterMs, _):
                print("retry in \(retryAfterMs) ms")
            case .network, .server:
                print("offline for now: \(error.reason)")
            case .unauthorized, .signInRequired:
                print("sign in again")
            case .`protocol`(let reason), .`internal`(let reason):
                print("report this: \(reason)")
            default:
                print(error.reason)
            }
        } catch {
            print(error)
        }
    }

    /// Every change as it commits, and a closure subscription.
    static func changes(store: Store) async throws {
        let subscription = try store.subscribe(collection: "clients", filter: .all) { event in
            print(event.ids, event.origin == .remote ? "synced" : "local")
        }
        defer { subscription.cancel() }
        for await event in try store.changes(collection: "clients", bufferingPolicy: .bufferingNewest(100)) {
            if event.origin == .local { break }
        }
    }

    /// Sign-in through the app's identity provider: a closure gives each sync its token.
    static func signedIn(store: Store, currentToken: @escaping @Sendable () async -> String?) async throws {
        let client = try SyncClient.withTokenProvider(
            config: SyncConfig(endpoint: "https://sync.clinic.example", token: "")
        ) {
            guard let token = await currentToken() else {
                throw TokenProviderError.signInRequired(reason: "signed out")
            }
            return token
        }
        let deviceId = try await client.enrollDevice(name: "Ada's iPad")
        print("enrolled as device \(deviceId)")
    }

    /// Background sync while the app runs, its status told to a closure.
    static func background(store: Store, client: SyncClient) async throws {
        let background = try client.startBackground(store: store, options: BackgroundOptions(intervalMs: 120_000)) { status in
            Task { @MainActor in
                print(status.state, status.lastError ?? "", status.lastReport?.rejected ?? 0)
            }
        }
        background.syncSoon()
        print(background.status().state == .idle)
        try await background.stop()
    }
}

#if canImport(BackgroundTasks) && os(iOS)
/// Syncing while the app is suspended, with BGTaskScheduler. The task identifier must be listed
/// under `BGTaskSchedulerPermittedIdentifiers` in Info.plist, and `register` called before the
/// app finishes launching.
enum BackgroundSyncTasks {
    static let refresh = "org.example.clinic.sync"
    static let processing = "org.example.clinic.sync.long"

    static func register(client: SyncClient, store: Store) {
        // An app refresh task has about 30 seconds: sync for 25 and leave time to finish.
        _ = BGTaskScheduler.shared.register(forTaskWithIdentifier: refresh, using: nil) { task in
            run(task, budget: 25, client: client, store: store)
        }
        // A processing task may run for minutes, but ends whenever the system needs the device.
        _ = BGTaskScheduler.shared.register(forTaskWithIdentifier: processing, using: nil) { task in
            run(task, budget: 240, client: client, store: store)
        }
    }

    static func schedule() {
        let refreshRequest = BGAppRefreshTaskRequest(identifier: refresh)
        refreshRequest.earliestBeginDate = Date(timeIntervalSinceNow: 15 * 60)
        let processingRequest = BGProcessingTaskRequest(identifier: processing)
        processingRequest.requiresNetworkConnectivity = true
        do {
            try BGTaskScheduler.shared.submit(refreshRequest)
            try BGTaskScheduler.shared.submit(processingRequest)
        } catch {
            print("background sync not scheduled: \(error)")
        }
    }

    static func run(_ task: BGTask, budget: TimeInterval, client: SyncClient, store: Store) {
        schedule()
        let completion = TaskCompletion(task)
        // Cancelling a Swift task does not stop a sync already running in the library, so the
        // budget is what keeps it within the task's time; on expiration, report and let go.
        task.expirationHandler = { completion.finish(success: false) }
        Task {
            do {
                let report = try await client.syncWithin(store: store, budget: budget)
                if report.rejected > 0 || !report.purgedScopes.isEmpty {
                    print("refused writes: \(report.rejected), scopes removed: \(report.purgedScopes)")
                }
                // Not complete: the budget ran out first; the next task carries on.
                completion.finish(success: report.complete)
            } catch {
                completion.finish(success: false)
            }
        }
    }
}

/// Completes a background task once, whether the sync ends or the system expires it first.
/// `@unchecked`: its one mutable property is only touched with the lock held.
final class TaskCompletion: @unchecked Sendable {
    private let task: BGTask
    private let lock = NSLock()
    private var done = false

    init(_ task: BGTask) { self.task = task }

    func finish(success: Bool) {
        lock.lock()
        defer { lock.unlock() }
        guard !done else { return }
        done = true
        task.setTaskCompleted(success: success)
    }
}
#endif
