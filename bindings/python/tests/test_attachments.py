"""Attachments from Python: bytes and files attached on one device reach another through a real
fieldsync-server process (eager fields with the sync, on-demand fields when fetched), and what
cannot be attached is refused with nothing stored."""

import asyncio
import hashlib

import pytest

import fieldsync
from fieldsync import AttachmentRef, FieldsyncError

MIB = 1 << 20


def recording(size: int, seed: bytes) -> bytes:
    """`size` bytes that differ from any other seed's, the same on every run."""
    return hashlib.shake_256(seed).digest(size)


def sync(client, store, progress=None):
    return asyncio.run(client.sync_now(store, progress))


def device(server, tmp_path, schema, name, token, options=None):
    path = str(tmp_path / f"{name}.db")
    if options is None:
        store = fieldsync.Store(path, schema)
    else:
        store = fieldsync.Store.open_with_options(path, schema, options)
    client = fieldsync.SyncClient(fieldsync.SyncConfig(endpoint=server.url, token=token))
    return store, client


class Progress(fieldsync.SyncProgressListener):
    def __init__(self):
        self.seen = []

    def on_progress(self, progress):
        self.seen.append(progress)


def client_and_session(store):
    client = store.insert("clients", fieldsync.fields(caseload_id="north", name="Sam"))
    session = store.insert(
        "sessions", fieldsync.fields(caseload_id="north", client=client, started_at=1)
    )
    return client, session


def test_attachments_reach_another_device_eagerly_or_on_demand(server, tmp_path, schema):
    phone_token = server.user_with_device("ada", "north")
    tablet_token = server.user_with_device("bo", "north")
    server.start()
    phone, phone_sync = device(server, tmp_path, schema, "phone", phone_token)
    tablet, tablet_sync = device(server, tmp_path, schema, "tablet", tablet_token)
    client, session = client_and_session(phone)

    # Over two chunks of the protocol: the progress counts each of them.
    form = recording(2 * MIB + 4321, b"form")
    consent = fieldsync.attach(
        phone, "clients", client, "consent_form", form, "image/jpeg", "consent.jpg"
    )
    assert consent == AttachmentRef(
        sha256=hashlib.sha256(form).hexdigest(),
        size=len(form),
        media_type="image/jpeg",
        name="consent.jpg",
    )
    audio = recording(70_000, b"audio")
    audio_file = tmp_path / "note.m4a"
    audio_file.write_bytes(audio)
    note = fieldsync.attach(phone, "sessions", session, "audio_note", audio_file, "audio/mp4")
    assert (note.sha256, note.size, note.name) == (hashlib.sha256(audio).hexdigest(), 70_000, None)
    assert phone.attachment_of("sessions", session, "audio_note") == note

    progress = Progress()
    report = sync(phone_sync, phone, progress)
    # Two inserts and two attachments' references; then the bytes.
    assert (report.pushed, report.attachments_sent, report.attachments_fetched) == (4, 2, 0)
    sent = len(form) + len(audio)
    last = progress.seen[-1]
    assert (last.attachment_bytes_done, last.attachment_bytes_total) == (sent, sent)

    # The consent form (eager) comes with the sync.
    progress = Progress()
    report = sync(tablet_sync, tablet, progress)
    assert (report.pulled, report.attachments_fetched) == (2, 1)
    last = progress.seen[-1]
    assert (last.attachment_bytes_done, last.attachment_bytes_total) == (len(form), len(form))
    shown = tablet.get("clients", client)
    assert fieldsync.attachment_ref_of(shown.fields["consent_form"]) == consent
    assert tablet.attachment_bytes(consent) == form
    saved = tmp_path / "saved consent.jpg"
    assert fieldsync.save_attachment(tablet, consent, saved) is True
    assert saved.read_bytes() == form

    # The audio note (on demand) only when fetched.
    assert tablet.attachment_of("sessions", session, "audio_note") == note
    assert tablet.has_attachment(note) is False
    assert tablet.attachment_bytes(note) is None
    not_yet = tmp_path / "note.m4a.saved"
    assert fieldsync.save_attachment(tablet, note, not_yet) is False
    assert not not_yet.exists()
    fetched = asyncio.run(tablet_sync.fetch_attachment(tablet, "sessions", session, "audio_note"))
    assert fetched is True
    assert tablet.has_attachment(note) is True
    assert tablet.attachment_bytes(note) == audio
    assert fieldsync.save_attachment(tablet, note, not_yet) is True
    assert not_yet.read_bytes() == audio

    # Nothing moves twice.
    again = sync(phone_sync, phone)
    assert (again.attachments_sent, again.attachments_fetched) == (0, 0)
    again = sync(tablet_sync, tablet)
    assert (again.attachments_sent, again.attachments_fetched) == (0, 0)


def test_tidying_frees_replaced_bytes_and_the_budget_bounds_eager_fetches(
    server, tmp_path, schema
):
    defaults = fieldsync.StoreOptions(synchronous=fieldsync.Synchronous.FULL)
    assert defaults.attachment_budget_bytes == 1 << 30
    phone_token = server.user_with_device("ada", "north")
    tablet_token = server.user_with_device("bo", "north")
    server.start()
    phone, phone_sync = device(server, tmp_path, schema, "phone", phone_token)
    small = fieldsync.StoreOptions(
        synchronous=fieldsync.Synchronous.FULL, attachment_budget_bytes=1000
    )
    tablet, tablet_sync = device(server, tmp_path, schema, "tablet", tablet_token, small)
    client, _ = client_and_session(phone)

    first = fieldsync.attach(
        phone, "clients", client, "consent_form", recording(5000, b"first"), "image/png"
    )
    sync(phone_sync, phone)
    # Replaced: the first form's bytes are referenced by nothing any more.
    second_bytes = recording(3000, b"second")
    second = fieldsync.attach(phone, "clients", client, "consent_form", second_bytes, "image/png")
    tidied = phone.tidy_attachments()
    assert (tidied.unreferenced, tidied.evicted, tidied.bytes) == (1, 0, 5000)
    assert phone.has_attachment(first) is False
    assert phone.has_attachment(second) is True
    assert sync(phone_sync, phone).attachments_sent == 1

    # 3000 bytes do not fit a budget of 1000: left to be fetched on demand.
    assert sync(tablet_sync, tablet).attachments_fetched == 0
    assert tablet.has_attachment(second) is False
    assert asyncio.run(tablet_sync.fetch_attachment(tablet, "clients", client, "consent_form"))
    assert tablet.attachment_bytes(second) == second_bytes
    # The server holds it: tidying evicts it to keep within the budget.
    tidied = tablet.tidy_attachments()
    assert (tidied.unreferenced, tidied.evicted, tidied.bytes) == (0, 1, 3000)
    assert tablet.has_attachment(second) is False


def test_what_cannot_be_attached_is_refused_and_nothing_is_stored(tmp_path, schema):
    store = fieldsync.Store(str(tmp_path / "device.db"), schema)
    client = store.insert("clients", fieldsync.fields(caseload_id="north", name="Sam"))
    scan = b"a scanned form"
    would_be = AttachmentRef(
        sha256=hashlib.sha256(scan).hexdigest(), size=len(scan), media_type="image/jpeg"
    )

    with pytest.raises(FieldsyncError.InvalidValue, match="media_type"):
        fieldsync.attach(store, "clients", client, "consent_form", scan, "jpeg")
    with pytest.raises(FieldsyncError.Io):
        fieldsync.attach(
            store, "clients", client, "consent_form", tmp_path / "missing.jpg", "image/jpeg"
        )
    with pytest.raises(FieldsyncError.WrongType):
        fieldsync.attach(store, "clients", client, "name", scan, "image/jpeg")
    with pytest.raises(TypeError):
        fieldsync.attach(store, "clients", client, "consent_form", "scan.jpg", "image/jpeg")

    assert store.attachment_of("clients", client, "consent_form") is None
    assert "consent_form" not in store.get("clients", client).fields
    assert store.has_attachment(would_be) is False
    assert store.outbox_len() == 1  # the insert only
    tidied = store.tidy_attachments()
    assert (tidied.unreferenced, tidied.evicted, tidied.bytes) == (0, 0, 0)

    # A reference the app altered is refused, naming what is wrong but not its value.
    with pytest.raises(FieldsyncError.InvalidValue, match="sha256") as refused:
        store.has_attachment(
            AttachmentRef(sha256=would_be.sha256.upper(), size=len(scan), media_type="image/jpeg")
        )
    assert would_be.sha256.upper() not in str(refused.value)
    with pytest.raises(FieldsyncError.InvalidValue):
        fieldsync.attachment_ref_of(fieldsync.FieldValue.STR("not a reference"))
    with pytest.raises(FieldsyncError.NotFound):
        store.attachment_of("clients", "nobody", "consent_form")
