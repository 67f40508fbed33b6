"""The twin as a field: SUMO plays the devices, which talk to the brain service.

Each simulated second the twin's devices report what they saw; the field sends those
events to the brain (in-process through the service's own ingress, or over HTTP to
a brain anywhere) and applies the signal commands it gets back. Either way the
events cross the same validation and storage as a real city's devices. Emergency
vehicles dispatched in the twin (`emergency`) report through their transponders like
any device, and their navigation units read the brain's route advice the way a real
one does (`routes`: `GET /api/emergency/{vehicle}/route`, or its in-process twin).

Nothing the brain does stops the field. While it does not answer, or answers
something that is no brain's answer, the signal controllers run their own plans,
what the devices saw waits in the outbox on disk, and the brain is tried again after
a growing interval. Events it refuses by name are set aside with its reasons; a
refusal of a request as a whole (the key, the rate) keeps them for later. Commands
and route advice the field cannot carry out are counted and skipped. It says what it
is doing, at most a line of each kind every SAY_EVERY_S.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from urbanbrain.core.bus import EventBus
from urbanbrain.core.clock import CLOCK_DEVICE
from urbanbrain.devices.protocol import (
    ClockReport,
    ProtocolError,
    RouteAdvice,
    parse_command,
)
from urbanbrain.network.model import Network
from urbanbrain.service.outbox import Outbox, RejectLog, rejected_line
from urbanbrain.service.transports import BrainRefused, BrainUnreachable, RouteSource, Transport
from urbanbrain.twin.emergency import EmergencyFleet, EmergencyTrip
from urbanbrain.twin.scenario import Scenario
from urbanbrain.twin.sumo_twin import Twin

FIELD, PRIORITY = "field", "priority"  # the outbox's channels: the field's devices, the emergency vehicles
BRAIN = "brain"  # the backoff of the brain as a whole (no answer), beside one per channel (a refusal of its key)
BATCH_EVENTS = 2_000  # per request
BATCH_BYTES = 1_000_000  # per request, well under the brain's body limit
DRAIN_S = 0.5  # wall seconds a step may spend resending the backlog (the live second goes first)
BACKOFF_FIRST_S = 1.0  # after a failure the brain is tried again this much later, twice as long after the next...
BACKOFF_MAX_S = 4.0  # ...up to this: control comes back within seconds of the brain's return
SET_ASIDE = frozenset({403, 409, 422})  # refusals which, naming items, are about those items (bad, conflicting,
# not the key's devices): resending them would be refused again
TOO_LARGE = 413
SAY_EVERY_S = 30.0  # wall seconds between two lines of the same kind: a brain refusing every second must not
# drown the console
FLUSH_POLL_S = 0.2  # at the end of a run, how often to look whether the brain is due another try


@dataclass
class _Backoff:
    """When to try again after failures: BACKOFF_FIRST_S, twice that, ... up to BACKOFF_MAX_S."""

    failures: int = 0
    twin_at: float = -math.inf  # not before this time of the twin
    wall_at: float = -math.inf  # nor before this time of the wall (monotonic)

    def due(self, twin_now: float, wall_now: float) -> bool:
        return twin_now >= self.twin_at and wall_now >= self.wall_at

    def fail(self) -> float:
        """Count a failure; the delay before the next try."""
        self.failures += 1
        return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** min(self.failures - 1, 16))

    def clear(self) -> None:
        self.failures, self.twin_at, self.wall_at = 0, -math.inf, -math.inf


class TwinField:
    """The twin's devices as a city's field, talking to a brain through `send` (and the
    emergency vehicles through `priority_send`, with their own key)."""

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
        self._second: list[Any] = []  # what the devices published this second
        for kind in ("detector", "camera", "controller", "emergency"):
            self.bus.subscribe(kind, self._second.append)
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
        self._advised: dict[str, Any] = {}  # vehicle -> the latest advice its navigation unit read
        self.last_command: int | None = None  # cursor of the commands carried out; None until the brain first answers
        self.backlog = outbox if outbox is not None else Outbox()
        self.rejects = RejectLog(self.backlog.path.with_name("rejected.jsonl"))  # what the brain refused, and why
        self.rejected = 0  # events the brain refused by name, set aside
        self.bad_commands = 0  # commands from the brain the field could not carry out, skipped
        self.bad_advice = 0  # route advice the navigation units could not read, ignored
        self.brain_reachable = True
        self.running = False  # while the twin steps: its clock moves, and paces the tries of an unreachable brain
        self._waits = {name: _Backoff() for name in (BRAIN, *self.senders)}
        self._said: dict[str, tuple[float, int]] = {}  # kind of line -> (wall time it was last said, held back since)
        self.say = say or (lambda _message: None)
        self.stop_requested = threading.Event()

    def run(self, on_start: Callable[[], None] | None = None, on_step: Callable[[float], None] | None = None) -> None:
        """Step the twin until the horizon, the end of its demand, or `stop()`;
        `on_step(now)` is called after each second's exchange (monitoring, tests).
        Nothing the brain does stops it: its signal controllers run their own plans
        while the brain is away, and what the devices saw waits in the outbox."""
        self.twin.start()
        self.running = True
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
            self.running = False
            self.twin.close()

    def close(self) -> None:
        """Close the outbox (a temporary one is deleted with what is left in it)."""
        self.backlog.close()

    def stop(self) -> None:
        self.stop_requested.set()

    def flush(self, timeout_s: float) -> bool:
        """At the end of a run, resend the backlog until it is delivered or `timeout_s`
        passes; True if nothing is left. The time server's report of the twin's last
        second goes first: a replay brain started again after the run has no clock, and
        would refuse everything else (503)."""
        deadline = time.monotonic() + timeout_s
        clock = [self._clock_report()] if self.backlog.count else []
        while self.backlog.count and time.monotonic() < deadline and not self.stop_requested.is_set():
            if clock and self._due(FIELD):
                clock = [clock[index] for index in self._send(FIELD, clock)]
            if not clock and self.brain_reachable:
                self._drain(deadline)
            if self.backlog.count:
                self.stop_requested.wait(FLUSH_POLL_S)
        return self.backlog.count == 0

    def _exchange(self) -> None:
        """Send what the devices saw this second (the live second first, with the time
        server's clock), then as much of the backlog as the step allows, oldest first;
        apply the commands that come back; read the emergency vehicles' routes."""
        live: dict[str, list[str]] = {FIELD: [], PRIORITY: []}
        for e in self._second:
            if e.kind == "emergency":
                (self._en_route.add if e.status == "en_route" else self._en_route.discard)(e.vehicle)
            live[PRIORITY if e.kind == "emergency" else FIELD].append(e.model_dump_json())
        self._second.clear()
        clock = self._clock_report()
        for channel, payloads in live.items():
            if channel in self.senders:
                self._deliver(channel, payloads, clock if channel == FIELD else None)
        if self.brain_reachable and self.backlog.count:
            self._drain(time.monotonic() + DRAIN_S)
        self._read_routes()

    def _clock_report(self) -> str:
        """The time server's report of the twin's time (a fresh sequence number each)."""
        self._clock_seq += 1
        return ClockReport(device_id=self.clock_device, seq=self._clock_seq, time=self.twin.now).model_dump_json()

    def _due(self, channel: str) -> bool:
        """Whether to try the brain with this channel's events now: not before the
        backoff after its last failure to answer, or to take the channel's events, has
        passed. Once the twin has stopped, its clock no longer paces the tries."""
        twin_now = self.twin.now if self.running else math.inf
        wall_now = time.monotonic()
        return self._waits[BRAIN].due(twin_now, wall_now) and self._waits[channel].due(twin_now, wall_now)

    def _deliver(self, channel: str, payloads: list[str], clock: str | None) -> None:
        """Send one channel's live events, if the brain is due a try, with the clock last
        (the brain ticks once it has the whole second); what it does not take now waits
        in the outbox, but for the clock: a late clock report says nothing."""
        batch = [*payloads, clock] if clock is not None else payloads
        if not batch:
            return
        left = self._send(channel, batch) if self._due(channel) else range(len(batch))
        self._keep(channel, [batch[index] for index in left if index < len(payloads)])

    def _drain(self, deadline: float) -> None:
        """Resend the oldest waiting events, channel by channel, until the deadline, the
        end of the backlog, or the brain cannot take more now."""
        while self.backlog.count and time.monotonic() < deadline:
            progress = False
            for channel in self.backlog.channels():
                if channel not in self.senders or not self._due(channel):
                    continue
                rows = self.backlog.oldest(channel, BATCH_EVENTS, BATCH_BYTES)
                left = set(self._send(channel, [payload for _, payload in rows]))
                done = [row for index, row in enumerate(rows) if index not in left]
                if done and self.backlog.remove(done):
                    progress = True
            if not progress:
                return
        if not self.backlog.count:
            self._say("delivered", "the backlog is delivered")

    def _send(self, channel: str, payloads: list[str]) -> list[int]:
        """Deliver events in as many requests as size and the brain's refusals make
        necessary: the items it names as bad, conflicting or not the key's are set aside
        with its reasons and the rest sent again; a request too large is halved. Returns
        the indices of the events neither delivered nor set aside: the brain cannot take
        them now (no answer, or a refusal of the request as a whole), and the field
        backs off."""
        pending = _chunks(payloads)
        while pending:
            batch = pending.pop(0)
            started = time.monotonic()
            try:
                self._post(channel, [payloads[index] for index in batch])
            except BrainUnreachable as exc:
                self._unreachable(exc, time.monotonic() - started)
            except BrainRefused as refusal:
                after = self._after_refusal([payloads[index] for index in batch], refusal)
                if after is not None:
                    pending[:0] = [[batch[k] for k in part] for part in after]
                    continue
                self._refused(channel, refusal)
            else:
                self._usable(channel)
                continue
            return [index for part in (batch, *pending) for index in part]
        return []

    def _post(self, channel: str, batch: list[str]) -> None:
        """One request; each command that comes back is carried out or counted, then the
        cursor moves past them all."""
        commands, cursor = self.senders[channel](batch, self.last_command)
        for _, command in commands:
            self._carry_out(command)
        self.last_command = cursor

    def _carry_out(self, command: Any) -> None:
        """Hand one command to its controller. One the field cannot carry out (a newer
        protocol, a validity longer than a controller takes, a phase its intersection
        does not have) is counted and skipped: it must not stop the other signals."""
        try:
            signal = parse_command(command)
        except ProtocolError as exc:
            self._bad_command(str(exc))
            return
        controller = self.twin.controllers.get(signal.intersection)
        if controller is not None and signal.phase is not None and signal.phase >= len(controller.phases):
            self._bad_command(f"{signal.intersection} has no phase {signal.phase}")
            return
        self.bus.publish(signal)

    def _bad_command(self, why: str) -> None:
        self.bad_commands += 1
        self._say("command", f"a command from the brain the field cannot carry out ({why[:300]}): skipped; "
                             f"{self.bad_commands} so far")

    def _after_refusal(self, batch: list[str], refusal: BrainRefused) -> list[list[int]] | None:
        """The batches (indices into `batch`) to send after the brain refused it, or None
        when the refusal is about the request as a whole (the key, the path, the rate:
        nothing in the events) and they must wait."""
        named = _items(refusal, len(batch))
        if refusal.status == TOO_LARGE:
            if len(batch) > 1:
                half = len(batch) // 2
                return [list(range(half)), list(range(half, len(batch)))]
            named = {0}  # one event larger than the brain takes: it never will
        elif refusal.status not in SET_ASIDE or not named:
            return None
        self._set_aside(batch, named, refusal)
        rest = [index for index in range(len(batch)) if index not in named]
        return [rest] if rest else []

    def _set_aside(self, batch: list[str], named: set[int], refusal: BrainRefused) -> None:
        """Keep the refused events apart with the brain's reasons, for a person to read."""
        lines = [rejected_line(batch[k], refusal.status, [e for e in refusal.errors if e.get("item") in (k, None)])
                 for k in sorted(named)]
        self.rejected += len(lines)
        if not self.rejects.write(lines):
            self._say("unwritten", f"{self.rejects.unwritten} refused events not kept in {self.rejects.path}: "
                                   f"{self.rejects.error}")
        self._say("refused", f"the brain refused {len(lines)} of {len(batch)} events ({refusal}); set aside with "
                             f"its reasons, {self.rejected} so far")

    def _refused(self, channel: str, refusal: BrainRefused) -> None:
        """The brain refused a request of the channel as a whole: its events wait, and it
        is asked again after the backoff, or when the brain says (Retry-After)."""
        wait = self._waits[channel]
        delay = wait.fail()
        if refusal.retry_after_s is not None:
            delay = refusal.retry_after_s
        wait.wall_at = time.monotonic() + delay
        self._say(f"refused {channel}", f"the brain refuses the {channel} events as a whole ({refusal}): they wait "
                                        f"on disk; asking again in {delay:g} s")

    def _unreachable(self, exc: BrainUnreachable, took_s: float) -> None:
        """No usable answer: the signals run their own plans and the events wait. While
        the twin runs, the brain is tried again after the backoff on the twin's clock
        (control comes back within seconds of its return, at any speed) and not before
        as long again as the failed try took (a hung brain takes at most half the
        field's time); after the run, after the backoff on the wall clock."""
        wait = self._waits[BRAIN]
        delay = wait.fail()
        if self.running:
            wait.twin_at, wait.wall_at = self.twin.now + delay, time.monotonic() + took_s
        else:
            wait.wall_at = time.monotonic() + delay
        if self.brain_reachable:
            self._say("unreachable", f"the brain is unreachable ({exc}); signals run their own plans, events wait "
                                     "on disk")
        self.brain_reachable = False

    def _usable(self, channel: str) -> None:
        """The brain took a request of the channel: its backoffs end."""
        if self._waits[channel].failures:
            self._say(f"accepted {channel}", f"the brain takes the {channel} events again")
        if not self.brain_reachable:
            self._say("answers", f"the brain answers again; resending the {self.backlog.count} events that wait")
        self._waits[channel].clear()
        self._waits[BRAIN].clear()
        self.brain_reachable = True

    def _keep(self, channel: str, payloads: list[str]) -> None:
        """Into the outbox; say when events are lost to the disk or to the bound."""
        dropped = self.backlog.dropped
        if not self.backlog.append(channel, payloads):
            self._say("disk", f"the outbox cannot keep {len(payloads)} events ({self.backlog.error}): dropped, "
                              f"{self.backlog.dropped} in all; the signals run on")
        elif self.backlog.dropped > dropped:
            self._say("bound", f"the outbox reached its bound ({self.backlog.max_bytes / 2**20:g} MiB): its "
                               f"{self.backlog.dropped - dropped} oldest events dropped, {self.backlog.dropped} in all")

    def _read_routes(self) -> None:
        """Each navigation unit of a vehicle en route asks the brain for its route; a new
        one goes to the vehicle (the fleet follows it from its next road). Not while the
        brain is unreachable: the vehicles drive on their last route."""
        if self.routes is None or not self.brain_reachable:
            return
        for vehicle in sorted(self._en_route):
            started = time.monotonic()
            try:
                payload = self.routes(vehicle)
            except BrainUnreachable as exc:
                self._unreachable(exc, time.monotonic() - started)
                return
            except BrainRefused as refusal:
                self._say(f"route {vehicle}", f"the brain refuses {vehicle}'s route ({refusal}); it drives on its own")
                continue
            if payload is None or payload == self._advised.get(vehicle):
                continue
            self._advised[vehicle] = payload  # the same unreadable advice is counted once
            try:
                advice = RouteAdvice.model_validate(payload)
            except ValidationError as exc:
                self.bad_advice += 1
                self._say("advice", f"route advice for {vehicle} its navigation unit cannot read "
                                    f"({_reasons(exc)}): it drives on its last route; {self.bad_advice} so far")
                continue
            self.bus.publish(advice)

    def _say(self, kind: str, message: str) -> None:
        """Tell the operator, at most one line of a kind every SAY_EVERY_S; the lines
        held back meanwhile are counted in the next."""
        now = time.monotonic()
        last, held = self._said.get(kind, (-math.inf, 0))
        if now - last < SAY_EVERY_S:
            self._said[kind] = (last, held + 1)
            return
        self._said[kind] = (now, 0)
        self.say(f"t={self.twin.now:g}: {message}" + (f" ({held} more like it in {now - last:.0f} s)" if held else ""))


def _chunks(payloads: list[str]) -> list[list[int]]:
    """Requests (indices into `payloads`) of at most BATCH_EVENTS events and BATCH_BYTES
    bytes (at least one event each)."""
    chunks, current, size = [], [], 0
    for index, payload in enumerate(payloads):
        if current and (len(current) >= BATCH_EVENTS or size + len(payload) > BATCH_BYTES):
            chunks.append(current)
            current, size = [], 0
        current.append(index)
        size += len(payload)
    if current:
        chunks.append(current)
    return chunks


def _items(refusal: BrainRefused, count: int) -> set[int]:
    """The items a refusal names (none when it is about the whole request)."""
    return {e["item"] for e in refusal.errors if type(e.get("item")) is int and 0 <= e["item"] < count}


def _reasons(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'message'}: {e['msg']}" for e in exc.errors()[:3])
