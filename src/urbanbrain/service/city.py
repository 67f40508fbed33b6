"""The city as the service runs it: device events in, commands out, everything stored.

One `CityRuntime` owns the brain for one network. Events from any source (HTTP
devices, the twin in-process, the twin over HTTP) enter through `ingest`, which
validates the whole batch, stores it (committed before anything is acknowledged),
feeds the new events to the state estimator through the bus, and ticks the brain
once per new second of city time.

The brain keeps the reference clock (urbanbrain.core.clock): the wall clock in a live
city, ticked every second by `tick`; in a replay, the time the twin's time server
declares, ticked when it declares it. No other device moves it: an event stamped
ahead of it by more than the skew is refused, and a late one (a field's backlog after
an outage) is stored, marked late, and kept out of the real-time state, whose
present it does not describe.
"""

from __future__ import annotations

import json
import statistics
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from urbanbrain.control import CONTROLLERS
from urbanbrain.control.brain_loop import BrainLoop
from urbanbrain.control.safety import SafetyLayer
from urbanbrain.core.bus import EventBus
from urbanbrain.core.clock import CityClock, ClockError, Verdict
from urbanbrain.devices.inventory import DeviceLayout, place_devices
from urbanbrain.devices.protocol import (
    DetectorReport,
    EmergencyVehicleReport,
    ProtocolError,
    RouteAdvice,
    SignalCommand,
    parse_event,
)
from urbanbrain.emergency import EmergencyPriority, RouteError, fastest_route
from urbanbrain.incidents.detector import IncidentDetector
from urbanbrain.network.model import Network
from urbanbrain.service.keys import CONFINED, Principal
from urbanbrain.state.estimator import SensorEstimator
from urbanbrain.store import EventConflict, Store, StoredEvent
from urbanbrain.store.store import as_utc

_LOCAL = {"fixed": "plan", "flash": "flash"}  # operator's choice -> the field controller's own mode
# A device with no event for this long (by the wall clock, and by the city clock in a
# replay) is flagged silent: controllers, detector stations and the time server report
# every interval; a camera reports only the vehicles it sees; an emergency vehicle's
# transponder every second while it is en route, and nothing once its mission is over
# (arrived, stood down): only a transponder silent en route is flagged (and priority ends
# for it at the same time, EmergencyPriority's `silent_s`).
SILENT_AFTER_S = {"controller": 30.0, "detector": 30.0, "camera": 600.0, "emergency": 10.0, "clock": 30.0}
DEFAULT_SILENT_AFTER_S = 30.0
MAX_REACHABILITY_CACHED = 10_000  # (road, destination) answers kept: an emergency key cannot grow it without end
PRIORITY_ROLES = frozenset({"emergency", "admin"})  # who may post an emergency vehicle's report
FIELD_ROLES = frozenset({"device", "admin"})  # who may post every other device's


class BatchError(ValueError):
    """A batch rejected as a whole; `errors` lists (item, field, reason)."""

    def __init__(self, errors: list[tuple[int | None, str, str]], status: int = 422):
        self.errors = errors
        self.status = status
        super().__init__("; ".join(f"item {i}: {f}: {r}" for i, f, r in errors))


def controller_device(intersection_id: str) -> str:
    """The device id of an intersection's signal controller (what it reports as, and commands go to)."""
    return f"ctl_{intersection_id}"


@dataclass
class _Minute:
    start: float
    ticks: int = 0
    vehicles: float = 0.0
    queue: float = 0.0
    throughput: int = 0
    stopped_veh_s: float = 0.0


@dataclass
class IngestResult:
    accepted: int
    duplicates: int
    city_time: float | None
    commands: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    last_command_id: int = 0  # the cursor to send as `commands_after` next time
    late: int = 0  # of the accepted, those behind the brain's clock: stored, not used for the present state


Listener = Callable[[dict[str, Any]], None]


class CityRuntime:
    def __init__(self, network: Network, store: Store, controller: str = "brain", webhooks: tuple[str, ...] = (),
                 clock: CityClock | None = None):
        if controller not in CONTROLLERS:
            raise ValueError(f"unknown controller {controller!r}; choose from {', '.join(CONTROLLERS)}")
        self.network = network
        self.store = store
        self.clock = clock or CityClock()
        self.bus = EventBus()
        self.stations = place_devices(network, DeviceLayout())
        self.estimator = SensorEstimator(network, self.bus, stations=self.stations)
        self.safety = SafetyLayer(network)
        self.controller = CONTROLLERS[controller](network)
        self.priority = EmergencyPriority(network, self.bus)
        self.brain = BrainLoop(self.controller, self.estimator, self.safety, self.bus, explain=self._on_decision,
                               priority=self.priority)
        self.routes: dict[str, RouteAdvice] = {}  # vehicle -> the latest route the brain sent it
        self._reachability: dict[tuple[str, str], str | None] = {}  # (road, destination) -> why not reachable
        self.detector = IncidentDetector(network, self.stations, self.bus, state=self.estimator.state)
        self.webhooks = tuple(webhooks)
        self._alert_ids: dict[str, int] = {}  # the detector's alert id -> the stored alert's
        self._stopline = {loop.detector_id for s in self.stations for loop in s.loops if loop.position == "stopline"}
        # The device registry: what each device is, and what it may report on.
        self._loops = {s.device_id: {loop.detector_id: loop for loop in s.loops} for s in self.stations}
        self._camera_lanes: dict[str, set[str]] = {}
        for station in self.stations:
            for loop_id, camera in station.cameras.items():
                self._camera_lanes.setdefault(camera, set()).add(self._loops[station.device_id][loop_id].lane)
        self._controllers = {controller_device(i): i for i in network.intersections}
        self._field_devices = {*self._controllers, *self._loops, *self._camera_lanes}
        self._lock = threading.RLock()
        self._new_commands: list[SignalCommand] = []
        self._new_decisions: list[dict[str, Any]] = []
        self._last_tick: float | None = None
        self._started = self.clock.wall()  # a device not heard from within its interval since is missing
        self._minute: _Minute | None = None
        self._listeners: list[Listener] = []
        self.devices: dict[str, list[Any]] = {}  # device id -> [kind, last city time, last received (wall s), events]
        self._en_route: set[str] = set()  # transponders whose latest report is en route
        for device_id, kind, last_time, received, count in store.device_summary():
            self.devices[device_id] = [kind, last_time, as_utc(received).timestamp(), count]
        self._last_command_id = store.last_command_id()
        self.modes: dict[str, str] = store.controller_modes()
        for intersection_id, mode in self.modes.items():  # an operator's order survives a restart
            if mode != "brain" and intersection_id in network.intersections:
                self.brain.local[intersection_id] = _LOCAL[mode]
        self.bus.subscribe("signal", self._new_commands.append)
        self.bus.subscribe("route", self._on_route)
        self.bus.subscribe("detector", self._count_throughput)

    # -- ingress ---------------------------------------------------------------------

    @property
    def city_time(self) -> float | None:
        """The brain's clock (None in a replay until its time server is first heard)."""
        return self.clock.now()

    def clock_info(self) -> dict[str, Any]:
        """The clock's settings and time, and the city time of the brain's last decision
        (a monitor tells a brain that stopped deciding from one that is idle)."""
        return {**self.clock.info(), "last_tick": self._last_tick}

    def ingest(self, raw: list[Any], principal: Principal, commands_after: int | None = None) -> IngestResult:
        """Validate, store and act on one batch; all or nothing. Returns what was
        accepted and the commands for the principal's controllers issued after
        `commands_after` — by default, those issued in answer to this batch (a field
        that starts does not get the history replayed) — with the cursor for next time."""
        events = []
        errors: list[tuple[int | None, str, str]] = []
        for index, item in enumerate(raw):
            try:
                events.append(parse_event(item))
            except ProtocolError as exc:
                errors += [(index, f, reason) for f, reason in exc.errors]
        if errors:
            raise BatchError(errors)
        refused = [error for index, e in enumerate(events) for error in _authority(index, e, principal)]
        if refused:
            raise BatchError(refused, status=403)
        with self._lock:  # the clock is read, judged against and moved as one step: batches in flight at once
            # (a field's retry overtaking its first try) cannot move it backwards between check and move
            declared, verdicts = self._judge(events)
            cursor = self._last_command_id if commands_after is None else commands_after
            batch = [StoredEvent(e.device_id, e.seq, e.kind, e.time, e.model_dump_json(), late=verdict == "late")
                     for e, verdict in zip(events, verdicts)]
            try:
                fresh = self.store.append_events(batch, principal.name)
            except EventConflict as exc:
                raise BatchError(_conflicts(batch, exc.conflicts), status=409) from None
            new = _first_copies(events, fresh)
            late = {(e.device_id, e.seq) for e in fresh if e.late}
            published = [e for e in new if (e.device_id, e.seq) not in late and e.kind != "clock"]
            self._register(new, late)
            if declared is not None:
                self.clock.declare(declared)
            self.bus.publish_all(published)
            self._audit_priority(published, principal)
            if declared is not None:  # a replay's time server drives the brain: it decides when the time is declared
                self._advance(declared)
            commands = self.commands_for(principal, cursor)
            last = max([cursor, *(command_id for command_id, _ in commands)])
            return IngestResult(len(fresh), len(events) - len(fresh), self.city_time, commands, last, len(late))

    def _judge(self, events: list) -> tuple[float | None, list[Verdict]]:
        """Each event against the registry and the brain's clock (the time a replay's
        time server declares in this batch, if it does): (that time, each event's
        verdict), or BatchError naming every event refused."""
        errors = [error for index, event in enumerate(events) for error in self._check_device(index, event)]
        declared = max((e.time for e in events if e.kind == "clock"), default=None)
        if declared is not None and not errors:
            try:
                self.clock.check_declared(declared)
            except ClockError as exc:
                errors = [(index, "time", str(exc)) for index, e in enumerate(events) if e.kind == "clock"]
        if errors:
            raise BatchError(errors)
        now = declared if declared is not None else self.clock.now()
        if now is None:
            raise BatchError([(None, "time", "the brain has no city clock yet: it follows the replay's time server "
                                             f"{self.clock.settings.source!r}, not heard from so far")], status=503)
        verdicts = [self.clock.judge(e.time, now) for e in events]
        errors = [(index, "time", self._clock_refusal(e.time, now, verdict))
                  for index, (e, verdict) in enumerate(zip(events, verdicts)) if verdict in ("ahead", "too_old")]
        if errors:
            raise BatchError(errors)
        return declared, verdicts

    def tick(self) -> None:
        """A live city's heartbeat (every second, from the service): the brain decides
        on the wall clock whether or not the field reports."""
        if self.clock.mode != "wall":
            return
        with self._lock:
            self._advance(self.clock.now())

    def _clock_refusal(self, event_time: float, now: float, verdict: Verdict) -> str:
        settings = self.clock.settings
        if verdict == "ahead":
            return (f"{event_time:g} is {event_time - now:.0f} s ahead of the brain's clock ({now:g}); at most "
                    f"{settings.max_skew_s:g} s is accepted: is the device's clock set right?")
        return (f"{event_time:g} is {now - event_time:.0f} s behind the brain's clock ({now:g}); events older than "
                f"{settings.max_late_s:g} s are refused")

    def _register(self, events: list, late: set[tuple[str, int]]) -> None:
        """The device registry's record of what each device last sent (late events too:
        a device whose backlog arrives is alive), received by the brain's wall clock."""
        received = self.clock.wall()
        for e in events:
            entry = self.devices.setdefault(e.device_id, [e.kind, e.time, received, 0])
            entry[1] = max(entry[1], e.time) if (e.device_id, e.seq) in late else e.time
            entry[2] = received
            entry[3] += 1

    def _audit_priority(self, published: list, principal: Principal) -> None:
        """Every priority request (a vehicle's mission starting) and its end, with the key that asked."""
        for e in published:
            if e.kind != "emergency":
                continue
            if e.status == "en_route" and e.device_id not in self._en_route:
                self._en_route.add(e.device_id)
                self.store.add_audit(principal.name, principal.role, "priority request", e.vehicle,
                                     {"service": e.service, "priority": e.priority, "destination": e.destination,
                                      "edge": e.edge, "time": e.time})
            elif e.status != "en_route" and e.device_id in self._en_route:
                self._en_route.discard(e.device_id)
                self.store.add_audit(principal.name, principal.role, "priority end", e.vehicle,
                                     {"status": e.status, "time": e.time})

    def _check_device(self, index: int, event) -> list[tuple[int, str, str]]:
        """An event must come from a device in the registry and speak only of what that
        device sees: a controller of its own intersection, a detector station of its
        own loops, a camera of its own lanes."""
        device = event.device_id
        if event.kind == "controller":
            own = self._controllers.get(device)
            if own is None:
                return [(index, "device_id", f"{device!r} is not a signal controller in the device registry")]
            if event.intersection != own:
                return [(index, "intersection", f"controller {device!r} reports for {event.intersection!r}; "
                                                f"it is the controller of {own!r}")]
            return [(index, f, reason) for f, reason in self._check_signals(event)]
        if event.kind == "clock":
            if self.clock.mode == "wall":
                return [(index, "kind", "this brain keeps the wall clock of a live city; no device sets it "
                                        "(a brain that follows a replay's time server is started with --clock replay)")]
            if not self.clock.follows(device):
                return [(index, "device_id", f"{device!r} is not the city's time server "
                                             f"({self.clock.settings.source!r})")]
            return []
        if event.kind == "detector":
            loops = self._loops.get(device)
            if loops is None:
                return [(index, "device_id", f"{device!r} is not a detector station in the device registry")]
            errors = []
            for k, reading in enumerate(event.readings):
                loop = loops.get(reading.detector_id)
                if loop is None:
                    errors.append((index, f"readings.{k}.detector_id", f"loop {reading.detector_id!r} is not one of station {device!r}'s"))
                elif (reading.lane, reading.position) != (loop.lane, loop.position):
                    errors.append((index, f"readings.{k}.lane", f"loop {reading.detector_id!r} is the {loop.position} loop "
                                                                f"of lane {loop.lane!r}, not the {reading.position} loop of {reading.lane!r}"))
            return errors
        if event.kind == "emergency":
            return [(index, f, reason) for f, reason in self._check_emergency(event)]
        lanes = self._camera_lanes.get(device)
        if lanes is None:
            return [(index, "device_id", f"{device!r} is not a camera in the device registry")]
        if event.lane not in lanes:
            return [(index, "lane", f"camera {device!r} watches {', '.join(sorted(lanes))}, not {event.lane!r}")]
        return []

    def _check_signals(self, report) -> list[tuple[str, str]]:
        """What a controller reports must fit its intersection: as many signal heads as
        it has, a green phase it has, and that phase's greens when it names one."""
        phases = self.network.intersections[report.intersection].phases
        heads = len(phases[0].state)
        if len(report.signal_state) != heads:
            return [("signal_state", f"{len(report.signal_state)} signal heads reported; "
                                     f"{report.intersection!r} has {heads}")]
        if report.phase is None:
            return []
        if report.phase >= len(phases):
            return [("phase", f"phase {report.phase}: {report.intersection!r} has green phases 0-{len(phases) - 1}")]
        if _greens(report.signal_state) != _greens(phases[report.phase].state):
            return [("signal_state", f"{report.signal_state!r} does not show the greens of phase {report.phase} "
                                     f"({phases[report.phase].state!r})")]
        return []

    def _on_route(self, advice: RouteAdvice) -> None:
        self.routes[advice.vehicle] = advice

    def _check_emergency(self, event: EmergencyVehicleReport) -> list[tuple[str, str]]:
        """An emergency vehicle's transponder speaks for its own vehicle, on roads of this
        network, towards a destination that can be reached from where it is."""
        if event.device_id != event.vehicle:
            return [("vehicle", f"transponder {event.device_id!r} reports for {event.vehicle!r}; "
                                f"a transponder reports its own vehicle (device_id = vehicle)")]
        if event.device_id in self._field_devices:
            return [("vehicle", f"{event.device_id!r} is a field device of the registry, not an emergency vehicle")]
        roads = self.network.roads
        if event.edge not in roads:
            return [("edge", f"{event.edge!r} is not a road of {self.network.name!r}")]
        lane = self.network.lanes.get(event.lane)
        if lane is None or lane.edge != event.edge:
            return [("lane", f"{event.lane!r} is not a lane of road {event.edge!r}")]
        if event.position_m > lane.length_m + 1.0:
            return [("position_m", f"{event.position_m:g} m is beyond the end of lane {event.lane!r} ({lane.length_m:.1f} m)")]
        if event.destination not in roads:
            return [("destination", f"{event.destination!r} is not a road of {self.network.name!r}")]
        if event.status == "en_route":
            unreachable = self._unreachable(event.edge, event.destination)
            if unreachable:
                return [("destination", unreachable)]
        return []

    def _unreachable(self, origin: str, destination: str) -> str | None:
        """Why `destination` cannot be reached from `origin` (None if it can); remembered,
        since the road graph does not change and a transponder reports every second."""
        key = (origin, destination)
        if key not in self._reachability and len(self._reachability) >= MAX_REACHABILITY_CACHED:
            self._reachability.clear()
        if key not in self._reachability:
            try:
                fastest_route(self.network, origin, destination)
                self._reachability[key] = None
            except RouteError as exc:
                self._reachability[key] = str(exc)
        return self._reachability[key]

    def route_for(self, principal: Principal, vehicle: str) -> RouteAdvice | None:
        """The route the brain planned for `vehicle`, read by its navigation unit (a key that
        speaks for the vehicle) or an administrator; None while none is planned."""
        if not principal.may_speak_for(vehicle):
            raise PermissionError(f"key {principal.name!r} may not read the route of {vehicle!r}")
        with self._lock:
            return self.routes.get(vehicle)

    def emergency_json(self) -> dict[str, Any]:
        """Emergency vehicles under priority, their routes, and the signals held for them."""
        with self._lock:
            return {
                "vehicles": [{"vehicle": v, "service": t.report.service, "priority": t.report.priority,
                              "status": t.report.status, "time": t.report.time, "edge": t.report.edge,
                              "lane": t.report.lane, "position_m": t.report.position_m, "speed_ms": t.report.speed_ms,
                              "destination": t.report.destination, "route": t.route[t.index:]}
                             for v, t in sorted(self.priority.vehicles.items())],
                "preemptions": [p.to_json() for p in self.priority.preemptions[-200:]],
                "median_recovery_s": _median(self.priority.recovery_times_s()),
            }

    def commands_for(self, principal: Principal, after: int, limit: int = 1000) -> list[tuple[int, dict[str, Any]]]:
        controllers = None
        if principal.role in CONFINED:  # an emergency key's vehicles are no controllers: it reads none
            controllers = [controller_device(i) for i in self.network.intersections
                           if principal.may_speak_for(controller_device(i))]
        return self.store.commands_after(after, controllers, limit)

    # -- the brain's clock -----------------------------------------------------------

    def _advance(self, now: float) -> None:
        """Tick the brain for the new city time (at most once per second of it)."""
        if self._last_tick is not None and now < self._last_tick + 1.0 - 1e-9:
            return
        self._last_tick = now
        self.brain.tick(now)
        self._flush()
        self._sync_alerts()
        self._measure(now)
        self._notify(self.tick_message())

    def _flush(self) -> None:
        """Store the commands and decisions the brain just made, then tell the listeners."""
        commands, self._new_commands[:] = list(self._new_commands), []
        if commands:
            ids = self.store.add_commands([(controller_device(c.intersection), c.intersection, c.time,
                                            c.model_dump(mode="json")) for c in commands])
            self._last_command_id = max(ids)
            for command_id, command in zip(ids, commands):
                self._notify({"type": "command", "id": command_id, "controller": controller_device(command.intersection),
                              "command": command.model_dump(mode="json")})
        decisions, self._new_decisions[:] = list(self._new_decisions), []
        if decisions:
            self.store.add_decisions(decisions)
            for decision in decisions:
                self._notify({"type": "decision", **jsonable(decision)})

    def _on_decision(self, entry: dict[str, Any]) -> None:
        if entry["outcome"] != "kept":  # keep decisions stay in memory (BrainLoop.recent): one per contested second
            self._new_decisions.append(entry)

    def _count_throughput(self, report: DetectorReport) -> None:
        if self._minute is not None:
            self._minute.throughput += sum(r.count for r in report.readings if r.detector_id in self._stopline)

    def _measure(self, now: float) -> None:
        """Per-minute KPIs from what the devices tell (the estimated state), stored at each minute's end."""
        start = now - now % 60.0
        if self._minute is None:
            self._minute = _Minute(start)
            return
        if start > self._minute.start:
            self._store_minute(self._minute)
            self._minute = _Minute(start)
        lanes = self.estimator.state.lanes.values()
        queue = sum(lane.queue for lane in lanes)
        self._minute.ticks += 1
        self._minute.vehicles += sum(lane.vehicles for lane in lanes)
        self._minute.queue += queue
        self._minute.stopped_veh_s += queue

    def _store_minute(self, minute: _Minute) -> None:
        ticks = max(1, minute.ticks)
        row = {"minute": minute.start, "vehicles": minute.vehicles / ticks, "queue_veh": minute.queue / ticks,
               "throughput_veh": minute.throughput, "stopped_delay_veh_s": minute.stopped_veh_s,
               "mean_delay_s": minute.stopped_veh_s / minute.throughput if minute.throughput else 0.0}
        self.store.put_kpi_minute(row)
        self._notify({"type": "kpi", **row})

    # -- alerts ---------------------------------------------------------------------

    def _sync_alerts(self) -> None:
        """Store what the detector found or saw end, with the deliveries to the webhooks,
        and tell the live listeners."""
        for found in self.detector.alerts:
            stored_id = self._alert_ids.get(found.id)
            if stored_id is None:
                held = found.evidence.get("vehicles_stopped", 1)
                stored = self.store.add_alert({
                    "key": found.id, "type": "carAccident" if held >= 2 else "carStopped",
                    "severity": "high" if held >= 2 else "medium", "intersection": found.intersection,
                    "edge": found.edge, "zone_from_m": found.from_m, "zone_to_m": found.to_m,
                    "started_at": found.started_at, "detected_at": found.detected_at, "resolved_at": None,
                    "evidence": {**found.evidence, "zone": found.zone}}, self.webhooks)
                if stored is None:
                    continue
                self._alert_ids[found.id] = stored_id = stored["id"]
                self._notify({"type": "alert", "alert": stored})
            if found.resolved_at is not None:
                changed = self.store.change_alert(stored_id, "resolved", self.webhooks, resolved_at=found.resolved_at)
                if changed is not None:
                    self._notify({"type": "alert", "alert": changed})
        self.detector.alerts = [a for a in self.detector.alerts if a.resolved_at is None]

    def acknowledge_alert(self, alert_id: int, by: str) -> dict[str, Any] | None:
        """An operator has taken the alert in hand; None if there is no such alert or it is not new."""
        changed = self.store.change_alert(alert_id, "acknowledged", self.webhooks, by=by)
        if changed is not None:
            self._notify({"type": "alert", "alert": changed})
        return changed

    # -- operators ------------------------------------------------------------------

    def set_controller(self, intersection_id: str, controller: str) -> dict[str, Any]:
        """An operator's order: `fixed` (the field controller's own plan), `flash`, or
        `brain`. Stored first, so it survives a restart; the command goes out through
        the safety layer like every other."""
        if controller not in ("brain", *_LOCAL):
            raise ValueError(f"controller {controller!r}: choose brain, fixed or flash")
        with self._lock:
            self.store.set_controller_mode(intersection_id, controller)
            self.modes[intersection_id] = controller
            now = self.city_time if self.city_time is not None else 0.0
            self.brain.set_local(intersection_id, _LOCAL.get(controller), now)
            self._flush()
            return self._intersection_row(intersection_id)

    # -- what the API and the cockpit read --------------------------------------------

    def intersection_rows(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._intersection_row(i) for i in self.network.intersections]

    def _intersection_row(self, intersection_id: str) -> dict[str, Any]:
        intersection = self.network.intersections[intersection_id]
        state = self.estimator.state
        signal = state.signals.get(intersection_id)
        lanes = [state.lanes[lane] for lane in intersection.in_lanes if lane in state.lanes]
        return {
            "id": intersection_id, "x": intersection.position[0], "y": intersection.position[1],
            "phase": signal.phase if signal else None, "signal_state": signal.signal_state if signal else None,
            "time_in_phase_s": signal.time_in_phase_s if signal else None, "mode": signal.mode if signal else None,
            "controller": self.modes.get(intersection_id, "brain"),
            "supervisor": self._supervisor_row(intersection_id),
            "queue_veh": round(sum(lane.queue for lane in lanes), 2),
            "vehicles": round(sum(lane.vehicles for lane in lanes), 2),
        }

    def _supervisor_row(self, intersection_id: str) -> dict[str, Any] | None:
        """Who the supervisor lets run the intersection, if the controller is supervised."""
        status = getattr(self.controller, "status", None)
        watch = status().get(intersection_id) if status is not None else None
        if watch is None:
            return None
        return {"runs": watch.mode, "since": watch.since, "until": watch.until if watch.mode == "cycle" else None,
                "reason": watch.reason, "losses": watch.losses}

    def intersection_detail(self, intersection_id: str) -> dict[str, Any]:
        with self._lock:
            intersection = self.network.intersections[intersection_id]
            row = self._intersection_row(intersection_id)
            state = self.estimator.state
            row["phases"] = [{"index": p.index, "state": p.state} for p in intersection.phases]
            row["lanes"] = [{"id": lane, "queue": round(s.queue, 2), "vehicles": round(s.vehicles, 2),
                             "flow_vph": round(s.flow_vph, 1), "approaching": round(s.approaching, 2)}
                            for lane in intersection.in_lanes if (s := state.lanes.get(lane)) is not None]
        row["decisions"] = self.store.decisions(intersection_id, limit=20)
        return row

    def lane_rows(self) -> list[dict[str, Any]]:
        owner = {lane: i.id for i in self.network.intersections.values() for lane in i.in_lanes}
        with self._lock:
            return [{"id": lane, "intersection": owner.get(lane), "queue": round(s.queue, 2),
                     "vehicles": round(s.vehicles, 2), "flow_vph": round(s.flow_vph, 1)}
                    for lane, s in self.estimator.state.lanes.items()]

    def expected_devices(self) -> dict[str, str]:
        """Every device the city should have (device id -> kind), whether it ever reported or not."""
        expected = {device: "controller" for device in self._controllers}
        expected.update({device: "detector" for device in self._loops})
        expected.update({device: "camera" for device in self._camera_lanes})
        if self.clock.mode == "replay":
            expected[self.clock.settings.source] = "clock"
        return expected

    def device_rows(self) -> list[dict[str, Any]]:
        """The registry's devices and any other that reported (emergency vehicles): each
        `reporting`, `silent` (nothing for longer than its kind's interval, by the wall
        clock, and in a replay by the city clock too), `waiting` (not heard from yet,
        within its interval since the brain started) or `missing` (not heard from since)."""
        with self._lock:
            now, wall = self.city_time, self.clock.wall()
            rows = []
            for device, kind in sorted({**self.expected_devices(), **{d: e[0] for d, e in self.devices.items()}}.items()):
                entry = self.devices.get(device)
                quiet = SILENT_AFTER_S.get(kind, DEFAULT_SILENT_AFTER_S)
                if entry is None:
                    missing = wall - self._started > quiet
                    rows.append({"device_id": device, "kind": kind, "last_time": None, "last_seen_at": None,
                                 "events": 0, "silent": missing, "status": "missing" if missing else "waiting"})
                    continue
                _, last, received, count = entry
                silent = (wall - received > quiet or (now is not None and now - last > quiet)) \
                    and (kind != "emergency" or device in self._en_route)
                rows.append({"device_id": device, "kind": kind, "last_time": last, "last_seen_at": datetime.fromtimestamp(received, UTC).isoformat(),
                             "events": count, "silent": silent, "status": "silent" if silent else "reporting"})
            return rows

    def tick_message(self) -> dict[str, Any]:
        state = self.estimator.state
        return {"type": "tick", "time": self.city_time,
                "intersections": [{k: row[k] for k in ("id", "phase", "signal_state", "mode", "controller", "queue_veh")}
                                  for row in (self._intersection_row(i) for i in self.network.intersections)],
                "lanes": {lane: round(s.queue, 1) for lane, s in state.lanes.items()}}

    # -- live listeners --------------------------------------------------------------

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` with every live message; returns the function that stops it."""
        with self._lock:
            self._listeners.append(listener)

        def stop() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)
        return stop

    def _notify(self, message: dict[str, Any]) -> None:
        for listener in list(self._listeners):
            listener(message)


def jsonable(entry: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(entry, default=str))


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _greens(state: str) -> frozenset[int]:
    return frozenset(i for i, c in enumerate(state) if c in "gG")


def _authority(index: int, event, principal: Principal) -> list[tuple[int, str, str]]:
    """Whether the key may post this event: speak for its device, and its kind: only a
    registered emergency vehicle's key (or an administrator) asks for priority, an
    emergency key posts nothing else, and only a key that names the time server itself
    declares a replay's time (it can stop a whole city: no wildcard grants it)."""
    if not principal.may_speak_for(event.device_id):
        return [(index, "device_id", f"key {principal.name!r} may not report for device {event.device_id!r}")]
    if event.kind == "clock" and principal.role != "admin" and event.device_id not in principal.devices:
        return [(index, "device_id", f"key {principal.name!r} may not speak for the time server {event.device_id!r}: "
                                     "it must be named in the key itself (no wildcard covers it), e.g. "
                                     f"--device '*' --device {event.device_id}")]
    if event.kind == "emergency" and principal.role not in PRIORITY_ROLES:
        return [(index, "kind", f"key {principal.name!r} ({principal.role}) may not ask for priority: emergency "
                                "vehicles report with their own emergency key")]
    if event.kind != "emergency" and principal.role not in FIELD_ROLES:
        return [(index, "kind", f"key {principal.name!r} ({principal.role}) may post only emergency vehicle reports")]
    return []


def _conflicts(batch: list[StoredEvent], conflicts: list[StoredEvent]) -> list[tuple[int | None, str, str]]:
    keys = {(e.device_id, e.seq) for e in conflicts}
    return [(index, "seq", f"{e.device_id!r} sent sequence number {e.seq} before with other content; this copy is "
                           "refused and kept for inspection") for index, e in enumerate(batch) if (e.device_id, e.seq) in keys]


def _first_copies(events: list, fresh: list[StoredEvent]) -> list:
    """The events the store took as new, each once (a second copy in the batch is a repeat)."""
    wanted = {(e.device_id, e.seq) for e in fresh}
    new = []
    for e in events:
        if (e.device_id, e.seq) in wanted:
            wanted.discard((e.device_id, e.seq))
            new.append(e)
    return new
