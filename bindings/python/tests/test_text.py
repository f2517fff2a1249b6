"""Text positions in Python characters: the library converts them to the UTF-16 units the core
counts, so text outside the Basic Multilingual Plane (emoji) splices where a str index says."""

import pytest

import fieldsync
from fieldsync import FieldsyncError, Write


def notes(store, rid):
    return store.get("clients", rid).fields["notes"].value


def test_splice_text_counts_python_characters(tmp_path, schema):
    store = fieldsync.Store(tmp_path / "device.db", schema)
    text = "Mood 😀 then 🎉 ok"
    rid = store.insert("clients", {"caseload_id": "north", "name": "Ada", "notes": text})

    # Each emoji is one str character but two UTF-16 units: without the conversion the edit
    # would land one unit early per emoji before it (or split one in half).
    at = text.index("ok")
    store.splice_text("clients", rid, "notes", at, 2, "fine")
    text = text[:at] + "fine"
    assert notes(store, rid) == text

    party = text.index("🎉")
    store.splice_text("clients", rid, "notes", party, 1, "🥳🥳")
    text = text[:party] + "🥳🥳" + text[party + 1 :]
    assert notes(store, rid) == text

    store.splice_text("clients", rid, "notes", len(text), 0, "!")
    assert notes(store, rid) == text + "!"

    # Past the end is refused, as the core refuses it.
    with pytest.raises(FieldsyncError.InvalidTextEdit):
        store.splice_text("clients", rid, "notes", len(text) + 2, 0, "x")
    with pytest.raises(FieldsyncError.InvalidValue, match="index"):
        store.splice_text("clients", rid, "notes", -1, 0, "x")


def test_batched_splices_count_characters_in_the_text_the_batch_left(tmp_path, schema):
    store = fieldsync.Store(tmp_path / "device.db", schema)
    store.write_batch(
        [
            Write.INSERT("clients", "c1", {"caseload_id": "north", "name": "A", "notes": "🐈 sat"}),
            # After the insert: "🐈 sat"; "sat" starts at character 2.
            Write.SPLICE_TEXT("clients", "c1", "notes", 2, 3, "ran"),
            # After that splice: "🐈 ran"; the cat is character 0.
            Write.SPLICE_TEXT("clients", "c1", "notes", 0, 1, "🐕🐕"),
        ]
    )
    assert notes(store, "c1") == "🐕🐕 ran"
    store.write_batch(
        [
            Write.UPDATE("clients", "c1", {"notes": "🌧 wet"}),
            Write.SPLICE_TEXT("clients", "c1", "notes", 2, 3, "dry"),
        ]
    )
    assert notes(store, "c1") == "🌧 dry"
    # A record's text from the store, before the batch.
    store.write_batch([Write.SPLICE_TEXT("clients", "c1", "notes", 1, 0, "☀️")])
    assert notes(store, "c1") == "🌧☀️ dry"
