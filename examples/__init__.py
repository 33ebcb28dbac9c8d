"""Examples built only on the public API; start from ``examples.notification``."""
