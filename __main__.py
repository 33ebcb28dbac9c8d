"""``streamcqrs`` (or ``python -m streamcqrs``): the one command in front of every CLI."""

from __future__ import annotations

import sys

from streamcqrs.bots.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
