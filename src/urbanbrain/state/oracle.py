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
from urbanbrain.state.model import CityState, LaneState, SignalStatus

ORACLE_LABEL = "oracle (research only: reads the simulator)"


class OracleObserver:
    source = ORACLE_LABEL

    def __init__(self, network: Network, sumo: ModuleType, bus: EventBus):
        self.sumo = sumo
        self.state = CityState(source=self.source)
        lanes = {lane for i in network.intersections.values() for lane in (*i.in_lanes, *i.out_lanes)}
        self._lanes = sorted(lanes)
        for lane in self._lanes:
            self.state.lanes[lane] = LaneState()
        bus.subscribe("controller", self.on_controller)

    def on_controller(self, event: ControllerState) -> None:
        self.state.signals[event.intersection] = SignalStatus(
            event.signal_state, event.phase, event.time_in_phase_s, event.mode, event.time
        )

    def refresh(self, now: float) -> None:
        lane_api = self.sumo.lane
        for lane_id in self._lanes:
            lane = self.state.lanes[lane_id]
            lane.vehicles = float(lane_api.getLastStepVehicleNumber(lane_id))
            lane.queue = float(lane_api.getLastStepHaltingNumber(lane_id))
            lane.mean_speed_ms = lane_api.getLastStepMeanSpeed(lane_id)
        self.state.time = now
