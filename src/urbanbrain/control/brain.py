"""The brain's signal controller (issue 3, in progress: docs/benchmarks.md has the
measured standing against the best peer of each city).

Each intersection decides every second (not on a fixed beat) which green serves the
network best, from what the device path can tell:

- a phase's weight is the queue it serves: vehicles standing on each in-lane and on
  the feeder roads behind it (once per lane, however many turns it feeds), counted
  double where the queue fills its lane, since detectors cannot see how far it reaches
  beyond (into the junction upstream, or out of the network); a movement
  whose out-lanes are nearly full, or whose queue stands back to their start (exit
  zones, feeder and entry loops see it, also behind unsignalised junctions), gets no
  weight, because feeding a link about to spill back only blocks the junction upstream (measured, that blocking rule does
  better than max-pressure's subtraction of out-lane counts, whose weight is 0);
- the green to change to is the waiting phase that sends the most vehicles across per
  second of the green and change it needs (its queue over start-up, a saturation
  headway per vehicle of its longest lane and the change interval: Smith's rule, which
  orders jobs to least total waiting): two lanes of five go before one lane of twelve;
- while the current green still discharges a queue, a change must gain more than a
  hysteresis plus the vehicles this green would have sent across during the change
  interval (so saturated approaches get long greens, not a change every few seconds);
- once its queue is cleared, the green gives way to any waiting demand, unless the
  vehicles the advance loops see arriving on it would lose more, waiting out the red
  a change causes, than the waiting vehicles gain (a gap-out that weighs both sides);
- a queue whose head stands at green (a turner yielding, an exit blocked) is not
  served by that green, so its protected phase gets the weight and the guard counts
  its wait; leaving a green with held-up permissive turns goes first through the
  phase that protects them, as the intersection's own program does;
- a new green lasts at least as long as the queue waiting for it needs to start and
  cross (start-up plus a saturation headway per vehicle of its longest lane, between
  the minimum green and `max_initial_s`: traffic engineers' "variable initial"), so a
  long queue is not cut off by a short one that builds up behind the change;
- starvation guard: a lane with demand that has waited at red longer than the limit
  puts its phase first, whatever the queues say.

Every change records the quantities compared and the alternative rejected; so does
every decision to keep a green against a waiting alternative (a `keep` decision: it is
explained, and no command is sent).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from urbanbrain.control.base import PhaseDecision
from urbanbrain.network.model import GREEN_CHARS, Intersection, Network
from urbanbrain.state.estimator import JAM_SPACING_M
from urbanbrain.state.model import CityState


@dataclass(frozen=True)
class BrainSettings:
    min_green_s: float = 6.0
    max_initial_s: float = 20.0  # a new green lasts at least as long as its queue needs, up to this
    startup_s: float = 2.0  # start-up lost time of a queue at green
    max_wait_s: float = 120.0  # starvation guard: longest wait at red with demand
    guard_margin_s: float = 5.0  # on top of the worst-case time to serve a waiting lane (see _guard)
    switch_cost_veh: float = 2.0  # hysteresis: vehicles of pressure a change must gain
    full_fraction: float = 0.85  # an out-lane this full is treated as blocked
    moving_weight: float = 0.0  # weight of moving (not yet queued) vehicles against queued ones
    downstream_weight: float = 0.0  # weight of the vehicles already on a movement's out-lanes (see below)
    min_demand_veh: float = 0.5  # a phase with less waiting is not worth a change
    headway_s: float = 2.0  # saturation headway per lane
    approach_s: float = 6.0  # time for a vehicle at the advance loop to reach the stop line
    lost_weight: float = 1.0  # weight of the vehicles a discharging green loses to a change interval
    stall_s: float = 6.0  # a queue whose head stands this long at green is not served by that green
    spill_weight: float = 1.0  # extra weight, per vehicle, of a queue that fills its lane (see _demands)
    spillback_s: float = 3.0  # an exit whose start has stood occupied this long takes no more vehicles


@dataclass
class _PhaseLinks:
    lanes: tuple[str, ...]  # in-lanes given green
    outs: dict[str, tuple[str, ...]]  # in-lane -> its out-lanes in this phase


def _clearing(intersection: Intersection, index: int, always: frozenset[int]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """For one phase: the in-lanes of its permissive (yielding, 'g') movements, and the
    phases that give all of those movements protected green ('G')."""
    phase = intersection.phases[index]
    yielding = {i for i, c in enumerate(phase.state) if c == "g"} - always
    if not yielding:
        return (), ()
    lanes = tuple(sorted({m.in_lane for m in intersection.movements if m.signal_group in yielding}))
    clearing = tuple(p.index for p in intersection.phases
                     if p.index != index and all(p.state[i] == "G" for i in yielding))
    return lanes, clearing


def _totals(demands: list[dict[str, float]]) -> dict[int, float]:
    """Per phase, the vehicles all its lanes would send across (a phase's weight)."""
    return {index: sum(lanes.values()) for index, lanes in enumerate(demands)}


@dataclass
class BrainController:
    network: Network
    settings: BrainSettings = field(default_factory=BrainSettings)
    name: str = "brain"
    local_program: None = None

    def __post_init__(self) -> None:
        self._phases: dict[str, list[_PhaseLinks]] = {}
        self._clearing: dict[str, list[tuple[tuple[str, ...], tuple[int, ...]]]] = {}  # per phase, see _clearing
        self._controlled: dict[str, dict[str, tuple[int, ...]]] = {}  # lane -> its signal groups not always green
        self._capacity: dict[str, float] = {
            lane.id: max(1.0, lane.length_m / JAM_SPACING_M) for lane in self.network.lanes.values()
        }
        for intersection in self.network.intersections.values():
            # A movement green in every phase (a free right turn, say) is served whatever
            # the brain decides; the lane's other movements still need their phase.
            always = frozenset.intersection(*(phase.green_groups for phase in intersection.phases))
            phases = []
            for phase in intersection.phases:
                outs: dict[str, list[str]] = {}
                for movement in intersection.movements_of_phase(phase.index):
                    if movement.signal_group not in always:
                        outs.setdefault(movement.in_lane, []).append(movement.out_lane)
                phases.append(_PhaseLinks(tuple(outs), {k: tuple(v) for k, v in outs.items()}))
            self._phases[intersection.id] = phases
            self._clearing[intersection.id] = [_clearing(intersection, phase.index, always) for phase in intersection.phases]
            controlled: dict[str, set[int]] = {}
            for movement in intersection.movements:
                if movement.signal_group not in always:
                    controlled.setdefault(movement.in_lane, set()).add(movement.signal_group)
            self._controlled[intersection.id] = {lane: tuple(groups) for lane, groups in controlled.items()}
        self._red_since: dict[str, float] = {}
        self._green_since: dict[str, float] = {}
        self._stalled: set[str] = set()
        self._guarding: dict[str, int] = {}  # intersection -> phase the guard has ordered
        self._initial: dict[str, float] = {}  # intersection -> minimum green of the green last ordered
        self._change_s = {i.id: i.clearance.total_s for i in self.network.intersections.values()}

    def decide(self, state: CityState, now: float) -> list[PhaseDecision]:
        decisions = []
        for intersection_id, phases in self._phases.items():
            signal = state.signals.get(intersection_id)
            if signal is None:
                continue
            self._track_waits(intersection_id, signal.signal_state, state, now)
            if signal.phase is None:
                continue
            decision = self._guard(intersection_id, phases, signal.phase, state, now)
            pending_guard = intersection_id in self._guarding  # an ordered guard change is not overridden
            floor = self._initial.get(intersection_id, self.settings.min_green_s)
            if decision is None and not pending_guard and signal.time_in_phase_s >= floor:
                decision = self._decide_one(intersection_id, phases, signal.phase, state, now)
            if decision is not None and decision.keep:
                decisions.append(decision)
            elif decision is not None:
                routed = self._via_clearing(intersection_id, signal.phase, decision, state)
                if routed is not decision and self._guarding.get(intersection_id) == decision.phase:
                    self._guarding[intersection_id] = routed.phase  # the guard orders its phase again from there
                decisions.append(routed)
                self._initial[intersection_id] = routed.min_green_s
        return decisions

    def snapshot(self) -> BrainController:
        """A copy whose memory (waits at red, held-up lanes, orders under way) evolves
        apart from this one's, so that a research tool can play the brain ahead from
        the same moment (scripts/rollout-probe) and go back."""
        twin = copy.copy(self)
        twin._red_since, twin._green_since = dict(self._red_since), dict(self._green_since)
        twin._stalled, twin._guarding, twin._initial = set(self._stalled), dict(self._guarding), dict(self._initial)
        return twin

    def guard_pending(self, intersection_id: str) -> bool:
        """Whether a change the starvation guard ordered here is still on its way."""
        return intersection_id in self._guarding

    def order_change(self, intersection_id: str, phase: int, state: CityState, reason: str) -> PhaseDecision:
        """A change to `phase` decided elsewhere (a research tool's choice), with the
        initial green the brain gives that phase's waiting queue, remembered as ordered."""
        demands = self._demands(intersection_id, state, None)
        min_green_s = self._initial_s(demands[phase])
        self._initial[intersection_id] = min_green_s
        return PhaseDecision(intersection_id, phase, min_green_s, reason, _totals(demands))

    def forget_orders(self, intersection_id: str) -> None:
        """Something else decided for this intersection (an emergency vehicle's priority):
        what this controller ordered there was not carried out, so it must not wait for it
        (a guard change believed pending would freeze the intersection until maximum green)."""
        self._guarding.pop(intersection_id, None)
        self._initial.pop(intersection_id, None)

    def _via_clearing(self, intersection_id: str, current: int, decision: PhaseDecision,
                      state: CityState) -> PhaseDecision:
        """Leaving a green with permissive (yielding) turns for one that lets their foes go
        would strand the turners already waiting inside the junction: go first through
        the phase that protects those turns, as the intersection's own program does."""
        lanes, clearing = self._clearing[intersection_id][current]
        if not clearing or decision.phase in clearing:
            return decision
        if not any(lane in self._stalled for lane in lanes):
            return decision  # no turner is held up: nobody is waiting inside the junction
        weights = self.weights(intersection_id, state)
        via = max(clearing, key=lambda k: weights[k])
        return PhaseDecision(intersection_id, via, self.settings.min_green_s,
                             f"{decision.reason}; first via phase {via}, which protects the turns yielding "
                             f"in phase {current} (a turner there is held up)", decision.scores)

    def _guard(self, intersection_id: str, phases: list[_PhaseLinks], current: int, state: CityState,
               now: float) -> PhaseDecision | None:
        """Starvation guard. It acts early enough for the worst case: the current green
        may still have its initial green to run, or a change to another phase may be under way
        (that phase's initial green, up to `max_initial_s`, and two change intervals),
        before the lane gets green."""
        if self._guarding.get(intersection_id) == current:
            del self._guarding[intersection_id]
        longest_green = max(self.settings.min_green_s, self.settings.max_initial_s)
        lead = longest_green + 2 * self._change_s[intersection_id] + self.settings.guard_margin_s
        waiting = [lane for lane in self._controlled[intersection_id]
                   if now - self._red_since.get(lane, now) >= self.settings.max_wait_s - lead]
        if not waiting:
            return None
        oldest = min(waiting, key=lambda lane: self._red_since[lane])
        target = next((i for i, links in enumerate(phases) if oldest in links.lanes), current)
        if target == current or self._guarding.get(intersection_id) == target:
            return None  # served now, or the change is already ordered (the safety layer may defer it)
        self._guarding[intersection_id] = target
        demands = self._demands(intersection_id, state, None)
        return PhaseDecision(intersection_id, target, self._initial_s(demands[target]),
                             f"starvation guard: {oldest} has waited {now - self._red_since[oldest]:.0f} s at red "
                             f"(limit {self.settings.max_wait_s:g} s)",
                             _totals(demands))

    def _track_waits(self, intersection_id: str, signal_state: str, state: CityState, now: float) -> None:
        for lane, groups in self._controlled[intersection_id].items():
            green = any(signal_state[group] in GREEN_CHARS for group in groups)
            if green:
                self._green_since.setdefault(lane, now)
            else:
                self._green_since.pop(lane, None)
            lane_state = state.lanes.get(lane)
            stalled = (green and lane_state is not None
                       and min(now - self._green_since[lane], lane_state.head_standing_s) >= self.settings.stall_s)
            if stalled:
                self._stalled.add(lane)
            else:
                self._stalled.discard(lane)
            served = green and not stalled
            if served or lane_state is None or lane_state.queue < 0.5:
                self._red_since.pop(lane, None)
            else:
                self._red_since.setdefault(lane, now - (lane_state.head_standing_s if stalled else 0.0))

    def weights(self, intersection_id: str, state: CityState, current: int | None = None) -> dict[int, float]:
        return _totals(self._demands(intersection_id, state, current))

    def _demands(self, intersection_id: str, state: CityState, current: int | None) -> list[dict[str, float]]:
        """Per phase, the vehicles each of its lanes would send across the stop line."""
        result = []
        for index, links in enumerate(self._phases[intersection_id]):
            lanes = {}
            for lane in links.lanes:
                lane_state = state.lanes.get(lane)
                if lane_state is None:
                    continue
                demand = (lane_state.queue + lane_state.upstream_queue
                          + self.settings.moving_weight * max(0.0, lane_state.vehicles - lane_state.queue))
                if lane_state.queue >= self.settings.full_fraction * self._capacity[lane]:
                    demand *= 1.0 + self.settings.spill_weight  # the tail is out of sight
                outs = links.outs[lane]
                downstream = sum(state.vehicles(o) for o in outs) / len(outs)
                blocked = all(self._full(o, state) for o in outs)
                if not blocked and not (index == current and lane in self._stalled):
                    lanes[lane] = max(0.0, demand - self.settings.downstream_weight * downstream)
            result.append(lanes)
        return result

    def _full(self, lane: str, state: CityState) -> bool:
        """Whether an exit cannot take more vehicles: nearly full by its count, or its queue
        standing back to its start (seen by its exit zone, feeder or entry loops; the count
        of a road no approach loop watches is unknown)."""
        return (state.vehicles(lane) >= self.settings.full_fraction * self._capacity[lane]
                or state.spillback_s.get(lane, 0.0) >= self.settings.spillback_s)

    def _service_s(self, links: _PhaseLinks, state: CityState) -> float:
        longest = max((state.lanes[lane].queue for lane in links.lanes if lane in state.lanes), default=0.0)
        return max(self.settings.min_green_s, longest * self.settings.headway_s)

    def _decide_one(self, intersection_id: str, phases: list[_PhaseLinks], current: int, state: CityState,
                    now: float) -> PhaseDecision | None:
        demands = self._demands(intersection_id, state, current)
        weights = _totals(demands)
        others = {k: w for k, w in weights.items() if k != current}
        if not others:
            return None
        # Of the waiting phases, the one that sends the most vehicles across per second
        # of green and change it needs (Smith's rule: fewest vehicle-seconds of waiting).
        change_s = self._change_s[intersection_id]
        rates = {k: others[k] / (self._clear_s(demands[k]) + change_s) for k in others}
        best = max(rates, key=lambda k: rates[k])
        if weights[best] < self.settings.min_demand_veh:
            return None
        heaviest = max(others, key=lambda k: others[k])
        chosen = ("" if heaviest == best or others[heaviest] == others[best] else
                  f" ({best} sends {rates[best]:.2f} veh/s, more than {heaviest}: {others[heaviest]:.1f} veh "
                  f"at {rates[heaviest]:.2f} veh/s)")
        if weights[current] >= 0.5:
            # Still discharging a queue: a change must gain more than the hysteresis plus
            # what this green would have sent across during the change interval.
            lanes = sum(1 for queue in demands[current].values() if queue >= 0.5)
            cost = self.settings.switch_cost_veh + self.settings.lost_weight * lanes * change_s / self.settings.headway_s
            if weights[best] <= weights[current] + cost:
                return PhaseDecision(intersection_id, current, 0.0,
                                     f"keep {current}: queue {weights[current]:.1f} veh + change cost {cost:.1f} >= "
                                     f"{weights[best]:.1f} veh waiting for {best}", weights, keep=True)
            reason = (f"switch {current} -> {best}: queue {weights[best]:.1f} veh > {weights[current]:.1f} "
                      f"+ change cost {cost:.1f}{chosen}")
        else:
            # Queue cleared: give way unless the vehicles about to arrive on this green
            # would lose more, waiting out the red a change causes, than the waiting gain.
            coming = sum(state.lanes[lane].approaching for lane in phases[current].lanes if lane in state.lanes)
            reason = f"switch {current} -> {best}: queue cleared, {weights[best]:.1f} veh waiting{chosen}"
            if coming >= 0.5:
                hold_s = self.settings.approach_s + (coming - 1) * self.settings.headway_s
                red_s = self._service_s(phases[best], state) + 2 * change_s
                if weights[best] * hold_s <= coming * red_s:
                    return PhaseDecision(intersection_id, current, 0.0,
                                         f"keep {current}: {coming:.1f} arriving veh x {red_s:.0f} s of red for them >= "
                                         f"{weights[best]:.1f} veh waiting for {best} x {hold_s:.0f} s to let them pass",
                                         weights, keep=True)
                reason += (f" x {hold_s:.0f} s to let {coming:.1f} arriving veh pass > "
                           f"{coming:.1f} x {red_s:.0f} s of red for them")
        return PhaseDecision(intersection_id, best, self._initial_s(demands[best]), reason, weights)

    def _clear_s(self, demands: dict[str, float]) -> float:
        """Time a phase's green needs to send its waiting queue across: start-up plus a
        saturation headway per vehicle of its longest lane (its lanes discharge side by side)."""
        return self.settings.startup_s + self.settings.headway_s * max(demands.values(), default=0.0)

    def _initial_s(self, demands: dict[str, float]) -> float:
        """Minimum green of a phase about to start, from its lanes' demands (`_demands`):
        long enough for the queue now waiting (start-up plus a saturation headway per
        vehicle of its longest lane), between the minimum green and `max_initial_s`
        (traffic engineers' "variable initial")."""
        return max(self.settings.min_green_s, min(self.settings.max_initial_s, self._clear_s(demands)))
