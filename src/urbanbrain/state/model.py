"""The city's traffic state as the brain believes it to be.

Controllers read only this. In `sensors` mode it is estimated from device events;
in the research-only `oracle` mode it is read from the simulator, and `source` says
which, so a result can never be mistaken for the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from urbanbrain.devices.protocol import ControllerState
from urbanbrain.network.model import Network


@dataclass
class LaneState:
    vehicles: float = 0.0  # vehicles on the lane (approach lanes: counted by its loops)
    queue: float = 0.0  # of which standing in the queue
    approaching: float = 0.0  # moving vehicles near the stop line (advance loop onwards): they reach it within seconds
    head_standing_s: float = 0.0  # how long a vehicle has stood at the stop line without leaving
    flow_vph: float = 0.0  # discharge at the stop line, vehicles per hour
    mean_speed_ms: float | None = None  # at the stop line, from camera passages
    arrivals: float = 0.0  # vehicles entering the link in the last minute
    upstream_queue: float = 0.0  # this lane's share of the queue standing on its approach's feeder roads


@dataclass
class SignalStatus:
    signal_state: str
    phase: int | None  # green phase, None during a change interval
    time_in_phase_s: float
    mode: str
    updated: float


@dataclass
class CityState:
    source: str  # "sensors" or "oracle (research only)"
    time: float = 0.0
    lanes: dict[str, LaneState] = field(default_factory=dict)
    signals: dict[str, SignalStatus] = field(default_factory=dict)
    # lane -> how long the queue on it has stood back to its start (the junction upstream): the
    # lane cannot take more vehicles; absent for a lane whose start is clear or unwatched
    spillback_s: dict[str, float] = field(default_factory=dict)

    def vehicles(self, lane_id: str) -> float:
        """Vehicles on a lane; 0 for a lane no device observes."""
        lane = self.lanes.get(lane_id)
        return 0.0 if lane is None else lane.vehicles


def signal_status(network: Network, report: ControllerState) -> SignalStatus | None:
    """The status a controller report gives, or None if it does not fit the intersection
    (unknown intersection, wrong number of signal groups, a phase it does not have)."""
    intersection = network.intersections.get(report.intersection)
    if intersection is None or len(report.signal_state) != intersection.n_groups:
        return None
    if report.phase is not None and report.phase >= len(intersection.phases):
        return None
    return SignalStatus(report.signal_state, report.phase, report.time_in_phase_s, report.mode, report.time)
