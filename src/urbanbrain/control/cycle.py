"""An actuated cycle run by the brain: the fallback the supervisor hands an intersection to.

What a traffic engineer's vehicle-actuated controller does (and SUMO's `actuated`
program, the best peer on networks where adaptive control has collapsed): the phases
follow each other in the programme's order, each green lasts at least its minimum and
is extended while its lanes still discharge a queue or see vehicles arriving (gap-out),
up to a maximum of twice the plan's green (at least `min_max_green_s`). A phase with no
vehicle waiting or arriving is skipped, as a detector-called phase is.

It is slower to react than the brain but cannot lock a junction by itself: every
movement with demand gets green once a cycle, whatever its exit looks like. It reads
the same device-estimated state and its orders go through the same safety layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from urbanbrain.control.base import PhaseDecision
from urbanbrain.network.model import Network
from urbanbrain.state.model import CityState

DEMAND_VEH = 0.5  # a lane with this many vehicles waiting or arriving calls its phase


@dataclass(frozen=True)
class CycleSettings:
    min_green_s: float = 5.0  # the peers' minimum green (SUMO actuated minDur)
    min_max_green_s: float = 40.0  # maximum green: twice the plan's, at least this
    stall_s: float = 6.0  # a queue whose head has stood this long at green is not discharging


class ActuatedCycle:
    """Vehicle-actuated control in the programme's phase order, from device data."""

    name = "cycle"
    local_program = None

    def __init__(self, network: Network, settings: CycleSettings | None = None):
        self.network = network
        self.settings = settings or CycleSettings()
        self._lanes: dict[str, list[tuple[str, ...]]] = {}
        self._max_green: dict[str, list[float]] = {}
        for intersection in network.intersections.values():
            always = frozenset.intersection(*(phase.green_groups for phase in intersection.phases))
            self._lanes[intersection.id] = [
                tuple(dict.fromkeys(m.in_lane for m in intersection.movements_of_phase(phase.index)
                                    if m.signal_group not in always))
                for phase in intersection.phases]
            self._max_green[intersection.id] = [max(2 * phase.plan_green_s, self.settings.min_max_green_s)
                                                for phase in intersection.phases]

    def forget_orders(self, intersection_id: str) -> None:
        """The cycle decides afresh from the state every second: it remembers no orders."""

    def decide(self, state: CityState, now: float) -> list[PhaseDecision]:
        return [d for i in self._lanes if (d := self.decide_one(i, state)) is not None]

    def decide_one(self, intersection_id: str, state: CityState) -> PhaseDecision | None:
        """The next phase once the current green has gapped out or run to its maximum."""
        signal = state.signals.get(intersection_id)
        if signal is None or signal.phase is None or signal.time_in_phase_s < self.settings.min_green_s:
            return None
        phases = self._lanes[intersection_id]
        current = signal.phase
        maxed = signal.time_in_phase_s >= self._max_green[intersection_id][current]
        if not maxed and self._busy(phases[current], state):
            return None
        for step in range(1, len(phases)):
            candidate = (current + step) % len(phases)
            waiting = self._calls(phases[candidate], state)
            if waiting >= DEMAND_VEH:
                why = f"maximum green {self._max_green[intersection_id][current]:g} s" if maxed else "gap-out"
                return PhaseDecision(intersection_id, candidate, self.settings.min_green_s,
                                     f"actuated cycle: {why} on phase {current} after {signal.time_in_phase_s:.0f} s, "
                                     f"next called phase {candidate} ({waiting:.1f} veh)",
                                     {candidate: waiting})
        return None

    def _busy(self, lanes: tuple[str, ...], state: CityState) -> bool:
        """Whether a green still serves someone: a queue discharging or a vehicle arriving."""
        for lane in lanes:
            lane_state = state.lanes.get(lane)
            if lane_state is None:
                continue
            if lane_state.approaching >= DEMAND_VEH:
                return True
            if lane_state.queue >= DEMAND_VEH and lane_state.head_standing_s < self.settings.stall_s:
                return True
        return False

    @staticmethod
    def _calls(lanes: tuple[str, ...], state: CityState) -> float:
        """Vehicles that call a phase: waiting at, or arriving on, its lanes (one at least where a
        vehicle stands on the stop-line loop, whatever the counts say)."""
        return sum(max(s.queue + s.upstream_queue, s.vehicles, 1.0 if s.head_standing_s > 0 else 0.0)
                   for lane in lanes if (s := state.lanes.get(lane)))
