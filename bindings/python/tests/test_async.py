"""AsyncStore: Store's methods as coroutines that leave the event loop free."""

import asyncio
import inspect
import time

import pytest

import fieldsync
from fieldsync import FieldsyncError, Filter, Query, Write


def test_every_store_method_has_a_coroutine_of_the_same_name():
    blocking = {
        name for name, member in vars(fieldsync._native.Store).items()
        if not name.startswith("_") and callable(member) and name != "open_with_options"
    }
    assert blocking  # read from the generated class
    for name in blocking:
        assert inspect.iscoroutinefunction(getattr(fieldsync.AsyncStore, name)), name


def test_each_method_awaited(tmp_path, schema):
    async def main():
        store = await fieldsync.AsyncStore.open(tmp_path / "device.db", schema)
        assert isinstance(store.store, fieldsync.Store)
        device = await store.device_id()
        ada = {"caseload_id": "north", "name": "Ada", "notes": "🙂 hi"}
        rid = await store.insert("clients", ada)
        await store.insert_with_id("clients", "bo", {"caseload_id": "north", "name": "Bo"})
        await store.update("clients", rid, {"phone": "555"})
        await store.splice_text("clients", rid, "notes", 2, 2, "hello")
        assert (await store.get("clients", rid)).fields["notes"].value == "🙂 hello"
        found = await store.query("clients", Query(Filter.EQ("name", "Bo")))
        assert [record.id for record in found] == ["bo"]
        assert await store.count("clients", Filter.ALL()) == 2
        assert await store.write_batch([Write.DELETE("clients", "bo")]) == ["bo"]
        assert await store.orphans("sessions") == []
        assert await store.conflicts("clients", rid) == []
        assert [e.device_id for e in await store.history("clients", rid)] == [device] * 3
        assert await store.outbox_len() == 5
        assert await store.rejected_writes() == []
        with pytest.raises(FieldsyncError.NotFound):
            await store.retry_rejected_write(1)
        assert await store.discard_rejected_write(1) is None  # forgetting nothing is no error

        events = []

        class Listener(fieldsync.ChangeListener):
            def on_change(self, event):
                events.append(event.ids)

        subscription = await store.subscribe("clients", Filter.ALL(), Listener())
        await store.delete("clients", rid)
        subscription.cancel()
        assert events == [[rid]]

        session = {"caseload_id": "north", "client": "x", "started_at": 1}
        sid = await store.insert("sessions", session)
        ref = await store.attach_bytes("sessions", sid, "audio_note", b"abc", "audio/mp4")
        path = tmp_path / "note.m4a"
        path.write_bytes(b"abcd")
        ref2 = await store.attach_file("sessions", sid, "audio_note", str(path), "audio/mp4", "n")
        assert await store.attachment_of("sessions", sid, "audio_note") == ref2
        assert await store.has_attachment(ref2) is True
        assert await store.attachment_bytes(ref2) == b"abcd"
        assert await store.save_attachment(ref2, str(tmp_path / "out")) is True
        # Both wait to be sent, so tidying keeps them.
        assert (await store.tidy_attachments()).unreferenced == 0
        assert await store.has_attachment(ref) is True
        with pytest.raises(FieldsyncError.NotEncrypted):
            await store.rekey(fieldsync.generate_encryption_key())

    asyncio.run(main())


def test_the_event_loop_keeps_running_while_the_store_works(tmp_path, schema):
    async def main():
        store = await fieldsync.AsyncStore.open(tmp_path / "device.db", schema)
        writes = [
            Write.INSERT("clients", None, {"caseload_id": "north", "name": f"C{i}"})
            for i in range(3000)
        ]
        ticks = 0
        done = False

        async def ticker():
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0.001)

        ticking = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        started = time.monotonic()
        await store.write_batch(writes)
        took = time.monotonic() - started
        done = True
        await ticking
        return ticks, took

    ticks, took = asyncio.run(main())
    # A blocking call would have let the ticker run once at most while the batch ran.
    assert took > 0.05, "the batch was too quick to tell"
    assert ticks >= 10, (ticks, took)
