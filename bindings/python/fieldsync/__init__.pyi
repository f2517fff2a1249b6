# Type information for the public API (the generated module underneath has none that type
# checkers can follow: its enum variants and error cases are assembled at run time).
import asyncio
import enum
import os
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import Any, TypeAlias

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

_Path: TypeAlias = str | os.PathLike[str]
# What a field takes: a FieldValue, or the plain value it stands for (dicts and lists for json
# fields).
_Value: TypeAlias = FieldValue | None | bool | int | float | str | dict[str, Any] | list[Any]

# --- Values, filters, queries, writes ---

class FieldValue:
    def is_NULL(self) -> bool: ...
    def is_BOOLEAN(self) -> bool: ...
    def is_INTEGER(self) -> bool: ...
    def is_FLOAT(self) -> bool: ...
    def is_STR(self) -> bool: ...
    def is_JSON(self) -> bool: ...
    class NULL(FieldValue):
        def __init__(self) -> None: ...
    class BOOLEAN(FieldValue):
        value: bool
        def __init__(self, value: bool) -> None: ...
    class INTEGER(FieldValue):
        value: int
        def __init__(self, value: int) -> None: ...
    class FLOAT(FieldValue):
        value: float
        def __init__(self, value: float) -> None: ...
    class STR(FieldValue):
        value: str
        def __init__(self, value: str) -> None: ...
    class JSON(FieldValue):
        json: str
        def __init__(self, json: str) -> None: ...

class Filter:
    class ALL(Filter):
        def __init__(self) -> None: ...
    class EQ(Filter):
        field: str
        value: FieldValue
        def __init__(self, field: str, value: _Value) -> None: ...
    class NE(Filter):
        field: str
        value: FieldValue
        def __init__(self, field: str, value: _Value) -> None: ...
    class LT(Filter):
        field: str
        value: FieldValue
        def __init__(self, field: str, value: _Value) -> None: ...
    class LTE(Filter):
        field: str
        value: FieldValue
        def __init__(self, field: str, value: _Value) -> None: ...
    class GT(Filter):
        field: str
        value: FieldValue
        def __init__(self, field: str, value: _Value) -> None: ...
    class GTE(Filter):
        field: str
        value: FieldValue
        def __init__(self, field: str, value: _Value) -> None: ...
    class IN(Filter):
        field: str
        values: list[FieldValue]
        def __init__(self, field: str, values: Iterable[_Value]) -> None: ...
    class PREFIX(Filter):
        field: str
        prefix: str
        def __init__(self, field: str, prefix: str) -> None: ...
    class IS_NULL(Filter):
        field: str
        def __init__(self, field: str) -> None: ...
    class IS_NOT_NULL(Filter):
        field: str
        def __init__(self, field: str) -> None: ...
    class AND(Filter):
        filters: list[Filter]
        def __init__(self, filters: Iterable[Filter]) -> None: ...
    class OR(Filter):
        filters: list[Filter]
        def __init__(self, filters: Iterable[Filter]) -> None: ...

class Order:
    field: str
    descending: bool
    def __init__(self, field: str, descending: bool = False) -> None: ...

class Query:
    filter: Filter
    order: list[Order]
    limit: int | None
    offset: int
    def __init__(
        self,
        filter: Filter,
        order: Sequence[Order] = ...,
        limit: int | None = None,
        offset: int = 0,
    ) -> None: ...

class Write:
    def is_INSERT(self) -> bool: ...
    def is_UPDATE(self) -> bool: ...
    def is_SPLICE_TEXT(self) -> bool: ...
    def is_DELETE(self) -> bool: ...
    class INSERT(Write):
        collection: str
        id: str | None
        fields: dict[str, FieldValue]
        def __init__(
            self, collection: str, id: str | None, fields: Mapping[str, _Value]
        ) -> None: ...
    class UPDATE(Write):
        collection: str
        id: str
        patch: dict[str, FieldValue]
        def __init__(self, collection: str, id: str, patch: Mapping[str, _Value]) -> None: ...
    class SPLICE_TEXT(Write):
        collection: str
        id: str
        field: str
        index: int
        delete_count: int
        insert: str
        def __init__(
            self,
            collection: str,
            id: str,
            field: str,
            index: int,
            delete_count: int,
            insert: str,
        ) -> None: ...
    class DELETE(Write):
        collection: str
        id: str
        def __init__(self, collection: str, id: str) -> None: ...

# --- What the store gives back ---

class Record:
    collection: str
    id: str
    scope: str
    fields: dict[str, FieldValue]
    created_at_ms: int
    updated_at_ms: int
    def __init__(
        self,
        collection: str,
        id: str,
        scope: str,
        fields: dict[str, FieldValue],
        created_at_ms: int,
        updated_at_ms: int,
    ) -> None: ...

class Author:
    user_name: str
    device_name: str
    def __init__(self, user_name: str, device_name: str) -> None: ...

class ConflictValue:
    value: FieldValue
    device_id: str
    author: Author | None
    def __init__(self, value: FieldValue, device_id: str, author: Author | None) -> None: ...

class FieldConflict:
    field: str
    winner: ConflictValue
    losers: list[ConflictValue]
    def __init__(self, field: str, winner: ConflictValue, losers: list[ConflictValue]) -> None: ...

class HistoryEntry:
    change_hash: str
    device_id: str
    author: Author | None
    timestamp_ms: int
    fields: list[str]
    deleted: bool
    def __init__(
        self,
        change_hash: str,
        device_id: str,
        author: Author | None,
        timestamp_ms: int,
        fields: list[str],
        deleted: bool,
    ) -> None: ...

class Orphan:
    id: str
    field: str
    target_id: str
    def __init__(self, id: str, field: str, target_id: str) -> None: ...

class RejectedWrite:
    id: int
    collection: str
    record_id: str
    scope: str
    fields: dict[str, FieldValue]
    deleted: bool
    created: bool
    code: str
    message: str
    rejected_at_ms: int
    def __init__(
        self,
        id: int,
        collection: str,
        record_id: str,
        scope: str,
        fields: dict[str, FieldValue],
        deleted: bool,
        created: bool,
        code: str,
        message: str,
        rejected_at_ms: int,
    ) -> None: ...

class ChangeOrigin(enum.Enum):
    LOCAL = 1
    REMOTE = 2

class ChangeEvent:
    collection: str
    ids: list[str]
    origin: ChangeOrigin
    def __init__(self, collection: str, ids: list[str], origin: ChangeOrigin) -> None: ...

class Synchronous(enum.Enum):
    FULL = 1
    NORMAL = 2

class StoreOptions:
    synchronous: Synchronous
    document_cache_size: int
    max_pending_changes: int
    encryption_key: bytes | None
    attachment_budget_bytes: int
    def __init__(
        self,
        synchronous: Synchronous,
        document_cache_size: int = 512,
        max_pending_changes: int = 10000,
        encryption_key: bytes | None = None,
        attachment_budget_bytes: int = 1073741824,
    ) -> None: ...

class AttachmentRef:
    sha256: str
    size: int
    media_type: str
    name: str | None
    def __init__(
        self, sha256: str, size: int, media_type: str, name: str | None = None
    ) -> None: ...

class AttachmentsTidied:
    unreferenced: int
    evicted: int
    bytes: int
    def __init__(self, unreferenced: int, evicted: int, bytes: int) -> None: ...

# --- The store ---

class ChangeListener:
    def on_change(self, event: ChangeEvent) -> None: ...

class Subscription:
    def cancel(self) -> None: ...

class Store:
    def __init__(self, path: _Path, schema_json: str) -> None: ...
    @classmethod
    def open_with_options(cls, path: _Path, schema_json: str, options: StoreOptions) -> Store: ...
    def rekey(self, new_key: bytes) -> None: ...
    def device_id(self) -> str: ...
    def insert(self, collection: str, fields: Mapping[str, _Value]) -> str: ...
    def insert_with_id(self, collection: str, id: str, fields: Mapping[str, _Value]) -> None: ...
    def update(self, collection: str, id: str, patch: Mapping[str, _Value]) -> None: ...
    def splice_text(
        self, collection: str, id: str, field: str, index: int, delete_count: int, insert: str
    ) -> None: ...
    def delete(self, collection: str, id: str) -> None: ...
    def write_batch(self, writes: Iterable[Write]) -> list[str]: ...
    def get(self, collection: str, id: str) -> Record | None: ...
    def query(self, collection: str, query: Query) -> list[Record]: ...
    def count(self, collection: str, filter: Filter) -> int: ...
    def orphans(self, collection: str) -> list[Orphan]: ...
    def conflicts(self, collection: str, id: str) -> list[FieldConflict]: ...
    def history(self, collection: str, id: str) -> list[HistoryEntry]: ...
    def subscribe(
        self, collection: str, filter: Filter, listener: ChangeListener
    ) -> Subscription: ...
    def outbox_len(self) -> int: ...
    def rejected_writes(self) -> list[RejectedWrite]: ...
    def retry_rejected_write(self, id: int) -> None: ...
    def discard_rejected_write(self, id: int) -> None: ...
    def attach_bytes(
        self,
        collection: str,
        id: str,
        field: str,
        bytes: bytes,
        media_type: str,
        name: str | None = None,
    ) -> AttachmentRef: ...
    def attach_file(
        self,
        collection: str,
        id: str,
        field: str,
        path: str,
        media_type: str,
        name: str | None = None,
    ) -> AttachmentRef: ...
    def attachment_of(self, collection: str, id: str, field: str) -> AttachmentRef | None: ...
    def has_attachment(self, reference: AttachmentRef) -> bool: ...
    def attachment_bytes(self, reference: AttachmentRef) -> bytes | None: ...
    def save_attachment(self, reference: AttachmentRef, path: str) -> bool: ...
    def tidy_attachments(self) -> AttachmentsTidied: ...

class AsyncStore:
    store: Store
    def __init__(self, store: Store) -> None: ...
    @classmethod
    async def open(
        cls, path: _Path, schema_json: str, options: StoreOptions | None = None
    ) -> AsyncStore: ...
    async def rekey(self, new_key: bytes) -> None: ...
    async def device_id(self) -> str: ...
    async def insert(self, collection: str, fields: Mapping[str, _Value]) -> str: ...
    async def insert_with_id(
        self, collection: str, id: str, fields: Mapping[str, _Value]
    ) -> None: ...
    async def update(self, collection: str, id: str, patch: Mapping[str, _Value]) -> None: ...
    async def splice_text(
        self, collection: str, id: str, field: str, index: int, delete_count: int, insert: str
    ) -> None: ...
    async def delete(self, collection: str, id: str) -> None: ...
    async def write_batch(self, writes: Iterable[Write]) -> list[str]: ...
    async def get(self, collection: str, id: str) -> Record | None: ...
    async def query(self, collection: str, query: Query) -> list[Record]: ...
    async def count(self, collection: str, filter: Filter) -> int: ...
    async def orphans(self, collection: str) -> list[Orphan]: ...
    async def conflicts(self, collection: str, id: str) -> list[FieldConflict]: ...
    async def history(self, collection: str, id: str) -> list[HistoryEntry]: ...
    async def subscribe(
        self, collection: str, filter: Filter, listener: ChangeListener
    ) -> Subscription: ...
    async def outbox_len(self) -> int: ...
    async def rejected_writes(self) -> list[RejectedWrite]: ...
    async def retry_rejected_write(self, id: int) -> None: ...
    async def discard_rejected_write(self, id: int) -> None: ...
    async def attach_bytes(
        self,
        collection: str,
        id: str,
        field: str,
        bytes: bytes,
        media_type: str,
        name: str | None = None,
    ) -> AttachmentRef: ...
    async def attach_file(
        self,
        collection: str,
        id: str,
        field: str,
        path: str,
        media_type: str,
        name: str | None = None,
    ) -> AttachmentRef: ...
    async def attachment_of(
        self, collection: str, id: str, field: str
    ) -> AttachmentRef | None: ...
    async def has_attachment(self, reference: AttachmentRef) -> bool: ...
    async def attachment_bytes(self, reference: AttachmentRef) -> bytes | None: ...
    async def save_attachment(self, reference: AttachmentRef, path: str) -> bool: ...
    async def tidy_attachments(self) -> AttachmentsTidied: ...

def generate_encryption_key() -> bytes: ...
def encrypt_store_file(path: str, key: bytes) -> None: ...
def attachment_ref_of(value: FieldValue) -> AttachmentRef | None: ...

# --- Sync ---

class SyncConfig:
    endpoint: str
    token: str
    trusted_roots_pem: list[str]
    pinned_spki_sha256: list[str]
    push_batch_size: int
    pull_page_size: int
    request_timeout_ms: int
    pull_page_bytes: int
    device_id: int | None
    def __init__(
        self,
        endpoint: str,
        token: str,
        trusted_roots_pem: list[str] = ...,
        pinned_spki_sha256: list[str] = ...,
        push_batch_size: int = 500,
        pull_page_size: int = 500,
        request_timeout_ms: int = 60000,
        pull_page_bytes: int = 2097152,
        device_id: int | None = None,
    ) -> None: ...

class SyncReport:
    pushed: int
    rejected: int
    pulled: int
    purged_scopes: list[str]
    attachments_sent: int
    attachments_fetched: int
    erased: int
    rebased: int
    complete: bool
    def __init__(
        self,
        pushed: int,
        rejected: int,
        pulled: int,
        purged_scopes: list[str],
        attachments_sent: int,
        attachments_fetched: int,
        erased: int,
        rebased: int,
        complete: bool,
    ) -> None: ...

class SyncProgress:
    pushed: int
    push_total: int
    pulled: int
    pulling: bool
    attachment_bytes_done: int
    attachment_bytes_total: int
    def __init__(
        self,
        pushed: int,
        push_total: int,
        pulled: int,
        pulling: bool,
        attachment_bytes_done: int,
        attachment_bytes_total: int,
    ) -> None: ...

class SyncState(enum.Enum):
    IDLE = 1
    SYNCING = 2
    OFFLINE = 3
    ERROR = 4
    SIGN_IN_REQUIRED = 5

class SyncStatus:
    state: SyncState
    progress: SyncProgress
    last_success_ms: int | None
    last_report: SyncReport | None
    last_error: str | None
    retry_in_ms: int | None
    stopped: bool
    def __init__(
        self,
        state: SyncState,
        progress: SyncProgress,
        last_success_ms: int | None,
        last_report: SyncReport | None,
        last_error: str | None,
        retry_in_ms: int | None,
        stopped: bool,
    ) -> None: ...

class BackgroundOptions:
    interval_ms: int
    debounce_ms: int
    min_backoff_ms: int
    max_backoff_ms: int
    def __init__(
        self,
        interval_ms: int = 300000,
        debounce_ms: int = 2000,
        min_backoff_ms: int = 1000,
        max_backoff_ms: int = 300000,
    ) -> None: ...

class SyncProgressListener:
    def on_progress(self, progress: SyncProgress) -> None: ...

class SyncStatusListener:
    def on_status(self, status: SyncStatus) -> None: ...

class TokenProvider:
    def token(self) -> Awaitable[str]: ...

class BackgroundSync:
    def sync_soon(self) -> None: ...
    def status(self) -> SyncStatus: ...
    async def stop(self) -> None: ...

class SyncClient:
    def __init__(self, config: SyncConfig) -> None: ...
    @classmethod
    def with_token_provider(cls, config: SyncConfig, provider: TokenProvider) -> SyncClient: ...
    async def enroll_device(self, name: str) -> int: ...
    async def sync_now(
        self, store: Store | AsyncStore, progress: SyncProgressListener | None = None
    ) -> SyncReport: ...
    async def sync_within(
        self,
        store: Store | AsyncStore,
        budget_ms: int,
        progress: SyncProgressListener | None = None,
    ) -> SyncReport: ...
    async def fetch_attachment(
        self, store: Store | AsyncStore, collection: str, id: str, field: str
    ) -> bool: ...
    def start_background(
        self,
        store: Store | AsyncStore,
        options: BackgroundOptions | None = None,
        listener: SyncStatusListener | None = None,
    ) -> BackgroundSync: ...

def uniffi_set_event_loop(eventloop: asyncio.AbstractEventLoop) -> None: ...

# --- Errors ---

class FieldsyncError(Exception):
    reason: str
    class Database(FieldsyncError): ...
    class Corrupt(FieldsyncError): ...
    class NewerFormat(FieldsyncError): ...
    class KeyRequired(FieldsyncError): ...
    class WrongKey(FieldsyncError): ...
    class NotEncrypted(FieldsyncError): ...
    class AlreadyEncrypted(FieldsyncError): ...
    class InvalidKey(FieldsyncError): ...
    class InvalidSchema(FieldsyncError): ...
    class IncompatibleSchema(FieldsyncError): ...
    class UnknownCollection(FieldsyncError):
        collection: str
    class UnknownField(FieldsyncError):
        collection: str
        field: str
    class WrongType(FieldsyncError):
        collection: str
        field: str
    class MissingField(FieldsyncError):
        collection: str
        field: str
    class ScopeChange(FieldsyncError):
        collection: str
    class NotFound(FieldsyncError):
        collection: str
        id: str
    class DuplicateId(FieldsyncError):
        collection: str
        id: str
    class Restricted(FieldsyncError):
        collection: str
        id: str
        referenced_by: str
    class InvalidQuery(FieldsyncError): ...
    class InvalidTextEdit(FieldsyncError):
        collection: str
        field: str
    class InvalidId(FieldsyncError): ...
    class InvalidValue(FieldsyncError): ...
    class Io(FieldsyncError): ...
    class InvalidRemoteChange(FieldsyncError):
        collection: str
        id: str
    class TooManyPendingChanges(FieldsyncError): ...
    class InvalidConfig(FieldsyncError): ...
    class Network(FieldsyncError): ...
    class Unauthorized(FieldsyncError): ...
    class SignInRequired(FieldsyncError): ...
    class RateLimited(FieldsyncError):
        retry_after_ms: int
    class Server(FieldsyncError):
        status: int
    class Protocol(FieldsyncError): ...
    class Internal(FieldsyncError): ...

class TokenProviderError(Exception):
    reason: str
    class SignInRequired(TokenProviderError):
        def __init__(self, reason: str) -> None: ...

# --- Plain values ---

def field_value(value: _Value) -> FieldValue: ...
def fields(
    mapping: Mapping[str, _Value] | None = None, **named: _Value
) -> dict[str, FieldValue]: ...
def plain_value(value: FieldValue) -> Any: ...
def values(record_fields: Mapping[str, FieldValue]) -> dict[str, Any]: ...
def attach(
    store: Store | AsyncStore,
    collection: str,
    id: str,
    field: str,
    source: bytes | bytearray | memoryview | os.PathLike[str],
    media_type: str,
    name: str | None = None,
) -> AttachmentRef: ...
def save_attachment(store: Store | AsyncStore, reference: AttachmentRef, path: _Path) -> bool: ...
