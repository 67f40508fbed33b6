"""Routes for emergency vehicles on the road graph, fastest on current travel times.

A road's travel time is its length at the speed limit, plus, where a signal ends it,
the time the queue the detectors see standing there needs to discharge (a saturation
headway per queued vehicle on its fullest lane). That is what the device path knows of
congestion; with no state at all (a crew's navigation unit, not the brain) the route is
the fastest at free flow.
"""

from __future__ import annotations

import heapq

from urbanbrain.network.model import Network
from urbanbrain.state.model import CityState

HEADWAY_S = 2.0  # saturation headway: seconds per queued vehicle to discharge


class RouteError(ValueError):
    """No route: an unknown road, or a destination that cannot be reached."""


def road_time_s(network: Network, road_id: str, state: CityState | None) -> float:
    """Seconds to drive a road and, where a signal ends it, wait out the queue standing there."""
    road = network.roads[road_id]
    free = road.length_m / max(road.speed_limit_ms, 0.1)
    if state is None:
        return free
    queues = [state.lanes[lane].queue + state.lanes[lane].upstream_queue for lane in road.lanes if lane in state.lanes]
    return free + HEADWAY_S * max(queues, default=0.0)


def fastest_route(network: Network, origin: str, destination: str, state: CityState | None = None) -> list[str]:
    """The roads from `origin` (included) to `destination` (included), fastest first (Dijkstra)."""
    for name, road in (("origin", origin), ("destination", destination)):
        if road not in network.roads:
            raise RouteError(f"{name} {road!r} is not a road an emergency vehicle may use in network {network.name!r}")
    if origin == destination:
        return [origin]
    best = {origin: 0.0}
    previous: dict[str, str] = {}
    frontier = [(0.0, origin)]
    while frontier:
        cost, road = heapq.heappop(frontier)
        if road == destination:
            break
        if cost > best[road]:
            continue
        for nxt in network.roads[road].leads_to:
            candidate = cost + road_time_s(network, nxt, state)
            if candidate < best.get(nxt, float("inf")):
                best[nxt] = candidate
                previous[nxt] = road
                heapq.heappush(frontier, (candidate, nxt))
    if destination not in best:
        raise RouteError(f"destination {destination!r} cannot be reached from {origin!r}")
    route = [destination]
    while route[-1] != origin:
        route.append(previous[route[-1]])
    return route[::-1]


def signal_steps(network: Network) -> frozenset[tuple[str, str]]:
    """Every (road, next road) that crosses a signal: a route crosses as many signals as it has such steps."""
    return frozenset((network.lanes[m.in_lane].edge, network.lanes[m.out_lane].edge)
                     for intersection in network.intersections.values() for m in intersection.movements)
