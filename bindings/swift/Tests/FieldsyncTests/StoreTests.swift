// The store from Swift. Runs with `swift test` on a Mac once the XCFramework is built
// (scripts/build-xcframework.sh); no server needed.
import Fieldsync
import XCTest

final class StoreTests: XCTestCase {
    let schema = """
        {"collections": {"clients": {
            "scope_field": "caseload_id",
            "fields": {
                "caseload_id": {"type": "string", "required": true},
                "name": {"type": "string", "required": true},
                "notes": {"type": "text"}
            }
        }}}
        """

    func openStore() throws -> Store {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent(UUID().uuidString)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        return try Store(path: directory.appendingPathComponent("app.db").path, schemaJson: schema)
    }

    func testInsertQueryAndSplice() throws {
        let store = try openStore()
        let id = try store.insert(
            collection: "clients", fields: ["caseload_id": "north", "name": "Ada", "notes": "Visit."])
        try store.spliceText(
            collection: "clients", id: id, field: "notes", index: 0, deleteCount: 0, insert: "Calm. ")
        let found = try store.query(
            collection: "clients", query: Query(filter: .eq(field: "name", value: "Ada")))
        XCTAssertEqual(found.map(\.id), [id])
        XCTAssertEqual(found.first?.fields["notes"]?.string, "Calm. Visit.")
    }

    func testErrorsAreTyped() throws {
        let store = try openStore()
        XCTAssertThrowsError(try store.update(collection: "clients", id: "nobody", patch: ["name": "A"])) {
            guard case FieldsyncError.NotFound = $0 else {
                return XCTFail("expected NotFound, got \($0)")
            }
        }
    }

    func testChangesStream() async throws {
        let store = try openStore()
        let changes = try store.changes(collection: "clients")
        let id = try store.insert(collection: "clients", fields: ["caseload_id": "north", "name": "Ada"])
        var iterator = changes.makeAsyncIterator()
        let event = await iterator.next()
        XCTAssertEqual(event?.ids, [id])
        XCTAssertEqual(event?.origin, .local)
    }
}
