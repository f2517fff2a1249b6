// `async` overloads of the store's blocking calls. The generated methods block the calling
// thread on SQLite; called from the main actor they would freeze the UI. Each overload here
// has the same name and labels, so that in async code `try await store.insert(...)` picks it
// (Swift prefers the async overload in an async context) and runs the call on a dedicated
// queue, leaving the caller's actor free; synchronous code keeps calling the generated method.
//
// A dedicated dispatch queue rather than `Task.detached`: the work blocks on disk I/O, and
// blocking threads of Swift's cooperative pool (one per core) would stall unrelated tasks.
// The queue is concurrent because the Rust store may be called from any thread at once.
//
// Not cancellable: a call that started runs to its end (a write is committed or refused as a
// whole), and its result is returned even if the calling task was cancelled meanwhile.
import Foundation

/// The queue the async overloads block on.
private let storeQueue = DispatchQueue(label: "org.fieldsync.store", attributes: .concurrent)

/// Runs `work` on `storeQueue` and returns its result to the awaiting task.
func runOffActor<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        storeQueue.async { continuation.resume(with: Result { try work() }) }
    }
}

extension Store {
    /// Opens (or creates) a store as `Store(path:schema:options:)` does, off the caller's actor.
    public static func open(
        path: String, schema: String, options: StoreOptions = StoreOptions(synchronous: .full)
    ) async throws -> Store {
        try await runOffActor { try Store(path: path, schema: schema, options: options) }
    }

    public func insert(collection: String, fields: [String: FieldValue]) async throws -> String {
        try await runOffActor { try self.insert(collection: collection, fields: fields) }
    }

    public func insertWithId(collection: String, id: String, fields: [String: FieldValue]) async throws {
        try await runOffActor { try self.insertWithId(collection: collection, id: id, fields: fields) }
    }

    public func update(collection: String, id: String, patch: [String: FieldValue]) async throws {
        try await runOffActor { try self.update(collection: collection, id: id, patch: patch) }
    }

    public func spliceText(
        collection: String, id: String, field: String, index: Int32, deleteCount: Int32, insert: String
    ) async throws {
        try await runOffActor {
            try self.spliceText(
                collection: collection, id: id, field: field, index: index,
                deleteCount: deleteCount, insert: insert)
        }
    }

    public func delete(collection: String, id: String) async throws {
        try await runOffActor { try self.delete(collection: collection, id: id) }
    }

    public func writeBatch(writes: [Write]) async throws -> [String] {
        try await runOffActor { try self.writeBatch(writes: writes) }
    }

    public func get(collection: String, id: String) async throws -> Record? {
        try await runOffActor { try self.get(collection: collection, id: id) }
    }

    public func query(collection: String, query: Query) async throws -> [Record] {
        try await runOffActor { try self.query(collection: collection, query: query) }
    }

    public func count(collection: String, filter: Filter) async throws -> Int64 {
        try await runOffActor { try self.count(collection: collection, filter: filter) }
    }

    public func orphans(collection: String) async throws -> [Orphan] {
        try await runOffActor { try self.orphans(collection: collection) }
    }

    public func conflicts(collection: String, id: String) async throws -> [FieldConflict] {
        try await runOffActor { try self.conflicts(collection: collection, id: id) }
    }

    public func history(collection: String, id: String) async throws -> [HistoryEntry] {
        try await runOffActor { try self.history(collection: collection, id: id) }
    }

    public func outboxLen() async throws -> Int64 {
        try await runOffActor { try self.outboxLen() }
    }

    public func rejectedWrites() async throws -> [RejectedWrite] {
        try await runOffActor { try self.rejectedWrites() }
    }

    public func retryRejectedWrite(id: Int64) async throws {
        try await runOffActor { try self.retryRejectedWrite(id: id) }
    }

    public func discardRejectedWrite(id: Int64) async throws {
        try await runOffActor { try self.discardRejectedWrite(id: id) }
    }

    public func rekey(newKey: Data) async throws {
        try await runOffActor { try self.rekey(newKey: newKey) }
    }

    public func attachBytes(
        collection: String, id: String, field: String, bytes: Data, mediaType: String,
        name: String? = nil
    ) async throws -> AttachmentRef {
        try await runOffActor {
            try self.attachBytes(
                collection: collection, id: id, field: field, bytes: bytes, mediaType: mediaType,
                name: name)
        }
    }

    public func attachFile(
        collection: String, id: String, field: String, path: String, mediaType: String,
        name: String? = nil
    ) async throws -> AttachmentRef {
        try await runOffActor {
            try self.attachFile(
                collection: collection, id: id, field: field, path: path, mediaType: mediaType,
                name: name)
        }
    }

    public func attachFile(
        collection: String, id: String, field: String, url: URL, mediaType: String,
        name: String? = nil
    ) async throws -> AttachmentRef {
        try await runOffActor {
            try self.attachFile(
                collection: collection, id: id, field: field, url: url, mediaType: mediaType,
                name: name)
        }
    }

    public func attachmentOf(collection: String, id: String, field: String) async throws -> AttachmentRef? {
        try await runOffActor { try self.attachmentOf(collection: collection, id: id, field: field) }
    }

    public func hasAttachment(reference: AttachmentRef) async throws -> Bool {
        try await runOffActor { try self.hasAttachment(reference: reference) }
    }

    public func attachmentBytes(reference: AttachmentRef) async throws -> Data? {
        try await runOffActor { try self.attachmentBytes(reference: reference) }
    }

    public func saveAttachment(reference: AttachmentRef, path: String) async throws -> Bool {
        try await runOffActor { try self.saveAttachment(reference: reference, path: path) }
    }

    public func saveAttachment(reference: AttachmentRef, to url: URL) async throws -> Bool {
        try await runOffActor { try self.saveAttachment(reference: reference, to: url) }
    }

    public func tidyAttachments() async throws -> AttachmentsTidied {
        try await runOffActor { try self.tidyAttachments() }
    }
}
