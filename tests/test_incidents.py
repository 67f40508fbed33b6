"""Incident injection in the twin: what is asked is placed or named as wrong, the
vehicles involved really block the lane, and the ground truth never reaches the bus."""

from __future__ import annotations

from pathlib import Path

import pytest

from urbanbrain.bench.session import CitySession
from urbanbrain.incidents.injection import Incident, IncidentError, IncidentInjector, random_incidents, validate
from urbanbrain.network import read_network
from urbanbrain.twin.scenario import load_scenario


def test_bad_incidents_are_named(grid_net: Path):
    network = read_network(grid_net)
    edge = sorted({a.edge for i in network.intersections.values() for a in i.approaches})[0]
    good = Incident("x", "stalled_vehicle", edge, (0,), 50.0, 100.0, 600.0)
    validate(good, network)
    cases = {
        "no edge": Incident("x", "stalled_vehicle", "nowhere", (0,), 50.0, 100.0, 600.0),
        "lanes 0..1": Incident("x", "stalled_vehicle", edge, (5,), 50.0, 100.0, 600.0),
        "blocks one lane": Incident("x", "stalled_vehicle", edge, (0, 1), 50.0, 100.0, 600.0),
        "position 1 m": Incident("x", "crash", edge, (0,), 1.0, 100.0, 600.0),
        "5 to 30 minutes": Incident("x", "crash", edge, (0, 1), 50.0, 100.0, 60.0),
        "kind 'fire'": Incident("x", "fire", edge, (0,), 50.0, 100.0, 600.0),  # type: ignore[arg-type]
    }
    for expected, incident in cases.items():
        with pytest.raises(IncidentError, match=expected):
            validate(incident, network)


def test_random_incidents_are_reproducible_and_do_not_overlap(grid_net: Path):
    network = read_network(grid_net)
    first = random_incidents(network, 6, seed=4, begin_s=0.0, horizon_s=3600.0)
    assert first == random_incidents(network, 6, seed=4, begin_s=0.0, horizon_s=3600.0)
    assert first != random_incidents(network, 6, seed=5, begin_s=0.0, horizon_s=3600.0)
    for incident in first:
        validate(incident, network)
        assert incident.end_s <= 3600.0
        same_edge = [o for o in first if o.edge == incident.edge and o is not incident]
        assert all(o.end_s <= incident.start_s or incident.end_s <= o.start_s for o in same_edge)


def test_an_injected_crash_blocks_its_lane_and_the_truth_stays_off_the_bus(grid_city: Path, tmp_path: Path):
    scenario = load_scenario(grid_city)
    network = read_network(scenario.net_file)
    edge = sorted(a.edge for i in network.intersections.values() for a in i.approaches
                  if a.from_intersection is None)[0]  # an entry road: traffic comes at once
    incident = Incident("c1", "crash", edge, (0,), 60.0, 20.0, 300.0)
    injector = IncidentInjector([incident])
    session = CitySession(scenario, network, "fixed", horizon_s=400, world=[injector.step])
    published: list = []
    for kind in ("detector", "camera", "controller"):
        session.bus.subscribe(kind, published.append)
    session.start()
    stood: list[float] = []
    while not session.done:
        session.step()
        record = injector.truth["c1"]
        if record.complete_from is not None and record.cleared_at is None:
            positions = [session.twin.sumo.vehicle.getLanePosition(v) for v in record.vehicles]
            stood.append(max(abs(p - 60.0) for p in positions))
    session.finish()
    record = injector.truth["c1"]
    assert record.blocked_from is not None and 20.0 <= record.blocked_from <= record.complete_from
    assert record.cleared_at == record.complete_from + 300.0, "it lasts its duration once both vehicles stand"
    assert len(record.vehicles) == 2 and max(stood) <= 9.0, "both vehicles stand at the place for the duration"
    assert not any("c1" in repr(event) for event in published), "nothing about the incident itself is published"
    injector.write_truth(tmp_path / "truth.jsonl")
    assert '"id": "c1"' in (tmp_path / "truth.jsonl").read_text()


def test_a_stalled_vehicle_blocks_from_when_it_stops(grid_city: Path):
    """The truth of a one-vehicle incident starts when that vehicle stands at the place,
    not when a second vehicle (which only a crash needs) could have come (measured
    before: always 121 s after the start, so every timely alert was scored false)."""
    scenario = load_scenario(grid_city)
    network = read_network(scenario.net_file)
    edge = sorted(a.edge for i in network.intersections.values() for a in i.approaches
                  if a.from_intersection is None)[0]
    injector = IncidentInjector([Incident("s1", "stalled_vehicle", edge, (0,), 60.0, 20.0, 100.0)])
    session = CitySession(scenario, network, "fixed", horizon_s=300, world=[injector.step])
    session.start()
    involved_at = None
    while not session.done:
        session.step()
        record = injector.truth["s1"]
        if record.vehicles and involved_at is None:
            involved_at = session.now
    session.finish()
    record = injector.truth["s1"]
    assert involved_at is not None and len(record.vehicles) == 1
    assert involved_at <= record.blocked_from <= involved_at + 20.0, "it brakes to a stop within seconds"
    assert record.complete_from == record.blocked_from and record.cleared_at == record.blocked_from + 100.0


def test_an_incident_never_takes_a_vehicle_another_incident_stopped(grid_city: Path):
    """A second incident placed ahead of a vehicle that already stands for the first
    must take another vehicle: reusing it made a phantom incident that began at once
    and ended when the first one's vehicle was towed (seen in the bench truth)."""
    scenario = load_scenario(grid_city)
    network = read_network(scenario.net_file)
    edge = sorted(a.edge for i in network.intersections.values() for a in i.approaches
                  if a.from_intersection is None)[0]
    first = Incident("s1", "stalled_vehicle", edge, (0,), 60.0, 20.0, 300.0)
    second = Incident("s2", "stalled_vehicle", edge, (0,), 110.0, 120.0, 300.0)
    injector = IncidentInjector([first, second])
    session = CitySession(scenario, network, "fixed", horizon_s=300, world=[injector.step])
    session.start()
    while not session.done:
        session.step()
    session.finish()
    one, two = injector.truth["s1"], injector.truth["s2"]
    assert one.blocked_from is not None and one.blocked_from < 120.0, "the first stands before the second starts"
    assert not set(one.vehicles) & set(two.vehicles)


def test_the_command_line_simulates_chosen_incidents_and_names_bad_ones(grid_city: Path, tmp_path: Path):
    import json
    import subprocess
    import sys

    cli = [sys.executable, "-m", "urbanbrain.cli", "incidents", "simulate", "--scenario", str(grid_city),
           "--horizon", "400", "--controller", "fixed", "--out", str(tmp_path)]
    network = read_network(load_scenario(grid_city).net_file)
    edge = sorted(a.edge for i in network.intersections.values() for a in i.approaches if a.from_intersection is None)[0]
    bad = subprocess.run([*cli, "--at", f"crash,{edge},7,50,10,600"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "lanes 0..1" in bad.stderr
    good = subprocess.run([*cli, "--at", f"stalled_vehicle,{edge},0,60,20,300"], capture_output=True, text=True, timeout=300)
    assert good.returncode == 0, good.stderr
    truth = [json.loads(line) for line in (tmp_path / "truth.jsonl").read_text().splitlines()]
    assert truth[0]["edge"] == edge and truth[0]["blocked_from"] is not None
    assert (tmp_path / "alerts.jsonl").exists()


def test_the_score_credits_one_incident_per_alert_and_counts_the_rest_as_false_alarms(grid_net: Path):
    from urbanbrain.incidents.detector import IncidentAlert
    from urbanbrain.incidents.evaluation import score
    from urbanbrain.incidents.injection import TruthRecord

    network = read_network(grid_net)
    intersection = sorted(network.intersections)[0]
    edges = [a.edge for a in network.intersections[intersection].approaches]

    def record(name: str, edge: str, start: float) -> TruthRecord:
        return TruthRecord(Incident(name, "stalled_vehicle", edge, (0,), 60.0, start, 600.0), blocked_from=start,
                           cleared_at=start + 600.0)

    def alert(edge: str, at: float) -> IncidentAlert:
        return IncidentAlert(f"{edge}@{at:.0f}", edge, intersection, "link", 0.0, 100.0, at, at - 60.0, {})

    truth = [record("a", edges[0], 100.0), record("b", edges[1], 100.0), record("c", edges[1], 2000.0)]
    alerts = [alert(edges[0], 150.0), alert(edges[0], 400.0),  # a, and a repeat while it stands
              alert(edges[1], 170.0),  # b
              alert(edges[0], 1500.0)]  # nothing stands on that link then: a false alarm
    result = score("grid", network, truth, alerts, 3600.0)
    assert (result.happened, result.detected, result.false_alarms) == (3, 2, 1)
    assert result.median_time_to_detect_s == 60.0 and result.right_link_rate == 1.0
    assert result.false_alarms_per_intersection_hour == 1 / len(network.intersections)
    # A second incident on a link while the first still stands there: an alert after
    # it began, other than the one that detected the first, detects it.
    truth.append(record("d", edges[0], 300.0))
    result = score("grid", network, truth, alerts, 3600.0)
    assert (result.happened, result.detected, result.false_alarms) == (4, 3, 1)
    assert result.median_time_to_detect_s == 70.0  # a: 50, b: 70, d: 100 s
