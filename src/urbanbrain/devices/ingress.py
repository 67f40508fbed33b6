"""Device ingress: raw messages from the field onto the bus, all or nothing, once.

A batch is validated completely before any of it is published, so one malformed
item rejects the batch with every bad item and field named, and the city state is
left exactly as it was. A message whose (device, sequence number) was already
accepted — a device resending after a timeout — is acknowledged but not published
again, so nothing is counted twice. The HTTP/MQTT ingress will use the same class.
"""

from __future__ import annotations

from typing import Any

from urbanbrain.core.bus import EventBus
from urbanbrain.devices.protocol import ProtocolError, parse_event


class Ingress:
    def __init__(self, bus: EventBus):
        self.bus = bus
        self._last_seq: dict[str, int] = {}

    def publish_batch(self, raw: list[str | bytes | dict[str, Any]]) -> int:
        """Validate every item, then publish the new ones; returns how many were published."""
        events = []
        errors: list[tuple[str, str]] = []
        for index, item in enumerate(raw):
            try:
                events.append(parse_event(item))
            except ProtocolError as exc:
                errors += [(f"[{index}].{field}", reason) for field, reason in exc.errors]
        if errors:
            raise ProtocolError(errors)
        fresh = []
        for event in events:
            if event.seq > self._last_seq.get(event.device_id, -1):
                self._last_seq[event.device_id] = event.seq
                fresh.append(event)
        self.bus.publish_all(fresh)
        return len(fresh)
