"""Safety, property-tested: whatever commands arrive, the signal heads stay safe.

Random intersections (random conflict graphs, conflict-free phases, random change
intervals) get random command sequences through the safety layer into the field
controller; the heads' states, sampled every half second, must never show two
conflicting groups green, every loss of green must show its yellow and the full
change interval before a conflicting group gets green, and greens last at least the
minimum and at most the maximum.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from urbanbrain.control.safety import SafetyLayer, SafetyLimits, UnsafePhaseError
from urbanbrain.devices.protocol import ControllerState, SignalCommand
from urbanbrain.devices.signal_controller import SignalController
from urbanbrain.network.model import GREEN_CHARS, Clearance, Intersection, Network, Phase

DT = 0.5
LIMITS = SafetyLimits(min_green_s=5.0, max_green_s=60.0)


@st.composite
def intersections(draw) -> Intersection:
    n = draw(st.integers(2, 10))
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    edges = draw(st.lists(st.sampled_from(pairs), unique=True)) if pairs else []
    conflicts = [set() for _ in range(n)]
    for i, j in edges:
        conflicts[i].add(j)
        conflicts[j].add(i)
    phases: list[str] = []
    for _ in range(draw(st.integers(2, 5))):
        order = draw(st.permutations(range(n)))
        greens: set[int] = set()
        for g in order:  # greedy maximal conflict-free set: a valid stage
            if not conflicts[g] & greens:
                greens.add(g)
        state = "".join(draw(st.sampled_from("Gg")) if k in greens else "r" for k in range(n))
        if state not in phases:
            phases.append(state)
    if len(phases) < 2:
        phases.append("r" * n)
    half = st.integers(1, 10).map(lambda k: k * DT)
    clearance = Clearance(yellow_s=draw(half), all_red_s=draw(st.integers(0, 6).map(lambda k: k * DT)))
    return Intersection(
        id="J", position=(0.0, 0.0), approaches=(), movements=(),
        phases=tuple(Phase(i, s, 30.0) for i, s in enumerate(phases)),
        conflicts=tuple(frozenset(c) for c in conflicts), clearance=clearance, clearance_source="test", program_id="0",
    )


commands = st.lists(
    st.tuples(
        st.integers(0, 30).map(lambda k: k * DT),  # wait before the command
        st.sampled_from(["go", "go", "hold", "force_off"]),
        st.integers(0, 6),  # phase, possibly one that does not exist
        st.integers(0, 40).map(lambda k: k * DT),  # requested minimum green
        st.integers(0, 8).map(lambda k: k * DT),  # requested yellow
        st.integers(0, 4).map(lambda k: k * DT),  # requested all-red
    ),
    max_size=40,
)


def run(intersection: Intersection, sequence) -> tuple[list[str], list[tuple[float, int | None]], SafetyLayer]:
    network = Network("random", {}, {"J": intersection}, (0, 0, 1, 1))
    safety = SafetyLayer(network, LIMITS)
    controller = SignalController("J", intersection.phases, 0, 0.0, failsafe_s=None)  # no fail-safe: it is tested on its own
    safety.take_control("J", 0, 0.0)
    schedule: dict[float, list] = {}
    t = 0.0
    for seq, (wait, action, phase, min_green, yellow, red) in enumerate(sequence):
        t += wait
        schedule.setdefault(t, []).append(SignalCommand(
            device_id="brain", seq=seq, time=t, intersection="J", action=action,
            phase=None if action != "go" and phase % 2 else phase, min_green_s=min_green, yellow_s=yellow, all_red_s=red,
        ))
    states, phases = [], []
    end = t + 3 * LIMITS.max_green_s
    now = 0.0
    while now <= end:
        for command in safety.tick(now):
            controller.apply(command, now)
        for command in schedule.get(now, []):
            safe = safety.submit(command, now)
            if safe is not None:
                controller.apply(safe, now)
        state = controller.state_at(now)
        safety.observe(ControllerState(device_id="ctl", seq=len(states), time=now, intersection="J", signal_state=state,
                                       phase=controller.report_phase(now)[0], time_in_phase_s=0, mode="remote"))
        states.append(state)
        phases.append(controller.report_phase(now))
        now += DT
    settled = controller.report_phase(now + 60.0)[0]
    assert settled == safety._tracks["J"].phase, "the layer's record and the device agree once changes finish"
    return states, phases, safety


@settings(max_examples=300, deadline=None)
@given(intersections(), commands)
def test_no_conflicting_greens_full_clearance_min_and_max_green(intersection, sequence):
    states, phases, safety = run(intersection, sequence)
    clearance = intersection.clearance
    n = intersection.n_groups
    last_green = [float("-inf")] * n  # last sample time each group showed green
    green_start = [0.0 if states[0][g] in GREEN_CHARS else None for g in range(n)]
    yellow_run = [0.0] * n
    for k, state in enumerate(states):
        now = k * DT
        assert not intersection.conflicting_pairs(state), f"conflicting greens at {now}: {state}"
        for g, c in enumerate(state):
            was = states[k - 1][g] if k else state[g]
            if c in GREEN_CHARS:
                if was not in GREEN_CHARS:  # gaining green: every conflicting group cleared long enough
                    for h in intersection.conflicts[g]:
                        gap = now - (last_green[h] + DT)
                        required = max(clearance.yellow_s, LIMITS.min_yellow_s) + clearance.all_red_s
                        assert gap >= required - 1e-9, f"group {g} green {gap} s after conflicting {h}"
                    green_start[g] = now
                last_green[g] = now
            elif was in GREEN_CHARS:  # losing green: yellow first, and the green lasted the minimum
                assert c == "y", f"group {g} went {was}->{c} without yellow at {now}"
                assert now - green_start[g] >= LIMITS.min_green_s - 1e-9, f"group {g} green only {now - green_start[g]} s"
            if c == "y":
                yellow_run[g] += DT
            elif was == "y":
                required = max(clearance.yellow_s, LIMITS.min_yellow_s)
                assert yellow_run[g] >= required - 1e-9, f"group {g} yellow only {yellow_run[g]} s"
                yellow_run[g] = 0.0
    for phase, in_phase in phases:
        if phase is not None:
            assert in_phase <= LIMITS.max_green_s + DT
    assert not [i for i in safety.interventions if i.outcome == "violation"]


def test_unsafe_phase_table_is_refused_at_start():
    intersection = Intersection(
        id="J", position=(0, 0), approaches=(), movements=(), phases=(Phase(0, "GG", 30), Phase(1, "rG", 30)),
        conflicts=(frozenset({1}), frozenset({0})), clearance=Clearance(3, 2), clearance_source="t", program_id="0",
    )
    with pytest.raises(UnsafePhaseError, match="phase 0"):
        SafetyLayer(Network("n", {}, {"J": intersection}, (0, 0, 1, 1)))


def test_interventions_say_which_rule():
    intersection = Intersection(
        id="J", position=(0, 0), approaches=(), movements=(), phases=(Phase(0, "Gr", 30), Phase(1, "rG", 30)),
        conflicts=(frozenset({1}), frozenset({0})), clearance=Clearance(3, 2), clearance_source="t", program_id="0",
    )
    safety = SafetyLayer(Network("n", {}, {"J": intersection}, (0, 0, 1, 1)), LIMITS)
    safety.take_control("J", 0, 0.0)
    early = safety.command("J", "go", 1, 2.0)
    assert safety.submit(early, 2.0) is None  # before minimum green: deferred
    released = safety.tick(5.0)
    assert [c.phase for c in released] == [1]
    assert released[0].yellow_s == 3 and released[0].all_red_s == 2
    assert safety.submit(safety.command("J", "go", 0, 6.0), 6.0) is None  # change interval running: refused
    assert safety.submit(safety.command("J", "go", 7, 20.0), 20.0) is None  # no such phase: refused
    short = safety.command("J", "go", 0, 20.0).model_copy(update={"yellow_s": 0.5, "all_red_s": 0.0})
    assert safety.submit(short, 20.0).yellow_s == 3  # timings below the clearance: corrected
    outcomes = [(i.outcome, i.rule) for i in safety.interventions]
    assert ("deferred", "min-green") in outcomes
    assert ("refused", "clearance") in outcomes
    assert ("refused", "phase") in outcomes
    assert ("corrected", "timings") in outcomes
    forced = safety.tick(20.0 + 5.0 + LIMITS.max_green_s)
    assert forced and forced[0].action == "force_off"


def _two_phase(states: tuple[str, str], conflicts) -> Network:
    intersection = Intersection(
        id="J", position=(0, 0), approaches=(), movements=(), phases=(Phase(0, states[0], 30), Phase(1, states[1], 30)),
        conflicts=conflicts, clearance=Clearance(3, 2), clearance_source="t", program_id="0",
    )
    return Network("n", {}, {"J": intersection}, (0, 0, 1, 1))


def test_protected_turn_becoming_permissive_is_cleared_first():
    """Group 0 is a left turn: protected (G) in phase 1, permissive (g) beside the opposing
    through (group 1) in phase 0. Leaving phase 1 it must show yellow and red before the
    through gets green, although the plan accepts the two together while the turn yields."""
    network = _two_phase(("gG", "Gr"), (frozenset(), frozenset()))
    safety = SafetyLayer(network, LIMITS)
    controller = SignalController("J", network.intersections["J"].phases, 1, 0.0)
    safety.take_control("J", 1, 0.0)
    controller.apply(safety.submit(safety.command("J", "go", 0, 10.0), 10.0), 10.0)
    assert controller.state_at(10.0) == "yr"
    assert controller.state_at(13.0) == "rr"
    assert controller.state_at(15.0) == "gG"


def test_control_taken_from_a_running_green_honours_its_minimum():
    network = _two_phase(("Gr", "rG"), (frozenset({1}), frozenset({0})))
    safety = SafetyLayer(network, LIMITS)
    safety.take_control("J", 0, 10.0, green_for_s=2.0)  # green since 8.0
    assert safety.submit(safety.command("J", "go", 1, 11.0), 11.0) is None  # 3 s served: deferred
    assert [c.phase for c in safety.tick(13.0)] == [1]


def test_inconsistent_limits_and_single_phase_intersections():
    with pytest.raises(ValueError, match="min_green_s <= max_green_s"):
        SafetyLimits(min_green_s=200, max_green_s=120)
    intersection = Intersection(
        id="J", position=(0, 0), approaches=(), movements=(), phases=(Phase(0, "GG", 30),),
        conflicts=(frozenset(), frozenset()), clearance=Clearance(3, 2), clearance_source="t", program_id="0",
    )
    safety = SafetyLayer(Network("n", {}, {"J": intersection}, (0, 0, 1, 1)), LIMITS)
    safety.take_control("J", 0, 0.0)
    assert safety.tick(10 * LIMITS.max_green_s) == []  # nothing to force off to


def test_a_report_that_does_not_fit_is_flagged_not_trusted():
    network = _two_phase(("Gr", "rG"), (frozenset({1}), frozenset({0})))
    safety = SafetyLayer(network, LIMITS)
    safety.observe(ControllerState(device_id="c", seq=0, time=1.0, intersection="J", signal_state="G",
                                   phase=0, time_in_phase_s=0, mode="remote"))
    assert [(i.outcome, i.rule) for i in safety.interventions] == [("violation", "report")]
    from urbanbrain.state.model import signal_status

    bad_phase = ControllerState(device_id="c", seq=1, time=1.0, intersection="J", signal_state="Gr",
                                phase=9, time_in_phase_s=0, mode="remote")
    assert signal_status(network, bad_phase) is None


def test_field_controller_keeps_its_own_minimum_yellow():
    network = _two_phase(("Gr", "rG"), (frozenset({1}), frozenset({0})))
    controller = SignalController("J", network.intersections["J"].phases, 0, 0.0, min_yellow_s=3.0)
    rogue = SignalCommand(device_id="x", seq=0, time=0.0, intersection="J", action="go", phase=1, yellow_s=0, all_red_s=0)
    controller.apply(rogue, 0.0)
    assert controller.state_at(0.0) == "yr" and controller.state_at(2.9) == "yr" and controller.state_at(3.0) == "rG"
