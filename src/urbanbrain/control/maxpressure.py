"""Max-pressure control (Varaiya 2013), textbook form, as the strongest classic peer.

Every `interval_s` of green each intersection picks the green phase with the largest
pressure: the sum over its green movements of (vehicles on the in-lane - vehicles on
the out-lane). Keeping the current phase costs nothing; a change goes through the
scenario's own change interval, applied by the safety layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from urbanbrain.control.base import PhaseDecision
from urbanbrain.network.model import Network
from urbanbrain.state.model import CityState


@dataclass
class MaxPressure:
    network: Network
    interval_s: float = 10.0
    name: str = "maxpressure"
    local_program: None = None
    _last: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._phase_links = {
            i.id: [[(m.in_lane, m.out_lane) for m in i.movements_of_phase(p.index)] for p in i.phases]
            for i in self.network.intersections.values()
        }

    def pressures(self, intersection_id: str, state: CityState) -> dict[int, float]:
        return {
            index: sum(state.vehicles(a) - state.vehicles(b) for a, b in links)
            for index, links in enumerate(self._phase_links[intersection_id])
        }

    def forget_orders(self, intersection_id: str) -> None:
        """Max-pressure decides afresh every second from the state: it remembers no orders."""

    def decide(self, state: CityState, now: float) -> list[PhaseDecision]:
        decisions = []
        for intersection_id in self._phase_links:
            signal = state.signals.get(intersection_id)
            if signal is None or signal.phase is None or signal.time_in_phase_s < self.interval_s:
                continue
            if now - self._last.get(intersection_id, float("-inf")) < self.interval_s:
                continue
            self._last[intersection_id] = now
            scores = self.pressures(intersection_id, state)
            best = max(scores, key=lambda k: (scores[k], k == signal.phase))
            if best == signal.phase:
                reason = f"keep phase {best}: pressure {scores[best]:.1f} is the largest"
            else:
                reason = (f"switch {signal.phase} -> {best}: pressure {scores[best]:.1f} "
                          f"> current {scores[signal.phase]:.1f}")
            decisions.append(PhaseDecision(intersection_id, best, self.interval_s, reason, scores))
        return decisions
