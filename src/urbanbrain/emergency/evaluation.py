"""`urbanbrain bench emergency`: the same emergency trips with and without priority.

Both runs use the same scenario, seed, controller and emergency vehicles (same
dispatch times, places and vehicle type); the only difference is whether the brain
listens to their transponders. Without priority each vehicle follows its crew's own
route (fastest at free flow) through signals that do not know it is there. Each run
gets a fresh process (libsumo keeps state between simulations; see bench.runner).
"""

from __future__ import annotations

import multiprocessing
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from urbanbrain.bench.session import CitySession
from urbanbrain.emergency.routing import fastest_route
from urbanbrain.network import read_network
from urbanbrain.network.model import Network
from urbanbrain.twin.emergency import SPEED_FACTOR, EmergencyTrip, random_trips
from urbanbrain.twin.scenario import load_scenario


@dataclass(frozen=True)
class EmergencyRun:
    travel_s: dict[str, float]  # vehicle -> dispatch to arrival (unfinished: to the horizon's end)
    unfinished: list[str]
    others_total_delay_s: float
    recovery_s: list[float]
    preemptions: list[dict[str, Any]]
    safety: dict[str, int]
    problems: list[str]


def run_one(scenario: str, trips: list[EmergencyTrip], priority: bool, seed: int, controller: str = "brain",
            horizon_s: float = 3600.0) -> EmergencyRun:
    """One run, in this process (meant for a fresh one)."""
    loaded = load_scenario(scenario)
    network = read_network(loaded.net_file)
    with CitySession(loaded, network, controller, seed=seed, horizon_s=horizon_s, emergency=trips,
                     priority=priority) as session:
        session.start()
        while not session.done:
            session.step()
        result = session.finish()
        end = min(session.end_s, session.now)
        records = session.fleet.records
        pre = session.priority
        return EmergencyRun(
            travel_s={v: r.travel_s(end) for v, r in records.items()},
            unfinished=sorted(v for v, r in records.items() if r.arrived_s is None),
            others_total_delay_s=result.kpis.total_delay_s,
            recovery_s=pre.recovery_times_s() if pre else [],
            preemptions=[p.to_json() for p in pre.preemptions] if pre else [],
            safety=result.safety,
            problems=list(pre.problems) if pre else [],
        )


@dataclass(frozen=True)
class EmergencyComparison:
    report: dict[str, Any]  # what the issue asks for, and `--json` writes
    with_priority: EmergencyRun
    without_priority: EmergencyRun
    mean_travel_s: tuple[float, float]  # with, without
    free_flow_s: float  # mean over the trips of the floor below
    floor_ratio: float  # free_flow_s / mean without: what no signal priority can beat


def free_flow_s(network: Network, trip: EmergencyTrip) -> float:
    """The trip at the emergency vehicles' top speed on its free-flow fastest route, every
    light green and nobody in front (no acceleration, no turns): a floor for its travel time."""
    route = fastest_route(network, trip.origin, trip.destination)
    return sum(network.roads[r].length_m / (SPEED_FACTOR * network.roads[r].speed_limit_ms) for r in route)


def run_emergency(scenario: str, count: int, seed: int, controller: str = "brain", horizon_s: float = 3600.0,
                  jobs: int = 2) -> EmergencyComparison:
    """Both runs (side by side when `jobs` > 1) and the report the issue asks for."""
    loaded = load_scenario(scenario)
    network = read_network(loaded.net_file)
    trips = random_trips(network, count, seed=seed, begin_s=loaded.begin_s, horizon_s=horizon_s)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, min(jobs, 2)), mp_context=context, max_tasks_per_child=1) as pool:
        with_future = pool.submit(run_one, scenario, trips, True, seed, controller, horizon_s)
        without_future = pool.submit(run_one, scenario, trips, False, seed, controller, horizon_s)
        with_run, without_run = with_future.result(), without_future.result()
    vehicles = [t.vehicle for t in trips]
    mean_with = statistics.fmean(with_run.travel_s[v] for v in vehicles)
    mean_without = statistics.fmean(without_run.travel_s[v] for v in vehicles)
    report = {
        "scenario": loaded.name,
        "vehicles": len(vehicles),
        "travel_time_ratio": round(mean_with / mean_without, 4),
        "others_total_delay_change": round(with_run.others_total_delay_s / without_run.others_total_delay_s - 1, 4),
        "median_recovery_s": statistics.median(with_run.recovery_s) if with_run.recovery_s else None,
    }
    floor = statistics.fmean(free_flow_s(network, t) for t in trips)
    return EmergencyComparison(report, with_run, without_run, (mean_with, mean_without), floor, floor / mean_without)
