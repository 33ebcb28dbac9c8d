"""Bots: the worker processes that handle operations and events (``python -m bots``)."""
