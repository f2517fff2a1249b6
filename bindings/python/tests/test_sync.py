"""Two stores syncing through a real fieldsync-server process."""

import asyncio
import threading

import pytest

import fieldsync
from fieldsync import FieldsyncError, FieldValue, Filter


def sync(client, store, progress=None):
    return asyncio.run(client.sync_now(store, progress))


def device(server, tmp_path, schema, name, token):
    store = fieldsync.Store(str(tmp_path / f"{name}.db"), schema)
    client = fieldsync.SyncClient(fieldsync.SyncConfig(endpoint=server.url, token=token))
    return store, client


def write_clients(store, count):
    """Inserts `count` clients of caseload north in one batch."""
    store.write_batch(
        [
            fieldsync.Write.INSERT(
                "clients", None, fieldsync.fields(caseload_id="north", name=f"C{i}")
            )
            for i in range(count)
        ]
    )


def test_two_stores_converge_and_keep_both_text_edits(server, tmp_path, schema):
    phone_token = server.user_with_device("ada", "north")
    tablet_token = server.user_with_device("bo", "north")
    server.start()
    phone, phone_sync = device(server, tmp_path, schema, "phone", phone_token)
    tablet, tablet_sync = device(server, tmp_path, schema, "tablet", tablet_token)

    client = phone.insert(
        "clients", fieldsync.fields(caseload_id="north", name="Ada", notes="Visit went well.")
    )
    report = sync(phone_sync, phone)
    assert (report.pushed, report.rejected) == (1, 0)
    assert phone.outbox_len() == 0

    merged = []

    class Listener(fieldsync.ChangeListener):
        def on_change(self, event):
            merged.append(event)

    subscription = tablet.subscribe("clients", Filter.ALL(), Listener())
    report = sync(tablet_sync, tablet)
    assert report.pulled == 1
    assert [(e.ids, e.origin) for e in merged] == [([client], fieldsync.ChangeOrigin.REMOTE)]
    subscription.cancel()

    # Both edit the note offline, at different places; both edits survive the merge.
    phone.splice_text("clients", client, "notes", 0, 0, "Calm. ")
    tablet.splice_text("clients", client, "notes", len("Visit went well."), 0, " Call mum.")
    for store, client_sync in [(phone, phone_sync), (tablet, tablet_sync), (phone, phone_sync)]:
        sync(client_sync, store)

    expected = FieldValue.STR("Calm. Visit went well. Call mum.")
    assert phone.get("clients", client).fields["notes"] == expected
    assert tablet.get("clients", client).fields["notes"] == expected
    assert phone.get("clients", client).fields == tablet.get("clients", client).fields


def test_a_conflict_has_one_winner_everywhere_and_keeps_the_loser(server, tmp_path, schema):
    phone_token = server.user_with_device("ada", "north")
    tablet_token = server.user_with_device("bo", "north")
    server.start()
    phone, phone_sync = device(server, tmp_path, schema, "phone", phone_token)
    tablet, tablet_sync = device(server, tmp_path, schema, "tablet", tablet_token)

    client = phone.insert("clients", fieldsync.fields(caseload_id="north", name="Ada"))
    sync(phone_sync, phone)
    sync(tablet_sync, tablet)

    phone.update("clients", client, fieldsync.fields(phone="555-0100"))
    tablet.update("clients", client, fieldsync.fields(phone="555-0199"))
    for store, client_sync in [(phone, phone_sync), (tablet, tablet_sync), (phone, phone_sync)]:
        sync(client_sync, store)

    winner = phone.get("clients", client).fields["phone"]
    assert tablet.get("clients", client).fields["phone"] == winner
    for store in (phone, tablet):
        [conflict] = store.conflicts("clients", client)
        assert conflict.field == "phone"
        assert conflict.winner.value == winner
        assert [loser.value for loser in conflict.losers] == [
            FieldValue.STR("555-0100") if winner == FieldValue.STR("555-0199")
            else FieldValue.STR("555-0199")
        ]
    devices = {entry.device_id for entry in phone.history("clients", client)}
    assert devices == {phone.device_id(), tablet.device_id()}

    # People, not actor ids: the server named who writes as each actor.
    both = {("ada", "ada's device"), ("bo", "bo's device")}
    for store in (phone, tablet):
        history = store.history("clients", client)
        assert {(e.author.user_name, e.author.device_name) for e in history} == both
        [conflict] = store.conflicts("clients", client)
        values = [conflict.winner, *conflict.losers]
        assert {(v.author.user_name, v.author.device_name) for v in values} == both


def test_progress_is_reported(server, tmp_path, schema):
    token = server.user_with_device("ada", "north")
    server.start()
    store, client = device(server, tmp_path, schema, "phone", token)
    write_clients(store, 30)
    seen = []

    class Progress(fieldsync.SyncProgressListener):
        def on_progress(self, progress):
            seen.append(progress)

    small_batches = fieldsync.SyncClient(
        fieldsync.SyncConfig(endpoint=server.url, token=token, push_batch_size=10)
    )
    report = sync(small_batches, store, Progress())
    assert report.pushed == 30
    pushes = [p.pushed for p in seen if not p.pulling]
    assert pushes == [10, 20, 30]
    assert all(p.push_total == 30 for p in seen)
    assert seen[-1].pulling


def test_pull_pages_grow_unless_told_to_stay_fixed(server, tmp_path, schema):
    writer_token = server.user_with_device("ada", "north")
    fixed_token = server.user_with_device("bo", "north")
    growing_token = server.user_with_device("cy", "north")
    server.start()
    writer, writer_sync = device(server, tmp_path, schema, "writer", writer_token)
    write_clients(writer, 30)
    sync(writer_sync, writer)

    def pulled_per_page(name, token, **config):
        store = fieldsync.Store(str(tmp_path / f"{name}.db"), schema)
        client = fieldsync.SyncClient(
            fieldsync.SyncConfig(endpoint=server.url, token=token, pull_page_size=10, **config)
        )
        seen = []

        class Progress(fieldsync.SyncProgressListener):
            def on_progress(self, progress):
                if progress.pulling:
                    seen.append(progress.pulled)

        assert sync(client, store, Progress()).pulled == 30
        return seen

    assert pulled_per_page("fixed", fixed_token, pull_page_bytes=0) == [10, 20, 30]
    # Small records: the second page asks for four times as many, which is the rest.
    assert pulled_per_page("growing", growing_token) == [10, 30]


def test_a_refused_write_is_taken_back_and_kept_for_a_retry(server, tmp_path, schema):
    token = server.user_with_device("ada", "north")
    server.start()
    store, client = device(server, tmp_path, schema, "phone", token)
    refused = store.insert("clients", fieldsync.fields(caseload_id="south", name="Cy"))
    report = sync(client, store)
    assert (report.pushed, report.rejected) == (0, 1)
    [write] = store.rejected_writes()
    assert (write.record_id, write.code, write.created) == (refused, "forbidden_scope", True)
    assert fieldsync.values(write.fields) == {"caseload_id": "south", "name": "Cy"}
    assert store.get("clients", refused) is None

    server.admin("grant", "--user", "ada", "--scope", "south")
    store.retry_rejected_write(write.id)
    assert store.rejected_writes() == []
    report = sync(client, store)
    assert (report.pushed, report.rejected) == (1, 0)
    assert fieldsync.values(store.get("clients", refused).fields)["name"] == "Cy"


def test_revoked_token_and_unreachable_server_raise_typed_errors(server, tmp_path, schema):
    token = server.user_with_device("ada", "north")
    server.start()
    store, client = device(server, tmp_path, schema, "phone", token)
    store.insert("clients", fieldsync.fields(caseload_id="north", name="Ada"))
    sync(client, store)

    token_id = token.split("_")[1]
    server.admin("revoke-token", token_id)
    store.insert("clients", fieldsync.fields(caseload_id="north", name="Bo"))
    with pytest.raises(FieldsyncError.Unauthorized):
        sync(client, store)
    assert store.outbox_len() == 1  # nothing is lost

    with pytest.raises(FieldsyncError.InvalidConfig):
        fieldsync.SyncClient(fieldsync.SyncConfig(endpoint="ftp://example", token=token))

    url = server.url
    server.stop()
    gone = fieldsync.SyncClient(fieldsync.SyncConfig(endpoint=url, token=token))
    with pytest.raises(FieldsyncError.Network):
        sync(gone, store)
    assert store.outbox_len() == 1


def test_background_sync_reports_status_and_stops(server, tmp_path, schema):
    phone_token = server.user_with_device("ada", "north")
    tablet_token = server.user_with_device("bo", "north")
    server.start()
    phone, phone_sync = device(server, tmp_path, schema, "phone", phone_token)
    tablet, tablet_sync = device(server, tmp_path, schema, "tablet", tablet_token)

    statuses = []
    synced = threading.Event()

    class Status(fieldsync.SyncStatusListener):
        def on_status(self, status):
            statuses.append(status)
            if status.state == fieldsync.SyncState.IDLE and status.last_success_ms is not None:
                synced.set()

    background = phone_sync.start_background(
        phone, fieldsync.BackgroundOptions(debounce_ms=50), Status()
    )
    client = phone.insert("clients", fieldsync.fields(caseload_id="north", name="Ada"))
    assert synced.wait(timeout=30), statuses
    # The write was pushed by the background loop: the tablet can pull it.
    deadline_polls = 0
    while phone.outbox_len() and deadline_polls < 100:
        synced.clear()
        background.sync_soon()
        assert synced.wait(timeout=30)
        deadline_polls += 1
    assert phone.outbox_len() == 0
    sync(tablet_sync, tablet)
    assert tablet.get("clients", client) is not None
    assert any(s.state == fieldsync.SyncState.SYNCING for s in statuses)

    asyncio.run(background.stop())
    assert background.status().stopped


@pytest.fixture
def loop():
    """An event loop on its own thread, given to the bindings: the library calls a token
    provider's coroutine from its threads, and it runs there. The test's own coroutines run on
    it too (`on_loop`), since the bindings await every call on the loop they were given."""
    running = asyncio.new_event_loop()
    thread = threading.Thread(target=running.run_forever, daemon=True)
    thread.start()
    fieldsync.uniffi_set_event_loop(running)
    yield running
    fieldsync.uniffi_set_event_loop(None)
    running.call_soon_threadsafe(running.stop)
    thread.join()
    running.close()


def on_loop(loop, coroutine):
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=30)


class Tokens(fieldsync.TokenProvider):
    """Hands out `tokens` in turn (the last one again once they run out), counting the calls."""

    def __init__(self, *tokens):
        self.tokens = tokens
        self.calls = 0

    async def token(self):
        self.calls += 1
        return self.tokens[min(self.calls, len(self.tokens)) - 1]


class SignedOut(fieldsync.TokenProvider):
    """Raises `error()` until `signed_in` holds a token: the person has not signed in."""

    def __init__(self, error=lambda: fieldsync.TokenProviderError.SignInRequired("signed out")):
        self.error = error
        self.signed_in = None
        self.calls = 0

    async def token(self):
        self.calls += 1
        if self.signed_in is None:
            raise self.error()
        return self.signed_in


def provided(server, provider):
    """A client whose tokens come from `provider`."""
    return fieldsync.SyncClient.with_token_provider(
        fieldsync.SyncConfig(endpoint=server.url, token=""), provider
    )


def test_a_refused_token_is_asked_for_again_and_the_fresh_one_syncs(
    server, tmp_path, schema, loop
):
    # Without an identity provider, device tokens stand in for its access tokens: the revoked
    # one plays a token that expired since the sign-in library handed it out.
    expired = server.user_with_device("ada", "north")
    fresh = server.enroll("ada")
    tablet_token = server.user_with_device("bo", "north")
    server.admin("revoke-token", expired.split("_")[1])
    server.start()
    store = fieldsync.Store(str(tmp_path / "phone.db"), schema)
    write_clients(store, 3)
    tokens = Tokens(expired, fresh)

    report = on_loop(loop, provided(server, tokens).sync_now(store, None))

    assert (report.pushed, report.rejected) == (3, 0)
    assert tokens.calls == 2
    assert store.outbox_len() == 0
    # The server has the writes: another person's device pulls them.
    tablet, tablet_sync = device(server, tmp_path, schema, "tablet", tablet_token)
    assert on_loop(loop, tablet_sync.sync_now(tablet, None)).pulled == 3


def test_a_provider_without_a_token_asks_for_a_sign_in_and_nothing_is_lost(
    server, tmp_path, schema, loop
):
    token = server.user_with_device("ada", "north")
    server.start()
    store, device_sync = device(server, tmp_path, schema, "phone", token)
    store.insert("clients", fieldsync.fields(caseload_id="north", name="Ada"))
    signed_out = SignedOut()

    with pytest.raises(FieldsyncError.SignInRequired, match="signed out"):
        on_loop(loop, provided(server, signed_out).sync_now(store, None))
    assert signed_out.calls == 1  # no second ask without a refused token
    assert store.outbox_len() == 1

    # Any exception of the sign-in library counts as a sign-in to make.
    broken = SignedOut(lambda: RuntimeError("no account"))
    with pytest.raises(FieldsyncError.SignInRequired, match="no account"):
        on_loop(loop, provided(server, broken).sync_now(store, None))
    assert store.outbox_len() == 1

    # The write is still there to push once a token can be had.
    assert on_loop(loop, device_sync.sync_now(store, None)).pushed == 1


def test_a_fresh_token_refused_too_asks_for_a_sign_in(server, tmp_path, schema, loop):
    token = server.user_with_device("ada", "north")
    server.admin("revoke-token", token.split("_")[1])
    server.start()
    store = fieldsync.Store(str(tmp_path / "phone.db"), schema)
    store.insert("clients", fieldsync.fields(caseload_id="north", name="Ada"))
    refused = Tokens(token)

    with pytest.raises(FieldsyncError.SignInRequired):
        on_loop(loop, provided(server, refused).sync_now(store, None))
    assert refused.calls == 2
    assert store.outbox_len() == 1


def test_enrolling_takes_an_identity_providers_token(server, tmp_path, schema, loop):
    token = server.user_with_device("ada", "north")
    server.start()
    _, plain = device(server, tmp_path, schema, "phone", token)
    with pytest.raises(FieldsyncError.InvalidConfig):
        on_loop(loop, plain.enroll_device("Ada's laptop"))

    # A device token names its device already: the server refuses it (403).
    with_device_token = Tokens(token)
    with pytest.raises(FieldsyncError.Server, match="403"):
        on_loop(loop, provided(server, with_device_token).enroll_device("Ada's laptop"))
    assert with_device_token.calls == 1


def test_background_sync_waits_for_a_sign_in_and_carries_on_after_it(
    server, tmp_path, schema, loop
):
    token = server.user_with_device("ada", "north")
    server.start()
    store = fieldsync.Store(str(tmp_path / "phone.db"), schema)
    store.insert("clients", fieldsync.fields(caseload_id="north", name="Ada"))
    signed_out = SignedOut()
    statuses = []
    waiting = threading.Event()
    synced = threading.Event()

    class Status(fieldsync.SyncStatusListener):
        def on_status(self, status):
            statuses.append(status)
            if status.state == fieldsync.SyncState.SIGN_IN_REQUIRED:
                waiting.set()
            if status.state == fieldsync.SyncState.IDLE and status.last_success_ms is not None:
                synced.set()

    background = provided(server, signed_out).start_background(
        store, fieldsync.BackgroundOptions(debounce_ms=50), Status()
    )
    assert waiting.wait(timeout=30), statuses
    status = background.status()
    assert status.state == fieldsync.SyncState.SIGN_IN_REQUIRED
    assert not status.stopped
    assert "signed out" in status.last_error
    assert store.outbox_len() == 1

    signed_out.signed_in = token
    background.sync_soon()
    assert synced.wait(timeout=30), statuses
    assert store.outbox_len() == 0
    on_loop(loop, background.stop())
    assert background.status().stopped
