"""Stable names and schema versions for message types, and upcasters for old versions.

A class is stored under the name it was registered with, never its Python name, so renaming
or moving a class does not break stored data. When a type's schema changes, bump its version
and register an upcaster that lifts the old payload; reads then see only the current shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from streamcqrs.domain.errors import RegistryError, UnknownMessageType
from streamcqrs.domain.messages import Message

M = TypeVar("M", bound=type[Message])
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class MessageType:
    """A registered message class with its stored name and current schema version."""

    name: str
    version: int
    cls: type[Message]


class TypeRegistry:
    """Maps stored type names to message classes and back; lifts old payload versions."""

    def __init__(self) -> None:
        self._by_name: dict[str, MessageType] = {}
        self._by_class: dict[type[Message], MessageType] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}

    def register(
        self, cls: type[Message], name: str, version: int = 1, aliases: tuple[str, ...] = ()
    ) -> MessageType:
        """Register ``cls`` under ``name`` (and old ``aliases``) at schema ``version``."""
        if version < 1:
            raise RegistryError(f"schema version of {name!r} must be >= 1, got {version}")
        if not name:
            raise RegistryError(f"{cls.__qualname__} needs a non-empty stable type name")
        entry = MessageType(name, version, cls)
        names = (name, *aliases)
        # Check every name before storing any, so a refused registration leaves no trace.
        for key in names:
            known = self._by_name.get(key)
            if known is not None and known.cls is not cls:
                raise RegistryError(
                    f"type name {key!r} is already registered for {known.cls.__qualname__}; "
                    "give each message class its own stable name"
                )
        for key in names:
            self._by_name[key] = entry
        self._by_class[cls] = entry
        return entry

    def upcaster(self, name: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorate a function that lifts a ``name`` payload from ``from_version`` to the next."""

        def decorate(fn: Upcaster) -> Upcaster:
            self._upcasters[(name, from_version)] = fn
            return fn

        return decorate

    def of_class(self, cls: type[Message]) -> MessageType:
        """Return the registration of ``cls``; raise if it was never registered."""
        try:
            return self._by_class[cls]
        except KeyError:
            raise RegistryError(
                f"{cls.__qualname__} is not registered; decorate it with "
                f"@message('<subsystem>.{cls.__name__}')"
            ) from None

    def of_name(self, name: str) -> MessageType:
        """Return the registration stored under ``name``; raise UnknownMessageType if none."""
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownMessageType(name) from None

    def upcast(self, name: str, version: int, payload: dict[str, Any]) -> dict[str, Any]:
        """Lift a payload stored at ``version`` to the current version of ``name``."""
        current = self.of_name(name)
        if version > current.version:
            raise RegistryError(
                f"{name!r} was stored at schema version {version}, newer than this process "
                f"knows ({current.version}); deploy the newer message definitions here"
            )
        while version < current.version:
            step = self._upcasters.get((current.name, version)) or self._upcasters.get(
                (name, version)
            )
            if step is None:
                raise RegistryError(
                    f"no upcaster lifts {current.name!r} from version {version}; register one "
                    f"with @registry.upcaster({current.name!r}, from_version={version})"
                )
            try:
                payload = step(payload)
            except Exception as exc:
                # User code: whatever it raises, the reader needs to know which step failed.
                raise RegistryError(
                    f"upcaster of {current.name!r} from version {version} failed: {exc!r}"
                ) from exc
            if not isinstance(payload, dict):
                raise RegistryError(
                    f"upcaster of {current.name!r} from version {version} returned a "
                    f"{type(payload).__name__}, not a dict"
                )
            version += 1
        return payload

    def __contains__(self, cls: object) -> bool:
        """True if ``cls`` is a registered message class."""
        return cls in self._by_class


registry = TypeRegistry()
"""The process-wide registry that ``@message`` writes to and streams read from by default."""


def message(
    name: str, version: int = 1, aliases: tuple[str, ...] = (), into: TypeRegistry | None = None
) -> Callable[[M], M]:
    """Class decorator: register a message class under a stable ``name`` and ``version``."""

    def decorate(cls: M) -> M:
        (into or registry).register(cls, name, version, aliases)
        return cls

    return decorate
