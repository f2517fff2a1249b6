"""Fieldsync for Python: an offline-first record store that syncs through a Fieldsync server.

Everything the library exports is here (``Store``, ``SyncClient``, ``Query``, ``Filter``,
``FieldValue``, ``FieldsyncError``, ...), plus two helpers that turn plain Python values into
``FieldValue`` and back, so that records read like dicts::

    store = fieldsync.Store(path, schema_json)
    rid = store.insert("clients", fieldsync.fields(caseload_id="north", name="Ada"))
    fieldsync.values(store.get("clients", rid).fields)  # {'caseload_id': 'north', ...}

``SyncClient.sync_now`` and ``BackgroundSync.stop`` are coroutines. Text positions
(``splice_text``) count UTF-16 code units: convert a Python index ``i`` of ``s`` with
``len(s[:i].encode("utf-16-le")) // 2``.
"""

import json as _json
from typing import Any, Mapping

from ._native import *  # noqa: F401,F403  (the generated module defines __all__)
from ._native import FieldValue

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


__all__ += ["field_value", "fields", "plain_value", "values"]
