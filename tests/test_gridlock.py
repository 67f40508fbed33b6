"""Gridlock prevention and the no-regret supervisor, on hand-made states of the generated
2x2 grid (intersection A0: phase 0 serves the A1/bottom approaches, phase 1 the B0/left
ones; lane B0A0_1 leaves by A0left0_1 and A0bottom0_1, roads no approach loop watches)."""

from __future__ import annotations

from pathlib import Path

import pytest

from urbanbrain.control.brain import BrainController
from urbanbrain.control.cycle import ActuatedCycle
from urbanbrain.control.supervisor import SupervisedBrain, SupervisorSettings
from urbanbrain.devices.inventory import DeviceLayout, place_devices
from urbanbrain.devices.protocol import DetectorReport
from urbanbrain.network import read_network
from urbanbrain.state.estimator import SensorEstimator
from urbanbrain.state.model import CityState, LaneState, SignalStatus

PHASE0 = "GGGgrrrrGGGgrrrr"


def _state(now: float, time_in_phase_s: float, lanes: dict[str, LaneState], phase: int = 0) -> CityState:
    state = CityState(source="sensors", time=now, lanes=lanes)
    state.signals["A0"] = SignalStatus(PHASE0 if phase == 0 else "rrrrGGGgrrrrGGGg", phase, time_in_phase_s, "remote", now)
    return state


def _a0(decisions):
    return [d for d in decisions if d.intersection == "A0" and not d.keep and not d.note]


def test_exits_get_a_zone_where_no_approach_loop_watches(grid_net: Path):
    network = read_network(grid_net)
    zones = {loop.lane: loop for station in place_devices(network, DeviceLayout()) for loop in station.loops
             if loop.position == "exit"}
    approach_lanes = {lane for i in network.intersections.values() for a in i.approaches for lane in a.lanes}
    leaving = {lane for i in network.intersections.values() for lane in i.out_lanes}
    assert set(zones) == leaving - approach_lanes, "every unwatched exit has a zone, and only those"
    assert {"A0left0_1", "A0bottom0_1"} <= set(zones)
    assert all(0 < z.pos_m and z.length_m > 0 for z in zones.values())


def test_an_exit_zone_standing_occupied_is_spillback(grid_net: Path):
    network = read_network(grid_net)
    estimator = SensorEstimator(network)
    zone = next(loop for station in place_devices(network, DeviceLayout()) for loop in station.loops
                if loop.lane == "A0left0_1" and loop.position == "exit")

    def report(seq: int, count: int, occupancy: float) -> DetectorReport:
        return DetectorReport(device_id="det_A0", seq=seq, time=float(seq), interval_s=1.0, readings=[
            {"detector_id": zone.detector_id, "lane": zone.lane, "position": "exit", "count": count, "occupancy": occupancy}])

    estimator.on_detector(report(1, 1, 1.0))  # a vehicle coming onto it: moving traffic
    assert "A0left0_1" not in estimator.state.spillback_s
    for seq in (2, 3, 4):
        estimator.on_detector(report(seq, 0, 1.0))
    assert estimator.state.spillback_s["A0left0_1"] == pytest.approx(3.0)
    estimator.on_detector(report(5, 0, 0.0))
    assert "A0left0_1" not in estimator.state.spillback_s


def test_no_green_into_exits_whose_queue_stands_back_to_the_junction(grid_net: Path):
    network = read_network(grid_net)
    waiting = {"B0A0_1": LaneState(vehicles=8, queue=8)}
    assert [d.phase for d in _a0(BrainController(network).decide(_state(100.0, 20.0, dict(waiting)), 100.0))] == [1]
    state = _state(100.0, 20.0, dict(waiting))
    state.spillback_s.update({"A0left0_1": 5.0, "A0bottom0_1": 5.0})
    assert _a0(BrainController(network).decide(state, 100.0)) == [], "both exits full: the queue would only block A0"
    state.spillback_s.pop("A0bottom0_1")
    assert [d.phase for d in _a0(BrainController(network).decide(state, 100.0))] == [1], "one exit still takes vehicles"


def test_the_cycle_extends_a_discharging_green_then_gaps_out_to_the_next_called_phase(grid_net: Path):
    cycle = ActuatedCycle(read_network(grid_net))
    lanes = {"A1A0_0": LaneState(vehicles=4, queue=4), "B0A0_0": LaneState(vehicles=3, queue=3)}
    assert cycle.decide_one("A0", _state(100.0, 30.0, lanes)) is None, "its queue still discharges"
    lanes["A1A0_0"] = LaneState(vehicles=4, queue=4, head_standing_s=10.0)  # standing at green: an exit is full
    decision = cycle.decide_one("A0", _state(100.0, 30.0, lanes))
    assert decision.phase == 1 and "gap-out" in decision.reason
    lanes["A1A0_0"] = LaneState(vehicles=4, queue=4)
    decision = cycle.decide_one("A0", _state(100.0, 90.0, lanes))
    assert decision.phase == 1 and "maximum green" in decision.reason
    assert cycle.decide_one("A0", _state(100.0, 30.0, {"A1A0_0": LaneState()})) is None, "nobody calls phase 1"


def test_the_supervisor_hands_a_losing_intersection_to_the_cycle_and_takes_it_back(grid_net: Path):
    supervisor = SupervisedBrain(read_network(grid_net), SupervisorSettings(stand_limit_s=150.0, hold_s=300.0))
    calm = {"A1A0_0": LaneState(vehicles=2, queue=2), "B0A0_0": LaneState(vehicles=1, queue=1)}
    supervisor.decide(_state(100.0, 10.0, dict(calm)), 100.0)
    assert supervisor.watches["A0"].mode == "brain"

    losing = {**calm, "B0A0_0": LaneState(vehicles=3, queue=3, head_standing_s=160.0)}
    decisions = supervisor.decide(_state(200.0, 10.0, losing), 200.0)
    notes = [d for d in decisions if d.note]
    assert [d.intersection for d in notes if d.intersection == "A0"] == ["A0"]
    assert "160 s at the head of B0A0_0" in notes[0].reason and notes[0].reason.startswith("supervisor:")
    watch = supervisor.watches["A0"]
    assert (watch.mode, watch.until, watch.losses) == ("cycle", 500.0, 1)
    drains = {d.intersection for d in notes} - {"A0"}
    assert drains and all(supervisor.watches[i].mode == "cycle" for i in drains), "the roads B0A0_0 feeds are drained too"

    # under the cycle A0's greens are the cycle's: it gaps out of a green nobody uses
    decisions = supervisor.decide(_state(210.0, 30.0, {"B0A0_0": LaneState(vehicles=3, queue=3)}), 210.0)
    assert [d.reason.split(":")[0] for d in _a0(decisions)] == ["actuated cycle"]
    assert "supervisor: the cycle runs A0 until 500" in _a0(decisions)[0].reason

    # the hold ends while a head still stands half the limit: the cycle keeps it
    supervisor.decide(_state(500.0, 10.0, {"B0A0_0": LaneState(vehicles=3, queue=3, head_standing_s=80.0)}), 500.0)
    assert (watch.mode, watch.until) == ("cycle", 800.0)
    # ... and once the loss has cleared, the brain takes it back, explained
    decisions = supervisor.decide(_state(800.0, 10.0, dict(calm)), 800.0)
    assert watch.mode == "brain"
    assert any(d.note and d.intersection == "A0" and "brain back" in d.reason for d in decisions)

    # losing again soon after: the hold doubles
    supervisor.decide(_state(900.0, 10.0, losing), 900.0)
    assert (watch.mode, watch.until - 900.0, watch.losses) == ("cycle", 600.0, 2)


LOCKING = "arterial-8-short-s3"  # signals 14-20 m apart, unsignalised junctions between, permissive lefts


def test_a_short_link_corridor_that_locks_under_queue_serving_keeps_moving_under_the_brain(tmp_path: Path):
    """Max-pressure serves the biggest queue, into exits that cannot take it: on this
    corridor (corpus, 1.3 x the fixed plan's saturation) neighbouring junctions lock each
    other within minutes. The brain, from the same devices, keeps every head moving."""
    from urbanbrain.bench.corpus import build_corpus_scenario
    from urbanbrain.bench.runner import RunSpec, run_all

    scenario = str(build_corpus_scenario(LOCKING, tmp_path))
    runs = {spec.controller: result for spec, result in
            run_all([RunSpec(scenario, name, horizon_s=900.0) for name in ("maxpressure", "brain")], jobs=2)}
    locked, brain = runs["maxpressure"], runs["brain"]
    assert locked.longest_stop_s > 300, "the queue-serving peer locks here (else this network tests nothing)"
    assert brain.longest_stop_s <= 300
    assert brain.kpis.throughput > 2 * locked.kpis.throughput

