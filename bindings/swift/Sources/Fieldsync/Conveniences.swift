// Swift conveniences over the generated bindings (Fieldsync.swift): literals and accessors for
// field values, opening a store from a schema string, changes as an AsyncStream, attachments
// from and to file URLs, and an error's reason. The async overloads, observe, closure
// listeners and text positions live in the files beside this one.
import Foundation

extension FieldValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral,
    ExpressibleByFloatLiteral, ExpressibleByBooleanLiteral, ExpressibleByNilLiteral
{
    public init(stringLiteral value: String) { self = .str(value: value) }
    public init(integerLiteral value: Int64) { self = .integer(value: value) }
    public init(floatLiteral value: Double) { self = .float(value: value) }
    public init(booleanLiteral value: Bool) { self = .boolean(value: value) }
    public init(nilLiteral: ()) { self = .null }

    /// A value from a variable, where a literal will not do: `FieldValue(name)`.
    public init(_ value: String) { self = .str(value: value) }
    public init(_ value: Int) { self = .integer(value: Int64(value)) }
    public init(_ value: Int64) { self = .integer(value: value) }
    public init(_ value: Double) { self = .float(value: value) }
    public init(_ value: Bool) { self = .boolean(value: value) }

    /// A `timestamp` field's value: milliseconds since the Unix epoch.
    public init(_ date: Date) { self = .integer(value: Int64((date.timeIntervalSince1970 * 1000).rounded())) }

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

    /// The integer as an `Int`, or nil when there is none or it does not fit.
    public var int: Int? { integer.flatMap { Int(exactly: $0) } }

    /// The number of a `float` field (or of an `integer` one), or nil.
    public var double: Double? {
        switch self {
        case let .float(value): return value
        case let .integer(value): return Double(value)
        default: return nil
        }
    }

    /// The boolean of a `boolean` field, or nil.
    public var bool: Bool? {
        if case let .boolean(value) = self { return value }
        return nil
    }

    /// A `timestamp` field's value as a date, or nil.
    public var date: Date? {
        integer.map { Date(timeIntervalSince1970: Double($0) / 1000) }
    }
}

extension Record {
    /// The value of `field`, or nil when the record has none: `record["name"]?.string`.
    public subscript(_ field: String) -> FieldValue? { fields[field] }
}

extension Store {
    /// Opens (or creates) the store file at `path` for the schema declared in the JSON text
    /// `schema`, with `options` (by default every commit durable, no encryption). Blocks on
    /// disk I/O (and on upgrading an older file); from async code prefer `Store.open`.
    public convenience init(
        path: String, schema: String, options: StoreOptions = StoreOptions(synchronous: .full)
    ) throws {
        let opened = try Store.openWithOptions(path: path, schemaJson: schema, options: options)
        // The new object holds its own reference to the Rust store; `opened` drops the other.
        self.init(unsafeFromHandle: opened.uniffiCloneHandle())
    }

    /// The changes to `collection` matching `filter`, as an AsyncStream; the subscription is
    /// cancelled when the stream's consumer stops iterating. Every event is kept until it is
    /// read (`.unbounded`, the default), as each names records that changed; pass
    /// `.bufferingNewest(n)` to bound the memory a consumer that falls behind may hold, at the
    /// cost of the older events.
    public func changes(
        collection: String, filter: Filter = .all,
        bufferingPolicy: AsyncStream<ChangeEvent>.Continuation.BufferingPolicy = .unbounded
    ) throws -> AsyncStream<ChangeEvent> {
        let (stream, continuation) = AsyncStream.makeStream(
            of: ChangeEvent.self, bufferingPolicy: bufferingPolicy)
        let subscription = try subscribe(collection: collection, filter: filter) { event in
            _ = continuation.yield(event)
        }
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

extension FieldsyncError {
    /// What happened and what to do: the `reason` every case carries (it names collections,
    /// fields and ids, never field values). Read by reflection so that it covers every case,
    /// including ones a newer library adds.
    public var reason: String {
        guard let payload = Mirror(reflecting: self).children.first?.value else {
            return String(describing: self)
        }
        // A case with one associated value has it as its payload; others have a labelled tuple.
        if let reason = payload as? String { return reason }
        let labelled = Mirror(reflecting: payload).children.first { $0.label == "reason" }
        return labelled?.value as? String ?? String(describing: self)
    }
}
