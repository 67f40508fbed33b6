"""Priority for emergency vehicles: a route on current travel times and a green wave.

An emergency vehicle's transponder reports where it is and where it must go. The
brain plans its route (fastest on the travel times the detectors give, see
`routing`) and sends it to the vehicle's navigation unit; then, for every signal the
vehicle will reach within the look-ahead, it works out when the green must begin so
that the queue standing in front of the vehicle has started and crossed by the time it
arrives:

    lead = green may end in (safety layer) + change interval + start-up + headway x queue ahead + margin

and once the vehicle's arrival is that close, the signal goes to the phase that serves
the vehicle's turn and holds it until the vehicle is past the stop line. Everything
goes through the normal decision path, so the safety layer still enforces minimum
greens, change intervals and conflict freedom: priority asks early instead of cutting
corners. Several vehicles wanting one signal are served by priority, then by who
arrives first. After the vehicle has passed, the intersection goes back to the
controller; its recovery time is how long until no approach lane there holds more than
it did when the priority began (within one vehicle, in all: the queues the priority
built on the other approaches are gone), from the state estimate, so the brain itself
can report it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from urbanbrain.control.base import PhaseDecision
from urbanbrain.control.safety import SafetyLayer
from urbanbrain.core.bus import EventBus
from urbanbrain.devices.protocol import EmergencyVehicleReport, RouteAdvice
from urbanbrain.emergency.routing import RouteError, fastest_route
from urbanbrain.network.model import Network
from urbanbrain.state.model import CityState


@dataclass(frozen=True)
class PrioritySettings:
    lookahead_s: float = 120.0  # signals the vehicle reaches within this are planned for
    margin_s: float = 5.0  # the queue in front starts moving this much earlier than strictly needed
    startup_s: float = 2.0  # start-up lost time of a standing queue
    headway_s: float = 2.0  # saturation headway per queued vehicle
    recovery_limit_s: float = 600.0  # a recovery not seen within this is reported as this long
    recovery_tolerance_veh: float = 1.0  # queues within this of where they stood count as recovered
    silent_s: float = 10.0  # a vehicle not heard from for this long gets no more priority (a lost transponder)


@dataclass
class Preemption:
    """One signal held for one emergency vehicle, and how long the intersection took to recover."""

    intersection: str
    vehicle: str
    phase: int
    started: float
    queue_before: dict[str, float]  # vehicles standing on each approach lane when it began
    ended: float | None = None
    recovered: float | None = None
    interrupted: bool = False  # priority came back to it before it recovered: no recovery to measure

    @property
    def recovery_s(self) -> float | None:
        if self.ended is None or self.recovered is None:
            return None
        return self.recovered - self.ended

    def to_json(self) -> dict[str, Any]:
        return {"intersection": self.intersection, "vehicle": self.vehicle, "phase": self.phase,
                "started": self.started, "ended": self.ended, "queue_before": round(sum(self.queue_before.values()), 1),
                "recovery_s": self.recovery_s}


@dataclass
class _Vehicle:
    report: EmergencyVehicleReport
    route: list[str] = field(default_factory=list)
    index: int = 0  # where on the route the vehicle is
    pace: float = 1.0  # the vehicle's observed speed against the limits (emergency vehicles may exceed them)


@dataclass(frozen=True)
class _Signal:
    """Where a route step (road -> next road) crosses a signal: which phase serves it best."""

    intersection: str
    phase_scores: dict[int, float]  # phase -> how fully it serves the turn (protected 2, permissive 1 per lane)
    lanes: dict[int, tuple[str, ...]]  # phase -> the in-lanes it gives the turn


@dataclass(frozen=True)
class _Request:
    key: tuple[int, float]  # (priority, arrival): the smaller wins a signal
    vehicle: str
    phase: int
    reason: str  # the quantities compared: arrival against the lead the green needs


class EmergencyPriority:
    """Routes and green waves for the emergency vehicles that report to the brain."""

    def __init__(self, network: Network, bus: EventBus, settings: PrioritySettings | None = None, issuer: str = "brain"):
        self.network = network
        self.bus = bus
        self.settings = settings or PrioritySettings()
        self.issuer = issuer
        self.vehicles: dict[str, _Vehicle] = {}
        self.preemptions: list[Preemption] = []
        self.problems: list[str] = []  # reports the brain could not act on, and why
        self._active: dict[str, Preemption] = {}  # intersection -> its running preemption
        self._recovering: list[Preemption] = []
        self._seq = 0
        self._signals = _signals_by_step(network)
        bus.subscribe("emergency", self.on_report)

    def on_report(self, report: EmergencyVehicleReport) -> None:
        if report.status != "en_route":
            self.vehicles.pop(report.vehicle, None)
            return
        vehicle = self.vehicles.setdefault(report.vehicle, _Vehicle(report))
        vehicle.report = report
        if report.edge in vehicle.route[vehicle.index:]:
            vehicle.index = vehicle.route.index(report.edge, vehicle.index)
        else:
            vehicle.route = []  # new, or off its route: plan again
        road = self.network.roads.get(report.edge)
        if road is not None and road.speed_limit_ms > 0:
            vehicle.pace = min(2.0, max(vehicle.pace, report.speed_ms / road.speed_limit_ms))

    def adjust(self, decisions: list[PhaseDecision], state: CityState, safety: SafetyLayer,
               now: float) -> list[PhaseDecision]:
        """The controller's decisions with the signals ahead of emergency vehicles taken over."""
        for vehicle_id, vehicle in list(self.vehicles.items()):
            if now - vehicle.report.time > self.settings.silent_s:
                self.problems.append(f"{now:g}: {vehicle_id}: silent for {now - vehicle.report.time:.0f} s, priority ended")
                del self.vehicles[vehicle_id]
            elif not vehicle.route:
                self._plan(vehicle_id, vehicle, state, now)
        requests: dict[str, _Request] = {}
        for vehicle_id, vehicle in self.vehicles.items():
            for intersection_id, request in self._requests(vehicle_id, vehicle, state, safety, now):
                if intersection_id not in requests or request.key < requests[intersection_id].key:
                    requests[intersection_id] = request
        self._track(requests, state, now)
        kept = [d for d in decisions if d.note or d.intersection not in requests]
        return kept + [PhaseDecision(i, r.phase, safety.limits.min_green_s, r.reason)
                       for i, r in sorted(requests.items())]

    def holding(self) -> list[str]:
        """The intersections whose signals priority decides this second."""
        return sorted(self._active)

    def recovery_times_s(self) -> list[float]:
        """Recovery of every preemption that has ended: measured, or the limit if not seen."""
        times = []
        for p in self.preemptions:
            if p.ended is None or p.interrupted:
                continue
            times.append(p.recovery_s if p.recovery_s is not None else self.settings.recovery_limit_s)
        return times

    def _plan(self, vehicle_id: str, vehicle: _Vehicle, state: CityState, now: float) -> None:
        report = vehicle.report
        try:
            vehicle.route = fastest_route(self.network, report.edge, report.destination, state)
        except RouteError as exc:
            self.problems.append(f"{now:g}: {vehicle_id}: {exc}")
            del self.vehicles[vehicle_id]
            return
        vehicle.index = 0
        self._seq += 1
        self.bus.publish(RouteAdvice(device_id=self.issuer, seq=self._seq, time=now, vehicle=vehicle_id,
                                     edges=vehicle.route, reason="fastest on current travel times"))

    def _requests(self, vehicle_id: str, vehicle: _Vehicle, state: CityState, safety: SafetyLayer, now: float):
        """The signals ahead whose green must begin or hold now for this vehicle."""
        s = self.settings
        report, route = vehicle.report, vehicle.route
        eta = 0.0
        for k in range(vehicle.index, len(route) - 1):
            road = self.network.roads[route[k]]
            length = road.length_m - report.position_m if k == vehicle.index else road.length_m
            eta += max(0.0, length) / max(road.speed_limit_ms * vehicle.pace, 0.1)
            if eta > s.lookahead_s:
                return
            signal = self._signals.get((route[k], route[k + 1]))
            if signal is None or not safety.controls(signal.intersection):
                continue
            intersection = self.network.intersections[signal.intersection]
            want = max(signal.phase_scores, key=lambda p: (signal.phase_scores[p], -p))
            # it takes the lane with the shortest queue (it may pass on the right; drivers make way)
            queue = min((state.lanes[lane].queue for lane in signal.lanes[want] if lane in state.lanes), default=0.0)
            discharge = s.startup_s + s.headway_s * queue
            clearance = intersection.clearance.total_s
            current = safety.phase(signal.intersection)
            if current == want:  # hold it, unless a round trip to another green would still be back in time
                lead = 2 * clearance + safety.limits.min_green_s + discharge + s.margin_s
                what = f"hold green {want}"
            else:
                lead = (safety.earliest_change_s(signal.intersection, now) or 0.0) + clearance + discharge + s.margin_s
                what = f"go to green {want}"
            if eta > lead:
                continue
            reason = (f"emergency: {report.service} {vehicle_id} (priority {report.priority}) reaches the stop line in "
                      f"{eta:.0f} s; {what}: the {queue:.0f} vehicles in front need {discharge:.0f} s, the change "
                      f"{clearance:g} s; lead {lead:.0f} s")
            yield signal.intersection, _Request((report.priority, now + eta), vehicle_id, want, reason)

    def _track(self, requests: dict[str, _Request], state: CityState, now: float) -> None:
        for intersection_id, running in list(self._active.items()):
            request = requests.get(intersection_id)
            if request is None or request.vehicle != running.vehicle:
                running.ended = now
                self._recovering.append(running)
                del self._active[intersection_id]
        for intersection_id, request in requests.items():
            if intersection_id not in self._active:
                for p in self._recovering:
                    if p.intersection == intersection_id:
                        p.interrupted = True
                started = Preemption(intersection_id, request.vehicle, request.phase, now, _standing(self.network, state, intersection_id))
                self._active[intersection_id] = started
                self.preemptions.append(started)
        still = []
        for p in self._recovering:
            if p.interrupted:
                continue
            now_standing = _standing(self.network, state, p.intersection)
            excess = sum(max(0.0, q - p.queue_before.get(lane, 0.0)) for lane, q in now_standing.items())
            if excess <= self.settings.recovery_tolerance_veh:
                p.recovered = now
            elif now - p.ended < self.settings.recovery_limit_s:
                still.append(p)
        self._recovering = still


def _standing(network: Network, state: CityState, intersection_id: str) -> dict[str, float]:
    """Vehicles standing on each approach lane (and the feeder roads behind it)."""
    lanes = network.intersections[intersection_id].in_lanes
    return {lane: state.lanes[lane].queue + state.lanes[lane].upstream_queue for lane in lanes if lane in state.lanes}


def _signals_by_step(network: Network) -> dict[tuple[str, str], _Signal]:
    """Every (road, next road) a signal controls, with the phases that give that turn green."""
    scores: dict[tuple[str, str, str], dict[int, float]] = {}
    lanes: dict[tuple[str, str, str], dict[int, set[str]]] = {}
    for intersection in network.intersections.values():
        for phase in intersection.phases:
            for m in intersection.movements:
                char = phase.state[m.signal_group]
                if char not in "Gg":
                    continue
                key = (network.lanes[m.in_lane].edge, network.lanes[m.out_lane].edge, intersection.id)
                scores.setdefault(key, {}).setdefault(phase.index, 0.0)
                scores[key][phase.index] += 2.0 if char == "G" else 1.0
                lanes.setdefault(key, {}).setdefault(phase.index, set()).add(m.in_lane)
    return {(a, b): _Signal(i, scores[(a, b, i)], {p: tuple(sorted(v)) for p, v in lanes[(a, b, i)].items()})
            for (a, b, i) in scores}
