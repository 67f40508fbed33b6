"""Fixed cyclic plans at chosen intersections, the brain everywhere else.

A what-if tool for research (scripts/plan-probe, scripts/rollout-probe --plan): how
would a traffic engineer's fixed plan do at these junctions, with the brain running
the rest of the city as usual? A plan cycles through its phases in the given order,
each green for exactly its seconds: no starvation guard and no gap-out at those
intersections, as in a fixed-time plan. Its orders go through the same safety layer
as the brain's.
"""

from __future__ import annotations

import json

from urbanbrain.control.base import PhaseDecision
from urbanbrain.control.brain import BrainController
from urbanbrain.network.model import Network, Phase
from urbanbrain.state.model import CityState

Plans = dict[str, list[tuple[int, float]]]  # intersection -> [(phase, green_s), ...] in cycle order


def add_stages(network: Network, stages: list[str]) -> None:
    """Append stages the programme lacks, each `ID=STATE`, to their intersections'
    phases (numbered after the programme's, in the order given): a what-if on a
    different stage design. The field controllers show them as any phase, and the
    safety layer refuses one that shows conflicting groups green together."""
    for stage in stages:
        intersection_id, _, state = stage.partition("=")
        if intersection_id not in network.intersections:
            raise ValueError(f"stage {stage!r}: no signalised intersection {intersection_id!r} in {network.name}")
        intersection = network.intersections[intersection_id]
        if len(state) != intersection.n_groups:
            raise ValueError(f"stage {stage!r}: {intersection_id} has {intersection.n_groups} signal groups, "
                             f"the state has {len(state)}")
        intersection.phases = (*intersection.phases, Phase(len(intersection.phases), state, 0.0))


def parse_plans(text: str, network: Network) -> Plans:
    """Plans from JSON (`{"id": [[phase, green_s], ...]}`), checked against the network:
    known intersections, phases they have, greens longer than zero."""
    try:
        raw = json.loads(text)
        plans = {str(k): [(int(p), float(g)) for p, g in v] for k, v in raw.items()}
    except (ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"plan {text!r} is not {{id: [[phase, green_s], ...]}}: {error}") from None
    for intersection_id, plan in plans.items():
        if intersection_id not in network.intersections:
            raise ValueError(f"plan {text!r}: no signalised intersection {intersection_id!r} in {network.name}")
        phases = len(network.intersections[intersection_id].phases)
        for phase, green in plan:
            if not 0 <= phase < phases or green <= 0:
                raise ValueError(f"plan {text!r}: {intersection_id} has phases 0-{phases - 1}; "
                                 f"phase {phase} for {green:g} s is not one of them or not a green")
    return plans


class PlannedBrain(BrainController):
    """The brain, with the plans' intersections taken out of its hands."""

    def __init__(self, network: Network, plans: Plans) -> None:
        super().__init__(network)
        self.plans = plans
        self._green = {k: dict(plan) for k, plan in plans.items()}
        self._next = {k: {phase: plan[(i + 1) % len(plan)] for i, (phase, _) in enumerate(plan)} for k, plan in plans.items()}

    def decide(self, state: CityState, now: float) -> list[PhaseDecision]:
        decisions = [d for d in super().decide(state, now) if d.intersection not in self.plans]
        for intersection, plan in self.plans.items():
            signal = state.signals.get(intersection)
            if signal is None or signal.phase is None:
                continue  # a change interval is under way
            following = self._next[intersection]  # phase -> (the phase after it, its green)
            if signal.phase not in following:
                decisions.append(PhaseDecision(intersection, plan[0][0], plan[0][1], "plan: start"))
            elif signal.time_in_phase_s >= self._green[intersection][signal.phase]:
                phase, green_s = following[signal.phase]
                decisions.append(PhaseDecision(intersection, phase, green_s, f"plan: {signal.phase} -> {phase}"))
        return decisions

    def guard_pending(self, intersection_id: str) -> bool:
        """A planned intersection has no starvation guard: the plan alone decides there."""
        return intersection_id not in self.plans and super().guard_pending(intersection_id)
