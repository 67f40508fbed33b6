"""The event bus at the centre: field devices and brains talk only through it.

Device events (detector, camera, controller) and signal commands are published by
their `kind`; each side subscribes to what it consumes. The twin, an HTTP ingress
or a real city's devices can publish the same messages, so the brain never knows
which of them it is talking to.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

Handler = Callable[[Any], None]


class EventBus:
    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = defaultdict(list)

    def subscribe(self, kind: str, handler: Handler) -> None:
        self._handlers[kind].append(handler)

    def publish(self, message: Any) -> None:
        for handler in self._handlers.get(message.kind, ()):
            handler(message)

    def publish_all(self, messages: list[Any]) -> None:
        for message in messages:
            self.publish(message)
