"""Reading SUMO networks into the project's model."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import sumo

from conftest import scenario_cfg
from urbanbrain.network import read_network
from urbanbrain.twin.scenario import load_scenario


def test_generated_grid_has_conflict_free_phases_and_geometry(grid_net: Path):
    net = read_network(grid_net)
    assert len(net.intersections) == 4
    for intersection in net.intersections.values():
        assert len(intersection.phases) >= 2
        assert all(not intersection.conflicting_pairs(p.state) for p in intersection.phases)
        assert any(intersection.conflicts), "crossing movements must conflict"
        assert intersection.clearance.total_s > 0
        for movement in intersection.movements:
            assert movement.in_lane in net.lanes and movement.out_lane in net.lanes
            assert movement.signal_group < intersection.n_groups
        assert {a.from_intersection for a in intersection.approaches} & set(net.intersections)
    lane = next(iter(net.lanes.values()))
    assert len(lane.shape) >= 2 and lane.length_m > 0


def test_network_without_usable_program_gets_generated_phases(tmp_path: Path, grid_net: Path):
    """A program whose greens are all identical is not usable: one green per approach, 3 s yellow + 2 s all-red."""
    text = grid_net.read_text()
    import re

    broken = re.sub(r'state="[^"]*"', lambda m: 'state="' + "G" * (len(m.group(0)) - 8) + '"', text)
    path = tmp_path / "broken.net.xml"
    path.write_text(broken)
    net = read_network(path)
    for intersection in net.intersections.values():
        assert intersection.clearance.yellow_s == 3 and intersection.clearance.all_red_s == 2
        assert intersection.clearance_source.startswith("generated")
        assert len(intersection.phases) == len(intersection.approaches)
        assert all(not intersection.conflicting_pairs(p.state) for p in intersection.phases)


def test_missing_and_broken_files_are_named(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nowhere.net.xml"):
        read_network(tmp_path / "nowhere.net.xml")
    with pytest.raises(FileNotFoundError, match="scenario not found"):
        load_scenario(tmp_path / "nothing.sumocfg")
    bad = tmp_path / "bad.sumocfg"
    bad.write_text("<configuration><input>")
    with pytest.raises(ValueError, match="not valid XML"):
        load_scenario(bad)


def test_hangzhou_program_clearance_is_its_all_red_shown_as_yellow():
    net = read_network(load_scenario(scenario_cfg("hangzhou_4x4")).net_file)
    assert len(net.intersections) == 16
    intersection = net.intersections["intersection_1_1"]
    assert len(intersection.phases) == 8
    assert (intersection.clearance.yellow_s, intersection.clearance.all_red_s) == (5.0, 0.0)
    assert "all-red" in intersection.clearance_source


def test_cologne_program_clearance_is_its_yellow():
    net = read_network(load_scenario(scenario_cfg("cologne3")).net_file)
    assert len(net.intersections) == 3
    assert all(i.clearance.yellow_s == 3.0 for i in net.intersections.values())


def test_netgenerate_is_available_from_the_wheel():
    out = subprocess.run([str(Path(sumo.SUMO_HOME) / "bin" / "netgenerate"), "--version"], capture_output=True, text=True)
    assert "1.28" in out.stdout


@pytest.mark.parametrize("folder", ["atlanta_1x5", "ingolstadt7"])
def test_generated_stages_are_conflict_free_on_real_junctions(folder):
    """Force the fallback on real junctions: every generated stage must be conflict-free."""
    import sumolib

    from urbanbrain.network.sumo_reader import _foe_groups, _generated_phases, _vehicle_connections

    net = sumolib.net.readNet(str(load_scenario(scenario_cfg(folder)).net_file), withPrograms=True)
    for tls in net.getTrafficLights():
        connections = _vehicle_connections(tls)
        n = 1 + max(k for _, _, k in connections)
        foes = _foe_groups(connections, n)
        stages = _generated_phases(connections, foes, n)
        for stage in stages:
            greens = stage.green_groups
            assert not any(foes[g] & greens for g in greens), (tls.getID(), stage.state)
        assert set().union(*(s.green_groups for s in stages)) == {k for _, _, k in connections}


def test_short_approaches_get_their_feeder_roads():
    net = read_network(load_scenario(scenario_cfg("ingolstadt7")).net_file)
    approaches = [a for i in net.intersections.values() for a in i.approaches]
    short = [a for a in approaches if net.lanes[a.lanes[0]].length_m < 30 and a.from_intersection is None]
    assert short and all(a.feeders for a in short)
    signalised_approaches = {a.edge for a in approaches}
    assert not any(set(a.feeders) & signalised_approaches for a in approaches)


def test_a_free_turn_does_not_hide_its_lanes_other_movements_from_the_brain():
    """On atlanta_1x5 right turns are green in every phase; their lanes' straight
    movements still have to be served, so a queue there must give its phase weight."""
    from urbanbrain.control.brain import BrainController
    from urbanbrain.state.model import CityState, LaneState

    scenario = load_scenario(scenario_cfg("atlanta_1x5"))
    network = read_network(scenario.net_file)
    brain = BrainController(network)
    checked = 0
    for intersection in network.intersections.values():
        always = frozenset.intersection(*(p.green_groups for p in intersection.phases))
        for lane in intersection.in_lanes:
            groups = {m.signal_group for m in intersection.movements if m.in_lane == lane}
            if not groups & always or not groups - always:
                continue
            state = CityState(source="test", lanes={lane: LaneState(vehicles=5.0, queue=5.0)})
            assert max(brain.weights(intersection.id, state).values()) == 5.0, lane
            checked += 1
    assert checked >= 4
