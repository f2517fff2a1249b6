"""The README's Python sample, run against a real server: scripts/check-readme-samples checks
that the README shows exactly the region between the markers below."""

import asyncio

import fieldsync


def test_the_readme_sample_runs_against_a_server(server, tmp_path, schema, capsys):
    token = server.user_with_device("ada", "north")
    server.start()
    url, schema_json, path = server.url, schema, tmp_path / "clinic.db"

    # [readme:python]
    import asyncio
    import fieldsync

    store = fieldsync.Store(path, schema_json)
    rid = store.insert("clients", {"caseload_id": "north", "name": "Ada", "birth_year": 1990})
    born = fieldsync.Query(fieldsync.Filter.LT("birth_year", 2000), [fieldsync.Order("name")])
    print([record.fields["name"].value for record in store.query("clients", born)])  # ['Ada']

    async def main():
        # In an asyncio app, the same methods as coroutines that keep the event loop free.
        clinic = fieldsync.AsyncStore(store)
        await clinic.update("clients", rid, {"phone": "555-0100", "birth_year": None})
        client = fieldsync.SyncClient(fieldsync.SyncConfig(endpoint=url, token=token))
        return await client.sync_now(clinic)  # push the outbox, then pull until caught up

    report = asyncio.run(main())
    # [/readme:python]

    assert capsys.readouterr().out == "['Ada']\n"
    assert report.pushed >= 1 and report.rejected == 0
    assert store.outbox_len() == 0

    # What the sample wrote reached the server: a second device pulls it.
    tablet = fieldsync.Store(tmp_path / "tablet.db", schema_json)
    tablet_sync = fieldsync.SyncClient(
        fieldsync.SyncConfig(endpoint=url, token=server.enroll("ada"))
    )
    assert asyncio.run(tablet_sync.sync_now(tablet)).pulled == 1
    assert fieldsync.values(tablet.get("clients", rid).fields) == {
        "caseload_id": "north",
        "name": "Ada",
        "phone": "555-0100",
    }
