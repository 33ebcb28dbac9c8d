"""Layers: imports point down only (domain <- streams <- handlers <- bots).

Each check runs in a fresh interpreter, imports every module of one package, and looks at
``sys.modules``: a layer that pulled in a layer above it (or domain pulling in redis) fails.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import importlib, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
names = [package.__name__]
for found in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
    if found.name.endswith(".__main__"):
        continue  # an entry point: importing it runs the program
    importlib.import_module(found.name)
    names.append(found.name)
loaded = sorted({
    ".".join(name.split(".")[:2]) if name.startswith("streamcqrs.") else name.split(".")[0]
    for name in sys.modules
})
print(json.dumps({"imported": names, "loaded": loaded}))
"""


def _layers(*names: str) -> set[str]:
    return {f"streamcqrs.{name}" for name in names}


def _import_all(package: str) -> dict[str, list[str]]:
    """Import every module of ``package`` in a fresh interpreter; what it imported and loaded."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, package],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 == done.returncode, done.stderr
    result: dict[str, list[str]] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize(
    ("package", "above"),
    [
        ("streamcqrs.domain", {"redis", *_layers("streams", "handlers", "bots"), "examples"}),
        ("streamcqrs.streams", {*_layers("handlers", "bots"), "examples"}),
        ("streamcqrs.handlers", {*_layers("bots"), "examples"}),
    ],
)
def test_a_layer_never_imports_the_layers_above_it(package: str, above: set[str]) -> None:
    """Importing every module of a layer loads none of the layers above it."""
    found = _import_all(package)

    assert set() == above & set(found["loaded"])


def test_domain_imports_every_one_of_its_modules() -> None:
    """The probe really walks the package: domain's modules are all among those imported."""
    found = _import_all("streamcqrs.domain")

    expected = {f"streamcqrs.domain{name}" for name in
                ("", ".aggregate", ".errors", ".messages", ".registry", ".ids")}  # fmt: skip
    assert expected <= set(found["imported"])


def test_the_probe_sees_imports_that_do_happen() -> None:
    """The same probe reports the layers a package does use, so an empty report means something."""
    found = _import_all("streamcqrs.handlers")

    assert {"streamcqrs.domain", "streamcqrs.streams", "redis"} <= set(found["loaded"])
