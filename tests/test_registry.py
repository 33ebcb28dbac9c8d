"""The type registry: stable stored names, aliases, and upcasting old schema versions.

Pure domain behaviour, so these tests need no server. Each uses its own TypeRegistry so the
names it registers never meet the process-wide registry.
"""

from __future__ import annotations

from typing import Any

import pytest

from streamcqrs.domain import Event, Operation, TypeRegistry, message
from streamcqrs.domain.errors import RegistryError, UnknownMessageType


class Renamed(Event):
    amount: int


class Other(Event):
    amount: int


class Tagged(Operation):
    label: str
    size: int = 0
    kind: str = "plain"


def test_a_class_is_found_by_its_registered_name_not_its_python_name() -> None:
    """A class stores under the name it was registered with, and that name finds it again."""
    types = TypeRegistry()
    message("bank.MoneyMoved", version=2, into=types)(Renamed)

    assert ("bank.MoneyMoved", 2, Renamed) == (
        types.of_class(Renamed).name,
        types.of_class(Renamed).version,
        types.of_class(Renamed).cls,
    )
    assert Renamed is types.of_name("bank.MoneyMoved").cls
    assert Renamed in types
    with pytest.raises(UnknownMessageType):
        types.of_name("Renamed")


def test_an_alias_finds_the_class_under_an_old_name() -> None:
    """Data stored under an old name still decodes after the type is renamed (alias)."""
    types = TypeRegistry()
    types.register(Renamed, "bank.MoneyMoved", aliases=("bank.Transfer",))

    assert Renamed is types.of_name("bank.Transfer").cls
    # Writing always uses the current name.
    assert "bank.MoneyMoved" == types.of_class(Renamed).name


def test_a_name_taken_by_another_class_is_refused_and_nothing_is_stored() -> None:
    """Registering a second class under a taken name (or alias) fails and leaves no trace."""
    types = TypeRegistry()
    types.register(Renamed, "bank.MoneyMoved")

    with pytest.raises(RegistryError, match=r"'bank.MoneyMoved' is already registered for Renamed"):
        types.register(Other, "bank.MoneyMoved")
    with pytest.raises(RegistryError, match="already registered"):
        types.register(Other, "bank.Other", aliases=("bank.MoneyMoved",))

    assert Other not in types
    with pytest.raises(UnknownMessageType):
        types.of_name("bank.Other")
    assert Renamed is types.of_name("bank.MoneyMoved").cls


def test_registering_the_same_class_again_under_its_name_is_allowed() -> None:
    """Re-registering a class under its own name (a module imported twice) is harmless."""
    types = TypeRegistry()
    types.register(Renamed, "bank.MoneyMoved")
    types.register(Renamed, "bank.MoneyMoved")

    assert Renamed is types.of_name("bank.MoneyMoved").cls


def test_an_unregistered_class_is_refused_with_how_to_register_it() -> None:
    """Encoding a class that was never registered says to decorate it with @message."""
    types = TypeRegistry()

    with pytest.raises(RegistryError) as caught:
        types.of_class(Other)

    assert "Other is not registered" in str(caught.value)
    assert "@message('<subsystem>.Other')" in str(caught.value)


def test_an_unknown_stored_name_says_how_to_register_it() -> None:
    """A stored name no class answers to raises UnknownMessageType naming the fix."""
    types = TypeRegistry()

    with pytest.raises(UnknownMessageType) as caught:
        types.of_name("mail.Gone")

    assert "mail.Gone" == caught.value.type_name
    assert "@message('mail.Gone')" in str(caught.value)


def test_a_schema_version_below_one_is_refused() -> None:
    """Schema versions start at 1."""
    with pytest.raises(RegistryError, match=">= 1"):
        TypeRegistry().register(Renamed, "bank.MoneyMoved", version=0)


def _registry_at_v3() -> TypeRegistry:
    types = TypeRegistry()
    types.register(Tagged, "shop.Tagged", version=3)

    @types.upcaster("shop.Tagged", from_version=1)
    def v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
        return {"label": payload["name"], "size": payload.get("size", 0)}

    @types.upcaster("shop.Tagged", from_version=2)
    def v2_to_v3(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "kind": "lifted"}

    return types


def test_upcasters_lift_v1_through_v2_to_v3_in_order() -> None:
    """A v1 payload goes through each step in turn, ending in the current (v3) shape."""
    types = _registry_at_v3()

    lifted = types.upcast("shop.Tagged", 1, {"name": "box", "size": 2})

    assert {"label": "box", "size": 2, "kind": "lifted"} == lifted
    assert Tagged(label="box", size=2, kind="lifted") == Tagged.model_validate(lifted)


def test_a_v2_payload_takes_only_the_last_step_and_a_current_one_none() -> None:
    """Upcasting starts at the stored version; a current payload is returned unchanged."""
    types = _registry_at_v3()

    assert {"label": "x", "kind": "lifted"} == types.upcast("shop.Tagged", 2, {"label": "x"})
    assert {"label": "x"} == types.upcast("shop.Tagged", 3, {"label": "x"})


def test_a_version_newer_than_this_process_knows_is_refused() -> None:
    """A payload from a newer deployment is refused, saying to deploy the newer definitions."""
    types = _registry_at_v3()

    with pytest.raises(RegistryError, match=r"stored at schema version 4, newer than .* \(3\)"):
        types.upcast("shop.Tagged", 4, {"label": "x"})


def test_a_missing_upcaster_step_is_named() -> None:
    """A gap in the chain says which upcaster to register."""
    types = TypeRegistry()
    types.register(Tagged, "shop.Tagged", version=2)

    with pytest.raises(RegistryError, match=r"no upcaster lifts 'shop.Tagged' from version 1"):
        types.upcast("shop.Tagged", 1, {"name": "x"})


def test_a_failing_upcaster_is_reported_as_a_registry_error_naming_the_step() -> None:
    """An upcaster that raises is reported as a RegistryError naming the type and version."""
    types = _registry_at_v3()

    with pytest.raises(RegistryError, match=r"upcaster of 'shop.Tagged' from version 1 failed"):
        types.upcast("shop.Tagged", 1, {"no-name": True})
