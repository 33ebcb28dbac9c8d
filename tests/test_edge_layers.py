"""The integration edge stands on ``handlers`` and ``streams`` only, never the bots' internals.

It lives under ``bots/`` (the repository's layout), but the relay runs as any app does, under
``streamcqrs run``: nothing in ``bots/edge`` may import another ``streamcqrs.bots`` module.
"""

from __future__ import annotations

import ast
from pathlib import Path

EDGE = Path(__file__).resolve().parents[1] / "bots" / "edge"


def test_the_edge_imports_no_bots_internals() -> None:
    """Every import in bots/edge/*.py is of the edge itself, a lower layer, or a library."""
    found = []
    for path in sorted(EDGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.startswith("streamcqrs.bots") and not name.startswith(
                    "streamcqrs.bots.edge"
                ):
                    found.append(f"{path.name}: {name}")
    assert [] == found
    assert len(list(EDGE.glob("*.py"))) >= 10
