// Swift conveniences over the generated bindings: literals for field values, changes as an
// AsyncStream, and attachments from and to file URLs. Thin by design: everything else is the
// generated API.
import Foundation

extension FieldValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral,
    ExpressibleByFloatLiteral, ExpressibleByBooleanLiteral, ExpressibleByNilLiteral
{
    public init(stringLiteral value: String) { self = .str(value: value) }
    public init(integerLiteral value: Int64) { self = .integer(value: value) }
    public init(floatLiteral value: Double) { self = .float(value: value) }
    public init(booleanLiteral value: Bool) { self = .boolean(value: value) }
    public init(nilLiteral: ()) { self = .null }

    /// The string of a `string`, `text` or `reference` field, or nil.
    public var string: String? {
        if case let .str(value) = self { return value }
        return nil
    }

    /// The integer of an `integer` or `timestamp` field, or nil.
    public var integer: Int64? {
        if case let .integer(value) = self { return value }
        return nil
    }
}

extension Store {
    /// The changes to `collection` matching `filter`, as an AsyncStream; the subscription is
    /// cancelled when the stream's consumer stops iterating.
    public func changes(collection: String, filter: Filter = .all) throws -> AsyncStream<ChangeEvent> {
        let (stream, continuation) = AsyncStream.makeStream(of: ChangeEvent.self)
        let subscription = try subscribe(
            collection: collection, filter: filter, listener: StreamListener(continuation))
        continuation.onTermination = { _ in subscription.cancel() }
        return stream
    }
}

extension Store {
    /// `attachFile` with a file URL: stores the file's bytes, read a chunk at a time, and makes
    /// the `attachment` field reference them.
    public func attachFile(
        collection: String, id: String, field: String, url: URL, mediaType: String,
        name: String? = nil
    ) throws -> AttachmentRef {
        try attachFile(
            collection: collection, id: id, field: field, path: url.path, mediaType: mediaType,
            name: name)
    }

    /// `saveAttachment` to a file URL: false, writing nothing, while the store does not hold
    /// the bytes.
    public func saveAttachment(reference: AttachmentRef, to url: URL) throws -> Bool {
        try saveAttachment(reference: reference, path: url.path)
    }
}

private final class StreamListener: ChangeListener, @unchecked Sendable {
    // AsyncStream.Continuation is safe to use from any thread.
    private let continuation: AsyncStream<ChangeEvent>.Continuation

    init(_ continuation: AsyncStream<ChangeEvent>.Continuation) {
        self.continuation = continuation
    }

    func onChange(event: ChangeEvent) {
        continuation.yield(event)
    }
}
