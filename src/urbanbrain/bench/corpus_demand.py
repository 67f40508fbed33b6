"""The demand of a corpus network: one hour of pre-routed trips, sized against the network's saturation.

Trips mostly cross the network: each end is a boundary road (a road from or to a
dead end) with probability ``FRINGE_SHARE``, else a road inside the network long
enough to start or end on, as randomTrips' fringe factor would make them. Each trip
takes its fastest route (the demo city's router: travel time plus a turn penalty,
ties broken by edge id); departures are uniform over the hour.

**Saturation, by a quick probe.** An analytical capacity (Webster's critical lanes
was tried) misses what decides it on these networks: spillback over short links,
minor roads waiting for gaps at priority junctions, permissive lefts holding up a
shared lane; it came out up to three times too high. So the network is probed: SUMO
runs the hour under the scenario's own fixed plan with the same trip pattern at
growing volumes (from ``PROBE_START_TRIPS``, times ``PROBE_GROWTH`` until it fails,
then bisecting). The fixed plan copes with a volume when at most
``COPE_BACKLOG_SHARE`` of its vehicles fail to enter the network within
``MAX_ENTRY_WAIT_S`` of their departure time (or by the end of the hour): the queues
have not reached back to where the network begins. The saturation is the largest
volume it copes with, and a spec's ``level`` is its demand
as a multiple of it: at 1.0 the fixed plan is at its limit, so an adaptive controller
has room to do better, and at 1.3 every controller is past the fixed plan's.
Every probe is seeded as the final demand, so the result is deterministic.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import sumo
import sumolib
import traci

from urbanbrain.demo.city import (
    BEGIN_S,
    END_S,
    Vehicle,
    fastest_tree,
    route_to,
    write_routes,
)

FRINGE_SHARE = 0.85  # share of trip ends on the boundary roads; the rest start or end inside
MIN_INNER_END_M = 60.0  # a road inside is a trip end only if it has room for a vehicle to enter or leave
PROBE_START_TRIPS = 500  # trips per hour of the first probe
PROBE_MAX_TRIPS = 64_000  # no corpus network copes with this: a probe that does is a broken network
PROBE_GROWTH = 1.5  # a probe far past saturation gridlocks thousands of vehicles and is slow to simulate
PROBE_BISECTIONS = 4  # to within (PROBE_GROWTH - 1) / 2 ** 4 of the volume, about 3 %
COPE_BACKLOG_SHARE = 0.02  # share of the hour's vehicles that may fail to enter within MAX_ENTRY_WAIT_S
MAX_ENTRY_WAIT_S = 300.0  # a vehicle still not in after this long is dropped (and counted) by SUMO
PROBE_CHECK_S = 30  # how often a probe looks whether it has failed already
CONNECT_RETRY_S = 0.05


def generate_demand(net_file: Path, level: float, seed: int) -> tuple[list[Vehicle], float]:
    """The trips at `level` times the probed saturation, sorted by departure, and that saturation (trips/h)."""
    net = sumolib.net.readNet(str(net_file))
    routes, probabilities = _od_pairs(net)
    saturation = probe_saturation(net_file, routes, probabilities, seed)
    return sample_trips(routes, probabilities, round(level * saturation), seed), saturation


def sample_trips(routes: list[tuple[str, ...]], probabilities: np.ndarray, count: int, seed: int) -> list[Vehicle]:
    """`count` trips over the hour, drawn from the route distribution, sorted by departure."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(count, probabilities)
    departures = np.round(rng.uniform(BEGIN_S, END_S - 1, count), 1)
    trips = [route for route, n in zip(routes, counts, strict=True) for _ in range(n)]
    # Departures are independent draws, so pairing them with the grouped trips in order is random.
    assigned = sorted(zip(departures, trips, strict=True), key=lambda trip: trip[0])
    return [Vehicle(f"v{index:05d}", float(depart), route) for index, (depart, route) in enumerate(assigned)]


def probe_saturation(net_file: Path, routes: list[tuple[str, ...]], probabilities: np.ndarray, seed: int) -> float:
    """The largest trips per hour the fixed plan copes with (see the module's docstring)."""
    with tempfile.TemporaryDirectory(prefix="urbanbrain-probe-") as scratch:
        def copes(count: int) -> bool:
            return not _fails(net_file, sample_trips(routes, probabilities, count, seed), seed, Path(scratch))

        low, high = 0, PROBE_START_TRIPS
        while copes(high):
            if high >= PROBE_MAX_TRIPS:
                raise RuntimeError(f"corpus: {net_file.name} copes with {high} trips/h: the network lets traffic "
                                   "through without stopping it")
            low, high = high, round(high * PROBE_GROWTH)
        for _ in range(PROBE_BISECTIONS):
            middle = (low + high) // 2
            low, high = (middle, high) if copes(middle) else (low, middle)
    if low == 0:
        raise RuntimeError(f"corpus: the fixed plan of {net_file.name} does not cope with {high} trips/h")
    return float(low)


def _fails(net_file: Path, vehicles: list[Vehicle], seed: int, scratch: Path) -> bool:
    """Whether more than COPE_BACKLOG_SHARE of the vehicles fail to enter within MAX_ENTRY_WAIT_S.

    SUMO runs as a TraCI server so that a probe past saturation stops as soon as
    that many have failed (one that failed stays failed, so stopping early never
    changes the answer): a gridlocked hour is the slowest part of a build.
    """
    write_routes(scratch / "probe.rou.xml", vehicles, "saturation probe")
    port = sumolib.miscutils.getFreeSocketPort()
    command = [str(Path(sumo.SUMO_HOME) / "bin" / "sumo"), "--net-file", str(net_file.resolve()),
               "--route-files", "probe.rou.xml", "--begin", str(BEGIN_S), "--end", str(END_S),
               "--time-to-teleport", "-1", "--seed", str(seed), "--no-step-log", "--no-warnings",
               "--max-depart-delay", f"{MAX_ENTRY_WAIT_S:g}", "--remote-port", str(port)]
    process = subprocess.Popen(command, cwd=scratch, env={**os.environ, "SUMO_HOME": sumo.SUMO_HOME},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with contextlib.redirect_stdout(io.StringIO()):  # traci says so on stdout while SUMO is starting up
        connection = traci.connect(port, proc=process, waitBetweenRetries=CONNECT_RETRY_S)
    departures = [vehicle.depart_s for vehicle in vehicles]  # sorted
    allowed = COPE_BACKLOG_SHARE * len(vehicles)
    try:
        for now in range(BEGIN_S + PROBE_CHECK_S, END_S + 1, PROBE_CHECK_S):
            connection.simulationStep(float(now))
            entered = int(connection.simulation.getParameter("", "stats.vehicles.inserted"))
            if bisect.bisect_right(departures, now - MAX_ENTRY_WAIT_S) - entered > allowed:
                return True  # at least that many are overdue and not in
        return len(vehicles) - entered > allowed
    finally:
        connection.close()


def _od_pairs(net: sumolib.net.Net) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """The route of every origin-destination pair that has one, and each pair's probability."""
    edges = sorted((e for e in net.getEdges(withInternal=False) if e.allows("passenger")), key=lambda e: e.getID())
    origins = _end_weights(edges, lambda e: e.getFromNode().getType() == "dead_end",
                           lambda e: e.getToNode().getType() != "dead_end")
    destinations = _end_weights(edges, lambda e: e.getToNode().getType() == "dead_end",
                                lambda e: e.getFromNode().getType() != "dead_end")
    routes, weights = [], []
    for origin, origin_weight in origins.items():
        tree = fastest_tree(net, net.getEdge(origin))
        for destination, destination_weight in destinations.items():
            route = route_to(tree, origin, destination) if destination != origin else None
            if route is not None:
                routes.append(route)
                weights.append(origin_weight * destination_weight)
    if not routes:
        raise RuntimeError("corpus: no route between any two ends of the network")
    weights_array = np.array(weights)
    return routes, weights_array / weights_array.sum()


def _end_weights(edges: list, is_fringe, is_inner) -> dict[str, float]:
    """Trip-end weights: FRINGE_SHARE spread over the boundary roads by lanes, the rest over inner roads."""
    fringe = {e.getID(): float(e.getLaneNumber()) for e in edges if is_fringe(e)}
    inner = {e.getID(): float(e.getLaneNumber()) for e in edges
             if not is_fringe(e) and is_inner(e) and e.getLength() >= MIN_INNER_END_M}
    fringe_share = FRINGE_SHARE if inner else 1.0
    weights = {edge: fringe_share * w / sum(fringe.values()) for edge, w in fringe.items()}
    weights.update({edge: (1.0 - fringe_share) * w / sum(inner.values()) for edge, w in inner.items()})
    return weights


