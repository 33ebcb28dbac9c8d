"""Layers: imports point down only (domain <- streams <- handlers <- bots).

Each check runs in a fresh interpreter, imports every module of one package, and looks at
``sys.modules``: a layer that pulled in a layer above it (or domain pulling in redis) fails.
A second check reads every source file: an import inside a function (not run at import
time) or a string handed to ``importlib.import_module`` must not point up either.
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORDER = ("domain", "streams", "handlers", "bots")
"""The layers, lowest first."""

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


def imported_names(source: str) -> Iterator[str]:
    """Every module a source names in an import statement (anywhere, even in a function) or
    as a literal string given to ``importlib.import_module`` / ``__import__``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if name in ("import_module", "__import__") and isinstance(first, ast.Constant):
                yield str(first.value)


def upward(layer: str) -> list[str]:
    """``file: module`` for each import in ``layer``'s sources of a layer above it."""
    above = {f"streamcqrs.{name}" for name in ORDER[ORDER.index(layer) + 1 :]} | {"examples"}
    found = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        for name in imported_names(path.read_text()):
            if ".".join(name.split(".")[:2]) in above or name.split(".")[0] in above:
                found.append(f"{path.relative_to(ROOT)}: {name}")
    return found


@pytest.mark.parametrize("layer", ORDER[:-1])
def test_no_source_of_a_layer_names_a_layer_above_it(layer: str) -> None:
    """No import statement and no import_module("...") string in a layer points up."""
    assert [] == upward(layer)


def test_the_source_check_sees_string_imports() -> None:
    """A function-level import and a string import_module of a higher layer are both seen."""
    source = (
        "import importlib\n"
        "def f():\n"
        "    from streamcqrs.bots.bot import Bot\n"
        "    return importlib.import_module('streamcqrs.handlers.acl')\n"
    )
    assert ["importlib", "streamcqrs.bots.bot", "streamcqrs.handlers.acl"] == sorted(
        imported_names(source)
    )


@pytest.mark.parametrize(
    ("package", "machinery"),
    [
        ("streamcqrs", {"Commit", "HandlerSpec", "encode"}),
        ("streamcqrs.streams", {"encode", "decode", "parse", "to_record", "entry_key",
                                "find_server_binary", "send_all", "script"}),
        ("streamcqrs.handlers", {"AppendOutput", "PutOutput", "Output", "HandlerSpec",
                                 "StreamRef", "Runner"}),
    ],
)  # fmt: skip
def test_a_package_exports_what_users_use_and_not_its_machinery(
    package: str, machinery: set[str]
) -> None:
    """Each public name resolves, is listed once, and the engine room stays in its modules
    (code-and-layout review, item 7: a user should not see a name they cannot use)."""
    module = importlib.import_module(package)
    names = list(module.__all__)
    assert len(names) == len(set(names)), f"{package}.__all__ lists a name twice"
    for name in names:
        assert getattr(module, name) is not None, f"{package}.{name}"
    assert not machinery & set(names), f"{package} exports {sorted(machinery & set(names))}"
