"""Incident detection from device events only: vehicles that enter a stretch of road
and do not come out.

Each approach to a signalised intersection is cut by its loops into zones: from the
advance loops to the stop-line loops, and (on long links) from the entry loops to the
advance loops. Summed over the approach's lanes, loop counts give the number of
vehicles inside a zone exactly, whatever lanes they change to inside it. When the
loops at a zone's downstream end have seen free road for a few seconds, nothing is
queued inside it: every vehicle in it is moving and should leave within the time it
takes to cross the zone. So at such moments the vehicles inside, less those that
entered within that crossing time, are vehicles that have stopped where no queue
explains it — zero in normal traffic (or a constant offset where counting has
drifted), one more for a broken-down vehicle, two for a crash. A zone whose excess
stays raised above its usual level at every such moment for a minute raises an
alert, with those counts as its evidence; it is resolved when the excess comes back
down (the vehicles drove off or were towed and the count re-based).

One configuration for every city: the windows are in seconds of traffic, not tuned
per network.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from urbanbrain.core.bus import EventBus
from urbanbrain.devices.inventory import Station
from urbanbrain.devices.protocol import DetectorReport
from urbanbrain.network.model import Network


@dataclass(frozen=True)
class DetectorSettings:
    window_s: float = 60.0  # the excess must stay raised this long
    baseline_s: float = 600.0  # its usual level: the lowest over this long before the window
    free_occupancy: float = 0.05  # downstream loops below this occupancy see free road
    settle_s: float = 5.0  # ... for this long before a moment counts (the last queued vehicle has left)
    min_moments: int = 15  # free-road moments needed within the window
    crossing_factor: float = 2.0  # a moving vehicle crosses a zone within this times its free-flow time
    crossing_extra_s: float = 5.0  # plus this (turning, slowing for the signal)
    clear_s: float = 30.0  # an alert is resolved once the excess has been back down this long


@dataclass
class IncidentAlert:
    """An incident found: where (the approach edge, the zone between two loop lines), when, and why."""

    id: str
    edge: str
    intersection: str
    zone: str  # "advance-stopline" or "entry-advance"
    from_m: float
    to_m: float
    detected_at: float
    started_at: float  # the start of the window over which the floor stayed raised
    evidence: dict
    resolved_at: float | None = None


@dataclass
class _Zone:
    edge: str
    intersection: str
    name: str
    inflow: frozenset[str]  # loop ids counting vehicles in
    outflow: frozenset[str]  # loop ids counting vehicles out (their occupancy tells free road)
    from_m: float
    to_m: float
    crossing_s: float
    count: int = 0
    entries: deque = field(default_factory=deque)  # (time, vehicles in) over the crossing time
    history: deque = field(default_factory=deque)  # (time, excess) at free-road moments, baseline + window
    free_since: float | None = None
    alert: IncidentAlert | None = None
    low_since: float | None = None


class IncidentDetector:
    """Listens to detector reports on the bus; `alerts` lists what it found."""

    def __init__(self, network: Network, stations: list[Station], bus: EventBus | None = None,
                 settings: DetectorSettings | None = None):
        self.settings = settings or DetectorSettings()
        self.alerts: list[IncidentAlert] = []
        self._zones: list[_Zone] = []
        self._by_loop: dict[str, list[tuple[_Zone, int]]] = {}
        owner = {a.edge: i.id for i in network.intersections.values() for a in i.approaches}
        for station in stations:
            by_edge: dict[str, dict[str, list]] = {}
            for loop in station.loops:
                edge = network.lanes[loop.lane].edge
                if edge in owner:
                    by_edge.setdefault(edge, {}).setdefault(loop.position, []).append(loop)
            for edge, loops in by_edge.items():
                for name, upstream, downstream in (("advance-stopline", "advance", "stopline"),
                                                   ("entry-advance", "entry", "advance")):
                    ups, downs = loops.get(upstream, []), loops.get(downstream, [])
                    if not ups or not downs or {l.lane for l in ups} != {l.lane for l in downs}:
                        continue
                    start, end = min(l.pos_m for l in ups), max(l.pos_m for l in downs)
                    speed = min(network.lanes[l.lane].speed_limit_ms for l in ups)
                    crossing = self.settings.crossing_factor * (end - start) / max(1.0, speed) + self.settings.crossing_extra_s
                    zone = _Zone(edge, owner[edge], name, frozenset(l.detector_id for l in ups),
                                 frozenset(l.detector_id for l in downs), start, end, crossing)
                    self._zones.append(zone)
                    for loop in ups:
                        self._by_loop.setdefault(loop.detector_id, []).append((zone, +1))
                    for loop in downs:
                        self._by_loop.setdefault(loop.detector_id, []).append((zone, -1))
        self._outflow_occupancy: dict[str, float] = {}
        if bus is not None:
            bus.subscribe("detector", self.on_detector)

    def on_detector(self, report: DetectorReport) -> None:
        touched: dict[int, _Zone] = {}
        for reading in report.readings:
            for zone, sign in self._by_loop.get(reading.detector_id, ()):
                zone.count = max(0, zone.count + sign * reading.count)  # a vehicle that began its trip inside left uncounted
                touched[id(zone)] = zone
                if sign > 0 and reading.count:
                    zone.entries.append((report.time, reading.count))
                if sign < 0:
                    self._outflow_occupancy[reading.detector_id] = reading.occupancy
        for zone in touched.values():
            self._update(zone, report.time)

    def _update(self, zone: _Zone, now: float) -> None:
        s = self.settings
        while zone.entries and zone.entries[0][0] <= now - zone.crossing_s:
            zone.entries.popleft()
        while zone.history and zone.history[0][0] < now - s.window_s - s.baseline_s:
            zone.history.popleft()
        if all(self._outflow_occupancy.get(loop, 0.0) < s.free_occupancy for loop in zone.outflow):
            zone.free_since = now if zone.free_since is None else zone.free_since
        else:
            zone.free_since = None
        if zone.free_since is None or now - zone.free_since < s.settle_s:
            return  # something may be queued inside: the count says nothing now
        excess = max(0, zone.count - sum(n for _, n in zone.entries))
        zone.history.append((now, excess))
        recent = [e for t, e in zone.history if t >= now - s.window_s]
        before = [e for t, e in zone.history if t < now - s.window_s]
        first_before = next((t for t, _ in zone.history), now)
        if not before or first_before > now - s.window_s - 0.5 * s.baseline_s:
            return  # not watched long enough to know its usual level
        raised = min(recent) - min(before)
        if zone.alert is None:
            if raised >= 1 and len(recent) >= s.min_moments:
                zone.alert = IncidentAlert(
                    id=f"{zone.edge}@{now:.0f}", edge=zone.edge, intersection=zone.intersection, zone=zone.name,
                    from_m=zone.from_m, to_m=zone.to_m, detected_at=now, started_at=now - s.window_s,
                    evidence={"vehicles_stopped": raised, "window_s": s.window_s, "free_road_moments": len(recent),
                              "usual_excess": min(before), "excess_now": min(recent),
                              "crossing_s": round(zone.crossing_s, 1)})
                self.alerts.append(zone.alert)
            return
        if raised < 1:
            zone.low_since = zone.low_since if zone.low_since is not None else now
            if now - zone.low_since >= s.clear_s:
                zone.alert.resolved_at = now
                zone.alert = None
                zone.low_since = None
        else:
            zone.low_since = None
