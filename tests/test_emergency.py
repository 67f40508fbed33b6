"""Emergency vehicles: their reports (and bad ones), routes, and the green wave through the twin."""

from __future__ import annotations

from pathlib import Path

import pytest

from service_city import City
from urbanbrain.devices import ProtocolError, parse_event
from urbanbrain.emergency import RouteError, fastest_route
from urbanbrain.emergency.evaluation import run_emergency
from urbanbrain.network import read_network
from urbanbrain.state.model import CityState, LaneState


def report(network, **changes) -> dict:
    roads = sorted(network.roads)
    edge = roads[0]
    base = {"kind": "emergency", "device_id": "ev-1", "seq": 1, "time": 1.0, "vehicle": "ev-1", "service": "ambulance",
            "priority": 1, "edge": edge, "lane": f"{edge}_0", "position_m": 10.0, "speed_ms": 8.0,
            "destination": _reachable_from(network, edge)}
    base.update(changes)
    return base


def _reachable_from(network, origin: str) -> str:
    for road in sorted(network.roads, reverse=True):
        if road != origin:
            try:
                if len(fastest_route(network, origin, road)) >= 3:
                    return road
            except RouteError:
                continue
    raise AssertionError("the grid has no road three roads away")


def test_bad_emergency_reports_are_named_field_by_field(grid_net: Path):
    network = read_network(grid_net)
    cases = {"priority": 0, "service": "taxi", "position_m": -1.0, "speed_ms": float("nan"), "status": "parked"}
    for field, value in cases.items():
        with pytest.raises(ProtocolError) as exc:
            parse_event(report(network, **{field: value}))
        assert [f for f, _ in exc.value.errors] == [f"emergency.{field}"], (field, exc.value.errors)
    missing = report(network)
    del missing["destination"]
    with pytest.raises(ProtocolError, match="destination"):
        parse_event(missing)
    assert parse_event(report(network)).kind == "emergency"


def test_routes_follow_current_travel_times(grid_net: Path):
    network = read_network(grid_net)
    origin = sorted(network.roads)[0]
    destination = _reachable_from(network, origin)
    free = fastest_route(network, origin, destination)
    assert free[0] == origin and free[-1] == destination
    assert all(b in network.roads[a].leads_to for a, b in zip(free, free[1:]))
    # a long queue standing on the free-flow route's middle road: the route goes round it if it can
    blocked = free[1]
    state = CityState("sensors", lanes={lane: LaneState(queue=40.0) for lane in network.edge_lanes(blocked)})
    around = fastest_route(network, origin, destination, state)
    assert around[-1] == destination
    alternatives_exist = any(blocked not in r for r in _all_simple_routes(network, origin, destination, len(free) + 2))
    assert (blocked not in around) == alternatives_exist
    with pytest.raises(RouteError, match="nowhere"):
        fastest_route(network, origin, "nowhere")


def _all_simple_routes(network, origin: str, destination: str, max_len: int):
    stack = [[origin]]
    while stack:
        route = stack.pop()
        if route[-1] == destination:
            yield route
            continue
        if len(route) < max_len:
            stack += [route + [n] for n in network.roads[route[-1]].leads_to if n not in route]


def test_the_service_names_what_is_wrong_in_an_emergency_report(city: City):
    network = city.network
    transponder = city.keys["admin"]
    lane_elsewhere = next(lane for lane in sorted(network.lanes) if network.lanes[lane].edge != report(network)["edge"])
    cases = {
        "edge": {"edge": "no-such-road"},
        "lane": {"lane": lane_elsewhere},
        "position_m": {"position_m": 99_999.0},
        "destination": {"destination": "no-such-road"},
        "vehicle": {"vehicle": "ev-2"},
    }
    for field, change in cases.items():
        answer = city.client.post("/api/events", json=[report(network, **change)], headers={"X-API-Key": transponder})
        assert answer.status_code == 422, (field, answer.text)
        assert [(e["item"], e["field"]) for e in answer.json()["detail"]] == [(0, field)], answer.json()
    assert city.store.count_events() == 0

    good = report(network)
    city.now = 2.0
    answer = city.client.post("/api/events", json=[good, city.controller_report(1, 2.0)], headers=city.headers("admin"))
    assert answer.status_code == 200, answer.text
    city.service.runtime.tick()
    emergency = city.client.get("/api/emergency", headers=city.headers("viewer")).json()
    assert [v["vehicle"] for v in emergency["vehicles"]] == ["ev-1"]
    planned = emergency["vehicles"][0]["route"]
    assert planned[0] == good["edge"] and planned[-1] == good["destination"]
    route = city.client.get("/api/emergency/ev-1/route", headers=city.headers("admin")).json()
    assert route["edges"] == planned
    assert city.client.get("/api/emergency/ev-1/route", headers=city.headers("device")).status_code == 403, \
        "a sensor's key reads no route (only the vehicle's emergency key, or an administrator)"
    assert city.client.get("/api/emergency/ev-9/route", headers=city.headers("admin")).status_code == 404


def test_priority_gives_emergency_vehicles_a_green_wave_through_the_safety_layer(grid_city: Path):
    comparison = run_emergency(str(grid_city), count=6, seed=3, horizon_s=600)
    result, with_priority, without = comparison.report, comparison.with_priority, comparison.without_priority
    assert set(result) == {"scenario", "vehicles", "travel_time_ratio", "others_total_delay_change", "median_recovery_s"}
    assert result["vehicles"] == 6
    assert not with_priority.unfinished and not without.unfinished
    assert with_priority.preemptions, "no signal was held for any emergency vehicle"
    assert result["travel_time_ratio"] < 0.9, result
    assert 0 < comparison.floor_ratio <= result["travel_time_ratio"]  # nothing beats every light green, nobody ahead
    assert "violation" not in with_priority.safety
    assert with_priority.problems == []
    assert result["median_recovery_s"] is not None and 0 <= result["median_recovery_s"] <= 600


def test_a_vehicle_gets_green_ahead_and_loses_priority_when_its_transponder_falls_silent(grid_net: Path):
    from urbanbrain.control.safety import SafetyLayer
    from urbanbrain.core.bus import EventBus
    from urbanbrain.emergency import EmergencyPriority

    network = read_network(grid_net)
    bus = EventBus()
    priority = EmergencyPriority(network, bus)
    safety = SafetyLayer(network)
    for intersection_id in network.intersections:
        safety.take_control(intersection_id, 0, 0.0, green_for_s=60.0)
    # a road ending at a signal, the vehicle 20 m before the stop line, heading on through it
    intersection = network.intersections[sorted(network.intersections)[0]]
    movement = next(m for m in intersection.movements if m.direction == "s")
    edge, onward = network.lanes[movement.in_lane].edge, network.lanes[movement.out_lane].edge
    destination = onward if not network.roads[onward].leads_to else network.roads[onward].leads_to[0]
    near = network.roads[edge].length_m - 20.0
    bus.publish(parse_event(report(network, edge=edge, lane=f"{edge}_0", position_m=near, destination=destination,
                                   time=100.0)))
    decisions = priority.adjust([], CityState("sensors"), safety, 101.0)
    held = [d for d in decisions if d.intersection == intersection.id]
    assert len(held) == 1 and held[0].reason.startswith("emergency: ambulance ev-1")
    assert movement.signal_group in intersection.phases[held[0].phase].green_groups
    assert priority.holding() == [intersection.id]
    assert priority.adjust([], CityState("sensors"), safety, 115.0) == []  # 15 s without a report
    assert priority.vehicles == {} and "silent" in priority.problems[-1]
    assert priority.holding() == []


def test_run_with_emergency_vehicles_sends_their_reports_through_the_service_and_their_routes_back(
        grid_city: Path, tmp_path: Path):
    """`urbanbrain run --emergency N`: the twin dispatches N vehicles; their transponders'
    reports are validated and stored like every device event, and the brain's route
    reaches each vehicle through its navigation unit's read of the route advice."""
    import json

    from urbanbrain.service.app import ServiceState
    from urbanbrain.service.host import CityHost, HostOptions, open_store

    with pytest.raises(ValueError, match="0 or more"):
        HostOptions(emergency=-1)
    store = open_store(tmp_path, None)
    service = ServiceState(store)
    host = CityHost(service, HostOptions(scenario=str(grid_city), speed=0, duration_s=150, seed=3, emergency=2), tmp_path)
    host.start()
    host.thread.join(timeout=300)
    assert service.twin == "finished", service.twin_error
    runtime, records = service.runtime, host.field.fleet.records
    assert sorted(records) == ["ev-1", "ev-2"]
    for vehicle, record in records.items():
        stored = store.events(vehicle, limit=10_000)
        assert len(stored) >= 10 and {e.kind for e in stored} == {"emergency"}
        assert [e.seq for e in stored] == sorted(e.seq for e in stored) and stored[0].seq > 10**18  # rising across runs
        first = json.loads(stored[0].payload)
        assert first["edge"] == record.trip.origin and first["destination"] == record.trip.destination
        advice = runtime.routes[vehicle]
        assert advice.edges[-1] == record.trip.destination
        assert record.advice >= 1, f"{vehicle} never followed the brain's route"
    assert runtime.priority.preemptions, "no signal was held for the emergency vehicles"
    assert runtime.priority.problems == []
    arrived = {v for v, r in records.items() if r.arrived_s is not None and runtime.city_time - r.arrived_s > 10}
    assert arrived, "no vehicle finished its trip more than 10 s before the end"
    silent = {row["device_id"]: row["silent"] for row in runtime.device_rows()}
    assert not any(silent[v] for v in arrived), "a transponder whose mission is over is not silent"
    store.close()
