"""The operators' web dashboard: ``streamcqrs dashboard MODULE:APP`` (the ``dashboard`` extra).

Server-rendered pages (Jinja2 templates shipped in this package, plain links and forms, no
JavaScript) over the same reads and actions as the operator commands; see ``web``. Importing
this package needs nothing beyond the core; ``create_dashboard`` needs FastAPI and Jinja2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamcqrs.bots.dashboard.web import create_dashboard


def __getattr__(name: str) -> Any:
    if name == "create_dashboard":
        from streamcqrs.bots.dashboard.web import create_dashboard

        return create_dashboard
    raise AttributeError(f"module 'streamcqrs.bots.dashboard' has no attribute {name!r}")


__all__ = ["create_dashboard"]
