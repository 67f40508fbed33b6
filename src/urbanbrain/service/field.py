"""The twin as a field: SUMO plays the devices, which talk to the brain service.

Each simulated second the twin's devices report what they saw; the field sends those
events to the brain (in-process through the service's own ingress, or over HTTP to
a brain anywhere) and applies the signal commands it gets back. Either way the
events cross the same validation and storage as a real city's devices. Emergency
vehicles dispatched in the twin (`emergency`) report through their transponders like
any device, and their navigation units read the brain's route advice the way a real
one does (`routes`: `GET /api/emergency/{vehicle}/route`, or its in-process twin).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from urbanbrain.core.bus import EventBus
from urbanbrain.devices.protocol import RouteAdvice, parse_command
from urbanbrain.network.model import Network
from urbanbrain.twin.emergency import EmergencyFleet, EmergencyTrip
from urbanbrain.twin.scenario import Scenario
from urbanbrain.twin.sumo_twin import Twin

# send(events, commands_after) -> (the (id, command) pairs issued after that id, the
# cursor for next time); commands_after None: only those issued in answer to these events
Transport = Callable[[list[dict[str, Any]], int | None], tuple[list[tuple[int, dict[str, Any]]], int]]
# routes(vehicle) -> the RouteAdvice (as JSON) the brain planned for it, None while none is planned
RouteSource = Callable[[str], dict[str, Any] | None]
MAX_UNSENT = 100_000  # events a field keeps while the brain is unreachable (the oldest go first)
RESEND_BATCH = 5_000


class BrainUnreachable(ConnectionError):
    """The brain did not answer; the field keeps running on its controllers' fail-safe."""


class TwinField:
    def __init__(self, scenario: Scenario, network: Network, send: Transport, *, seed: int = 1,
                 speed: float = 1.0, horizon_s: float | None = None, tripinfo_path: Path | None = None,
                 failsafe_s: float = 10.0, world: list | None = None, emergency: list[EmergencyTrip] | None = None,
                 routes: RouteSource | None = None):
        if emergency and routes is None:
            raise ValueError("emergency vehicles need a route source: their navigation units read the brain's advice")
        self.scenario = scenario
        self.network = network
        self.send = send
        self.speed = speed
        self.end_s = None if horizon_s is None else scenario.begin_s + horizon_s
        self.bus = EventBus()
        self._outbox: list[Any] = []
        for kind in ("detector", "camera", "controller", "emergency"):
            self.bus.subscribe(kind, self._outbox.append)
        # Like a real device's sequence numbers, the twin's must go on rising when it
        # starts again against the same brain, or its new events would be taken for
        # resends of the last run's: they start from the wall clock in nanoseconds (a
        # run sends far fewer events per device than nanoseconds pass before the next).
        sequence_base = time.time_ns()
        self.fleet = EmergencyFleet(network, self.bus, emergency, sequence_base=sequence_base) if emergency else None
        world = [*(world or []), *([self.fleet] if self.fleet else [])]
        self.twin = Twin(scenario, network, self.bus, seed=seed, tripinfo_path=tripinfo_path, failsafe_s=failsafe_s,
                         sequence_base=sequence_base, world=world)
        self.routes = routes
        self._en_route: set[str] = set()  # emergency vehicles whose transponders report them en route
        self._advised: dict[str, dict[str, Any]] = {}  # vehicle -> the latest advice its navigation unit took
        self.last_command: int | None = None  # cursor of the commands applied; None until the brain first answers
        self.unsent: list[dict[str, Any]] = []
        self.dropped = 0  # events lost because the brain stayed unreachable too long (MAX_UNSENT)
        self.brain_reachable = True
        self.stop_requested = threading.Event()

    def run(self, on_start: Callable[[], None] | None = None, on_step: Callable[[float], None] | None = None) -> None:
        """Step the twin until the horizon, the end of its demand, or `stop()`;
        `on_step(now)` is called after each second's exchange (monitoring, tests)."""
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
                if on_step is not None:
                    on_step(self.twin.now)
                if self.speed > 0:
                    lag = (self.twin.now - begin) / self.speed - (time.monotonic() - started)
                    if lag > 0:
                        self.stop_requested.wait(lag)
        finally:
            self.twin.close()

    def stop(self) -> None:
        self.stop_requested.set()

    def _exchange(self) -> None:
        """Send what the devices saw (and what could not be sent before, oldest first),
        apply the commands that come back. An unreachable brain stops nothing: the
        events wait (resent later, the brain drops duplicates) and the controllers'
        fail-safe takes over."""
        for e in self._outbox:
            if e.kind == "emergency":
                (self._en_route.add if e.status == "en_route" else self._en_route.discard)(e.vehicle)
        self.unsent += [e.model_dump(mode="json") for e in self._outbox]
        self._outbox.clear()
        if len(self.unsent) > MAX_UNSENT:
            self.dropped += len(self.unsent) - MAX_UNSENT
            del self.unsent[:-MAX_UNSENT]
        while self.unsent:
            batch = self.unsent[:RESEND_BATCH]
            try:
                commands, self.last_command = self.send(batch, self.last_command)
            except BrainUnreachable:
                self.brain_reachable = False
                return
            self.brain_reachable = True
            del self.unsent[:len(batch)]
            for _, payload in commands:
                self.bus.publish(parse_command(payload))
        self._read_routes()

    def _read_routes(self) -> None:
        """Each navigation unit of a vehicle en route asks the brain for its route; a new
        one goes to the vehicle (the fleet follows it from its next road)."""
        if self.routes is None:
            return
        for vehicle in sorted(self._en_route):
            try:
                payload = self.routes(vehicle)
            except BrainUnreachable:
                self.brain_reachable = False
                return
            if payload is not None and payload != self._advised.get(vehicle):
                self._advised[vehicle] = payload
                self.bus.publish(RouteAdvice.model_validate(payload))


def in_process_transport(runtime, principal) -> Transport:
    """The field inside the service's own process, through the same ingress as HTTP
    devices (`CityRuntime.ingest`: validated, stored, then acted on)."""
    def send(events: list[dict[str, Any]], after: int | None) -> tuple[list[tuple[int, dict[str, Any]]], int]:
        result = runtime.ingest(events, principal, after)
        return result.commands, result.last_command_id
    return send


def in_process_routes(runtime, principal) -> RouteSource:
    """A navigation unit inside the service's own process, reading the brain's route advice
    as `GET /api/emergency/{vehicle}/route` does (`CityRuntime.route_for`: the same key check)."""
    def route(vehicle: str) -> dict[str, Any] | None:
        advice = runtime.route_for(principal, vehicle)
        return None if advice is None else advice.model_dump(mode="json")
    return route


def http_transport(brain_url: str, key: str, timeout_s: float = 5.0) -> Transport:
    """Post a batch of events to a brain service. No answer (or a server error) raises
    `BrainUnreachable`, and the field resends the batch later; the brain drops what
    it already has, by device and sequence number. A refusal (bad batch, bad key) is
    a configuration error and stops the field with the brain's explanation."""
    client = httpx.Client(base_url=brain_url.rstrip("/"), headers={"X-API-Key": key}, timeout=timeout_s)

    def send(events: list[dict[str, Any]], after: int | None) -> tuple[list[tuple[int, dict[str, Any]]], int]:
        try:
            response = client.post("/api/events", json=events, params={} if after is None else {"commands_after": after})
        except httpx.TransportError as exc:
            raise BrainUnreachable(f"brain at {brain_url}: {exc}") from None
        if response.status_code >= 500:
            raise BrainUnreachable(f"brain at {brain_url}: {response.status_code}")
        if response.status_code != 200:
            raise RuntimeError(f"brain refused the batch: {response.status_code} {response.text[:500]}")
        answer = response.json()
        return [(c["id"], c["command"]) for c in answer["commands"]], answer["last_command_id"]
    return send


def http_routes(brain_url: str, key: str, timeout_s: float = 5.0) -> RouteSource:
    """A navigation unit reading the brain's route advice over HTTP
    (`GET /api/emergency/{vehicle}/route` with the field's key, which must speak for the
    vehicle: a device key for '*' or an admin key). No route planned yet (404) is None;
    no answer (or a server error) raises `BrainUnreachable`, and the unit asks again
    next second; a refusal (bad key, a key that may not read the vehicle's route) is a
    configuration error and stops the field with the brain's explanation."""
    client = httpx.Client(base_url=brain_url.rstrip("/"), headers={"X-API-Key": key}, timeout=timeout_s)

    def route(vehicle: str) -> dict[str, Any] | None:
        try:
            response = client.get(f"/api/emergency/{quote(vehicle, safe='')}/route")
        except httpx.TransportError as exc:
            raise BrainUnreachable(f"brain at {brain_url}: {exc}") from None
        if response.status_code >= 500:
            raise BrainUnreachable(f"brain at {brain_url}: {response.status_code}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise RuntimeError(f"brain refused the route of {vehicle!r}: {response.status_code} {response.text[:500]}")
        return response.json()
    return route
