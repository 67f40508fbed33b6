"""Key performance indicators, computed by the evaluator — never seen by the brain.

Network KPIs come from SUMO's trip information (written at the end with unfinished
and never-inserted vehicles included) so that every vehicle scheduled in the horizon
counts:

- `att_s`: mean over inserted vehicles of (arrival, or horizon end) - actual departure
  (the LibSignal definition, to compare with published tables);
- `delay_s`: mean time loss of the same vehicles, unfinished ones included;
- `total_delay_s` (the headline): mean over every vehicle scheduled to depart within
  the horizon of time loss + insertion delay; a vehicle never inserted counts
  (horizon end - scheduled departure), so keeping vehicles out cannot look good;
- `throughput` (vehicles arrived), `not_inserted`, `stops` (mean per inserted vehicle).

Per-intersection KPIs come from the :class:`QueueMonitor`, which samples the queues
on each intersection's approach lanes.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from urbanbrain.network.model import Network


@dataclass(frozen=True)
class TripKpis:
    att_s: float
    delay_s: float
    total_delay_s: float
    throughput: int
    not_inserted: int
    stops: float
    scheduled: int


def trip_kpis(tripinfo_path: Path, horizon_end_s: float, exclude: frozenset[str] = frozenset()) -> TripKpis:
    """KPIs from a tripinfo file written with unfinished and undeparted vehicles;
    the vehicles in `exclude` (emergency vehicles measured on their own) are left out."""
    travel, loss, total, stops = [], [], [], []
    arrived = not_inserted = 0
    for _, trip in ET.iterparse(tripinfo_path):
        if trip.tag != "tripinfo" or trip.get("id") in exclude:
            continue
        depart = float(trip.get("depart"))
        depart_delay = float(trip.get("departDelay"))
        time_loss = float(trip.get("timeLoss"))
        arrival = float(trip.get("arrival"))
        waits = float(trip.get("waitingCount"))
        trip.clear()
        if depart < 0:
            scheduled = horizon_end_s - depart_delay
            if scheduled < horizon_end_s:
                not_inserted += 1
                total.append(depart_delay)
            continue
        if depart - depart_delay >= horizon_end_s:
            continue
        travel.append((arrival if 0 <= arrival <= horizon_end_s else horizon_end_s) - depart)
        loss.append(time_loss)
        total.append(time_loss + depart_delay)
        stops.append(waits)
        if 0 <= arrival <= horizon_end_s:
            arrived += 1

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else 0.0

    return TripKpis(mean(travel), mean(loss), mean(total), arrived, not_inserted, mean(stops), len(total))


@dataclass
class IntersectionKpis:
    max_queue: int = 0  # longest standing queue on one approach lane, vehicles
    stopped_veh_s: float = 0.0  # vehicle-seconds spent standing on the approaches
    mean_queue: float = 0.0  # vehicles standing on all approaches, time average
    longest_stop_s: float = 0.0  # longest time a vehicle stood without moving at the head of an approach lane


@dataclass
class QueueMonitor:
    """Samples standing vehicles on every approach lane from the simulator (evaluation only)."""

    network: Network
    sumo: ModuleType
    per_intersection: dict[str, IntersectionKpis] = field(default_factory=dict)
    samples: int = 0

    def __post_init__(self) -> None:
        self._lanes = {i.id: i.in_lanes for i in self.network.intersections.values()}
        self.per_intersection = {i: IntersectionKpis() for i in self._lanes}

    def sample(self, dt: float) -> None:
        halting = self.sumo.lane.getLastStepHaltingNumber
        self.samples += 1
        for intersection, lanes in self._lanes.items():
            kpis = self.per_intersection[intersection]
            queues = [halting(lane) for lane in lanes]
            for lane, queue in zip(lanes, queues):
                if queue:
                    kpis.longest_stop_s = max(kpis.longest_stop_s, self._head_wait(lane))
            standing = sum(queues)
            kpis.max_queue = max(kpis.max_queue, max(queues, default=0))
            kpis.stopped_veh_s += standing * dt
            kpis.mean_queue += (standing - kpis.mean_queue) / self.samples

    def _head_wait(self, lane: str) -> float:
        """How long the vehicle nearest the stop line has stood without moving (SUMO's
        waiting time: reset whenever it moves); the head of a queue waits the longest."""
        vehicles = self.sumo.lane.getLastStepVehicleIDs(lane)
        return self.sumo.vehicle.getWaitingTime(vehicles[-1]) if vehicles else 0.0

    @property
    def longest_stop_s(self) -> float:
        return max((k.longest_stop_s for k in self.per_intersection.values()), default=0.0)

    @property
    def max_queue(self) -> int:
        return max((k.max_queue for k in self.per_intersection.values()), default=0)
