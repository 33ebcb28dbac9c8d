"""Bots: the worker processes that handle operations and events (``streamcqrs run``).

``Bot`` runs an app's handlers over their consumer groups in one process; ``Supervisor``
runs N of them as worker processes; ``BotConfig`` holds their settings. Most users only run
``streamcqrs run MODULE:APP`` and ``streamcqrs status MODULE:APP``.
"""

from streamcqrs.bots.bot import Bot
from streamcqrs.bots.config import BotConfig
from streamcqrs.bots.supervisor import Supervisor, load_app

__all__ = ["Bot", "BotConfig", "Supervisor", "load_app"]
