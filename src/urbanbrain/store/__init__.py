"""Everything durable: device events, commands, decisions, KPI minutes, API keys, audit."""

from urbanbrain.store.store import EventConflict, Store, StoredEvent

__all__ = ["EventConflict", "Store", "StoredEvent"]
