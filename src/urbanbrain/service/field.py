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
from urbanbrain.core.clock import CLOCK_DEVICE
from urbanbrain.devices.protocol import ClockReport, RouteAdvice, parse_command
from urbanbrain.network.model import Network
from urbanbrain.service.outbox import Outbox, rejected_line
from urbanbrain.twin.emergency import EmergencyFleet, EmergencyTrip
from urbanbrain.twin.scenario import Scenario
from urbanbrain.twin.sumo_twin import Twin

# send(events as JSON, commands_after) -> (the (id, command) pairs issued after that id, the
# cursor for next time); commands_after None: only those issued in answer to these events
Transport = Callable[[list[str], int | None], tuple[list[tuple[int, dict[str, Any]]], int]]
# routes(vehicle) -> the RouteAdvice (as JSON) the brain planned for it, None while none is planned
RouteSource = Callable[[str], dict[str, Any] | None]
FIELD, PRIORITY = "field", "priority"  # the outbox's channels: the field's devices, the emergency vehicles
BATCH_EVENTS = 2_000  # per request
BATCH_BYTES = 1_000_000  # per request, well under the brain's body limit
DRAIN_S = 0.5  # wall seconds a step may spend resending the backlog (the live second goes first)
RETRY_REFUSED_KEY_S = 10.0  # how often a field whose key is refused asks again


class BrainUnreachable(ConnectionError):
    """The brain did not answer; the field keeps running on its controllers' fail-safe."""


class BrainRefused(ValueError):
    """The brain answered with a refusal: `status` and its errors (item, field, error)."""

    def __init__(self, status: int, errors: list[dict[str, Any]]):
        self.status = status
        self.errors = errors
        super().__init__(f"{status}: " + "; ".join(f"item {e.get('item')}: {e.get('field')}: {e.get('error')}"
                                                   for e in errors[:5]))


class TwinField:
    def __init__(self, scenario: Scenario, network: Network, send: Transport, *, seed: int = 1,
                 speed: float = 1.0, horizon_s: float | None = None, tripinfo_path: Path | None = None,
                 failsafe_s: float = 10.0, world: list | None = None, emergency: list[EmergencyTrip] | None = None,
                 routes: RouteSource | None = None, priority_send: Transport | None = None,
                 outbox: Outbox | None = None, say: Callable[[str], None] | None = None,
                 clock_device: str = CLOCK_DEVICE):
        if emergency and (routes is None or priority_send is None):
            raise ValueError("emergency vehicles need their own key to report and a route source: their navigation "
                             "units read the brain's advice")
        self.scenario = scenario
        self.network = network
        self.senders = {FIELD: send, **({PRIORITY: priority_send} if priority_send is not None else {})}
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
        self.clock_device = clock_device
        self._clock_seq = sequence_base
        self._en_route: set[str] = set()  # emergency vehicles whose transponders report them en route
        self._advised: dict[str, dict[str, Any]] = {}  # vehicle -> the latest advice its navigation unit took
        self._route_refused: set[str] = set()  # vehicles whose route the brain refused to the field's key
        self.last_command: int | None = None  # cursor of the commands applied; None until the brain first answers
        self.backlog = outbox if outbox is not None else Outbox()
        self.rejects = self.backlog.path.with_name("rejected.jsonl")  # what the brain refused, with its reasons
        self.rejected = 0
        self.brain_reachable = True
        self.key_refused_at: float | None = None  # wall time of the brain's last refusal of our key
        self.say = say or (lambda _message: None)
        self.stop_requested = threading.Event()

    def run(self, on_start: Callable[[], None] | None = None, on_step: Callable[[float], None] | None = None) -> None:
        """Step the twin until the horizon, the end of its demand, or `stop()`;
        `on_step(now)` is called after each second's exchange (monitoring, tests).
        Nothing the brain does stops it: its signal controllers run their own plans
        while the brain is away, and what the devices saw waits in the outbox."""
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

    def close(self) -> None:
        """Close the outbox (a temporary one is deleted with what is left in it)."""
        self.backlog.close()

    def stop(self) -> None:
        self.stop_requested.set()

    def flush(self, timeout_s: float) -> bool:
        """Resend the backlog until it is delivered or `timeout_s` passes (the end of a
        run); True if nothing is left."""
        deadline = time.monotonic() + timeout_s
        while self.backlog.count and time.monotonic() < deadline and not self.stop_requested.is_set():
            if not self._drain(deadline):
                self.stop_requested.wait(1.0)
        return self.backlog.count == 0

    def _exchange(self) -> None:
        """Send what the devices saw this second (the live second first, with the time
        server's clock), then as much of the backlog as the step allows, oldest first;
        apply the commands that come back."""
        live: dict[str, list[str]] = {FIELD: [], PRIORITY: []}
        for e in self._outbox:
            if e.kind == "emergency":
                (self._en_route.add if e.status == "en_route" else self._en_route.discard)(e.vehicle)
            live[PRIORITY if e.kind == "emergency" else FIELD].append(e.model_dump_json())
        self._outbox.clear()
        self._clock_seq += 1
        clock = ClockReport(device_id=self.clock_device, seq=self._clock_seq, time=self.twin.now).model_dump_json()
        for channel, payloads in live.items():
            if channel not in self.senders:
                continue
            if not self._deliverable():
                self.backlog.append(channel, payloads)
                continue
            self._deliver(channel, payloads, clock if channel == FIELD else None)
        if self.brain_reachable and self.backlog.count and self._deliverable():
            self._drain(time.monotonic() + DRAIN_S)
        self._read_routes()

    def _deliverable(self) -> bool:
        """Whether to send now: not while the brain refused our key a moment ago (it is
        asked again every RETRY_REFUSED_KEY_S). An unreachable brain is tried every
        second: that is how the field learns it is back. The live second goes before
        the backlog, so that the brain takes the signals back at once."""
        return self.key_refused_at is None or time.monotonic() - self.key_refused_at >= RETRY_REFUSED_KEY_S

    def _deliver(self, channel: str, payloads: list[str], clock: str | None) -> None:
        """Send one channel's live events (and the clock, which is never kept: a late
        clock report says nothing); what cannot be delivered goes to the outbox."""
        batch = [*payloads, clock] if clock is not None else payloads  # the clock last: the brain ticks
        # once it has the whole second
        if not batch:
            return
        try:
            for chunk in _chunks(batch):
                self._send(channel, chunk)
                batch = batch[len(chunk):]
        except BrainUnreachable as exc:
            if self.brain_reachable:
                self.say(f"t={self.twin.now:g}: the brain is unreachable ({exc}); signals run their own plans, "
                         "events wait on disk")
            self.brain_reachable = False
            self.backlog.append(channel, [p for p in batch if p is not clock])
            return
        if not self.brain_reachable:
            self.say(f"t={self.twin.now:g}: the brain answers again; resending {self.backlog.count} events")
        self.brain_reachable = True

    def _drain(self, deadline: float) -> bool:
        """Resend the oldest waiting events until the deadline; False if the brain stopped answering."""
        while self.backlog.count and time.monotonic() < deadline:
            sent = False
            for channel in self.backlog.channels():
                if channel not in self.senders:
                    continue
                rows = self.backlog.oldest(channel, BATCH_EVENTS, BATCH_BYTES)
                try:
                    self._send(channel, [payload for _, payload in rows])
                except BrainUnreachable:
                    self.brain_reachable = False
                    return False
                self.backlog.remove(rows)
                sent = True
            if not sent:
                return False
            if not self.backlog.count:
                self.say(f"t={self.twin.now:g}: the backlog is delivered")
        return True

    def _send(self, channel: str, payloads: list[str]) -> None:
        """Deliver events in as many requests as the brain's refusals make necessary:
        items it refuses (bad, conflicting) are put aside with its reasons and the rest
        sent again; a request too large is halved. A refusal of the key keeps
        everything for later and raises BrainUnreachable: the brain is not usable now."""
        pending = [payloads]
        while pending:
            batch = pending.pop(0)
            try:
                commands, self.last_command = self.senders[channel](batch, self.last_command)
            except BrainRefused as refusal:
                pending[:0] = self._after_refusal(batch, refusal)
                continue
            self.key_refused_at = None
            for _, command in commands:
                self.bus.publish(parse_command(command))

    def _after_refusal(self, batch: list[str], refusal: BrainRefused) -> list[list[str]]:
        """The batches to send after a refusal of `batch`."""
        named = _items(refusal, len(batch))
        if refusal.status in (401, 403) and not named:
            if self.key_refused_at is None:
                self.say(f"t={self.twin.now:g}: the brain refuses the field's key ({refusal}); events wait on disk")
            self.key_refused_at = time.monotonic()
            raise BrainUnreachable(f"the brain refuses the key: {refusal}")
        if refusal.status == 413 and len(batch) > 1:
            half = len(batch) // 2
            return [batch[:half], batch[half:]]
        bad = named or set(range(len(batch)))
        with self.rejects.open("a", encoding="utf-8") as out:
            for index in sorted(bad):
                reasons = [e for e in refusal.errors if e.get("item") in (index, None)]
                out.write(rejected_line(batch[index], refusal.status, reasons) + "\n")
        self.rejected += len(bad)
        self.say(f"t={self.twin.now:g}: the brain refused {len(bad)} of {len(batch)} events ({refusal}); "
                 "kept aside with its reasons")
        rest = [payload for index, payload in enumerate(batch) if index not in bad]
        return [rest] if rest else []

    def _read_routes(self) -> None:
        """Each navigation unit of a vehicle en route asks the brain for its route; a new
        one goes to the vehicle (the fleet follows it from its next road)."""
        if self.routes is None or not self.brain_reachable:
            return
        for vehicle in sorted(self._en_route):
            try:
                payload = self.routes(vehicle)
            except BrainUnreachable:
                self.brain_reachable = False
                return
            except BrainRefused as refusal:  # the vehicle drives on its own route meanwhile
                if vehicle not in self._route_refused:
                    self.say(f"t={self.twin.now:g}: the brain refuses {vehicle}'s route ({refusal})")
                self._route_refused.add(vehicle)
                continue
            if payload is not None and payload != self._advised.get(vehicle):
                self._advised[vehicle] = payload
                self.bus.publish(RouteAdvice.model_validate(payload))


def _chunks(payloads: list[str]) -> list[list[str]]:
    """Requests of at most BATCH_EVENTS events and BATCH_BYTES bytes (at least one event each)."""
    chunks, current, size = [], [], 0
    for payload in payloads:
        if current and (len(current) >= BATCH_EVENTS or size + len(payload) > BATCH_BYTES):
            chunks.append(current)
            current, size = [], 0
        current.append(payload)
        size += len(payload)
    if current:
        chunks.append(current)
    return chunks


def _items(refusal: BrainRefused, count: int) -> set[int]:
    """The items a refusal names (none when it is about the whole request)."""
    return {e["item"] for e in refusal.errors if isinstance(e.get("item"), int) and 0 <= e["item"] < count}


def in_process_transport(runtime, principal) -> Transport:
    """The field inside the service's own process, through the same ingress as HTTP
    devices (`CityRuntime.ingest`: validated, stored, then acted on)."""
    from urbanbrain.service.city import BatchError

    def send(events: list[str], after: int | None) -> tuple[list[tuple[int, dict[str, Any]]], int]:
        try:
            result = runtime.ingest(events, principal, after)
        except BatchError as exc:
            raise BrainRefused(exc.status, [{"item": i, "field": f, "error": r} for i, f, r in exc.errors]) from None
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
    """Post a batch of events to a brain service. No answer (or a server error, or a
    brain not ready: 503) raises `BrainUnreachable`, and the field resends the batch
    later; the brain drops what it already has, by device and sequence number. A
    refusal raises `BrainRefused` with the brain's reasons."""
    client = httpx.Client(base_url=brain_url.rstrip("/"), headers={"X-API-Key": key}, timeout=timeout_s)

    def send(events: list[str], after: int | None) -> tuple[list[tuple[int, dict[str, Any]]], int]:
        body = ("[" + ",".join(events) + "]").encode()
        try:
            response = client.post("/api/events", content=body, headers={"Content-Type": "application/json"},
                                   params={} if after is None else {"commands_after": after})
        except httpx.TransportError as exc:
            raise BrainUnreachable(f"brain at {brain_url}: {exc}") from None
        if response.status_code >= 500:
            raise BrainUnreachable(f"brain at {brain_url}: {response.status_code}")
        if response.status_code != 200:
            raise BrainRefused(response.status_code, _error_list(response))
        answer = response.json()
        return [(c["id"], c["command"]) for c in answer["commands"]], answer["last_command_id"]
    return send


def _error_list(response: httpx.Response) -> list[dict[str, Any]]:
    """The brain's errors as (item, field, error) dicts, whatever shape the body has."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list) and all(isinstance(d, dict) for d in detail):
        return detail
    return [{"item": None, "field": "body", "error": str(detail if detail is not None else response.text[:500])}]


def http_routes(brain_url: str, key: str, timeout_s: float = 5.0) -> RouteSource:
    """A navigation unit reading the brain's route advice over HTTP
    (`GET /api/emergency/{vehicle}/route` with the field's key, which must speak for the
    vehicle: a device key for '*' or an admin key). No route planned yet (404) is None;
    no answer (or a server error) raises `BrainUnreachable`, and the unit asks again
    next second; a refusal (bad key, a key that may not read the vehicle's route)
    raises `BrainRefused` with the brain's explanation."""
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
            raise BrainRefused(response.status_code, _error_list(response))
        return response.json()
    return route
