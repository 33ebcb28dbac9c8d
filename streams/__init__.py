"""Redis-backed streams: the key scheme, envelopes, the six stream kinds handed out by role,
versioned aggregates, the handling store, Lua scripts and the server to run them on."""

from streamcqrs.streams._ids import entry_key, now_ms, to_ms
from streamcqrs.streams.aggregates import AggregateStore, AppendResult
from streamcqrs.streams.client import Client, OperationStatus, State
from streamcqrs.streams.commit import Commit, Input, OnExisting
from streamcqrs.streams.connection import Settings
from streamcqrs.streams.deadletter import DeadLetter, read_dead_letters
from streamcqrs.streams.envelope import Envelope, Record, decode, encode, parse, to_record
from streamcqrs.streams.errors import (
    DecodeError,
    DuplicateRecord,
    EncodeError,
    Gone,
    HandlingError,
    InvalidTransition,
    NotOwner,
    PermissionDenied,
    RoleError,
    ServerUnavailable,
    StreamError,
)
from streamcqrs.streams.handling import HandlingStore
from streamcqrs.streams.keys import Kind, PartitionKeys, SubsystemKeys, partition_of
from streamcqrs.streams.server import LocalServer, find_server_binary, resolve_url, shared_server
from streamcqrs.streams.statuses import Action, Composite, HistoryEntry, Status
from streamcqrs.streams.stream import (
    PutResult,
    ReadOnlyStream,
    SyncWriteOnlyStream,
    WriteOnlyStream,
)
from streamcqrs.streams.subsystem import Subsystem

__all__ = [
    "Action",
    "AggregateStore",
    "AppendResult",
    "Client",
    "Commit",
    "Composite",
    "DeadLetter",
    "DecodeError",
    "DuplicateRecord",
    "EncodeError",
    "Envelope",
    "Gone",
    "HandlingError",
    "HandlingStore",
    "HistoryEntry",
    "Input",
    "InvalidTransition",
    "Kind",
    "LocalServer",
    "NotOwner",
    "OnExisting",
    "OperationStatus",
    "PartitionKeys",
    "PermissionDenied",
    "PutResult",
    "ReadOnlyStream",
    "Record",
    "RoleError",
    "ServerUnavailable",
    "Settings",
    "State",
    "Status",
    "StreamError",
    "Subsystem",
    "SubsystemKeys",
    "SyncWriteOnlyStream",
    "WriteOnlyStream",
    "decode",
    "encode",
    "entry_key",
    "find_server_binary",
    "now_ms",
    "parse",
    "partition_of",
    "read_dead_letters",
    "resolve_url",
    "shared_server",
    "to_ms",
    "to_record",
]
