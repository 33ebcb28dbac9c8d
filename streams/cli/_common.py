"""What every operator command of ``streamcqrs`` shares: the server, stream names, time,
output, and how an error becomes one line.

The CLI is an operator's tool: it runs in a process that usually has none of the app's
message classes registered, so it shows each entry's envelope and its payload unpacked as
plain data. ``--import MODULE`` registers an app's types so payloads are validated (and
upcast) by their models instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import msgpack
import orjson
import redis
import redis.asyncio
import redis.exceptions

from streamcqrs.domain.errors import ConfigurationError, StreamCQRSError
from streamcqrs.streams._replies import moved
from streamcqrs.streams.commit import ATTEMPT_FIELD, CONCERN_FIELD
from streamcqrs.streams.connection import Settings
from streamcqrs.streams.envelope import JSON, Entry, Envelope, as_str, decode, entries, parse
from streamcqrs.streams.errors import DecodeError
from streamcqrs.streams.keys import Kind, PartitionKeys, SubsystemKeys, partition_of
from streamcqrs.streams.server import redact, require_url
from streamcqrs.streams.subsystem import parse_stream

MAX_PARTITIONS = 256
"""How far partition detection looks: EXISTS on this many stream keys, in one round trip."""
PAGE = 500
"""Entries per XRANGE page when a command walks a whole stream."""
KNOWN_SCAN = 20_000
"""Most keys looked at (SCAN) to name the subsystems a server holds, on an error path only."""
_TAG = re.compile(r"^\{(?P<sub>[^{}]+)\.\d+\}:")
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class CommandError(StreamCQRSError):
    """A command cannot run as asked; the message says what to do instead."""


def add_connection_options(parser: argparse.ArgumentParser, *, imports: bool = True) -> None:
    """``--url`` and ``--username`` (the password only from REDIS_PASSWORD, never argv), and
    with ``imports`` ``--import MODULE`` (to decode payloads with their models)."""
    group = parser.add_argument_group("server")
    group.add_argument(
        "--url",
        default=os.environ.get("REDIS_URL"),
        help="server URL, e.g. redis://localhost:6379/0, valkey://localhost:6379/0 or "
        "unix:///tmp/redis.sock (default: $REDIS_URL; 'streamcqrs server' starts one)",
    )
    group.add_argument(
        "--username",
        default=os.environ.get("REDIS_USERNAME"),
        help="ACL user to log in as (default: $REDIS_USERNAME); "
        "the password is read from $REDIS_PASSWORD",
    )
    if not imports:
        return
    group.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (repeatable) so its registered message types decode "
        "payloads into their models",
    )


def connect(args: argparse.Namespace) -> redis.Redis:
    """A sync client for the server the command line names (never a private one: it would
    be empty); ConfigurationError saying how to name one if it names none."""
    args.url = require_url(args.url)
    for module in getattr(args, "imports", ()):
        import_module(module)
    settings = Settings(url=args.url, username=args.username, retries=0)
    return settings.client()


def connect_async(args: argparse.Namespace) -> redis.asyncio.Redis:
    """An asyncio client to the same server as ``connect`` (for the async-only stores)."""
    url = require_url(args.url)
    return Settings(url=url, username=args.username, retries=0).async_client()


def run_command(args: argparse.Namespace, out: TextIO) -> int:
    """Run the parsed command (``args.func``); any error it meets becomes one line.

    Exit status 0 when it went as asked, 2 with ``error: ...`` on stderr, saying what to do,
    for a mistake of ours, the caller's or the server's refusal; never a traceback for those.
    """
    try:
        status: int = args.func(args, out)
    except StreamCQRSError as exc:
        return fail(str(exc))
    except redis.exceptions.AuthenticationError as exc:
        return fail(f"cannot log in: {exc}; check --username and $REDIS_PASSWORD")
    except redis.exceptions.NoPermissionError as exc:
        return fail(f"the server refused: {exc}; log in as a user allowed to do this")
    except redis.exceptions.ConnectionError as exc:
        return fail(f"cannot reach the server at {_where(args)}: {exc}; is it running?")
    except redis.exceptions.ResponseError as exc:
        return fail(_answered(args, exc))
    return status


def _answered(args: argparse.Namespace, exc: redis.exceptions.ResponseError) -> str:
    """What to say about an error the server answered."""
    if moved(exc):  # a plain client on a cluster: the user could not ask the server
        return (
            f"the server at {_where(args)} is a cluster node and answered: {exc}; the user "
            "could not ask whether it is one (grant it +cluster|info +cluster|slots +command, "
            "as 'streamcqrs acl' does)"
        )
    return f"the server at {_where(args)} answered: {exc}"


def _where(args: argparse.Namespace) -> str:
    """The server a command used (``connect`` leaves the URL it resolved), password hidden."""
    url = getattr(args, "url", None)
    return redact(url) if url else "the server"


def import_module(name: str) -> Any:
    """Import ``name`` with the current directory on the path, as ``python -m`` would."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise CommandError(f"cannot import {name!r}: {exc}") from None


def stream_ref(text: str) -> tuple[str, Kind]:
    """``"subsystem/kind"`` as (subsystem, Kind), for argparse ``type=``."""
    try:
        return parse_stream(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def subsystem_name(text: str) -> str:
    """A subsystem name, for argparse ``type=``."""
    try:
        return SubsystemKeys(text).subsystem
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def moment(text: str) -> int:
    """A time given as epoch ms, ISO 8601 (UTC unless it says), or an age (``10m``) as ms."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    if found := _DURATION.match(text):
        ago = timedelta(**{_UNITS[found[2]]: int(found[1])})
        return int((datetime.now(UTC) - ago).timestamp() * 1000)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: give epoch ms (1700000000000), ISO 8601 "
            "(2024-05-01T12:00:00, UTC unless it has an offset) or an age (90s, 10m, 2h, 1d)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def partitions(client: redis.Redis, subsystem: str, kind: Kind, given: int | None) -> int:
    """The partition count to use: ``given``, else one past the highest partition with data.

    Detection looks at every stream kind of the subsystem, not only ``kind``. Reading more
    partitions than exist reads nothing extra, so it is safe for reads of what is stored;
    but a partition none of whose streams holds data yet is not seen, so following new
    records and writing (records go to ``crc32(object id) % P``) need ``--partitions``
    when the highest partitions may still be empty.
    """
    if given is not None:
        if given < 1:
            raise CommandError(f"--partitions must be at least 1, not {given}")
        return given
    found = with_data(client, subsystem)
    return found[-1] + 1 if found else 1


def with_data(client: redis.Redis, subsystem: str) -> list[int]:
    """Partitions of ``subsystem`` (below MAX_PARTITIONS) that hold any stream."""
    pipe = client.pipeline(transaction=False)
    for number in range(MAX_PARTITIONS):
        part = PartitionKeys(subsystem, number)
        pipe.exists(*(part.stream(each) for each in Kind))
    return [n for n, exists in enumerate(pipe.execute()) if exists]


def existing(
    client: redis.Redis, subsystem: str, kind: Kind, given: int | None
) -> SubsystemKeys:
    """The keys of a subsystem the server holds streams of (``partitions`` as there);
    CommandError naming the subsystems it does hold when it holds none of this one (a
    typo would otherwise print nothing and succeed)."""
    if given is None and not with_data(client, subsystem):
        raise CommandError(no_such_subsystem(client, subsystem))
    return SubsystemKeys(subsystem, partitions(client, subsystem, kind, given))


def no_such_subsystem(client: redis.Redis, subsystem: str) -> str:
    """Why a subsystem with no streams is refused, and which ones the server does have."""
    known = known_subsystems(client)
    there = f"; subsystems with data: {', '.join(known)}" if known else "; it holds none yet"
    return f"the server has no streams of subsystem {subsystem!r}{there}"


def known_subsystems(client: redis.Redis, limit: int = 20) -> list[str]:
    """Up to ``limit`` subsystem names found in the server's keys (a bounded SCAN)."""
    names: set[str] = set()
    for seen, key in enumerate(client.scan_iter(match="{*}:*", count=1000)):
        if seen >= KNOWN_SCAN or len(names) >= limit:
            break
        if found := _TAG.match(as_str(key)):
            names.add(found["sub"])
    return sorted(names)


def part_for(keys: SubsystemKeys, envelope: Envelope) -> PartitionKeys:
    """The partition a record belongs to (as a put would place it)."""
    key = envelope.object_id or envelope.message_id
    return keys.partition(partition_of(key, keys.partitions))


def iso(ms: int) -> str:
    """Epoch ms as an ISO 8601 UTC time with milliseconds."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def entry_ms(entry_id: str) -> int:
    """The millisecond part of a stream entry id."""
    return int(entry_id.partition("-")[0])


def sort_key(entry_id: str) -> tuple[int, int]:
    """Entry ids in stream order (as numbers: ``5-10`` after ``5-9``)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def payload(stream: str, entry_id: str, envelope: Envelope) -> Any:
    """The payload as plain data: the model's dump if its type is registered, else unpacked."""
    try:
        return decode(stream, entry_id, envelope).model_dump(mode="json")
    except DecodeError:
        pass  # not registered here (or not valid): show what is stored
    if envelope.fmt == JSON:
        return orjson.loads(envelope.payload)
    return msgpack.unpackb(envelope.payload)


def describe(stream: str, entry_id: str, raw: Mapping[bytes, bytes]) -> dict[str, Any]:
    """One entry as a dict for display: envelope fields, time, payload (or why it is junk)."""
    out: dict[str, Any] = {"stream": stream, "entry": entry_id, "time": iso(entry_ms(entry_id))}
    try:
        envelope = parse(stream, entry_id, raw)
    except DecodeError as exc:
        out["error"] = exc.reason
        out["fields"] = {as_str(k): _text(v) for k, v in raw.items()}
        return out
    out.update(
        id=envelope.message_id,
        type=envelope.type,
        schema=envelope.schema,
        obj=envelope.object_id,
        corr=envelope.correlation_id,
        cause=envelope.causation_id,
        at=iso(envelope.created_at),
        tags=[list(t) for t in envelope.tags],
    )
    if envelope.seq is not None:
        out["seq"] = envelope.seq
    attempt = raw.get(ATTEMPT_FIELD)
    out["attempt"] = int(attempt) if attempt and attempt.isdigit() else 1
    if only := raw.get(CONCERN_FIELD):
        out["for"] = _text(only)
    try:
        out["data"] = payload(stream, entry_id, envelope)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        out["error"] = f"payload cannot be unpacked: {exc}"
        out["data"] = _text(envelope.payload)
    return out


def _text(value: bytes) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value.hex()


def line(entry: Mapping[str, Any]) -> str:
    """One entry as one human-readable line."""
    if "type" not in entry:
        return (
            f"{entry['entry']}  {entry['stream']}  UNREADABLE: {entry['error']}  {entry['fields']}"
        )
    tags = " ".join(f"{n}={v}" for n, v in entry["tags"])
    parts = [
        entry["entry"],
        entry["stream"].partition(":")[0],  # the partition's tag, {subsystem.p}
        entry["time"],
        f"{entry['type']}/v{entry['schema']}",
        f"obj={entry['obj']}" if entry["obj"] else "",
        f"id={entry['id']}",
        f"tags[{tags}]" if tags else "",
        f"seq={entry['seq']}" if "seq" in entry else "",
        f"attempt={entry['attempt']}" if entry.get("attempt", 1) != 1 else "",
        f"for={entry['for']}" if "for" in entry else "",
        orjson.dumps(entry.get("data"), default=str).decode(),
        f"ERROR: {entry['error']}" if "error" in entry else "",
    ]
    return "  ".join(p for p in parts if p)


def emit(out: TextIO, rows: Iterable[Mapping[str, Any]], as_json: bool) -> int:
    """Print entries (one per line, as JSON lines or readable); return how many."""
    count = 0
    for entry in rows:
        out.write((orjson.dumps(entry, default=str).decode() if as_json else line(entry)) + "\n")
        count += 1
    out.flush()
    return count


def stream_entries(
    client: redis.Redis, key: str, low: str = "-", high: str = "+"
) -> Iterator[Entry]:
    """Every entry of ``key`` between two ids, read page by page (a long stream is not one
    reply, nor all in memory)."""
    while True:
        page = entries(client.xrange(key, low, high, count=PAGE))
        yield from page
        if len(page) < PAGE:
            return
        low = f"({as_str(page[-1][0])}"


def fail(message: str) -> int:
    """Report an error on stderr; the exit status of a failed command."""
    sys.stderr.write(f"error: {message}\n")
    return 2
