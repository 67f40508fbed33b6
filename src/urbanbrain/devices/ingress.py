"""Device ingress: raw messages from the field onto the bus, all or nothing.

A batch is validated completely before any of it is published, so one malformed
item rejects the batch with every bad item and field named, and the city state is
left exactly as it was. The HTTP/MQTT ingress will call the same function.
"""

from __future__ import annotations

from typing import Any

from urbanbrain.core.bus import EventBus
from urbanbrain.devices.protocol import ProtocolError, parse_event


def publish_batch(bus: EventBus, raw: list[str | bytes | dict[str, Any]]) -> int:
    """Validate every item, then publish them all; returns how many were published."""
    events = []
    errors: list[tuple[str, str]] = []
    for index, item in enumerate(raw):
        try:
            events.append(parse_event(item))
        except ProtocolError as exc:
            errors += [(f"[{index}].{field}", reason) for field, reason in exc.errors]
    if errors:
        raise ProtocolError(errors)
    bus.publish_all(events)
    return len(events)
