"""Fixed cyclic plans at chosen intersections (urbanbrain.control.plan), on the generated
2x2 grid: A0's phase 0 serves its A1/bottom approaches, phase 1 its B0/left ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from urbanbrain.control.plan import PlannedBrain, add_stages, parse_plans
from urbanbrain.control.safety import SafetyLayer, UnsafePhaseError
from urbanbrain.network import read_network
from urbanbrain.state.model import CityState, LaneState, SignalStatus


@pytest.mark.parametrize(("text", "names"), [
    ("not json", "is not"),
    ("[1, 2]", "is not"),
    ('{"A0": [[0]]}', "is not"),
    ('{"Z9": [[0, 10]]}', "'Z9'"),
    ('{"A0": [[5, 10]]}', "phase 5"),
    ('{"A0": [[0, 0]]}', "for 0 s"),
])
def test_a_plan_the_network_cannot_run_is_refused_with_the_reason(grid_net: Path, text: str, names: str):
    with pytest.raises(ValueError, match=names):
        parse_plans(text, read_network(grid_net))


def _state(now: float, signals: dict[str, tuple[int, float]], lanes: dict[str, LaneState],
           network) -> CityState:
    state = CityState(source="sensors", time=now, lanes=lanes)
    for intersection_id, (phase, time_in_phase_s) in signals.items():
        shown = network.intersections[intersection_id].phases[phase].state
        state.signals[intersection_id] = SignalStatus(shown, phase, time_in_phase_s, "remote", now)
    return state


def test_a_planned_intersection_follows_its_plan_and_the_rest_the_brain(grid_net: Path):
    network = read_network(grid_net)
    brain = PlannedBrain(network, parse_plans('{"A0": [[0, 30], [1, 12]]}', network))
    waiting = {"B0A0_0": LaneState(vehicles=12, queue=12), "A0B0_0": LaneState(vehicles=12, queue=12)}
    # 20 s into A0's 30 s green: twelve vehicles wait for phase 1, the brain alone would change
    early = [d for d in brain.decide(_state(100.0, {"A0": (0, 20.0), "B0": (0, 20.0)}, waiting, network), 100.0)
             if not d.keep]
    assert [d.intersection for d in early] == ["B0"], "the brain still runs B0; A0 waits for its plan"
    assert not brain.guard_pending("A0")
    due = [d for d in brain.decide(_state(110.0, {"A0": (0, 30.0), "B0": (1, 10.0)}, waiting, network), 110.0)
           if d.intersection == "A0" and not d.keep]
    assert [(d.phase, d.min_green_s, d.reason) for d in due] == [(1, 12.0, "plan: 0 -> 1")]
    back = [d for d in brain.decide(_state(130.0, {"A0": (1, 12.0), "B0": (1, 30.0)}, {}, network), 130.0)
            if d.intersection == "A0" and not d.keep]
    assert [(d.phase, d.min_green_s) for d in back] == [(0, 30.0)], "the cycle starts again"


def test_an_added_stage_is_a_phase_and_an_unsafe_one_is_refused(grid_net: Path):
    network = read_network(grid_net)
    a0 = network.intersections["A0"]
    with pytest.raises(ValueError, match="signal groups"):
        add_stages(network, ["A0=GGG"])
    with pytest.raises(ValueError, match="'Z9'"):
        add_stages(network, ["Z9=" + "r" * a0.n_groups])
    own = len(a0.phases)
    add_stages(network, ["A0=" + a0.phases[0].state])  # a copy of a safe stage
    assert len(a0.phases) == own + 1 and a0.phases[own].index == own
    SafetyLayer(network)
    add_stages(network, ["A0=" + "G" * a0.n_groups])  # every group green: crossing streams
    with pytest.raises(UnsafePhaseError, match=f"phase {own + 1}"):
        SafetyLayer(network)
