"""The no-regret supervisor: the brain gives way, intersection by intersection, when it loses.

The brain is tuned on a handful of cities and will run on hundreds of intersections it
was never tuned on. Where it loses there, a traffic control centre would switch it off
by morning; the supervisor does it first, for one intersection at a time, and says why.

It watches what the devices measure at each intersection the brain runs: how long the
vehicle at the head of each approach lane has stood without crossing the stop line (the
stop-line loop occupied, no departure), at red or at a green it cannot use because its
exit is full. A head standing longer than `stand_limit_s` is a loss no plan would
accept: the starvation guard should have served it, so either the brain misjudges this
junction or a lock is forming. The intersection is handed to the actuated cycle
(control/cycle.py: the classic vehicle-actuated controller, the best peer where adaptive
control collapses) for `hold_s`, and so are the intersections whose lanes that standing
lane feeds (they drain its exit: a lock spans both). At the end of the hold the brain
takes the intersection back if no head has stood half the limit there meanwhile; each
new loss within `forgive_s` of the last doubles the hold (up to `max_hold_s`), so a
junction the brain keeps losing stays with the cycle.

Both controllers decide every second for every intersection, so the brain's memory
(waits at red, held-up lanes) is current when it takes one back; only the decisions of
the one in charge are carried out. Every hand-over is a decision-log entry with its
reason, and `status()` tells the cockpit who runs each intersection and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from urbanbrain.control.base import PhaseDecision
from urbanbrain.control.brain import BrainController, BrainSettings
from urbanbrain.control.cycle import ActuatedCycle
from urbanbrain.network.model import Network
from urbanbrain.state.model import CityState

BRAIN = "brain"
CYCLE = "cycle"


@dataclass(frozen=True)
class SupervisorSettings:
    stand_limit_s: float = 150.0  # a head standing this long: the brain is losing here (the guard's limit is 120 s)
    hold_s: float = 300.0  # the first hand-over to the cycle lasts this long
    max_hold_s: float = 1800.0
    forgive_s: float = 1800.0  # a loss this long after the brain took an intersection back starts from hold_s again


@dataclass
class Watch:
    """Who runs one intersection, since when, until when and why."""

    mode: str = BRAIN
    since: float = 0.0
    until: float = 0.0
    reason: str = ""
    hold_s: float = 0.0
    returned: float = float("-inf")  # when the brain last took it back
    losses: int = 0


@dataclass
class SupervisedBrain:
    """The brain, with the supervisor handing intersections to the actuated cycle when it loses."""

    network: Network
    settings: SupervisorSettings = field(default_factory=SupervisorSettings)
    brain_settings: BrainSettings = field(default_factory=BrainSettings)
    name: str = "brain"
    local_program: None = None

    def __post_init__(self) -> None:
        self.brain = BrainController(self.network, self.brain_settings)
        self.cycle = ActuatedCycle(self.network)
        self.watches = {i: Watch() for i in self.network.intersections}
        self._last_green: dict[str, int] = {}
        self._lanes = {i.id: i.in_lanes for i in self.network.intersections.values()}
        owner = {lane: i.id for i in self.network.intersections.values() for lane in i.in_lanes}
        # in-lane -> the intersections its movements feed (those that drain its exits)
        self._drains: dict[str, frozenset[str]] = {}
        for intersection in self.network.intersections.values():
            for movement in intersection.movements:
                downstream = owner.get(movement.out_lane)
                if downstream is not None and downstream != intersection.id:
                    self._drains[movement.in_lane] = self._drains.get(movement.in_lane, frozenset()) | {downstream}

    def forget_orders(self, intersection_id: str) -> None:
        self.brain.forget_orders(intersection_id)
        self.cycle.forget_orders(intersection_id)

    def status(self) -> dict[str, Watch]:
        return self.watches

    def decide(self, state: CityState, now: float) -> list[PhaseDecision]:
        brain = self.brain.decide(state, now)
        for intersection_id, signal in state.signals.items():
            if signal.phase is not None:
                self._last_green[intersection_id] = signal.phase
        notices = self._supervise(state, now)
        decisions = [d for d in brain if self.watches[d.intersection].mode == BRAIN]
        for intersection_id, watch in self.watches.items():
            if watch.mode != CYCLE:
                continue
            decision = self.cycle.decide_one(intersection_id, state)
            if decision is not None:
                decisions.append(PhaseDecision(decision.intersection, decision.phase, decision.min_green_s,
                                               f"{decision.reason} (supervisor: the cycle runs {intersection_id} "
                                               f"until {watch.until:.0f}: {watch.reason})", decision.scores))
        return notices + decisions

    def _supervise(self, state: CityState, now: float) -> list[PhaseDecision]:
        """Hand intersections over where the brain loses, and back where the loss has cleared."""
        notices = []
        for intersection_id, lane, standing in self._losses(state):
            for target in (intersection_id, *sorted(self._drains.get(lane, ()))):
                watch = self.watches[target]
                if watch.mode == CYCLE:
                    continue
                where = "" if target == intersection_id else f", whose exit {target} drains"
                reason = (f"a vehicle has stood {standing:.0f} s at the head of {lane}{where} "
                          f"(limit {self.settings.stand_limit_s:g} s)")
                notices.append(self._hand_over(target, now, reason))
        for intersection_id, watch in self.watches.items():
            if watch.mode != CYCLE or now < watch.until:
                continue
            worst = max((s.head_standing_s for lane in self._lanes[intersection_id]
                         if (s := state.lanes.get(lane)) is not None), default=0.0)
            if worst >= self.settings.stand_limit_s / 2:
                watch.until = now + watch.hold_s
                continue
            watch.mode, watch.since, watch.returned = BRAIN, now, now
            watch.reason = (f"brain back after {watch.hold_s:.0f} s of actuated cycle: no head stands "
                            f"{self.settings.stand_limit_s / 2:g} s or more")
            self.brain.forget_orders(intersection_id)
            notices.append(self._notice(intersection_id, f"supervisor: {watch.reason}"))
        return notices

    def _losses(self, state: CityState) -> list[tuple[str, str, float]]:
        """(intersection, lane, seconds) for every head standing past the limit at an intersection the brain runs."""
        found = []
        for intersection_id, lanes in self._lanes.items():
            if self.watches[intersection_id].mode != BRAIN:
                continue
            for lane in lanes:
                lane_state = state.lanes.get(lane)
                if lane_state is not None and lane_state.head_standing_s >= self.settings.stand_limit_s:
                    found.append((intersection_id, lane, lane_state.head_standing_s))
                    break
        return found

    def _hand_over(self, intersection_id: str, now: float, reason: str) -> PhaseDecision:
        watch = self.watches[intersection_id]
        repeat = now - watch.returned < self.settings.forgive_s
        watch.hold_s = min(self.settings.max_hold_s, 2 * watch.hold_s) if repeat and watch.hold_s else self.settings.hold_s
        watch.mode, watch.since, watch.until, watch.reason = CYCLE, now, now + watch.hold_s, reason
        watch.losses += 1
        return self._notice(intersection_id,
                            f"supervisor: brain losing at {intersection_id}, actuated cycle for {watch.hold_s:.0f} s: {reason}")

    def _notice(self, intersection_id: str, reason: str) -> PhaseDecision:
        """A hand-over as a decision-log entry (no command is sent), with the last green seen there."""
        return PhaseDecision(intersection_id, self._last_green.get(intersection_id, 0), 0.0, reason, note=True)
