"""Incidents injected into the twin: a stalled vehicle blocking a lane, or a crash of
two vehicles blocking one or two lanes, for a set time at a set place.

This is part of the simulated world, not of the brain: the injector drives SUMO
directly, and the ground truth it records (where, when the blockage really began
and ended) goes to the evaluation only, never onto the bus, so a detector can only
find an incident through what the devices see of its effects.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Literal

from urbanbrain.network.model import Network

Kind = Literal["stalled_vehicle", "crash"]
KINDS: tuple[Kind, ...] = ("stalled_vehicle", "crash")
MIN_DURATION_S, MAX_DURATION_S = 300.0, 1800.0
MIN_HORIZON_S = MIN_DURATION_S + 60.0  # a run shorter than this has no room for a random incident
EDGE_MARGIN_M = 15.0  # not at the very ends of a lane (inside the junction's box or on its exit)


class IncidentError(ValueError):
    """An incident that cannot be placed as asked (unknown edge or lane, out of range)."""


@dataclass(frozen=True)
class Incident:
    id: str
    kind: Kind
    edge: str
    lanes: tuple[int, ...]  # lane indices blocked (a crash may block two adjacent lanes)
    position_m: float  # from the lane's start
    start_s: float
    duration_s: float
    movable: bool = False  # a random incident moves to where traffic is if nobody comes to its place (see IncidentInjector)

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    @property
    def lane_ids(self) -> tuple[str, ...]:
        return tuple(f"{self.edge}_{index}" for index in self.lanes)


@dataclass
class TruthRecord:
    """What really happened (for the evaluation): from when the lane was blocked (the first
    of the incident's vehicles stood in place: a crash's second vehicle comes along
    seconds later, the lane is blocked already), and when it was cleared (its duration
    after all of its vehicles stood)."""

    incident: Incident
    blocked_from: float | None = None
    complete_from: float | None = None  # all of its vehicles stood in place
    cleared_at: float | None = None
    vehicles: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {**asdict(self.incident), "lanes": list(self.incident.lanes), "blocked_from": self.blocked_from,
                "complete_from": self.complete_from, "cleared_at": self.cleared_at, "vehicles": list(self.vehicles)}


def validate(incident: Incident, network: Network) -> None:
    """Raise IncidentError naming what is wrong with an incident for this network."""
    lanes = network.edge_lanes(incident.edge)
    if not lanes:
        raise IncidentError(f"incident {incident.id!r}: no edge {incident.edge!r} in network {network.name!r}")
    if incident.kind not in KINDS:
        raise IncidentError(f"incident {incident.id!r}: kind {incident.kind!r}: choose from {', '.join(KINDS)}")
    wanted = 1 if incident.kind == "stalled_vehicle" else len(incident.lanes)
    if not incident.lanes or len(incident.lanes) != wanted or len(incident.lanes) > 2:
        raise IncidentError(f"incident {incident.id!r}: a {incident.kind} blocks "
                            f"{'one lane' if incident.kind == 'stalled_vehicle' else 'one or two lanes'}, "
                            f"not {list(incident.lanes)}")
    if any(not 0 <= index < len(lanes) for index in incident.lanes):
        raise IncidentError(f"incident {incident.id!r}: edge {incident.edge!r} has lanes 0..{len(lanes) - 1}, "
                            f"not {list(incident.lanes)}")
    if len(incident.lanes) == 2 and abs(incident.lanes[0] - incident.lanes[1]) != 1:
        raise IncidentError(f"incident {incident.id!r}: the two lanes a crash blocks must be adjacent, not {list(incident.lanes)}")
    length = min(network.lanes[f"{incident.edge}_{i}"].length_m for i in incident.lanes)
    if not EDGE_MARGIN_M <= incident.position_m <= length - EDGE_MARGIN_M:
        raise IncidentError(f"incident {incident.id!r}: position {incident.position_m:g} m is outside "
                            f"{EDGE_MARGIN_M:g}..{length - EDGE_MARGIN_M:g} m on edge {incident.edge!r}")
    if not MIN_DURATION_S <= incident.duration_s <= MAX_DURATION_S:
        raise IncidentError(f"incident {incident.id!r}: duration {incident.duration_s:g} s is outside "
                            f"{MIN_DURATION_S:g}..{MAX_DURATION_S:g} s (5 to 30 minutes)")
    if incident.start_s < 0:
        raise IncidentError(f"incident {incident.id!r}: start {incident.start_s:g} s is negative")


def random_incidents(network: Network, count: int, *, seed: int, begin_s: float, horizon_s: float,
                     kinds: tuple[Kind, ...] = KINDS) -> list[Incident]:
    """`count` incidents at random places on the approaches to signalised intersections
    (where a city has its devices) and random times, none overlapping another on the
    same edge; each lasts 5 to 30 minutes and ends within the horizon."""
    rng = random.Random(seed)
    edges = sorted({a.edge for i in network.intersections.values() for a in i.approaches
                    if min(network.lanes[lane].length_m for lane in a.lanes) >= 2 * EDGE_MARGIN_M + 10})
    if not edges:
        raise IncidentError(f"network {network.name!r} has no approach long enough for an incident")
    if horizon_s < MIN_HORIZON_S:
        raise IncidentError(f"a horizon of {horizon_s:g} s is too short for incidents of at least {MIN_DURATION_S:g} s")
    incidents: list[Incident] = []
    busy: dict[str, list[tuple[float, float]]] = {}
    attempts = 0
    while len(incidents) < count:
        attempts += 1
        if attempts > 1000 * max(1, count):
            raise IncidentError(f"could not place {count} non-overlapping incidents on {network.name!r}")
        edge = rng.choice(edges)
        lanes = network.edge_lanes(edge)
        kind = rng.choice(kinds)
        if kind == "crash" and len(lanes) >= 2 and rng.random() < 0.5:
            first = rng.randrange(len(lanes) - 1)
            blocked = (first, first + 1)
        else:
            blocked = (rng.randrange(len(lanes)),)
        length = min(network.lanes[f"{edge}_{i}"].length_m for i in blocked)
        duration = float(rng.randint(int(MIN_DURATION_S), int(min(MAX_DURATION_S, horizon_s - 60))))
        start = begin_s + float(rng.randint(60, int(horizon_s - duration)))
        if any(start < b and a < start + duration for a, b in busy.get(edge, [])):
            continue
        position = round(rng.uniform(EDGE_MARGIN_M, length - EDGE_MARGIN_M), 1)
        incident = Incident(f"inc{len(incidents) + 1}", kind, edge, blocked, position, start, duration, movable=True)
        validate(incident, network)
        busy.setdefault(edge, []).append((start, start + duration))
        incidents.append(incident)
    return sorted(incidents, key=lambda i: i.start_s)


@dataclass
class IncidentInjector:
    """Plays a list of incidents in a running twin (call `step` after every simulation step).

    An incident happens to traffic that is there: at its start the next vehicle on
    the blocked lane that can still stop before the place breaks down there (a crash:
    the next vehicle behind it, or on the adjacent lane for a two-lane crash, stops
    too). So the vehicles involved were seen by the loops upstream like any other,
    as in a real city, and a lane without traffic gets its incident when a vehicle
    comes — or, for a random (`movable`) one, where traffic is: if nobody has come
    within `relocate_after_s`, it happens to a vehicle drawn at random among those on
    an approach with no incident, as incidents happen where vehicles drive. After the
    duration the vehicles are towed away (removed).
    """

    incidents: list[Incident]
    network: Network | None = None  # needed to move random incidents to where traffic is
    seed: int = 0
    relocate_after_s: float = 30.0
    truth: dict[str, TruthRecord] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.truth = {i.id: TruthRecord(i) for i in self.incidents}
        self._waiting = sorted(self.incidents, key=lambda i: i.start_s)
        self._active: list[TruthRecord] = []
        self._rng = random.Random(self.seed)

    def step(self, sumo: ModuleType, now: float) -> None:
        taken = {v for r in self.truth.values() for v in r.vehicles}  # involved in some incident already
        for incident in [i for i in self._waiting if i.start_s <= now]:
            record = self.truth[incident.id]
            if (not record.vehicles and incident.movable and self.network is not None
                    and now - incident.start_s >= self.relocate_after_s):
                moved = self._relocate(sumo, incident)
                if moved is not None:
                    self._waiting[self._waiting.index(incident)] = moved
                    record.incident = incident = moved
            stopped = self._involve(sumo, incident, len(record.vehicles), taken)
            record.vehicles += stopped
            taken.update(stopped)
            needed = 2 if incident.kind == "crash" else 1
            if len(record.vehicles) == needed or (record.vehicles and now - incident.start_s > 120.0):
                self._waiting.remove(incident)  # a crash whose second vehicle never came blocks with one
                self._active.append(record)
        for record in self.truth.values():
            if record.blocked_from is None and any(_stopped(sumo, v) for v in record.vehicles):
                record.blocked_from = now
        for record in list(self._active):
            if record.complete_from is None and all(_stopped(sumo, v) for v in record.vehicles):
                record.complete_from = now
            if record.complete_from is not None and now >= record.complete_from + record.incident.duration_s:
                for vehicle in record.vehicles:
                    try:
                        sumo.vehicle.remove(vehicle)
                    except sumo.TraCIException:
                        pass  # it had left already
                record.cleared_at = now
                self._active.remove(record)

    def _relocate(self, sumo: ModuleType, incident: Incident) -> Incident | None:
        """The same incident, placed ahead of a vehicle drawn at random on an approach
        with no incident of its own (None if no vehicle can stop anywhere now)."""
        taken = {r.incident.edge for r in self.truth.values() if r.vehicles and r.cleared_at is None}
        candidates = []
        for intersection in self.network.intersections.values():
            for approach in intersection.approaches:
                if approach.edge in taken:
                    continue
                for lane in approach.lanes:
                    length = self.network.lanes[lane].length_m
                    for vehicle in sumo.lane.getLastStepVehicleIDs(lane):
                        speed = sumo.vehicle.getSpeed(vehicle)
                        earliest = (sumo.vehicle.getLanePosition(vehicle) + speed * speed / 9.0 + speed + 5.0)
                        if max(earliest, EDGE_MARGIN_M) <= length - EDGE_MARGIN_M:
                            candidates.append((lane, max(earliest, EDGE_MARGIN_M), length - EDGE_MARGIN_M))
        if not candidates:
            return None
        lane, low, high = self._rng.choice(sorted(candidates))
        edge, index = self.network.lanes[lane].edge, self.network.lanes[lane].index
        lanes = (index,)
        count = len(self.network.edge_lanes(edge))
        if len(incident.lanes) == 2 and count >= 2:
            lanes = (index, index + 1) if index + 1 < count else (index - 1, index)
            lanes = tuple(sorted(lanes)) if index in lanes else (index,)
        return replace(incident, edge=edge, lanes=lanes, position_m=round(self._rng.uniform(low, high), 1))

    @staticmethod
    def _involve(sumo: ModuleType, incident: Incident, already: int, taken: set[str]) -> tuple[str, ...]:
        """Stop the next vehicle the incident needs, after the `already` it has (none if
        none can stop there now). Never one in `taken`, those of any incident: a vehicle
        already standing there would be "broken down" again at once, and towing it for
        the one incident would end the other as well (found in the benches' truth: 1 of
        the demo city's 50 incidents, 1 of hangzhou_4x4's and 3 of ingolstadt7's reused a
        vehicle of another)."""
        lanes = list(incident.lanes)
        wanted: list[tuple[int, float]] = [(lanes[0], incident.position_m)]
        if incident.kind == "crash":
            wanted.append((lanes[1], incident.position_m) if len(lanes) == 2 else (lanes[0], incident.position_m - 8.0))
        if already >= len(wanted):
            return ()
        lane, position = wanted[already]
        vehicle = _next_able_to_stop(sumo, f"{incident.edge}_{lane}", position, exclude=taken)
        if vehicle is None:
            return ()
        sumo.vehicle.setStop(vehicle, incident.edge, pos=position, laneIndex=lane, duration=incident.duration_s + 7200.0)
        return (vehicle,)

    def write_truth(self, path: Path) -> None:
        """The ground truth, one JSON object per line (for the evaluation only)."""
        path.write_text("".join(json.dumps(r.to_json()) + "\n" for r in self.truth.values()), encoding="utf-8")


def _next_able_to_stop(sumo: ModuleType, lane: str, position: float, exclude: set[str]) -> str | None:
    """The vehicle on `lane` nearest before `position` that can still brake to a stop there."""
    best, best_gap = None, float("inf")
    for vehicle in sumo.lane.getLastStepVehicleIDs(lane):
        if vehicle in exclude:
            continue
        speed = sumo.vehicle.getSpeed(vehicle)
        gap = position - sumo.vehicle.getLanePosition(vehicle)
        brake = speed * speed / (2.0 * max(0.5, sumo.vehicle.getDecel(vehicle))) + speed + 2.0
        if brake <= gap < best_gap:
            best, best_gap = vehicle, gap
    return best


def _stopped(sumo: ModuleType, vehicle: str) -> bool:
    try:
        return sumo.vehicle.isStopped(vehicle) and sumo.vehicle.getSpeed(vehicle) < 0.1
    except sumo.TraCIException:
        return False  # not there (yet, or any more)
