"""The key scheme: a stable partition function, one hash tag per partition, safe names.

partition_of must give the same answer in every process on every host (it decides where a
record lives), so it is checked against CRC-32 values computed here independently, and in a
fresh interpreter with a different hash seed.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from redis.crc import key_slot

from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.streams import Kind, PartitionKeys, Subsystem, SubsystemKeys, partition_of
from tests.support import Backend

KEYS = ["order-1", "order-2", "123456789", "user:42", "héllo", "", "x" * 300]


def _crc32(data: bytes) -> int:
    """CRC-32 (IEEE 802.3, reflected 0xEDB88320), bit by bit: independent of zlib."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_the_reference_crc_matches_the_published_check_value() -> None:
    """The test's own CRC-32 gives the standard check value for "123456789"."""
    assert 0xCBF43926 == _crc32(b"123456789")


@pytest.mark.parametrize("partitions", [2, 3, 7, 16, 1024])
def test_partition_of_is_crc32_of_the_utf8_key(partitions: int) -> None:
    """partition_of(key, P) == crc32(utf-8 key) % P, a value any language can reproduce."""
    expected = [_crc32(key.encode()) % partitions for key in KEYS]

    assert expected == [partition_of(key, partitions) for key in KEYS]
    assert 0xCBF43926 % partitions == partition_of("123456789", partitions)


def test_partition_of_is_the_same_in_another_process() -> None:
    """A fresh interpreter with another PYTHONHASHSEED puts every key in the same partition."""
    code = (
        "import json, sys; from streamcqrs.streams import partition_of; "
        "keys = json.loads(sys.argv[1]); "
        "print(json.dumps([partition_of(k, p) for k in keys for p in (2, 5, 64)]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(KEYS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"},
    )

    assert 0 == done.returncode, done.stderr
    assert [partition_of(k, p) for k in KEYS for p in (2, 5, 64)] == json.loads(done.stdout)


@pytest.mark.parametrize("partitions", [1, 2, 5, 31])
def test_partition_of_is_within_range(partitions: int) -> None:
    """Every key maps into [0, P), and with many keys every partition gets some."""
    found = {partition_of(f"key-{n}", partitions) for n in range(500)}

    assert set(range(partitions)) == found


def test_one_partition_is_always_partition_zero() -> None:
    """With P=1 every key is in partition 0."""
    assert {0} == {partition_of(key, 1) for key in KEYS}


def test_every_key_of_a_partition_has_its_hash_tag() -> None:
    """All keys of partition p of s start with {s.p} and so hash to one cluster slot."""
    part = PartitionKeys("notification", 3)
    keys = [
        *(part.stream(kind) for kind in Kind),
        *(part.index(kind) for kind in Kind),
        part.by_object(Kind.VIEWS, "v-1"),
        part.tag_index(Kind.EVENTS, "to", "a@example.com"),
        part.sequence(Kind.CLIENT_OPERATIONS),
        part.aggregate("n-1"),
        part.delayed(Kind.INTERNAL_OPERATIONS),
        part.handling_status(Kind.EVENTS, "email"),
        part.handling_flags(Kind.EVENTS),
        part.handling_flags_log(Kind.EVENTS),
        part.outbox,
    ]

    assert "{notification.3}" == part.tag
    assert all(key.startswith("{notification.3}:") for key in keys)
    assert {key_slot(b"{notification.3}")} == {key_slot(key.encode()) for key in keys}
    assert len(keys) == len(set(keys))


def test_partitions_of_one_subsystem_have_distinct_tags() -> None:
    """Each partition is its own hash tag, so partitions can live on different shards."""
    keys = SubsystemKeys("notification", 4)

    assert ["{notification.0}", "{notification.1}", "{notification.2}", "{notification.3}"] == [
        p.tag for p in keys.all()
    ]
    assert keys.partition(partition_of("n-9", 4)) == keys.for_object("n-9")


@pytest.mark.parametrize("name", ["", "a{b", "a}b", "a:b", "a b", "a\nb", "{x}"])
def test_subsystem_names_with_bad_characters_are_refused(name: str) -> None:
    """A name that would break the hash tag or the key layout raises ConfigurationError."""
    with pytest.raises(ConfigurationError) as refused:
        SubsystemKeys(name)

    assert repr(name) in str(refused.value)
    assert "braces, colons or spaces" in str(refused.value)


def test_a_subsystem_with_a_bad_name_is_refused(backend: Backend) -> None:
    """Subsystem() checks its name before anything is written."""
    with pytest.raises(ConfigurationError):
        Subsystem("bad{name}", backend.client())


@pytest.mark.parametrize("partitions", [0, -1])
def test_partitions_must_be_positive(partitions: int) -> None:
    """A subsystem needs at least one partition."""
    with pytest.raises(ConfigurationError, match="partitions must be >= 1"):
        SubsystemKeys("notification", partitions)


@pytest.mark.parametrize("name", ["", "a=b"])
def test_tag_names_that_would_share_keys_are_refused(name: str) -> None:
    """A tag name with '=' (or empty) could collide with another tag's index: refused."""
    with pytest.raises(ConfigurationError):
        PartitionKeys("notification", 0).tag_index(Kind.EVENTS, name, "v")


def test_good_names_are_kept_as_given() -> None:
    """Dots, dashes and underscores are fine in a subsystem name."""
    assert "{billing.eu-west_1.0}" == SubsystemKeys("billing.eu-west_1").partition(0).tag


@pytest.mark.parametrize("concern", ["", "a:b", "has space", "{tag}"])
def test_a_concern_name_that_could_collide_is_refused(concern: str) -> None:
    """Concern names with colons, braces or spaces are refused (keys would collide)."""
    with pytest.raises(ConfigurationError, match="concern"):
        PartitionKeys("bank", 0).handling_status(Kind.CLIENT_OPERATIONS, concern)
