"""Fail if the wheel holds anything but ``streamcqrs/...`` and its dist-info, or lacks a
tracked module, Lua script, page template or ``py.typed`` of the layers (or the root package
files).

Usage: python .ci/wheel_smoke/check_wheel.py WHEEL (from the checkout's root).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import PurePosixPath

LAYERS = ("domain", "streams", "handlers", "bots")
ROOT_FILES = ("__init__.py", "__main__.py", "py.typed")


def expected() -> set[str]:
    """``streamcqrs/<path>`` for every git-tracked file the wheel must carry."""
    tracked = subprocess.run(
        ["git", "ls-files", *LAYERS, *ROOT_FILES], capture_output=True, text=True, check=True
    ).stdout.split()
    wanted = {".py", ".lua", ".html"}
    return {
        f"streamcqrs/{path}"
        for path in tracked
        if PurePosixPath(path).suffix in wanted or PurePosixPath(path).name == "py.typed"
    }


def allowed(top: str) -> bool:
    """True for the package folder and its own dist-info folder."""
    return top == "streamcqrs" or (top.startswith("streamcqrs-") and top.endswith(".dist-info"))


def main(wheel: str) -> int:
    """Compare the wheel's files with what it must and may hold; print what is wrong."""
    names = {n for n in zipfile.ZipFile(wheel).namelist() if not n.endswith("/")}
    strays = sorted(n for n in names if not allowed(n.split("/")[0]))
    missing = sorted(expected() - names)
    for name in strays:
        print(f"not under streamcqrs/: {name}")
    for name in missing:
        print(f"missing from the wheel: {name}")
    if strays or missing:
        return 1
    print(f"{wheel}: {len(names)} files, all under streamcqrs/ or its dist-info; none missing")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
