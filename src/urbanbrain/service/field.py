"""The twin as a field: SUMO plays the devices, which talk to the brain service.

Each simulated second the twin's devices report what they saw; the field sends those
events to the brain (in-process through the service's own ingress, or over HTTP to
a brain anywhere) and applies the signal commands it gets back. Either way the
events cross the same validation and storage as a real city's devices.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from urbanbrain.core.bus import EventBus
from urbanbrain.devices.protocol import parse_command
from urbanbrain.network.model import Network
from urbanbrain.twin.scenario import Scenario
from urbanbrain.twin.sumo_twin import Twin

# send(events, commands_after) -> the (id, command) pairs issued after that id
Transport = Callable[[list[dict[str, Any]], int], list[tuple[int, dict[str, Any]]]]


class TwinField:
    def __init__(self, scenario: Scenario, network: Network, send: Transport, *, seed: int = 1,
                 speed: float = 1.0, horizon_s: float | None = None, tripinfo_path: Path | None = None):
        self.scenario = scenario
        self.network = network
        self.send = send
        self.speed = speed
        self.end_s = None if horizon_s is None else scenario.begin_s + horizon_s
        self.bus = EventBus()
        self._outbox: list[Any] = []
        for kind in ("detector", "camera", "controller"):
            self.bus.subscribe(kind, self._outbox.append)
        self.twin = Twin(scenario, network, self.bus, seed=seed, tripinfo_path=tripinfo_path)
        self.last_command = 0
        self.stop_requested = threading.Event()

    def run(self, on_start: Callable[[], None] | None = None) -> None:
        """Step the twin until the horizon, the end of its demand, or `stop()`."""
        self.twin.start()
        try:
            if on_start is not None:
                on_start()
            self._exchange()
            started, begin = time.monotonic(), self.twin.now
            sumo = self.twin.sumo
            while not self.stop_requested.is_set() and sumo.simulation.getMinExpectedNumber() > 0:
                if self.end_s is not None and self.twin.now >= self.end_s - 1e-9:
                    break
                self.twin.step()
                self._exchange()
                if self.speed > 0:
                    lag = (self.twin.now - begin) / self.speed - (time.monotonic() - started)
                    if lag > 0:
                        self.stop_requested.wait(lag)
        finally:
            self.twin.close()

    def stop(self) -> None:
        self.stop_requested.set()

    def _exchange(self) -> None:
        events = [e.model_dump(mode="json") for e in self._outbox]
        self._outbox.clear()
        if not events:
            return
        for command_id, payload in self.send(events, self.last_command):
            self.last_command = max(self.last_command, command_id)
            self.bus.publish(parse_command(payload))


def http_transport(brain_url: str, key: str, timeout_s: float = 10.0) -> Transport:
    """Post each second's events to a brain service; resend the same batch after a
    timeout (the brain drops what it already has, by device and sequence number)."""
    client = httpx.Client(base_url=brain_url.rstrip("/"), headers={"X-API-Key": key}, timeout=timeout_s)

    def send(events: list[dict[str, Any]], after: int) -> list[tuple[int, dict[str, Any]]]:
        for attempt in range(5):
            try:
                response = client.post("/api/events", json=events, params={"commands_after": after})
            except httpx.TransportError:
                time.sleep(0.5 * 2 ** attempt)
                continue
            if response.status_code != 200:
                raise RuntimeError(f"brain refused the batch: {response.status_code} {response.text[:500]}")
            return [(c["id"], c["command"]) for c in response.json()["commands"]]
        raise RuntimeError(f"brain at {brain_url} unreachable after 5 attempts")
    return send
