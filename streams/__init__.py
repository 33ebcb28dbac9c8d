"""Redis-backed streams: the key scheme, envelopes, the six stream kinds handed out by role,
versioned aggregates, the handling store, Lua scripts and the server to run them on.

The names below are what producers, readers, APIs and the layers above use; the machinery
(codecs, entry ids, scripts, wire routing) stays in its modules.
"""

from streamcqrs.streams._ids import now_ms, to_ms
from streamcqrs.streams.aggregates import AggregateStore, AppendResult
from streamcqrs.streams.client import Client, OperationStatus, State
from streamcqrs.streams.commit import Commit, Input, OnExisting
from streamcqrs.streams.connection import Settings
from streamcqrs.streams.deadletter import DeadLetter, read_dead_letters
from streamcqrs.streams.envelope import Envelope, Record
from streamcqrs.streams.errors import (
    DecodeError,
    DuplicateRecord,
    EncodeError,
    Gone,
    HandlingError,
    InvalidTransition,
    NotDurable,
    NotOwner,
    PermissionDenied,
    RoleError,
    ServerUnavailable,
    StreamError,
)
from streamcqrs.streams.handling import HandlingStore
from streamcqrs.streams.keys import Kind, PartitionKeys, SubsystemKeys, partition_of
from streamcqrs.streams.server import LocalServer, resolve_url, shared_server
from streamcqrs.streams.statuses import Action, Composite, HistoryEntry, Status
from streamcqrs.streams.stream import (
    PutResult,
    ReadOnlyStream,
    SyncWriteOnlyStream,
    WriteOnlyStream,
)
from streamcqrs.streams.subsystem import Subsystem

__all__ = [  # noqa: RUF022 (grouped by use, not sorted)
    # Subsystems, clients and the streams they hand out by role
    "Client",
    "Kind",
    "OnExisting",
    "OperationStatus",
    "PutResult",
    "ReadOnlyStream",
    "State",
    "Subsystem",
    "SyncWriteOnlyStream",
    "WriteOnlyStream",
    # What a stream holds
    "Envelope",
    "Record",
    # Aggregates
    "AggregateStore",
    "AppendResult",
    # Handling (the Naos statuses) and dead letters
    "Action",
    "Composite",
    "DeadLetter",
    "HandlingStore",
    "HistoryEntry",
    "Status",
    "read_dead_letters",
    # The atomic commit, for code that consumes on its own
    "Commit",
    "Input",
    # Keys and partitions
    "PartitionKeys",
    "SubsystemKeys",
    "partition_of",
    # Servers and settings
    "LocalServer",
    "Settings",
    "resolve_url",
    "shared_server",
    # Time (epoch milliseconds, as entries carry it)
    "now_ms",
    "to_ms",
    # Errors
    "DecodeError",
    "DuplicateRecord",
    "EncodeError",
    "Gone",
    "HandlingError",
    "InvalidTransition",
    "NotDurable",
    "NotOwner",
    "PermissionDenied",
    "RoleError",
    "ServerUnavailable",
    "StreamError",
]
