"""Agreement with an independent implementation on real Hangzhou data (SUMO 1.28, 1 h, seed 1, oracle)."""

from __future__ import annotations

import pytest

from conftest import scenario_cfg
from urbanbrain.bench.session import CitySession
from urbanbrain.network import read_network
from urbanbrain.twin.scenario import load_scenario

REFERENCE = {  # controller: (total_delay_s, att_s)
    "fixed": (290, 548),
    "actuated": (74, 360),
    "delaybased": (73, 359),
    "maxpressure": (69, 355),
}


@pytest.mark.scenario
@pytest.mark.parametrize("controller", list(REFERENCE))
def test_hangzhou_4x4_matches_reference_within_5_percent(controller):
    scenario = load_scenario(scenario_cfg("hangzhou_4x4"))
    session = CitySession(scenario, read_network(scenario.net_file), controller, observation="oracle", seed=1)
    session.start()
    while not session.done:
        session.step()
    kpis = session.finish().kpis
    total, att = REFERENCE[controller]
    assert kpis.total_delay_s == pytest.approx(total, rel=0.05)
    assert kpis.att_s == pytest.approx(att, rel=0.05)
