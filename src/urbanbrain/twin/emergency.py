"""The twin's emergency vehicles: dispatched on trips, with a transponder and a navigation unit.

Part of the simulated world, like the incident injector. Each vehicle starts on the
route its own navigation unit knows (fastest at free flow), reports where it is every
second as an `EmergencyVehicleReport` (the only way the brain learns of it), and
follows a `RouteAdvice` the brain sends it. The vehicles drive with blue lights on:
SUMO's `emergency` class (it may overtake on the right) at up to 1.5 x the speed
limit; they stop at red like everyone else, because SUMO's blue-light device would let
them drive through a red without regard for crossing traffic, which no crew does in
dense traffic and which would leave nothing for the signals to do. The same vehicles
run with and without priority, so what differs is what the brain does for them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from types import ModuleType

from urbanbrain.core.bus import EventBus
from urbanbrain.devices.protocol import EmergencyVehicleReport, RouteAdvice
from urbanbrain.emergency.routing import RouteError, fastest_route, signal_steps
from urbanbrain.network.model import Network

SERVICES = ("ambulance", "fire", "police")
VEHICLE_TYPE = "urbanbrain_emergency"
SPEED_FACTOR = 1.5  # blue lights: up to 1.5 x the limit where the road is free


@dataclass(frozen=True)
class EmergencyTrip:
    vehicle: str
    service: str
    priority: int
    origin: str
    destination: str
    dispatch_s: float


def random_trips(network: Network, count: int, *, seed: int, begin_s: float, horizon_s: float,
                 min_signals: int = 3) -> list[EmergencyTrip]:
    """`count` trips between random roads, each crossing at least `min_signals` signals
    (fewer if the network has no such trip), dispatched between 10% and 60% of the
    horizon so that they finish inside it."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    rng = random.Random(seed)
    roads = sorted(network.roads)
    if len(roads) < 2:
        raise ValueError(f"network {network.name!r} has fewer than two roads for emergency trips")
    steps = signal_steps(network)
    trips = []
    for n in range(count):
        best: tuple[int, str, str] | None = None
        for _ in range(200):
            origin, destination = rng.sample(roads, 2)
            try:
                route = fastest_route(network, origin, destination)
                signals = sum(step in steps for step in zip(route, route[1:]))
            except RouteError:
                continue
            if best is None or signals > best[0]:
                best = (signals, origin, destination)
            if signals >= min_signals:
                break
        if best is None:
            raise ValueError(f"network {network.name!r} has no two roads connected for an emergency trip")
        dispatch = begin_s + horizon_s * rng.uniform(0.1, 0.6)
        trips.append(EmergencyTrip(f"ev-{n + 1}", rng.choice(SERVICES), rng.randint(1, 3), best[1], best[2], round(dispatch)))
    return sorted(trips, key=lambda t: (t.dispatch_s, t.vehicle))


@dataclass
class TripRecord:
    trip: EmergencyTrip
    route: list[str]
    arrived_s: float | None = None
    advice: int = 0  # routes the brain sent it that it followed

    def travel_s(self, end_s: float) -> float:
        """Dispatch to arrival (an unfinished trip counts up to `end_s`)."""
        return (self.arrived_s if self.arrived_s is not None else end_s) - self.trip.dispatch_s


@dataclass
class EmergencyFleet:
    """A world hook for the twin: called after every simulation step."""

    network: Network
    bus: EventBus
    trips: list[EmergencyTrip]
    records: dict[str, TripRecord] = field(default_factory=dict)
    sequence_base: int = 0  # first sequence number of each transponder (a field started again must go on rising)

    def __post_init__(self) -> None:
        self._due = sorted(self.trips, key=lambda t: t.dispatch_s)
        self._seq: dict[str, int] = {}
        self._advice: dict[str, list[str]] = {}
        self._driving: set[str] = set()  # dispatched, inserted, not yet arrived
        self.bus.subscribe("route", self._on_route)

    def __call__(self, sumo: ModuleType, now: float) -> None:
        while self._due and self._due[0].dispatch_s <= now:
            self._dispatch(sumo, self._due.pop(0))
        self._driving.update(v for v in sumo.simulation.getDepartedIDList() if v in self.records)
        for vehicle in sumo.simulation.getArrivedIDList():
            if vehicle in self._driving:
                self._driving.discard(vehicle)
                record = self.records[vehicle]
                record.arrived_s = now
                self._report(record.trip, now, record.route[-1], f"{record.route[-1]}_0",
                             self.network.roads[record.route[-1]].length_m, 0.0, "arrived")
        for vehicle in sorted(self._driving):
            record = self.records[vehicle]
            road = sumo.vehicle.getRoadID(vehicle)
            if road.startswith(":"):  # inside a junction: the transponder is matched to the road it left
                route = sumo.vehicle.getRoute(vehicle)
                road = route[sumo.vehicle.getRouteIndex(vehicle)]
                lane, position = f"{road}_0", self.network.roads[road].length_m
            else:
                lane, position = sumo.vehicle.getLaneID(vehicle), sumo.vehicle.getLanePosition(vehicle)
                self._follow(sumo, vehicle, road, record)
            self._report(record.trip, now, road, lane, position, sumo.vehicle.getSpeed(vehicle), "en_route")

    def _dispatch(self, sumo: ModuleType, trip: EmergencyTrip) -> None:
        if VEHICLE_TYPE not in sumo.vehicletype.getIDList():
            sumo.vehicletype.copy("DEFAULT_VEHTYPE", VEHICLE_TYPE)
            sumo.vehicletype.setVehicleClass(VEHICLE_TYPE, "emergency")
            sumo.vehicletype.setSpeedFactor(VEHICLE_TYPE, SPEED_FACTOR)
            sumo.vehicletype.setSpeedDeviation(VEHICLE_TYPE, 0.0)
            sumo.vehicletype.setColor(VEHICLE_TYPE, (255, 0, 0, 255))
        route = fastest_route(self.network, trip.origin, trip.destination)  # the crew's own navigation: free flow
        sumo.route.add(f"{trip.vehicle}-route", route)
        sumo.vehicle.add(trip.vehicle, f"{trip.vehicle}-route", typeID=VEHICLE_TYPE, depart="now",
                         departLane="best", departSpeed="max")
        self.records[trip.vehicle] = TripRecord(trip, route)

    def _on_route(self, advice: RouteAdvice) -> None:
        if advice.vehicle in self.records:
            self._advice[advice.vehicle] = list(advice.edges)  # applied at the next step, on a road (not in a junction)

    def _follow(self, sumo: ModuleType, vehicle: str, road: str, record: TripRecord) -> None:
        edges = self._advice.pop(vehicle, None)
        if edges is None or road not in edges or edges[-1] != record.trip.destination:
            return
        edges = edges[edges.index(road):]
        sumo.vehicle.setRoute(vehicle, edges)
        record.route = list(sumo.vehicle.getRoute(vehicle))
        record.advice += 1

    def _report(self, trip: EmergencyTrip, now: float, road: str, lane: str, position: float, speed: float,
                status: str) -> None:
        seq = self._seq[trip.vehicle] = self._seq.get(trip.vehicle, self.sequence_base - 1) + 1
        self.bus.publish(EmergencyVehicleReport(
            device_id=trip.vehicle, seq=seq, time=now, vehicle=trip.vehicle, service=trip.service,
            priority=trip.priority, edge=road, lane=lane, position_m=max(0.0, position), speed_ms=min(100.0, speed),
            destination=trip.destination, status=status))
