// Text edits at the positions Swift code has. The store counts positions in UTF-16 code units
// (as NSString, UIKit's NSRange and Kotlin do); a Swift `String.Index` counts neither, and
// `Int` is what Swift code holds where the generated API takes `Int32`.
import Foundation

extension Store {
    /// `spliceText` with `Int` positions in UTF-16 code units.
    public func spliceText(
        collection: String, id: String, field: String, index: Int, deleteCount: Int, insert: String
    ) throws {
        try spliceText(
            collection: collection, id: id, field: field, index: try utf16Position(index),
            deleteCount: try utf16Position(deleteCount), insert: insert)
    }

    /// Replaces `range` of `text` (the field's text as the app shows it, which `range` indexes)
    /// with `replacement`: `store.spliceText(collection:id:field:replacing:in:with:)` with a
    /// range from `text.range(of:)` or a text view's selection.
    public func spliceText(
        collection: String, id: String, field: String, replacing range: Range<String.Index>,
        in text: String, with replacement: String
    ) throws {
        let (index, deleteCount) = try utf16Span(of: range, in: text)
        try spliceText(
            collection: collection, id: id, field: field, index: index, deleteCount: deleteCount,
            insert: replacement)
    }

    /// Replaces the UTF-16 `range` with `replacement`: what
    /// `textView(_:shouldChangeTextIn:replacementText:)` gives.
    public func spliceText(
        collection: String, id: String, field: String, replacing range: NSRange,
        with replacement: String
    ) throws {
        try spliceText(
            collection: collection, id: id, field: field, index: try utf16Position(range.location),
            deleteCount: try utf16Position(range.length), insert: replacement)
    }

    /// The `Int` overload of `spliceText`, off the caller's actor.
    public func spliceText(
        collection: String, id: String, field: String, index: Int, deleteCount: Int, insert: String
    ) async throws {
        let start = try utf16Position(index)
        let count = try utf16Position(deleteCount)
        try await spliceText(
            collection: collection, id: id, field: field, index: start, deleteCount: count,
            insert: insert)
    }

    /// The `String.Index` overload of `spliceText`, off the caller's actor.
    public func spliceText(
        collection: String, id: String, field: String, replacing range: Range<String.Index>,
        in text: String, with replacement: String
    ) async throws {
        let (index, deleteCount) = try utf16Span(of: range, in: text)
        try await spliceText(
            collection: collection, id: id, field: field, index: index, deleteCount: deleteCount,
            insert: replacement)
    }
}

/// `range` of `text` as a UTF-16 start and length.
func utf16Span(of range: Range<String.Index>, in text: String) throws -> (Int32, Int32) {
    let utf16 = text.utf16
    guard range.lowerBound >= text.startIndex, range.upperBound <= text.endIndex else {
        throw FieldsyncError.invalidValue(reason: "the text range is outside the text it indexes")
    }
    let start = utf16.distance(from: utf16.startIndex, to: range.lowerBound)
    let length = utf16.distance(from: range.lowerBound, to: range.upperBound)
    return (try utf16Position(start), try utf16Position(length))
}

/// A UTF-16 position as the store takes it; the store refuses negative ones itself.
func utf16Position(_ value: Int) throws -> Int32 {
    guard let position = Int32(exactly: value) else {
        throw FieldsyncError.invalidValue(reason: "a text position beyond 2^31 UTF-16 units")
    }
    return position
}
