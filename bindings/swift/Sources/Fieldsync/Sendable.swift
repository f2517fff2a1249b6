// Sendable conformances of the generated records and enums for Swift 5.10 compilers.
// uniffi declares them for Swift 6 compilers only (`#if compiler(>=6)` in Fieldsync.swift), and
// Swift 5.10 infers Sendable for no public type: these values could then not cross into the
// async overloads' queue, a detached task or an AsyncStream without warnings. Declared
// `@unchecked` because a Sendable conformance written outside the type's own file must be;
// each type holds only values (strings, numbers, booleans, Data, arrays, dictionaries,
// optionals and the other types listed here), no references, so it is Sendable in fact.
// The error enums need none: `Error` refines Sendable already.
// The objects (Store, SyncClient, ...) are declared `@unchecked Sendable` by uniffi itself:
// the Rust objects behind them may be called from any thread.
// scripts/check_examples.py checks that this list is the generated one.
#if !compiler(>=6)
extension AttachmentRef: @unchecked Sendable {}
extension AttachmentsTidied: @unchecked Sendable {}
extension Author: @unchecked Sendable {}
extension BackgroundOptions: @unchecked Sendable {}
extension ChangeEvent: @unchecked Sendable {}
extension ConflictValue: @unchecked Sendable {}
extension FieldConflict: @unchecked Sendable {}
extension HistoryEntry: @unchecked Sendable {}
extension Order: @unchecked Sendable {}
extension Orphan: @unchecked Sendable {}
extension Query: @unchecked Sendable {}
extension Record: @unchecked Sendable {}
extension RejectedWrite: @unchecked Sendable {}
extension StoreOptions: @unchecked Sendable {}
extension SyncConfig: @unchecked Sendable {}
extension SyncProgress: @unchecked Sendable {}
extension SyncReport: @unchecked Sendable {}
extension SyncStatus: @unchecked Sendable {}
extension ChangeOrigin: @unchecked Sendable {}
extension FieldValue: @unchecked Sendable {}
extension Filter: @unchecked Sendable {}
extension SyncState: @unchecked Sendable {}
extension Synchronous: @unchecked Sendable {}
extension Write: @unchecked Sendable {}
#endif
