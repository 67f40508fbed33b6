"""Traffic state from device events only.

Vehicles on a link come from input-output counting: the advance loop near the
link's upstream end counts vehicles in, the stop-line loop counts them out. Counting
drifts (a vehicle changes lane between the loops, a count is missed), so each
interval the count is corrected by what occupancy proves: a standing vehicle on the
stop-line loop means at least one vehicle; a standing queue over the advance loop
means the link is full; a lane that has had green for a while with nothing crossing
its stop line holds at most the vehicles still travelling from the advance loop.
Lane-change drift moves counts between lanes of one approach, never out of it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from urbanbrain.core.bus import EventBus
from urbanbrain.devices.protocol import CameraPassage, ControllerState, DetectorReport
from urbanbrain.network.model import GREEN_CHARS, Network
from urbanbrain.state.model import CityState, LaneState, SignalStatus

JAM_SPACING_M = 7.5  # metres of lane per standing car (length + gap)
STANDING_OCCUPANCY = 0.95
SETTLE_GREEN_S = 6.0
QUIET_S = 4.0
FLOW_TAU_S = 300.0
SPEED_WEIGHT = 0.2
CAP_TRAVEL_FACTOR = 2.0


@dataclass
class _Lane:
    id: str
    intersection: str
    groups: tuple[int, ...]
    link_m: float
    free_speed_ms: float
    state: LaneState
    balance: float = 0.0  # advance counts in - stop-line counts out, corrected
    stop_occupancy: float = 0.0
    entries: deque[tuple[float, int]] = field(default_factory=deque)
    green_since: float | None = None
    last_departure: float = float("-inf")
    last_stop_occupied: float = float("-inf")
    advance_standing_s: float = 0.0

    @property
    def travel_s(self) -> float:
        return self.link_m / max(self.free_speed_ms, 1.0)

    def entries_since(self, since: float) -> int:
        return sum(n for t, n in self.entries if t > since)


class SensorEstimator:
    """Builds the :class:`CityState` from detector, camera and controller events."""

    source = "sensors"

    def __init__(self, network: Network, bus: EventBus | None = None):
        self.network = network
        self.state = CityState(source=self.source)
        self._lanes: dict[str, _Lane] = {}
        self._edges: dict[str, list[_Lane]] = {}
        for intersection in network.intersections.values():
            for approach in intersection.approaches:
                group: list[_Lane] = []
                for lane_id in approach.lanes:
                    lane = network.lanes[lane_id]
                    groups = tuple(sorted({m.signal_group for m in intersection.movements if m.in_lane == lane_id}))
                    tracker = _Lane(lane_id, intersection.id, groups, lane.length_m, lane.speed_limit_ms, LaneState())
                    self._lanes[lane_id] = tracker
                    self.state.lanes[lane_id] = tracker.state
                    group.append(tracker)
                self._edges[approach.edge] = group
        if bus is not None:
            bus.subscribe("detector", self.on_detector)
            bus.subscribe("camera", self.on_camera)
            bus.subscribe("controller", self.on_controller)

    def on_controller(self, event: ControllerState) -> None:
        self.state.signals[event.intersection] = SignalStatus(
            event.signal_state, event.phase, event.time_in_phase_s, event.mode, event.time
        )
        self.state.time = max(self.state.time, event.time)

    def on_camera(self, event: CameraPassage) -> None:
        lane = self._lanes.get(event.lane)
        if lane is not None:
            previous = lane.state.mean_speed_ms
            lane.state.mean_speed_ms = event.speed_ms if previous is None else previous + SPEED_WEIGHT * (event.speed_ms - previous)

    def on_detector(self, event: DetectorReport) -> None:
        now, dt = event.time, event.interval_s
        self.state.time = max(self.state.time, now)
        touched: dict[str, _Lane] = {}
        for reading in event.readings:
            lane = self._lanes.get(reading.lane)
            if lane is None:
                continue
            touched[lane.id] = lane
            standing = reading.occupancy >= STANDING_OCCUPANCY
            if reading.position == "advance":
                lane.balance += reading.count

                if reading.count:
                    lane.entries.append((now, reading.count))
                lane.advance_standing_s = lane.advance_standing_s + dt if standing else 0.0
            else:
                lane.balance -= reading.count
                lane.stop_occupancy = reading.occupancy
                if reading.count:
                    lane.last_departure = now
                if reading.occupancy > 0:
                    lane.last_stop_occupied = now
                decay = min(1.0, dt / FLOW_TAU_S)
                lane.state.flow_vph += decay * (reading.count * 3600.0 / dt - lane.state.flow_vph)
        for lane in touched.values():
            self._correct(lane, now)
        for edge_lanes in {id(self._edges_of(lane)): self._edges_of(lane) for lane in touched.values()}.values():
            _rebalance(edge_lanes)
        for lane in touched.values():
            # a vehicle counted out on reaching the stop-line loop is still on the link while it stands there
            lane.state.vehicles = lane.balance + lane.stop_occupancy
            self._queue(lane, now)

    def _edges_of(self, lane: _Lane) -> list[_Lane]:
        return self._edges[self.network.lanes[lane.id].edge]

    def _correct(self, lane: _Lane, now: float) -> None:
        while lane.entries and lane.entries[0][0] <= now - max(60.0, CAP_TRAVEL_FACTOR * lane.travel_s + 10.0):
            lane.entries.popleft()
        signal = self.state.signals.get(lane.intersection)
        green = signal is not None and any(
            g < len(signal.signal_state) and signal.signal_state[g] in GREEN_CHARS for g in lane.groups
        )
        if not green:
            lane.green_since = None
        elif lane.green_since is None:
            lane.green_since = now
        balance = lane.balance
        if lane.advance_standing_s >= 3.0:
            balance = max(balance, lane.link_m / JAM_SPACING_M - 1.0)
        settled = lane.green_since is not None and now - lane.green_since >= SETTLE_GREEN_S
        quiet = now - lane.last_departure >= QUIET_S and now - lane.last_stop_occupied >= QUIET_S
        if settled and quiet:
            balance = min(balance, float(lane.entries_since(now - CAP_TRAVEL_FACTOR * lane.travel_s - 10.0)))
        lane.balance = balance
        lane.state.arrivals = float(lane.entries_since(now - 60.0))

    def _queue(self, lane: _Lane, now: float) -> None:
        vehicles = max(0.0, lane.state.vehicles)
        filled = min(1.0, lane.state.queue * JAM_SPACING_M / max(lane.link_m, 1.0))
        moving = lane.entries_since(now - lane.travel_s * (1.0 - filled))
        lane.state.queue = min(vehicles, max(0.0, vehicles - moving))


def _rebalance(lanes: list[_Lane]) -> None:
    """Move negative counts (lane-change drift) onto the approach's other lanes."""
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
