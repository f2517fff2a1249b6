"""The store from Python: writes, queries, subscriptions, history and errors, no server."""

import threading

import pytest

import fieldsync
from fieldsync import FieldsyncError, FieldValue, Filter, Order, Query


def open_store(tmp_path, schema, name="device.db"):
    return fieldsync.Store(str(tmp_path / name), schema)


def test_insert_get_update_and_query(tmp_path, schema):
    store = open_store(tmp_path, schema)
    ada = store.insert(
        "clients",
        fieldsync.fields(
            caseload_id="north", name="Ada", birth_year=1990, active=True, goals={"walk": [1, 2]}
        ),
    )
    store.insert("clients", fieldsync.fields(caseload_id="north", name="Bo", birth_year=1985))
    store.insert("clients", fieldsync.fields(caseload_id="south", name="Cy", birth_year=2001))

    record = store.get("clients", ada)
    assert record.scope == "north"
    assert fieldsync.values(record.fields) == {
        "caseload_id": "north",
        "name": "Ada",
        "birth_year": 1990,
        "active": True,
        "goals": {"walk": [1, 2]},
    }

    store.update("clients", ada, fieldsync.fields(birth_year=None, phone="555"))
    record = store.get("clients", ada)
    assert "birth_year" not in record.fields
    assert record.fields["phone"] == FieldValue.STR("555")

    north = Query(
        filter=Filter.EQ("caseload_id", FieldValue.STR("north")),
        order=[Order(field="name", descending=True)],
    )
    found = store.query("clients", north)
    assert [fieldsync.values(r.fields)["name"] for r in found] == ["Bo", "Ada"]
    assert found[1].id == ada
    born_before = Filter.AND(
        [Filter.IS_NOT_NULL("birth_year"), Filter.LT("birth_year", FieldValue.INTEGER(2000))]
    )
    assert store.count("clients", born_before) == 1
    assert store.count("clients", Filter.ALL()) == 3

    store.delete("clients", ada)
    assert store.get("clients", ada) is None
    assert store.count("clients", Filter.ALL()) == 2


def test_text_splices_and_batches(tmp_path, schema):
    store = open_store(tmp_path, schema)
    ids = store.write_batch(
        [
            fieldsync.Write.INSERT(
                "clients",
                "client-1",
                fieldsync.fields(caseload_id="north", name="Ada", notes="Visit."),
            ),
            fieldsync.Write.SPLICE_TEXT("clients", "client-1", "notes", 0, 0, "Calm. "),
        ]
    )
    assert ids == ["client-1", "client-1"]
    store.splice_text("clients", "client-1", "notes", 6, 5, "Call")
    assert store.get("clients", "client-1").fields["notes"] == FieldValue.STR("Calm. Call.")

    # A batch is all or nothing: the second write fails, so the first is not kept either.
    with pytest.raises(FieldsyncError.NotFound):
        store.write_batch(
            [
                fieldsync.Write.UPDATE("clients", "client-1", fieldsync.fields(name="Ada L.")),
                fieldsync.Write.DELETE("clients", "no-such-client"),
            ]
        )
    assert store.get("clients", "client-1").fields["name"] == FieldValue.STR("Ada")

    history = store.history("clients", "client-1")
    assert len(history) == 3
    assert all(entry.device_id == store.device_id() for entry in history)
    assert "notes" in history[-1].fields


def test_subscription_is_told_until_cancelled(tmp_path, schema):
    store = open_store(tmp_path, schema)
    events = []

    class Listener(fieldsync.ChangeListener):
        def on_change(self, event):
            events.append(event)

    subscription = store.subscribe(
        "clients", Filter.EQ("caseload_id", FieldValue.STR("north")), Listener()
    )
    north = store.insert("clients", fieldsync.fields(caseload_id="north", name="Ada"))
    store.insert("clients", fieldsync.fields(caseload_id="south", name="Bo"))
    assert len(events) == 1
    assert events[0].ids == [north]
    assert events[0].origin == fieldsync.ChangeOrigin.LOCAL

    subscription.cancel()
    store.update("clients", north, fieldsync.fields(name="Ada L."))
    assert len(events) == 1


def test_listener_may_run_on_other_threads(tmp_path, schema):
    store = open_store(tmp_path, schema)
    seen = threading.Event()

    class Listener(fieldsync.ChangeListener):
        def on_change(self, event):
            seen.set()

    subscription = store.subscribe("clients", Filter.ALL(), Listener())
    writer = threading.Thread(
        target=store.insert, args=("clients", fieldsync.fields(caseload_id="north", name="Ada"))
    )
    writer.start()
    writer.join()
    assert seen.wait(timeout=10)
    subscription.cancel()


def test_errors_are_typed_exceptions(tmp_path, schema):
    with pytest.raises(FieldsyncError.InvalidSchema):
        fieldsync.Store(str(tmp_path / "bad.db"), '{"collections": {"Bad Name": {}}}')

    store = open_store(tmp_path, schema)
    with pytest.raises(FieldsyncError.UnknownCollection):
        store.insert("patients", fieldsync.fields(name="Ada"))
    with pytest.raises(FieldsyncError.UnknownField):
        store.insert("clients", fieldsync.fields(caseload_id="north", name="Ada", shoe_size=9))
    with pytest.raises(FieldsyncError.WrongType):
        store.insert("clients", fieldsync.fields(caseload_id="north", name="Ada", birth_year="x"))
    with pytest.raises(FieldsyncError.MissingField):
        store.insert("clients", fieldsync.fields(caseload_id="north"))
    with pytest.raises(FieldsyncError.NotFound):
        store.update("clients", "nobody", fieldsync.fields(name="Ada"))
    with pytest.raises(FieldsyncError.InvalidValue):
        bad_json = fieldsync.fields(caseload_id="north", name="Ada")
        bad_json["goals"] = FieldValue.JSON("{not json")
        store.insert("clients", bad_json)
    with pytest.raises(FieldsyncError.InvalidValue, match="deeper than 100"):
        too_deep = fieldsync.fields(caseload_id="north", name="Ada")
        too_deep["goals"] = FieldValue.JSON("[" * 110 + "]" * 110)
        store.insert("clients", too_deep)
    with pytest.raises(FieldsyncError.InvalidQuery):
        store.query("clients", Query(filter=Filter.EQ("goals", FieldValue.STR("x"))))
    # Nothing above was written.
    assert store.count("clients", Filter.ALL()) == 0
    assert store.outbox_len() == 0

    # Reopening the file with a schema that drops a field is refused, and the file still opens.
    store = None
    narrower = schema.replace('"phone": { "type": "string" },', "")
    with pytest.raises(FieldsyncError.IncompatibleSchema):
        fieldsync.Store(str(tmp_path / "device.db"), narrower)
    open_store(tmp_path, schema)


def test_a_failing_listener_does_not_fail_the_write(tmp_path, schema):
    store = open_store(tmp_path, schema)
    calls = []

    class Failing(fieldsync.ChangeListener):
        def on_change(self, event):
            calls.append(event)
            raise ValueError("the app's listener is broken")

    subscription = store.subscribe("clients", Filter.ALL(), Failing())
    client = store.insert("clients", fieldsync.fields(caseload_id="north", name="Ada"))
    assert len(calls) == 1
    assert store.get("clients", client) is not None
    subscription.cancel()


def test_an_encrypted_store_keeps_its_text_off_the_disk(tmp_path, schema):
    key = fieldsync.generate_encryption_key()
    assert len(key) == 32
    options = fieldsync.StoreOptions(
        synchronous=fieldsync.Synchronous.FULL, encryption_key=key
    )
    path = str(tmp_path / "secret.db")
    store = fieldsync.Store.open_with_options(path, schema, options)
    client = store.insert("clients", fieldsync.fields(caseload_id="north", name="CANARY-ADA"))
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"CANARY-ADA" not in on_disk

    with pytest.raises(FieldsyncError.KeyRequired):
        fieldsync.Store(path, schema)
    wrong = fieldsync.StoreOptions(
        synchronous=fieldsync.Synchronous.FULL, encryption_key=fieldsync.generate_encryption_key()
    )
    with pytest.raises(FieldsyncError.WrongKey):
        fieldsync.Store.open_with_options(path, schema, wrong)
    with pytest.raises(FieldsyncError.InvalidKey):
        store.rekey(b"too short")

    new_key = fieldsync.generate_encryption_key()
    store.rekey(new_key)
    del store
    reopened = fieldsync.Store.open_with_options(
        path,
        schema,
        fieldsync.StoreOptions(synchronous=fieldsync.Synchronous.FULL, encryption_key=new_key),
    )
    assert fieldsync.values(reopened.get("clients", client).fields)["name"] == "CANARY-ADA"


def test_an_unencrypted_store_can_be_encrypted(tmp_path, schema):
    path = str(tmp_path / "plain.db")
    store = fieldsync.Store(path, schema)
    client = store.insert("clients", fieldsync.fields(caseload_id="north", name="CANARY-BO"))
    del store
    key = fieldsync.generate_encryption_key()
    fieldsync.encrypt_store_file(path, key)
    assert b"CANARY-BO" not in (tmp_path / "plain.db").read_bytes()
    options = fieldsync.StoreOptions(synchronous=fieldsync.Synchronous.FULL, encryption_key=key)
    store = fieldsync.Store.open_with_options(path, schema, options)
    assert store.get("clients", client) is not None
