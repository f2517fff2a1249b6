"""The Python face of the library's types: plain values wherever a FieldValue is taken, reprs
that show fields, constructors that take their fields in order, errors whose fields are
attributes."""

import pytest

import fieldsync
from fieldsync import FieldsyncError, FieldValue, Filter, Order, Query, Write


def open_store(tmp_path, schema):
    return fieldsync.Store(tmp_path / "device.db", schema)


def test_plain_values_are_taken_wherever_a_field_value_is(tmp_path, schema):
    store = open_store(tmp_path, schema)
    ada = store.insert(
        "clients",
        {"caseload_id": "north", "name": "Ada", "birth_year": 1990, "active": True,
         "goals": {"walk": [1, 2]}, "notes": "First visit."},
    )
    bo = {"caseload_id": "north", "name": "Bo", "birth_year": 1985}
    store.insert_with_id("clients", "bo", bo)
    store.update("clients", ada, {"notes": None, "phone": "555"})
    record = store.get("clients", ada)
    assert "notes" not in record.fields
    assert record.fields["phone"] == FieldValue.STR("555")
    assert record.fields["goals"] == FieldValue.JSON('{"walk":[1,2]}')

    ids = store.write_batch(
        [
            Write.INSERT("clients", "cy", {"caseload_id": "south", "name": "Cy"}),
            Write.UPDATE("clients", "cy", {"birth_year": 2001, "active": False}),
        ]
    )
    assert ids == ["cy", "cy"]

    def names(filter):
        return sorted(r.fields["name"].value for r in store.query("clients", Query(filter)))

    assert names(Filter.EQ("name", "Ada")) == ["Ada"]
    assert names(Filter.NE("caseload_id", "north")) == ["Cy"]
    assert names(Filter.LT("birth_year", 1990)) == ["Bo"]
    assert names(Filter.GTE("birth_year", 1990)) == ["Ada", "Cy"]
    assert names(Filter.IN("name", ["Ada", "Cy", FieldValue.STR("Zed")])) == ["Ada", "Cy"]
    assert names(Filter.AND((Filter.EQ("active", True), Filter.GT("birth_year", 1980)))) == ["Ada"]
    assert names(Filter.OR([Filter.EQ("name", "Bo"), Filter.EQ("active", False)])) == ["Bo", "Cy"]
    assert store.count("clients", Filter.EQ("caseload_id", "north")) == 2

    # A store opened with options takes plain values too.
    options = fieldsync.StoreOptions(fieldsync.Synchronous.NORMAL)
    other = fieldsync.Store.open_with_options(tmp_path / "other.db", schema, options)
    assert isinstance(other, fieldsync.Store)
    other.insert("clients", {"caseload_id": "north", "name": "Di"})
    assert other.count("clients", Filter.PREFIX("name", "D")) == 1


def test_a_value_with_no_field_value_is_refused_naming_the_field_not_the_value(tmp_path, schema):
    store = open_store(tmp_path, schema)
    secret = b"CANARY-BYTES"
    for attempt in (
        lambda: store.insert("clients", {"caseload_id": "north", "name": secret}),
        lambda: store.update("clients", "x", {"name": secret}),
        lambda: Filter.EQ("name", secret),
        lambda: Filter.IN("name", ["Ada", secret]),
        lambda: Write.INSERT("clients", None, {"name": secret}),
        lambda: Write.UPDATE("clients", "x", {"name": secret}),
    ):
        with pytest.raises(TypeError, match="field `name`: a bytes has no FieldValue") as refused:
            attempt()
        assert "CANARY" not in str(refused.value)
    with pytest.raises(TypeError, match="`fields` must map field names"):
        store.insert("clients", ["caseload_id", "north"])
    assert store.count("clients", Filter.ALL()) == 0


def test_reprs_show_every_field():
    assert repr(FieldValue.STR("Ada")) == "FieldValue.STR('Ada')"
    assert repr(FieldValue.NULL()) == "FieldValue.NULL()"
    assert str(FieldValue.STR("1")) == "FieldValue.STR('1')" != str(FieldValue.INTEGER(1))
    assert repr(Filter.EQ("name", "Ada")) == "Filter.EQ('name', FieldValue.STR('Ada'))"
    assert repr(Order("name")) == "Order(field='name', descending=False)"
    assert repr(Query(Filter.ALL(), limit=5)) == (
        "Query(filter=Filter.ALL(), order=[], limit=5, offset=0)"
    )
    assert repr(fieldsync.SyncState.IDLE) == "SyncState.IDLE"
    reference = fieldsync.AttachmentRef(sha256="ab" * 32, size=3, media_type="image/png")
    assert repr(reference) == (
        f"AttachmentRef(sha256='{'ab' * 32}', size=3, media_type='image/png', name=None)"
    )
    report = fieldsync.SyncReport(
        pushed=1, rejected=0, pulled=2, purged_scopes=["south"], attachments_sent=0,
        attachments_fetched=0, erased=0, rebased=0, complete=True,
    )
    assert repr(report) == (
        "SyncReport(pushed=1, rejected=0, pulled=2, purged_scopes=['south'], attachments_sent=0, "
        "attachments_fetched=0, erased=0, rebased=0, complete=True)"
    )
    # A repr evaluates back to an equal value.
    namespace = vars(fieldsync)
    for value in (Filter.EQ("name", "Ada"), Order("name", True), reference, report):
        assert eval(repr(value), namespace) == value


def test_records_read_from_the_store_show_their_fields(tmp_path, schema):
    store = open_store(tmp_path, schema)
    rid = store.insert("clients", {"caseload_id": "north", "name": "Ada"})
    record = store.get("clients", rid)
    shown = repr(record)
    assert shown.startswith(f"Record(collection='clients', id='{rid}', scope='north', fields={{")
    assert "'name': FieldValue.STR('Ada')" in shown and "created_at_ms=" in shown
    [entry] = store.history("clients", rid)
    assert repr(entry).startswith(f"HistoryEntry(change_hash='{entry.change_hash}', device_id=")
    assert "fields=['caseload_id', 'name'], deleted=False" in repr(entry)
    # Every record type the library generates has a repr naming its fields.
    for name in fieldsync.__all__:
        cls = getattr(fieldsync, name)
        if isinstance(cls, type) and hasattr(cls, "__dataclass_fields__"):
            assert "_fieldsync_fields" in vars(cls), name


def test_defaults_and_positional_fields():
    assert Query(Filter.ALL()) == Query(filter=Filter.ALL(), order=[], limit=None, offset=0)
    assert Order("name") == Order(field="name", descending=False)
    assert Order("name", True).descending is True
    config = fieldsync.SyncConfig("https://sync.example", "token")
    assert (config.endpoint, config.push_batch_size, config.device_id) == (
        "https://sync.example", 500, None,
    )
    with pytest.raises(TypeError):
        Order("name", True, "extra")
    with pytest.raises(TypeError):
        Order("name", field="again")


def test_errors_carry_their_fields_and_say_what_happened(tmp_path, schema):
    store = open_store(tmp_path, schema)
    with pytest.raises(FieldsyncError.NotFound) as not_found:
        store.update("clients", "nobody", {"name": "Ada"})
    err = not_found.value
    assert (err.collection, err.id) == ("clients", "nobody")
    assert str(err) == err.reason
    assert "nobody" in str(err) and "clients" in str(err)
    assert repr(err) == (
        f"FieldsyncError.NotFound(collection='clients', id='nobody', reason={err.reason!r})"
    )
    assert isinstance(err, FieldsyncError)

    with pytest.raises(FieldsyncError.UnknownField) as unknown:
        store.insert("clients", {"caseload_id": "north", "name": "Ada", "shoe_size": 9})
    assert (unknown.value.collection, unknown.value.field) == ("clients", "shoe_size")
    assert "shoe_size" in str(unknown.value)

    with pytest.raises(FieldsyncError.WrongType) as wrong:
        store.insert("clients", {"caseload_id": "north", "name": "Ada", "birth_year": "CANARY"})
    assert wrong.value.field == "birth_year"
    assert "CANARY" not in str(wrong.value)


def test_reprs_keep_secrets_out():
    config = fieldsync.SyncConfig("https://sync.example", "CANARY-TOKEN")
    assert "CANARY" not in repr(config)
    assert "token=<set>" in repr(config)
    key = fieldsync.generate_encryption_key()
    options = fieldsync.StoreOptions(fieldsync.Synchronous.FULL, encryption_key=key)
    assert repr(key) not in repr(options) and "encryption_key=<set>" in repr(options)
    assert "encryption_key=<unset>" in repr(fieldsync.StoreOptions(fieldsync.Synchronous.FULL))
