"""The built-in demo city: layout, demand, determinism, caching, and that SUMO runs it."""

from __future__ import annotations

import collections
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import sumolib

from urbanbrain.demo import DEMO_SEED, build_demo_city
from urbanbrain.demo import city as demo_city

FILES = ("demo.net.xml", "demo.rou.xml", "demo.sumocfg")


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> Path:
    return build_demo_city(tmp_path_factory.mktemp("demo-cache"))


@pytest.fixture(scope="module")
def net(cfg: Path) -> sumolib.net.Net:
    return sumolib.net.readNet(str(cfg.parent / "demo.net.xml"), withPrograms=True)


@pytest.fixture(scope="module")
def vehicles(cfg: Path) -> list[tuple[float, list[str]]]:
    root = ET.parse(cfg.parent / "demo.rou.xml").getroot()
    return [(float(v.get("depart")), v.find("route").get("edges").split()) for v in root.iter("vehicle")]


def test_config_names_the_files_relatively_and_one_hour(cfg: Path):
    root = ET.parse(cfg).getroot()
    assert cfg.name == "demo.sumocfg"
    assert root.find("input/net-file").get("value") == "demo.net.xml"
    assert root.find("input/route-files").get("value") == "demo.rou.xml"
    assert root.find("time/begin").get("value") == "0"
    assert root.find("time/end").get("value") == "3600"
    assert sorted(p.name for p in cfg.parent.iterdir()) == sorted(FILES)


def test_sixteen_signalised_junctions_in_a_4x4_grid(net: sumolib.net.Net):
    signalised = [n for n in net.getNodes() if n.getType() == "traffic_light"]
    assert len(signalised) == 16
    xs = {round(n.getCoord()[0]) for n in signalised}
    ys = {round(n.getCoord()[1]) for n in signalised}
    assert len(xs) == len(ys) == 4
    assert {(round(n.getCoord()[0]), round(n.getCoord()[1])) for n in signalised} == {(x, y) for x in xs for y in ys}
    spacing = sorted(xs)[1] - sorted(xs)[0]
    assert 200 <= spacing <= 300
    dead_ends = [n for n in net.getNodes() if n.getType() == "dead_end"]
    assert len(dead_ends) == 16, "every boundary junction has an entry/exit road"


def test_signal_plans_have_few_greens_with_yellow_and_all_red(net: sumolib.net.Net):
    for tls in net.getTrafficLights():
        phases = tls.getPrograms()["0"].getPhases()
        greens = [p for p in phases if "G" in p.state and "y" not in p.state.lower()]
        assert 2 <= len(greens) <= 4, tls.getID()
        assert {p.duration for p in phases if "y" in p.state} == {3}
        all_red = [p for p in phases if set(p.state) == {"r"}]
        assert all_red and {p.duration for p in all_red} == {2}


def test_arterials_are_wider_and_faster_than_side_streets(net: sumolib.net.Net):
    edges = net.getEdges(withInternal=False)
    arterial = [e for e in edges if e.getSpeed() == pytest.approx(13.89)]
    side = [e for e in edges if e.getSpeed() == pytest.approx(11.11)]
    assert len(arterial) + len(side) == len(edges)
    assert min(e.getLaneNumber() for e in arterial) > max(e.getLaneNumber() for e in side)
    assert 2 <= min(e.getLaneNumber() for e in arterial) <= 3
    # one north-south and one east-west road, each crossing the whole city (5 links per direction)
    vertical = {round(e.getFromNode().getCoord()[0]) for e in arterial if e.getFromNode().getCoord()[0] == e.getToNode().getCoord()[0]}
    horizontal = {round(e.getFromNode().getCoord()[1]) for e in arterial if e.getFromNode().getCoord()[1] == e.getToNode().getCoord()[1]}
    assert len(vertical) == len(horizontal) == 1
    assert len(arterial) == 2 * 2 * 5


def test_demand_has_a_morning_peak_in_the_middle_of_the_hour(vehicles):
    departs = [depart for depart, _ in vehicles]
    assert departs == sorted(departs)
    assert 2500 <= len(departs) <= 3500
    assert 0 <= min(departs) and max(departs) < 3600
    bins = collections.Counter(int(depart // 600) for depart in departs)
    counts = [bins[i] for i in range(6)]
    peak = counts.index(max(counts))
    assert peak not in (0, 5), counts
    assert max(counts) > 1.5 * counts[0]


def test_routes_are_connected_paths_with_turns(net: sumolib.net.Net, vehicles):
    directions = collections.Counter()
    for _, edges in vehicles:
        first, last = net.getEdge(edges[0]), net.getEdge(edges[-1])
        assert first.getFromNode().getType() == "dead_end" and last.getToNode().getType() == "dead_end"
        for a, b in zip(edges, edges[1:]):
            connections = net.getEdge(a).getConnections(net.getEdge(b))
            assert connections, f"{a} -> {b} is not connected"
            directions[connections[0].getDirection()] += 1
    assert directions["l"] > 0.05 * len(vehicles) and directions["r"] > 0.05 * len(vehicles)


def test_inbound_arterials_carry_the_heaviest_flows(net: sumolib.net.Net, vehicles):
    entries = collections.Counter(edges[0] for _, edges in vehicles)
    arterial = {e.getID() for e in net.getEdges() if e.getLaneNumber() > 1}
    arterial_counts = sorted((entries[e] for e in entries if e in arterial), reverse=True)
    side_counts = [entries[e] for e in entries if e not in arterial]
    assert len(arterial_counts) == 4 and len(side_counts) == 12
    inbound, counter = arterial_counts[:2], arterial_counts[2:]
    assert min(inbound) > 2 * max(counter)
    assert min(counter) > max(side_counts)


def test_same_seed_gives_identical_bytes_and_other_seeds_differ(cfg: Path, tmp_path: Path):
    again = build_demo_city(tmp_path / "again", seed=DEMO_SEED)
    assert again != cfg
    for name in FILES:
        assert (again.parent / name).read_bytes() == (cfg.parent / name).read_bytes(), name
    other = build_demo_city(tmp_path / "other", seed=DEMO_SEED + 1)
    assert (other.parent / "demo.rou.xml").read_bytes() != (cfg.parent / "demo.rou.xml").read_bytes()


def test_second_call_is_served_from_the_cache(tmp_path: Path):
    first = build_demo_city(tmp_path, seed=3)
    stamps = {name: (first.parent / name).stat().st_mtime_ns for name in FILES}
    assert build_demo_city(tmp_path, seed=3) == first
    assert {name: (first.parent / name).stat().st_mtime_ns for name in FILES} == stamps
    assert [p.name for p in tmp_path.iterdir()] == [first.parent.name], "no staging folders left behind"


def test_incomplete_or_forced_city_is_rebuilt(tmp_path: Path):
    cfg = build_demo_city(tmp_path, seed=3)
    original = (cfg.parent / "demo.rou.xml").read_bytes()
    (cfg.parent / "demo.rou.xml").unlink()
    assert build_demo_city(tmp_path, seed=3) == cfg
    assert (cfg.parent / "demo.rou.xml").read_bytes() == original
    inode = cfg.parent.stat().st_ino
    assert build_demo_city(tmp_path, seed=3, force=True) == cfg
    assert cfg.parent.stat().st_ino != inode, "force builds a fresh folder"
    assert (cfg.parent / "demo.rou.xml").read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == [cfg.parent.name]


def test_default_cache_dir_honours_overrides(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("URBANBRAIN_CACHE", str(tmp_path / "mine"))
    assert demo_city.default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("URBANBRAIN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert demo_city.default_cache_dir() == tmp_path / "xdg" / "urbanbrain" / "demo"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert demo_city.default_cache_dir() == Path.home() / ".cache" / "urbanbrain" / "demo"


def test_failing_tool_is_named_and_leaves_no_half_city(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(demo_city, "_netconvert_args", lambda: ["--no-such-option"])
    with pytest.raises(RuntimeError, match="netconvert failed.*no-such-option"):
        build_demo_city(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_scenario_runs_in_sumo_and_vehicles_arrive(cfg: Path):
    libsumo = pytest.importorskip("libsumo")
    libsumo.start(["sumo", "-c", str(cfg), "--no-step-log", "--no-warnings", "--time-to-teleport", "-1"])
    try:
        departed = arrived = collisions = 0
        while libsumo.simulation.getTime() < 300:
            libsumo.simulationStep()
            departed += libsumo.simulation.getDepartedNumber()
            arrived += libsumo.simulation.getArrivedNumber()
            collisions += libsumo.simulation.getCollidingVehiclesNumber()
        waiting_to_enter = len(libsumo.simulation.getPendingVehicles())
    finally:
        libsumo.close()
    assert departed > 100
    assert arrived > 20, "the first trips (about 1.3 km) finish within five minutes"
    assert collisions == 0
    assert waiting_to_enter < 5, "entries are not blocked"
