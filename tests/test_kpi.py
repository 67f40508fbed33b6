"""KPI definitions, checked on hand-computable trips and on a tiny real run."""

from __future__ import annotations

from pathlib import Path

import pytest

from urbanbrain.bench.session import CitySession
from urbanbrain.kpi import trip_kpis
from urbanbrain.network import read_network
from urbanbrain.twin.scenario import load_scenario

TRIPS = """<tripinfos>
  <tripinfo id="a" depart="0.00" departDelay="0.00" arrival="100.00" timeLoss="20.00" waitingCount="1"/>
  <tripinfo id="b" depart="50.00" departDelay="10.00" arrival="-1.00" timeLoss="30.00" waitingCount="3"/>
  <tripinfo id="c" depart="-1" departDelay="100.00" arrival="-1.00" timeLoss="0.00" waitingCount="0"/>
  <tripinfo id="d" depart="-1" departDelay="0.00" arrival="-1.00" timeLoss="0.00" waitingCount="0"/>
</tripinfos>
"""


def test_trip_kpis_by_hand(tmp_path: Path):
    path = tmp_path / "tripinfo.xml"
    path.write_text(TRIPS)
    k = trip_kpis(path, horizon_end_s=200.0)
    # inserted: a (arrived, 100 s) and b (unfinished: horizon end 200 - depart 50 = 150 s)
    assert k.att_s == pytest.approx((100 + 150) / 2)
    assert k.delay_s == pytest.approx((20 + 30) / 2)
    # every vehicle scheduled before the horizon end: a 20, b 30 + 10, c never inserted (scheduled at 100) 100;
    # d was scheduled exactly at the horizon end (200 - 0) and so is outside it
    assert k.total_delay_s == pytest.approx((20 + 40 + 100) / 3)
    assert (k.throughput, k.not_inserted, k.scheduled) == (1, 1, 3)
    assert k.stops == pytest.approx((1 + 3) / 2)


def test_arrival_after_the_horizon_counts_until_the_horizon(tmp_path: Path):
    path = tmp_path / "tripinfo.xml"
    path.write_text('<tripinfos><tripinfo id="a" depart="10" departDelay="0" arrival="500" timeLoss="5" waitingCount="0"/></tripinfos>')
    k = trip_kpis(path, horizon_end_s=110.0)
    assert k.att_s == pytest.approx(100.0)
    assert k.throughput == 0


def _tiny_scenario(tmp_path: Path, grid_net: Path, vehicles: int, spacing_s: float) -> Path:
    """One route across the 2x2 grid; `vehicles` cars asked to depart `spacing_s` apart."""
    net = read_network(grid_net)
    entry = next(a.edge for i in net.intersections.values() for a in i.approaches if a.from_intersection is None)
    routes = ['<routes><vType id="car" sigma="0"/>']
    routes += [f'<vehicle id="v{k}" type="car" depart="{k * spacing_s:.1f}" departLane="best"><route edges="{entry}"/></vehicle>'
               for k in range(vehicles)]
    routes.append("</routes>")
    (tmp_path / "tiny.rou.xml").write_text("\n".join(routes))
    cfg = tmp_path / "tiny.sumocfg"
    cfg.write_text(f'<configuration><input><net-file value="{grid_net}"/><route-files value="tiny.rou.xml"/></input>'
                   '<time><begin value="0"/></time></configuration>')
    return cfg


def _run_fixed(cfg: Path, horizon_s: float):
    scenario = load_scenario(cfg)
    session = CitySession(scenario, read_network(scenario.net_file), "fixed", horizon_s=horizon_s)
    session.start()
    while not session.done:
        session.step()
    return session.finish().kpis


def test_vehicles_kept_out_of_the_network_count_as_delay(tmp_path: Path, grid_net: Path):
    """Far more cars than one entry lane can take: the ones never inserted count from their scheduled time."""
    k = _run_fixed(_tiny_scenario(tmp_path, grid_net, vehicles=200, spacing_s=0.1), horizon_s=60)
    assert k.scheduled == 200
    assert k.not_inserted > 100
    # a never-inserted car scheduled at t waits (60 - t), so the mean over all exceeds the inserted cars' delay
    assert k.total_delay_s > k.delay_s
    assert k.total_delay_s > 20


def test_free_flow_has_almost_no_delay(tmp_path: Path, grid_net: Path):
    k = _run_fixed(_tiny_scenario(tmp_path, grid_net, vehicles=3, spacing_s=20), horizon_s=200)
    assert (k.scheduled, k.not_inserted, k.throughput) == (3, 0, 3)
    assert k.total_delay_s < 5.0
    assert k.att_s > 0
