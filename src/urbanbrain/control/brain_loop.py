"""The brain's control loop: state -> controller decisions -> safety layer -> devices.

Commands leave only through the bus, and only after the safety layer; the loop also
feeds controller reports to the safety layer's conflict monitor and keeps each
decision's explanation for whoever asks why.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from urbanbrain.control.base import Controller, PhaseDecision
from urbanbrain.control.safety import SafetyLayer
from urbanbrain.core.bus import EventBus
from urbanbrain.state.model import CityState

DecisionSink = Callable[[dict[str, Any]], None]


class BrainLoop:
    def __init__(self, controller: Controller, observer: Any, safety: SafetyLayer, bus: EventBus,
                 explain: DecisionSink | None = None, keep_decisions: int = 1000):
        self.controller = controller
        self.observer = observer
        self.safety = safety
        self.bus = bus
        self.explain = explain
        self.recent: deque[dict[str, Any]] = deque(maxlen=keep_decisions)
        self.commands_sent = 0
        bus.subscribe("controller", safety.observe)

    @property
    def state(self) -> CityState:
        return self.observer.state

    def take_control(self, now: float) -> None:
        """Take remote control of every intersection that reports a green; one in a
        change interval (or not yet heard from) is taken at a later tick, so that its
        minimum green is counted from when that green really began."""
        for intersection_id in self.safety.network.intersections:
            signal = self.state.signals.get(intersection_id)
            if self.safety.controls(intersection_id) or signal is None or signal.phase is None:
                continue
            self.safety.take_control(intersection_id, signal.phase, now, green_for_s=signal.time_in_phase_s)

    def tick(self, now: float) -> None:
        refresh = getattr(self.observer, "refresh", None)
        if refresh is not None:
            refresh(now)
        self.take_control(now)
        for command in self.safety.tick(now):
            self._send(command)
        for decision in self.controller.decide(self.state, now):
            if decision.keep:
                self._record(decision, now, "kept")
                continue
            command = self.safety.command(decision.intersection, "go", decision.phase, now,
                                          min_green_s=decision.min_green_s, reason=decision.reason)
            safe = self.safety.submit(command, now)
            self._record(decision, now, _outcome(safe, self.safety))
            if safe is not None and safe.action != "hold":
                self._send(safe)

    def _send(self, command) -> None:
        self.commands_sent += 1
        self.bus.publish(command)

    def _record(self, decision: PhaseDecision, now: float, outcome: str) -> None:
        entry = {"time": now, "controller": self.controller.name, "observation": self.state.source,
                 **asdict(decision), "outcome": outcome}
        self.recent.append(entry)
        if self.explain is not None:
            self.explain(entry)


def _outcome(safe, safety: SafetyLayer) -> str:
    """What became of a decision: switched, kept, forced off (maximum green), deferred or refused."""
    if safe is None:
        last = safety.interventions[-1] if safety.interventions else None
        return last.outcome if last is not None and last.outcome in ("deferred", "refused") else "refused"
    return {"go": "switched", "hold": "kept", "force_off": "forced off"}[safe.action]
