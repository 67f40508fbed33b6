"""ORACLE observation — for research comparisons only.

Reads vehicles, queues and speeds straight from the simulator instead of estimating
them from devices. No real city can do this; it exists to measure how much the
device path costs a controller. Every state it produces says so in `source`.
"""

from __future__ import annotations

from types import ModuleType

from urbanbrain.core.bus import EventBus
from urbanbrain.devices.inventory import DeviceLayout
from urbanbrain.devices.protocol import ControllerState
from urbanbrain.network.model import Network
from urbanbrain.state.model import CityState, LaneState, signal_status

HALTING_SPEED_MS = 0.1  # SUMO's own threshold for a halting vehicle
ORACLE_LABEL = "oracle (research only: reads the simulator)"


class OracleObserver:
    source = ORACLE_LABEL

    def __init__(self, network: Network, sumo: ModuleType, bus: EventBus):
        self.network = network
        self.sumo = sumo
        self.state = CityState(source=self.source)
        lanes = {lane for i in network.intersections.values() for lane in (*i.in_lanes, *i.out_lanes)}
        self._lanes = sorted(lanes)
        self._feeders = [(a.lanes, a.feeders) for i in network.intersections.values() for a in i.approaches if a.feeders]
        for lane in self._lanes:
            self.state.lanes[lane] = LaneState()
        # "approaching" means what an advance loop would tell: moving within its distance of the stop line
        reach = DeviceLayout().advance_before_stopline_m
        self._near_from = {lane: network.lanes[lane].length_m - reach for lane in self._lanes}
        bus.subscribe("controller", self.on_controller)

    def on_controller(self, event: ControllerState) -> None:
        status = signal_status(self.network, event)
        if status is not None:
            self.state.signals[event.intersection] = status

    def refresh(self, now: float) -> None:
        lane_api = self.sumo.lane
        for lane_id in self._lanes:
            lane = self.state.lanes[lane_id]
            lane.vehicles = float(lane_api.getLastStepVehicleNumber(lane_id))
            lane.queue = float(lane_api.getLastStepHaltingNumber(lane_id))
            lane.mean_speed_ms = lane_api.getLastStepMeanSpeed(lane_id)
            vehicles = lane_api.getLastStepVehicleIDs(lane_id) if lane.vehicles else ()
            lane.head_standing_s = self.sumo.vehicle.getWaitingTime(vehicles[-1]) if lane.queue else 0.0
            near = self._near_from[lane_id]
            lane.approaching = float(sum(1 for v in vehicles if self.sumo.vehicle.getLanePosition(v) >= near
                                         and self.sumo.vehicle.getSpeed(v) >= HALTING_SPEED_MS))
        for lanes, feeders in self._feeders:
            standing = sum(self.sumo.edge.getLastStepHaltingNumber(edge) for edge in feeders)
            for lane_id in lanes:
                if lane_id in self.state.lanes:
                    self.state.lanes[lane_id].upstream_queue = standing / len(lanes)
        self.state.time = now
