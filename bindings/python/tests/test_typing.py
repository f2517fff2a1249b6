"""The package's type information: mypy, reading the installed stub, accepts typed use of the
public API (blocking and async) and catches a misuse."""

import importlib.util
import os
import subprocess
import sys

import pytest

SAMPLE = '''
import asyncio
import pathlib

import fieldsync
from fieldsync import FieldsyncError, FieldValue, Filter, Order, Query, Write


async def sync(store: fieldsync.AsyncStore, client: fieldsync.SyncClient) -> int:
    rid: str = await store.insert("clients", {"caseload_id": "north", "name": "Ada"})
    await store.splice_text("clients", rid, "notes", 0, 0, "Calm.")
    found: list[fieldsync.Record] = await store.query("clients", Query(Filter.ALL()))
    report: fieldsync.SyncReport = await client.sync_now(store)
    budgeted = await client.sync_within(store.store, 5000)
    fetched: bool = await client.fetch_attachment(store, "clients", rid, "consent_form")
    return report.pushed + budgeted.pulled + len(found) + int(fetched)


def main(path: pathlib.Path, schema_json: str) -> None:
    store = fieldsync.Store(path, schema_json)
    rid = store.insert("clients", {"caseload_id": "north", "name": "Ada", "birth_year": 1990})
    store.update("clients", rid, {"notes": None, "goals": {"walk": [1, 2]}})
    store.write_batch([Write.INSERT("clients", None, {"name": "Bo"}), Write.DELETE("clients", rid)])
    ada_born = Filter.AND([Filter.EQ("name", "Ada"), Filter.GT("birth_year", 1980)])
    query = Query(ada_born, [Order("name")])
    for record in store.query("clients", query):
        name: FieldValue = record.fields["name"]
        if isinstance(name, FieldValue.STR):
            print(name.value.upper())
    ada = store.get("clients", rid)
    if ada is not None:
        plain = fieldsync.values(ada.fields)
        print(plain["name"], ada.updated_at_ms + 1)
    try:
        store.delete("clients", "nobody")
    except FieldsyncError.NotFound as err:
        print(err.collection, err.id, err.reason)
    except FieldsyncError.RateLimited as err:
        print(err.retry_after_ms + 1)
    config = fieldsync.SyncConfig(endpoint="https://sync.example", token="t")
    client = fieldsync.SyncClient(config)
    print(asyncio.run(sync(fieldsync.AsyncStore(store), client)))
    print(asyncio.run(client.sync_now(store)).complete)
'''

MISUSE = '''
import fieldsync

store = fieldsync.Store("app.db", "{}")
store.insert("clients", {"name": b"bytes"})
count: str = store.count("clients", fieldsync.Filter.ALL())
'''


def mypy(tmp_path, source):
    if importlib.util.find_spec("mypy") is None:
        if os.environ.get("FIELDSYNC_EXPECT_INSTALLED") == "1":
            pytest.fail("mypy is missing from the test environment (scripts/test installs it)")
        pytest.skip("mypy is not installed: `pip install mypy` to check the type information")
    sample = tmp_path / "sample.py"
    sample.write_text(source)
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"),
         str(sample)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )


def test_typed_use_of_the_public_api_checks(tmp_path):
    result = mypy(tmp_path, SAMPLE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout


def test_a_misuse_is_caught(tmp_path):
    result = mypy(tmp_path, MISUSE)
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'sample.py:5: error' in result.stdout  # bytes is no field value
    assert 'sample.py:6: error' in result.stdout  # count is an int
