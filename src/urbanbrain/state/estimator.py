"""Traffic state from device events only.

A link is watched by up to four loops per lane (see the device inventory): entry
(the link's upstream end), mid-zone (occupancy only), advance (some way before the
stop line, past the point where vehicles change lanes) and stop-line. Two input-output counts follow:

- between advance and stop-line loops, per lane: vehicles here stay in their lane,
  so the lane count is exact but for missed detections;
- between entry and advance loops, per approach: vehicles here still change lanes,
  so only the approach total is known; it is shared among the lanes by density,
  which loop occupancy measures (a slow lane holds more vehicles than its share
  of the flow), sampled at the entry, mid-zone and advance loops: vehicles drift
  to the kerb lane mid-link and back before the stop line, so the ends alone
  would miss where they are.

Counting drifts, so each interval it is corrected by what occupancy proves: a
vehicle standing on the stop-line loop is still on the link (it was counted out on
arrival); a queue standing over the advance loop fills the lane up to it; a lane
that has had green for a while with nothing crossing its stop line holds at most
the vehicles that entered recently. What drift remains moves counts between the
lanes of one approach, never out of it.

A road leaving a signal that no other loop watches has an exit zone at its start: standing
occupied with nobody coming onto it, the queue on it reaches back to the junction. That,
a feeder road standing over its start loop, and an approach standing over its entry loop
are the city's spillback (`CityState.spillback_s`): roads that cannot take more vehicles.

Feeder roads upstream of a short approach are counted per road (in at its start,
out at its end); their vehicles count as queued while the queue stands over the
road's end loop, and that queue is shared among the approach's lanes. A feeder lane
standing over its start loop is full (on a road at the network's edge, vehicles
appear beside that loop and are never counted in).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from urbanbrain.core.bus import EventBus
from urbanbrain.devices.inventory import DeviceLayout, Station, place_devices
from urbanbrain.devices.protocol import CameraPassage, ControllerState, DetectorReport
from urbanbrain.network.model import GREEN_CHARS, Network
from urbanbrain.state.model import CityState, LaneState, signal_status

JAM_SPACING_M = 7.5  # metres of lane per standing car (length + gap); shared with the controllers
STANDING_OCCUPANCY = 0.95
STANDING_S = 3.0
SETTLE_GREEN_S = 6.0
QUIET_S = 4.0
CAP_TRAVEL_FACTOR = 2.0  # vehicles slower than the limit still count as "recent" for twice the free travel time
FLOW_TAU_S = 300.0
SHARE_TAU_S = 300.0
SPEED_WEIGHT = 0.2


class _Recent:
    """Counts in a sliding time window."""

    def __init__(self) -> None:
        self._items: deque[tuple[float, int]] = deque()

    def add(self, now: float, count: int) -> None:
        if count:
            self._items.append((now, count))

    def since(self, since: float) -> int:
        return sum(n for t, n in self._items if t > since)

    def forget_before(self, before: float) -> None:
        while self._items and self._items[0][0] <= before:
            self._items.popleft()


@dataclass
class _Lane:
    id: str
    intersection: str
    groups: tuple[int, ...]
    zone_m: float  # advance loop -> stop-line loop
    free_speed_ms: float
    state: LaneState
    balance: float = 0.0  # advance in - stop-line out, corrected
    stop_occupancy: float = 0.0
    share_in: float = 0.0  # recent occupancy at the entry, mid and advance loops, for sharing the entry zone
    share_mid: float = 0.0
    share_out: float = 0.0
    has_mid: bool = False
    entries: _Recent = field(default_factory=_Recent)
    green_since: float | None = None
    last_departure: float = float("-inf")
    last_stop_occupied: float = float("-inf")
    advance_standing_s: float = 0.0

    @property
    def travel_s(self) -> float:
        return self.zone_m / max(self.free_speed_ms, 1.0)


@dataclass
class _Feeder:
    """One feeder road: vehicles counted in at its start and out at its end."""

    length_m: float
    free_speed_ms: float
    vehicles: float = 0.0
    entries: _Recent = field(default_factory=_Recent)
    standing_s: dict[str, float] = field(default_factory=dict)  # per lane, end loop standing
    start_standing_s: dict[str, float] = field(default_factory=dict)  # per lane, start loop standing

    @property
    def queue(self) -> float:
        return self.vehicles if any(s >= STANDING_S for s in self.standing_s.values()) else 0.0


@dataclass
class _Approach:
    lanes: list[_Lane]
    zone_m: float  # entry loop -> advance loop, 0 without entry loops
    feeders: list[_Feeder] = field(default_factory=list)
    upstream: float = 0.0  # vehicles between entry and advance loops
    entries: _Recent = field(default_factory=_Recent)
    entry_standing_s: float = 0.0

    @property
    def travel_s(self) -> float:
        speed = max(1.0, max(lane.free_speed_ms for lane in self.lanes))
        return self.zone_m / speed


class SensorEstimator:
    """Builds the :class:`CityState` from detector, camera and controller events."""

    source = "sensors"

    def __init__(self, network: Network, bus: EventBus | None = None, stations: list[Station] | None = None):
        self.network = network
        self.state = CityState(source=self.source)
        self._lanes: dict[str, _Lane] = {}
        self._approach_of: dict[str, _Approach] = {}
        self._feeders: dict[str, tuple[_Feeder, list[_Approach]]] = {}  # by feeder lane
        positions = {}
        self._stopline_cameras: set[str] = set()
        for station in stations if stations is not None else place_devices(network, DeviceLayout()):
            for loop in station.loops:
                positions[(loop.lane, loop.position)] = loop.pos_m
                if loop.position == "stopline" and loop.detector_id in station.cameras:
                    self._stopline_cameras.add(station.cameras[loop.detector_id])
        for intersection in network.intersections.values():
            for approach in intersection.approaches:
                lanes: list[_Lane] = []
                zone_up = 0.0
                for lane_id in approach.lanes:
                    lane = network.lanes[lane_id]
                    stop = positions.get((lane_id, "stopline"), lane.length_m)
                    advance = positions.get((lane_id, "advance"), 0.0)
                    entry = positions.get((lane_id, "entry"))
                    if entry is not None:
                        zone_up = max(zone_up, advance - entry)
                    groups = tuple(sorted({m.signal_group for m in intersection.movements if m.in_lane == lane_id}))
                    tracker = _Lane(lane_id, intersection.id, groups, max(1.0, stop - advance), lane.speed_limit_ms, LaneState())
                    self._lanes[lane_id] = tracker
                    self.state.lanes[lane_id] = tracker.state
                    lanes.append(tracker)
                group = _Approach(lanes, zone_up)
                for tracker in lanes:
                    self._approach_of[tracker.id] = group
                for edge in approach.feeders:
                    self._add_feeder(network, edge, group)
        if bus is not None:
            bus.subscribe("detector", self.on_detector)
            bus.subscribe("camera", self.on_camera)
            bus.subscribe("controller", self.on_controller)

    def _add_feeder(self, network: Network, edge: str, approach: _Approach) -> None:
        lanes = network.edge_lanes(edge)
        known = next((self._feeders[lane] for lane in lanes if lane in self._feeders), None)
        if known is None:
            first = network.lanes[lanes[0]]
            known = (_Feeder(first.length_m, first.speed_limit_ms), [])
            for lane in lanes:
                self._feeders[lane] = known
        feeder, approaches = known
        approaches.append(approach)
        approach.feeders.append(feeder)

    def on_controller(self, event: ControllerState) -> None:
        status = signal_status(self.network, event)
        if status is not None:
            self.state.signals[event.intersection] = status
        self.state.time = max(self.state.time, event.time)

    def on_camera(self, event: CameraPassage) -> None:
        if event.device_id not in self._stopline_cameras:
            return  # the speed the state keeps is the speed at the stop line
        lane = self._lanes.get(event.lane)
        if lane is not None:
            previous = lane.state.mean_speed_ms
            lane.state.mean_speed_ms = event.speed_ms if previous is None else previous + SPEED_WEIGHT * (event.speed_ms - previous)

    def on_detector(self, event: DetectorReport) -> None:
        now, dt = event.time, event.interval_s
        self.state.time = max(self.state.time, now)
        touched: dict[str, _Lane] = {}
        share_decay = min(1.0, dt / SHARE_TAU_S)
        fed: dict[int, tuple[_Feeder, list[_Approach]]] = {}
        for reading in event.readings:
            if reading.position == "exit":
                self._spill(reading.lane, reading.occupancy >= STANDING_OCCUPANCY and reading.count == 0, dt)
                continue
            if reading.position in ("feeder_in", "feeder_out"):
                known = self._feeders.get(reading.lane)
                if known is not None:
                    fed[id(known[0])] = known
                    self._on_feeder(known[0], reading.lane, reading.position, reading.count, reading.occupancy, now, dt)
                    if reading.position == "feeder_in":
                        self._spill(reading.lane, reading.occupancy >= STANDING_OCCUPANCY, dt)
                continue
            lane = self._lanes.get(reading.lane)
            if lane is None:
                continue
            touched[lane.id] = lane
            approach = self._approach_of[lane.id]
            standing = reading.occupancy >= STANDING_OCCUPANCY
            if reading.position == "mid":
                lane.has_mid = True
                lane.share_mid += share_decay * (reading.occupancy - lane.share_mid)
            elif reading.position == "entry":
                lane.share_in += share_decay * (reading.occupancy - lane.share_in)
                approach.upstream += reading.count
                approach.entries.add(now, reading.count)
                approach.entry_standing_s = approach.entry_standing_s + dt if standing else 0.0
                self._spill(lane.id, standing, dt)
            elif reading.position == "advance":
                lane.balance += reading.count
                lane.entries.add(now, reading.count)
                lane.share_out += share_decay * (reading.occupancy - lane.share_out)
                if approach.zone_m > 0:
                    approach.upstream -= reading.count
                lane.advance_standing_s = lane.advance_standing_s + dt if standing else 0.0
                if approach.zone_m <= 0:  # a short approach: its advance loop sits at its start
                    self._spill(lane.id, standing, dt)
            elif reading.position == "stopline":
                lane.balance -= reading.count
                lane.stop_occupancy = reading.occupancy
                held = reading.occupancy >= STANDING_OCCUPANCY and reading.count == 0
                lane.state.head_standing_s = lane.state.head_standing_s + dt if held else 0.0
                if reading.count:
                    lane.last_departure = now
                if reading.occupancy > 0:
                    lane.last_stop_occupied = now
                decay = min(1.0, dt / FLOW_TAU_S)
                lane.state.flow_vph += decay * (reading.count * 3600.0 / dt - lane.state.flow_vph)
        for lane in touched.values():
            self._correct(lane, now)
        approaches = {id(self._approach_of[i]): self._approach_of[i] for i in touched}
        for feeder, fed_approaches in fed.values():
            self._correct_feeder(feeder, now)
            approaches.update({id(a): a for a in fed_approaches})
        for approach in approaches.values():
            _rebalance(approach.lanes)
            self._correct_upstream(approach, now)
            shares = _shares(approach.lanes)
            feeder_queue = sum(feeder.queue for feeder in approach.feeders)
            for lane, share in zip(approach.lanes, shares):
                lane.state.vehicles = lane.balance + lane.stop_occupancy + approach.upstream * share
                lane.state.upstream_queue = feeder_queue * share
                self._queue(lane, approach, share, now)

    def _spill(self, lane: str, standing: bool, dt: float) -> None:
        """Count how long a lane's start has stood occupied (see `CityState.spillback_s`)."""
        if standing:
            self.state.spillback_s[lane] = self.state.spillback_s.get(lane, 0.0) + dt
        else:
            self.state.spillback_s.pop(lane, None)

    @staticmethod
    def _on_feeder(feeder: _Feeder, lane: str, position: str, count: int, occupancy: float, now: float, dt: float) -> None:
        standing = occupancy >= STANDING_OCCUPANCY
        if position == "feeder_in":
            feeder.vehicles += count
            feeder.entries.add(now, count)
            feeder.start_standing_s[lane] = feeder.start_standing_s.get(lane, 0.0) + dt if standing else 0.0
        else:
            feeder.vehicles -= count
            feeder.standing_s[lane] = feeder.standing_s.get(lane, 0.0) + dt if standing else 0.0

    @staticmethod
    def _correct_feeder(feeder: _Feeder, now: float) -> None:
        """Counting drifts (a vehicle that appears on the road beside its start loop, where
        the road begins at the network's edge, is never counted in). Occupancy bounds it
        both ways: a lane standing over its start loop is full up to there (and its queue
        may reach further back, out of sight); with no queue standing at the end loop,
        what is on the road entered recently."""
        window = CAP_TRAVEL_FACTOR * feeder.length_m / max(feeder.free_speed_ms, 1.0) + 10.0
        feeder.entries.forget_before(now - window)
        vehicles = max(0.0, feeder.vehicles)
        full_lanes = sum(1 for s in feeder.start_standing_s.values() if s >= STANDING_S)
        vehicles = max(vehicles, full_lanes * (feeder.length_m / JAM_SPACING_M - 1.0))
        if not any(s > 0 for s in feeder.standing_s.values()):
            vehicles = min(vehicles, float(feeder.entries.since(now - window)))
        feeder.vehicles = vehicles

    def _correct(self, lane: _Lane, now: float) -> None:
        window = CAP_TRAVEL_FACTOR * lane.travel_s + 10.0
        lane.entries.forget_before(now - max(60.0, window))
        signal = self.state.signals.get(lane.intersection)
        green = signal is not None and any(
            g < len(signal.signal_state) and signal.signal_state[g] in GREEN_CHARS for g in lane.groups
        )
        if not green:
            lane.green_since = None
        elif lane.green_since is None:
            lane.green_since = now
        balance = lane.balance
        if lane.advance_standing_s >= STANDING_S:
            balance = max(balance, lane.zone_m / JAM_SPACING_M - 1.0)
        settled = lane.green_since is not None and now - lane.green_since >= SETTLE_GREEN_S
        quiet = now - lane.last_departure >= QUIET_S and now - lane.last_stop_occupied >= QUIET_S
        if settled and quiet:
            balance = min(balance, float(lane.entries.since(now - window)))
        lane.balance = balance
        lane.state.arrivals = float(lane.entries.since(now - 60.0))

    def _correct_upstream(self, approach: _Approach, now: float) -> None:
        if approach.zone_m <= 0:
            approach.upstream = 0.0
            return
        window = CAP_TRAVEL_FACTOR * approach.travel_s + 10.0
        approach.entries.forget_before(now - window)
        upstream = max(0.0, approach.upstream)
        if approach.entry_standing_s >= STANDING_S:
            upstream = max(upstream, approach.zone_m * len(approach.lanes) / JAM_SPACING_M)
        if all(lane.advance_standing_s == 0 for lane in approach.lanes):
            upstream = min(upstream, float(approach.entries.since(now - window)))
        approach.upstream = upstream

    def _queue(self, lane: _Lane, approach: _Approach, share: float, now: float) -> None:
        near = max(0.0, lane.balance + lane.stop_occupancy)
        filled = min(1.0, lane.state.queue * JAM_SPACING_M / max(lane.zone_m, 1.0))
        moving = lane.entries.since(now - lane.travel_s * (1.0 - filled))
        queue = min(near, max(0.0, near - moving))
        if lane.advance_standing_s >= STANDING_S:
            queue += approach.upstream * share
        lane.state.queue = queue
        lane.state.approaching = min(near, float(moving))


def _shares(lanes: list[_Lane]) -> list[float]:
    """Each lane's part of the entry zone: its vehicles are the integral of its density
    over the zone, estimated by Simpson's rule from the occupancies at the entry, mid
    and advance loops (the trapezoid rule without a mid loop)."""
    weight = (1.0, 4.0, 1.0) if any(lane.has_mid for lane in lanes) else (1.0, 0.0, 1.0)
    mass = [weight[0] * lane.share_in + weight[1] * lane.share_mid + weight[2] * lane.share_out for lane in lanes]
    total = sum(mass)
    if total <= 0:
        return [1.0 / len(lanes)] * len(lanes)
    return [m / total for m in mass]


def _rebalance(lanes: list[_Lane]) -> None:
    """Move negative counts (missed or extra detections) onto the approach's other lanes."""
    deficit = sum(-lane.balance for lane in lanes if lane.balance < 0)
    if deficit <= 0:
        return
    for lane in lanes:
        lane.balance = max(0.0, lane.balance)
    total = sum(lane.balance for lane in lanes)
    if total <= 0:
        return
    keep = max(0.0, total - deficit) / total
    for lane in lanes:
        lane.balance *= keep
