"""Fieldsync for Python: an offline-first record store that syncs through a Fieldsync server.

Everything the library exports is here (``Store``, ``AsyncStore``, ``SyncClient``, ``Query``,
``Filter``, ``FieldValue``, ``FieldsyncError``, ...). Wherever the library takes a
``FieldValue``, a plain Python value does too (``None``, ``bool``, ``int``, ``float``, ``str``,
and a ``dict`` or ``list`` for ``json`` fields); ``values`` turns a record's fields back into
plain values::

    store = fieldsync.Store(path, schema_json)
    rid = store.insert("clients", {"caseload_id": "north", "name": "Ada"})
    north = store.query("clients", fieldsync.Query(fieldsync.Filter.EQ("caseload_id", "north")))
    fieldsync.values(store.get("clients", rid).fields)  # {'caseload_id': 'north', ...}

``Store``'s calls block on disk I/O; ``AsyncStore`` has the same methods as coroutines, run on
a worker thread so that an asyncio event loop never waits for the disk::

    store = await fieldsync.AsyncStore.open(path, schema_json)
    rid = await store.insert("clients", {"caseload_id": "north", "name": "Ada"})
    report = await client.sync_now(store)

Text positions (``splice_text``, ``Write.SPLICE_TEXT``) count Python characters (code points),
as ``str`` indexes do; the library converts them to the UTF-16 units the core counts.

Attachments (photos, recordings) go into ``attachment`` fields with ``attach``, which takes bytes
or a path, and come out with ``Store.attachment_bytes`` or, for large ones, ``save_attachment``;
``attachment_ref_of(record.fields[field])`` reads a record's reference. An ``on_demand`` field's
bytes come with ``SyncClient.fetch_attachment``::

    scan = pathlib.Path("consent.jpg")
    ref = fieldsync.attach(store, "clients", rid, "consent_form", scan, "image/jpeg")
    fieldsync.save_attachment(store, ref, destination)

``SyncClient.sync_now``, ``SyncClient.sync_within``, ``SyncClient.fetch_attachment``,
``SyncClient.enroll_device`` and ``BackgroundSync.stop`` are coroutines. Errors are
``FieldsyncError`` subclasses (``FieldsyncError.NotFound``, ...) whose attributes carry what an
app acts on (``collection``, ``id``, ``retry_after_ms``, ``status``) beside ``reason``, which
``str()`` gives.

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

import asyncio as _asyncio
import enum as _enum
import functools as _functools
import inspect as _inspect
import json as _json
import os as _os
from collections.abc import Mapping as _Mapping

from . import _native
from ._native import (
    AttachmentRef,
    AttachmentsTidied,
    Author,
    BackgroundOptions,
    BackgroundSync,
    ChangeEvent,
    ChangeListener,
    ChangeOrigin,
    ConflictValue,
    FieldConflict,
    FieldsyncError,
    FieldValue,
    Filter,
    HistoryEntry,
    Order,
    Orphan,
    Query,
    Record,
    RejectedWrite,
    StoreOptions,
    Subscription,
    SyncConfig,
    Synchronous,
    SyncProgress,
    SyncProgressListener,
    SyncReport,
    SyncState,
    SyncStatus,
    SyncStatusListener,
    TokenProvider,
    TokenProviderError,
    Write,
    attachment_ref_of,
    encrypt_store_file,
    generate_encryption_key,
    # Not in the generated module's __all__, and needed by every app with a token provider.
    uniffi_set_event_loop,
)

__all__ = [
    "AsyncStore",
    "AttachmentRef",
    "AttachmentsTidied",
    "Author",
    "BackgroundOptions",
    "BackgroundSync",
    "ChangeEvent",
    "ChangeListener",
    "ChangeOrigin",
    "ConflictValue",
    "FieldConflict",
    "FieldValue",
    "FieldsyncError",
    "Filter",
    "HistoryEntry",
    "Order",
    "Orphan",
    "Query",
    "Record",
    "RejectedWrite",
    "Store",
    "StoreOptions",
    "Subscription",
    "SyncClient",
    "SyncConfig",
    "SyncProgress",
    "SyncProgressListener",
    "SyncReport",
    "SyncState",
    "SyncStatus",
    "SyncStatusListener",
    "Synchronous",
    "TokenProvider",
    "TokenProviderError",
    "Write",
    "attach",
    "attachment_ref_of",
    "encrypt_store_file",
    "field_value",
    "fields",
    "generate_encryption_key",
    "plain_value",
    "save_attachment",
    "uniffi_set_event_loop",
    "values",
]


# --- Plain values where the library takes a FieldValue ---------------------------------------


def _to_field_value(value, field):
    if isinstance(value, FieldValue):
        return value
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
    where = f"field `{field}`: " if field is not None else ""
    # The type, never the value: values may be personal data that ends up in logs.
    raise TypeError(
        f"{where}a {type(value).__name__} has no FieldValue; give None, a bool, int, float, "
        "str, a dict or list (json fields) or a FieldValue"
    )


def _to_field_map(mapping, what="fields"):
    if not isinstance(mapping, _Mapping):
        raise TypeError(f"`{what}` must map field names to values, not a {type(mapping).__name__}")
    return {name: _to_field_value(value, name) for name, value in mapping.items()}


def field_value(value) -> FieldValue:
    """The ``FieldValue`` of a plain Python value (dicts and lists become ``JSON``)."""
    return _to_field_value(value, None)


def fields(mapping=None, **named) -> "dict[str, FieldValue]":
    """Field values from plain Python values: ``fields(name="Ada", birth_year=1990)``."""
    return _to_field_map(dict(mapping or {}, **named))


def plain_value(value: FieldValue):
    """The plain Python value of a ``FieldValue``."""
    if value.is_NULL():
        return None
    if value.is_JSON():
        return _json.loads(value.json)
    return value.value


def values(record_fields) -> dict:
    """A record's fields as plain Python values."""
    return {name: plain_value(value) for name, value in record_fields.items()}


def _wrap_init(cls, convert):
    """Replaces the generated constructor of `cls` by one that passes its arguments, bound to
    the generated parameter names, through `convert` first."""
    original = cls.__init__
    signature = _inspect.signature(original)

    @_functools.wraps(original)
    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        arguments = dict(bound.arguments)
        del arguments["self"]
        original(self, **convert(arguments))

    __init__.__signature__ = signature
    cls.__init__ = __init__


def _convert_compared(arguments):
    arguments["value"] = _to_field_value(arguments["value"], arguments["field"])
    return arguments


for _name in ("EQ", "NE", "LT", "LTE", "GT", "GTE"):
    _wrap_init(getattr(Filter, _name), _convert_compared)


def _convert_in(arguments):
    field = arguments["field"]
    arguments["values"] = [_to_field_value(value, field) for value in arguments["values"]]
    return arguments


def _convert_filters(arguments):
    arguments["filters"] = list(arguments["filters"])
    return arguments


def _convert_insert(arguments):
    arguments["fields"] = _to_field_map(arguments["fields"])
    return arguments


def _convert_update(arguments):
    arguments["patch"] = _to_field_map(arguments["patch"], "patch")
    return arguments


_wrap_init(Filter.IN, _convert_in)
_wrap_init(Filter.AND, _convert_filters)
_wrap_init(Filter.OR, _convert_filters)
_wrap_init(Write.INSERT, _convert_insert)
_wrap_init(Write.UPDATE, _convert_update)


# --- Reprs that show the fields, and records built positionally ------------------------------


def _parameters(function):
    return [
        parameter
        for parameter in list(_inspect.signature(function).parameters.values())[1:]
        if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    ]


# Secrets a repr must not print (reprs end up in logs and tracebacks): shown as set or not.
_SECRET_FIELDS = {("SyncConfig", "token"), ("StoreOptions", "encryption_key")}


def _record_repr(self):
    cls = type(self).__name__
    shown = ", ".join(
        f"{name}=<{'set' if getattr(self, name) else 'unset'}>"
        if (cls, name) in _SECRET_FIELDS
        else f"{name}={getattr(self, name)!r}"
        for name in type(self)._fieldsync_fields
    )
    return f"{cls}({shown})"


def _variant_repr(self):
    # Variants take their fields positionally, so the repr is also how one is written.
    shown = ", ".join(repr(getattr(self, name)) for name in type(self)._fieldsync_fields)
    return f"{type(self).__name__}({shown})"


def _flat_enum_repr(self):
    return f"{type(self).__name__}.{self.name}"


def _error_str(self):
    return self.reason


def _error_repr(self):
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in type(self)._fieldsync_fields)
    return f"{type(self).__qualname__}({shown})"


def _keyword_or_positional(cls):
    """The generated records take keyword arguments only; `Order("name")` and
    `Query(Filter.ALL())` read as well, so they take their fields in order too."""
    original = cls.__init__
    signature = _inspect.signature(original)
    parameters = [
        parameter.replace(kind=parameter.POSITIONAL_OR_KEYWORD)
        if parameter.kind == parameter.KEYWORD_ONLY
        else parameter
        for parameter in signature.parameters.values()
    ]
    signature = signature.replace(parameters=parameters)

    @_functools.wraps(original)
    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        arguments = dict(bound.arguments)
        del arguments["self"]
        original(self, **arguments)

    __init__.__signature__ = signature
    cls.__init__ = __init__


def _variants(enum_class):
    return [
        member
        for member in vars(enum_class).values()
        if isinstance(member, type) and issubclass(member, enum_class)
    ]


def _dress_generated_types():
    for name in _native.__all__:
        cls = getattr(_native, name)
        if not isinstance(cls, type) or name.endswith("Protocol"):
            continue
        if issubclass(cls, _enum.Enum):
            cls.__repr__ = _flat_enum_repr
        elif issubclass(cls, Exception):
            for variant in _variants(cls):
                variant._fieldsync_fields = [p.name for p in _parameters(variant.__init__)]
                variant.__str__ = _error_str
                variant.__repr__ = _error_repr
        elif _variants(cls):
            for variant in _variants(cls):
                variant._fieldsync_fields = [p.name for p in _parameters(variant.__init__)]
                # str() too: the generated one drops the quotes that tell "1" from 1.
                variant.__repr__ = variant.__str__ = _variant_repr
        elif hasattr(cls, "__dataclass_fields__"):
            cls._fieldsync_fields = [p.name for p in _parameters(cls.__init__)]
            cls.__repr__ = cls.__str__ = _record_repr
            _keyword_or_positional(cls)


_dress_generated_types()


# --- Text positions in Python characters -----------------------------------------------------


def _utf16_units(text):
    # surrogatepass: a str may hold lone surrogates, which are one unit each.
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _utf16_span(text, index, delete_count):
    """`index` and `delete_count` in code points of `text`, as UTF-16 units. Positions past the
    end keep their distance past it, so that the core refuses them as it would."""
    if text is None or index < 0 or delete_count < 0:
        return index, delete_count
    end = index + delete_count
    start_units = _utf16_units(text[:index]) + max(0, index - len(text))
    end_units = _utf16_units(text[:end]) + max(0, end - len(text))
    return start_units, end_units - start_units


def _spliced(text, index, delete_count, insert):
    if text is None or index < 0 or delete_count < 0 or index > len(text):
        return None
    return text[:index] + insert + text[index + delete_count :]


def _text_of(value):
    """The text a field value holds for a splice: None when it is no text (the core refuses)."""
    if value is None or value.is_NULL():
        return ""
    if value.is_STR():
        return value.value
    return None


class Store(_native.Store):
    __doc__ = _native.Store.__doc__

    def __init__(self, path, schema_json):
        """Opens (or creates) the store file at ``path`` (a ``str`` or ``os.PathLike``) for the
        schema declared in ``schema_json``, with default options (every commit durable)."""
        super().__init__(_os.fspath(path), schema_json)

    @classmethod
    def open_with_options(cls, path, schema_json, options):
        """Like the primary constructor, with options."""
        return super().open_with_options(_os.fspath(path), schema_json, options)

    def insert(self, collection, fields):
        """Inserts a record with a new UUIDv7 id and returns the id. ``fields`` maps field names
        to plain values or ``FieldValue``."""
        return super().insert(collection, _to_field_map(fields))

    def insert_with_id(self, collection, id, fields):
        """Inserts a record with the given id."""
        return super().insert_with_id(collection, id, _to_field_map(fields))

    def update(self, collection, id, patch):
        """Sets the fields in ``patch``; ``None`` clears an optional field. Other fields are
        kept."""
        return super().update(collection, id, _to_field_map(patch, "patch"))

    def _text(self, collection, id, field):
        record = super().get(collection, id)
        return None if record is None else _text_of(record.fields.get(field))

    def splice_text(self, collection, id, field, index, delete_count, insert):
        """Edits a ``text`` field: at ``index``, deletes ``delete_count`` characters and inserts
        ``insert``. Positions count Python characters (code points), as ``str`` indexes do.

        The conversion reads the field's current text first: a write from another thread in
        between would shift the positions, so edit one record's text from one thread."""
        start, count = _utf16_span(self._text(collection, id, field), index, delete_count)
        return super().splice_text(collection, id, field, start, count, insert)

    def write_batch(self, writes):
        """Applies the writes in one transaction, all or none; returns each write's record id.
        ``Write.SPLICE_TEXT`` positions count Python characters, in the text as the writes
        before it in the batch left it."""
        texts = {}
        converted = []
        for write in writes:
            if write.is_SPLICE_TEXT():
                key = (write.collection, write.id, write.field)
                if key not in texts:
                    texts[key] = self._text(*key)
                text = texts[key]
                start, count = _utf16_span(text, write.index, write.delete_count)
                texts[key] = _spliced(text, write.index, write.delete_count, write.insert)
                write = Write.SPLICE_TEXT(
                    write.collection, write.id, write.field, start, count, write.insert
                )
            elif write.is_INSERT() and write.id is not None:
                for name, value in write.fields.items():
                    texts[(write.collection, write.id, name)] = _text_of(value)
            elif write.is_UPDATE():
                for name, value in write.patch.items():
                    texts[(write.collection, write.id, name)] = _text_of(value)
            converted.append(write)
        return super().write_batch(converted)


# --- Coroutines beside the blocking calls ----------------------------------------------------


class AsyncStore:
    """A ``Store`` whose methods are coroutines of the same names and arguments: each runs the
    blocking call on a worker thread (``asyncio.to_thread``), so the event loop keeps running
    while the store waits for the disk. ``store`` is the blocking ``Store`` underneath; both
    may be used at once, and a ``SyncClient`` takes either::

        store = await fieldsync.AsyncStore.open("clinic.db", schema_json)
        rid = await store.insert("clients", {"caseload_id": "north", "name": "Ada"})
    """

    def __init__(self, store: Store):
        # fieldsync.Store, not the generated class: its writes convert plain values and text
        # positions.
        if not isinstance(store, Store):
            raise TypeError(f"AsyncStore wraps a fieldsync.Store, not a {type(store).__name__}")
        self.store = store

    @classmethod
    async def open(cls, path, schema_json, options=None):
        """Opens (or creates) the store file at ``path``, off the event loop; ``options`` as
        ``Store.open_with_options`` takes them."""
        if options is None:
            store = await _asyncio.to_thread(Store, path, schema_json)
        else:
            store = await _asyncio.to_thread(Store.open_with_options, path, schema_json, options)
        return cls(store)

    def __repr__(self):
        return f"AsyncStore({self.store!r})"


def _coroutine_of(name):
    blocking = getattr(Store, name)

    @_functools.wraps(blocking)
    async def method(self, *args, **kwargs):
        return await _asyncio.to_thread(getattr(self.store, name), *args, **kwargs)

    return method


# Every public method of Store, derived so that a method added to the FFI gets its coroutine.
_STORE_METHODS = sorted(
    name
    for name, member in vars(_native.Store).items()
    if not name.startswith("_") and callable(member) and name != "open_with_options"
)
for _name in _STORE_METHODS:
    setattr(AsyncStore, _name, _coroutine_of(_name))


def _blocking_store(store):
    return store.store if isinstance(store, AsyncStore) else store


class SyncClient(_native.SyncClient):
    __doc__ = _native.SyncClient.__doc__

    async def sync_now(self, store, progress=None):
        """Pushes the whole outbox, then pulls until caught up. ``store`` is a ``Store`` or an
        ``AsyncStore``. Safe to cancel: whatever the server answered is kept, and the next sync
        carries on."""
        return await super().sync_now(_blocking_store(store), progress)

    async def sync_within(self, store, budget_ms, progress=None):
        """Syncs for at most ``budget_ms``; the report's ``complete`` says whether it went to
        the end. What was stored stays stored, and the next sync carries on from there."""
        return await super().sync_within(_blocking_store(store), budget_ms, progress)

    async def fetch_attachment(self, store, collection, id, field):
        """Fetches the attachment the field ``field`` of ``collection/id`` references; True
        once the store holds it whole."""
        return await super().fetch_attachment(_blocking_store(store), collection, id, field)

    def start_background(self, store, options=None, listener=None):
        """Starts syncing ``store`` in the background (``options`` default to
        ``BackgroundOptions()``); stop it with ``await background.stop()``."""
        if options is None:
            options = BackgroundOptions()
        return super().start_background(_blocking_store(store), options, listener)


# --- Attachments -----------------------------------------------------------------------------


def attach(store, collection, id, field, source, media_type, name=None) -> AttachmentRef:
    """Attaches ``source`` to the ``attachment`` field ``field`` of ``collection/id`` and returns
    the reference: bytes are stored as they are, a path (``pathlib.Path``) names a file that is
    read a chunk at a time, never whole in memory::

        photo = fieldsync.attach(store, "clients", rid, "consent_form", b"...", "image/jpeg")
        audio = fieldsync.attach(store, "sessions", sid, "audio_note", path, "audio/mp4")

    A ``str`` is refused, since it could be either: wrap a path in ``pathlib.Path``. Raises
    ``FieldsyncError.Io`` when the file cannot be read and ``FieldsyncError.InvalidValue`` when
    ``media_type`` or ``name`` cannot go into a reference; nothing is stored then.
    """
    store = _blocking_store(store)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return store.attach_bytes(collection, id, field, bytes(source), media_type, name)
    if isinstance(source, _os.PathLike):
        return store.attach_file(collection, id, field, _os.fsdecode(source), media_type, name)
    raise TypeError(f"attach takes bytes or an os.PathLike, not a {type(source).__name__}")


def save_attachment(store, reference, path) -> bool:
    """Writes the bytes ``reference`` names to the file at ``path`` (created or replaced), a
    chunk at a time: the way to read a large attachment. False, writing nothing, while the store
    does not hold them all (an ``on_demand`` field not yet fetched with
    ``SyncClient.fetch_attachment``). Raises ``FieldsyncError.Io`` when the file cannot be
    written."""
    return _blocking_store(store).save_attachment(reference, _os.fsdecode(path))


del _name
