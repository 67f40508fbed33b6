"""ORACLE observation — for research comparisons only.

Reads vehicles, queues and speeds straight from the simulator instead of estimating
them from devices. No real city can do this; it exists to measure how much the
device path costs a controller. Every state it produces says so in `source`.
"""

from __future__ import annotations

from types import ModuleType

from urbanbrain.core.bus import EventBus
from urbanbrain.devices.protocol import ControllerState
from urbanbrain.network.model import Network
from urbanbrain.state.model import CityState, LaneState, signal_status

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
        for lanes, feeders in self._feeders:
            standing = sum(self.sumo.edge.getLastStepHaltingNumber(edge) for edge in feeders)
            for lane_id in lanes:
                if lane_id in self.state.lanes:
                    self.state.lanes[lane_id].upstream_queue = standing / len(lanes)
        self.state.time = now
