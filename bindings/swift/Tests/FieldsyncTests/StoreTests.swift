// The store from Swift. Runs with `swift test` on a Mac once the XCFramework is built
// (scripts/build-xcframework.sh); no server needed. Where no Swift compiler runs,
// generate.sh --check runs scripts/check_examples.py on this file: the names and labels it
// uses are declared.
import Fieldsync
import XCTest

final class StoreTests: XCTestCase {
    let schema = """
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

    func openStore() throws -> Store {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent(UUID().uuidString)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        return try Store(path: directory.appendingPathComponent("app.db").path, schema: schema)
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
        XCTAssertEqual(try store.count(collection: "clients", filter: .all), 1)
    }

    func testErrorsAreTypedWithTheirFields() throws {
        let store = try openStore()
        XCTAssertThrowsError(try store.update(collection: "clients", id: "nobody", patch: ["name": "A"])) {
            guard case FieldsyncError.notFound(let collection, let id, let reason) = $0 else {
                return XCTFail("expected notFound, got \($0)")
            }
            XCTAssertEqual(collection, "clients")
            XCTAssertEqual(id, "nobody")
            XCTAssertEqual(($0 as? FieldsyncError)?.reason, reason)
        }
        XCTAssertThrowsError(try store.insert(collection: "patients", fields: [:])) {
            guard case FieldsyncError.unknownCollection(let collection, _) = $0 else {
                return XCTFail("expected unknownCollection, got \($0)")
            }
            XCTAssertEqual(collection, "patients")
        }
    }

    func testAsyncOverloadsRunOffTheCaller() async throws {
        let store = try await Store.open(
            path: FileManager.default.temporaryDirectory.appendingPathComponent(UUID().uuidString).path,
            schema: schema)
        let id = try await store.insert(collection: "clients", fields: ["caseload_id": "north", "name": "Ada"])
        try await store.update(collection: "clients", id: id, patch: ["birth_year": FieldValue(1990)])
        let record = try await store.get(collection: "clients", id: id)
        XCTAssertEqual(record?["birth_year"]?.int, 1990)
        let history = try await store.history(collection: "clients", id: id)
        XCTAssertEqual(history.count, 2)
        try await store.delete(collection: "clients", id: id)
        let count = try await store.count(collection: "clients", filter: .all)
        XCTAssertEqual(count, 0)
    }

    func testTextPositionsFromSwiftStrings() throws {
        let store = try openStore()
        let text = "🩺 Calm visit."
        let id = try store.insert(
            collection: "clients", fields: ["caseload_id": "north", "name": "Ada", "notes": FieldValue(text)])
        // The emoji is two UTF-16 units: a String.Index range must land after it.
        let range = try XCTUnwrap(text.range(of: "Calm"))
        try store.spliceText(collection: "clients", id: id, field: "notes", replacing: range, in: text, with: "Quiet")
        XCTAssertEqual(try store.get(collection: "clients", id: id)?["notes"]?.string, "🩺 Quiet visit.")
        try store.spliceText(
            collection: "clients", id: id, field: "notes", replacing: NSRange(location: 0, length: 3), with: "")
        XCTAssertEqual(try store.get(collection: "clients", id: id)?["notes"]?.string, "Quiet visit.")
    }

    func testChangesStream() async throws {
        let store = try openStore()
        let changes = try store.changes(collection: "clients")
        let id = try await store.insert(collection: "clients", fields: ["caseload_id": "north", "name": "Ada"])
        var iterator = changes.makeAsyncIterator()
        let event = await iterator.next()
        XCTAssertEqual(event?.ids, [id])
        XCTAssertEqual(event?.origin, .local)
    }

    func testObserveYieldsCurrentResultsThenChanges() async throws {
        let store = try openStore()
        _ = try await store.insert(collection: "clients", fields: ["caseload_id": "north", "name": "Ada"])
        let north = Query(filter: .eq(field: "caseload_id", value: "north"), order: [Order(field: "name")])
        var results = store.observe(collection: "clients", query: north).makeAsyncIterator()
        let first = try await results.next()
        XCTAssertEqual(first?.compactMap { $0["name"]?.string }, ["Ada"])

        // A write outside the query re-runs nothing visible: no equal results are yielded.
        _ = try await store.insert(collection: "clients", fields: ["caseload_id": "south", "name": "Cy"])
        _ = try await store.insert(collection: "clients", fields: ["caseload_id": "north", "name": "Bo"])
        let second = try await results.next()
        XCTAssertEqual(second?.compactMap { $0["name"]?.string }, ["Ada", "Bo"])
    }

    func testObserveThrowsForAnUnknownCollection() async throws {
        let store = try openStore()
        do {
            for try await _ in store.observe(collection: "patients") {
                XCTFail("no results expected")
            }
            XCTFail("expected unknownCollection")
        } catch FieldsyncError.unknownCollection(let collection, _) {
            XCTAssertEqual(collection, "patients")
        }
    }

    func testClosureSubscription() throws {
        let store = try openStore()
        let changed = expectation(description: "the closure is told")
        let subscription = try store.subscribe(collection: "clients") { event in
            if event.origin == .local { changed.fulfill() }
        }
        _ = try store.insert(collection: "clients", fields: ["caseload_id": "north", "name": "Ada"])
        wait(for: [changed], timeout: 5)
        subscription.cancel()
    }
}
