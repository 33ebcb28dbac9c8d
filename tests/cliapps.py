"""Apps for the command-line tests: one that runs, one whose workers are misconfigured.

``app`` handles ``Ping`` on ``cliapp/client-ops`` (doing nothing: its handling status is
what a test looks at). Importing ``tests.cliapps_broken`` in a worker process (one started
by multiprocessing) raises ConfigurationError, as a worker whose settings are wrong would.
"""

from __future__ import annotations

from streamcqrs.handlers import App, Context
from tests.messages import Ping

app = App("cliapps")


@app.handler(Ping, stream="cliapp/client-ops", concern="ping")
async def ping(op: Ping, ctx: Context) -> None:
    """Nothing to do: the handling status is what the tests look at."""
