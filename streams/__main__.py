"""``python -m streams``: the operator's command line (see ``streams.cli``)."""

from __future__ import annotations

from streamcqrs.streams.cli import main

raise SystemExit(main())
