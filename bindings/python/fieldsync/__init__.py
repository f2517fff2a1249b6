"""Fieldsync for Python: an offline-first record store that syncs through a Fieldsync server.

Everything the library exports is here (``Store``, ``SyncClient``, ``Query``, ``Filter``,
``FieldValue``, ``FieldsyncError``, ...), plus two helpers that turn plain Python values into
``FieldValue`` and back, so that records read like dicts::

    store = fieldsync.Store(path, schema_json)
    rid = store.insert("clients", fieldsync.fields(caseload_id="north", name="Ada"))
    fieldsync.values(store.get("clients", rid).fields)  # {'caseload_id': 'north', ...}

Attachments (photos, recordings) go into ``attachment`` fields with ``attach``, which takes bytes
or a path, and come out with ``Store.attachment_bytes`` or, for large ones, ``save_attachment``;
``attachment_ref_of(record.fields[field])`` reads a record's reference. An ``on_demand`` field's
bytes come with ``SyncClient.fetch_attachment``::

    scan = pathlib.Path("consent.jpg")
    ref = fieldsync.attach(store, "clients", rid, "consent_form", scan, "image/jpeg")
    fieldsync.save_attachment(store, ref, destination)

``SyncClient.sync_now``, ``SyncClient.fetch_attachment``, ``SyncClient.enroll_device`` and
``BackgroundSync.stop`` are coroutines. Text positions (``splice_text``) count UTF-16 code
units: convert a Python index ``i`` of ``s`` with ``len(s[:i].encode("utf-16-le")) // 2``.

Where staff sign in through an identity provider, a ``TokenProvider`` subclass gives the sync
its tokens: its ``token`` is a coroutine, which raises ``TokenProviderError.SignInRequired``
when the person must sign in again (``sync_now`` then raises
``FieldsyncError.SignInRequired``)::

    class SignIn(fieldsync.TokenProvider):
        async def token(self) -> str:
            return await auth.fresh_access_token()

    fieldsync.uniffi_set_event_loop(asyncio.get_running_loop())
    client = fieldsync.SyncClient.with_token_provider(
        fieldsync.SyncConfig(endpoint=url, token="", device_id=saved_device_id), SignIn()
    )
    saved_device_id = saved_device_id or await client.enroll_device("Ada's laptop")

The library calls ``token`` from its own threads, so it runs on the event loop given to
``uniffi_set_event_loop``: the loop that awaits every Fieldsync coroutine from then on, which
must keep running while a background sync may ask for a token. Without it the provider is
never run, and each sync fails with ``SignInRequired`` once the request timeout has passed.
"""

import json as _json
import os as _os
from typing import Any, Mapping

from ._native import *  # noqa: F401,F403  (the generated module defines __all__)
from ._native import AttachmentRef, FieldValue, Store
# Not in the generated module's __all__, and needed by every app with a token provider.
from ._native import uniffi_set_event_loop

__all__ = [name for name in dir() if not name.startswith("_")]


def field_value(value: Any) -> FieldValue:
    """The ``FieldValue`` of a plain Python value (dicts and lists become ``Json``)."""
    if value is None:
        return FieldValue.NULL()
    if isinstance(value, bool):
        return FieldValue.BOOLEAN(value)
    if isinstance(value, int):
        return FieldValue.INTEGER(value)
    if isinstance(value, float):
        return FieldValue.FLOAT(value)
    if isinstance(value, str):
        return FieldValue.STR(value)
    if isinstance(value, (dict, list)):
        return FieldValue.JSON(_json.dumps(value))
    raise TypeError(f"no field value for a {type(value).__name__}")


def fields(mapping: Mapping[str, Any] | None = None, **named: Any) -> dict[str, FieldValue]:
    """Field values from plain Python values: ``fields(name="Ada", birth_year=1990)``."""
    plain = dict(mapping or {}, **named)
    return {name: field_value(value) for name, value in plain.items()}


def plain_value(value: FieldValue) -> Any:
    """The plain Python value of a ``FieldValue``."""
    if value.is_NULL():
        return None
    if value.is_JSON():
        return _json.loads(value.json)
    return value.value


def values(record_fields: Mapping[str, FieldValue]) -> dict[str, Any]:
    """A record's fields as plain Python values."""
    return {name: plain_value(value) for name, value in record_fields.items()}


def attach(
    store: Store,
    collection: str,
    id: str,
    field: str,
    source: "bytes | bytearray | memoryview | _os.PathLike",
    media_type: str,
    name: str | None = None,
) -> AttachmentRef:
    """Attaches ``source`` to the ``attachment`` field ``field`` of ``collection/id`` and returns
    the reference: bytes are stored as they are, a path (``pathlib.Path``) names a file that is
    read a chunk at a time, never whole in memory::

        photo = fieldsync.attach(store, "clients", rid, "consent_form", b"...", "image/jpeg")
        audio = fieldsync.attach(store, "sessions", sid, "audio_note", path, "audio/mp4")

    A ``str`` is refused, since it could be either: wrap a path in ``pathlib.Path``. Raises
    ``FieldsyncError.Io`` when the file cannot be read and ``FieldsyncError.InvalidValue`` when
    ``media_type`` or ``name`` cannot go into a reference; nothing is stored then.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return store.attach_bytes(collection, id, field, bytes(source), media_type, name)
    if isinstance(source, _os.PathLike):
        return store.attach_file(collection, id, field, _os.fsdecode(source), media_type, name)
    raise TypeError(f"attach takes bytes or an os.PathLike, not a {type(source).__name__}")


def save_attachment(store: Store, reference: AttachmentRef, path: "str | _os.PathLike") -> bool:
    """Writes the bytes ``reference`` names to the file at ``path`` (created or replaced), a
    chunk at a time: the way to read a large attachment. False, writing nothing, while the store
    does not hold them all (an ``on_demand`` field not yet fetched with
    ``SyncClient.fetch_attachment``). Raises ``FieldsyncError.Io`` when the file cannot be
    written."""
    return store.save_attachment(reference, _os.fsdecode(path))


__all__ += ["field_value", "fields", "plain_value", "values", "attach", "save_attachment"]
