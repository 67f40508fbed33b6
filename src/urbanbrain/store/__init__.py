"""Everything durable: device events, commands, decisions, KPI minutes, API keys, audit."""

from urbanbrain.store.store import Store, StoredEvent

__all__ = ["Store", "StoredEvent"]
