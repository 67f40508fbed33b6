"""The brain's control loop: state -> controller decisions -> safety layer -> devices.

Commands leave only through the bus, and only after the safety layer; the loop also
feeds controller reports to the safety layer's conflict monitor and keeps each
decision's explanation for whoever asks why.

Emergency vehicles' priority (when given) takes over the decisions for the signals
ahead of them; its decisions pass through the same safety layer.

It also keeps the field controllers under remote control: a `hold` goes to every
controller it has sent nothing for `heartbeat_s` (so a controller that hears nothing
for its fail-safe timeout knows the brain is gone and runs its own plan), a
controller that reports it runs on its own (fallback) is taken back from what it
reports, and intersections an operator has put on their plan or flashing are left
alone until handed back.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from urbanbrain.control.base import Controller, PhaseDecision
from urbanbrain.control.safety import SafetyLayer
from urbanbrain.core.bus import EventBus
from urbanbrain.emergency.priority import EmergencyPriority
from urbanbrain.state.model import CityState

DecisionSink = Callable[[dict[str, Any]], None]


class BrainLoop:
    def __init__(self, controller: Controller, observer: Any, safety: SafetyLayer, bus: EventBus,
                 explain: DecisionSink | None = None, keep_decisions: int = 1000, heartbeat_s: float = 3.0,
                 priority: EmergencyPriority | None = None):
        self.controller = controller
        self.priority = priority  # emergency vehicles' green waves, on top of the controller
        self.observer = observer
        self.safety = safety
        self.bus = bus
        self.explain = explain
        self.recent: deque[dict[str, Any]] = deque(maxlen=keep_decisions)
        self.commands_sent = 0
        self.heartbeat_s = heartbeat_s
        self.local: dict[str, str] = {}  # intersection -> "plan" or "flash", as an operator ordered
        self._last_sent: dict[str, float] = {}
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
            if (self.safety.controls(intersection_id) or intersection_id in self.local or signal is None
                    or signal.phase is None):
                continue
            self.safety.take_control(intersection_id, signal.phase, now, green_for_s=signal.time_in_phase_s)
            if signal.mode != "remote":  # running its plan: tell it to hold this green under remote control
                self._heartbeat(intersection_id, now)

    def set_local(self, intersection_id: str, mode: str | None, now: float) -> None:
        """An operator's order: `plan` or `flash` hands the intersection to its field
        controller (through the safety layer), None hands it back to the brain."""
        if mode is None:
            if self.local.pop(intersection_id, None) == "flash":
                self._heartbeat(intersection_id, now)  # leave flashing; control is taken at its first green
            return
        if mode not in ("plan", "flash"):
            raise ValueError(f"an intersection can be put on its 'plan' or 'flash', not {mode!r}")
        self.local[intersection_id] = mode
        safe = self.safety.submit(self.safety.command(intersection_id, mode, None, now,
                                                      reason=f"operator: {mode}"), now)
        if safe is not None:
            self._send(safe)

    def tick(self, now: float) -> None:
        refresh = getattr(self.observer, "refresh", None)
        if refresh is not None:
            refresh(now)
        self._release_stale(now)
        self.take_control(now)
        for command in self.safety.tick(now):
            self._send(command)
        decisions = self.controller.decide(self.state, now)
        if self.priority is not None:
            decisions = self.priority.adjust(decisions, self.state, self.safety, now)
            for intersection_id in self.priority.holding():
                self.controller.forget_orders(intersection_id)
        for decision in decisions:
            if decision.intersection in self.local or not self.safety.controls(decision.intersection):
                continue
            if decision.note:
                self._record(decision, now, "handed over")
                continue
            if decision.keep:
                self._record(decision, now, "kept")
                continue
            command = self.safety.command(decision.intersection, "go", decision.phase, now,
                                          min_green_s=decision.min_green_s, reason=decision.reason)
            safe = self.safety.submit(command, now)
            self._record(decision, now, _outcome(safe, self.safety))
            if safe is not None and safe.action != "hold":
                self._send(safe)
        for intersection_id in self.safety.network.intersections:
            if (self.safety.controls(intersection_id)
                    and now - self._last_sent.get(intersection_id, float("-inf")) >= self.heartbeat_s):
                self._heartbeat(intersection_id, now)

    def _release_stale(self, now: float) -> None:
        """A controller that reports, after our last command to it, that it runs on its
        own (fallback after the brain was silent), or a settled green other than the one
        the safety layer let it show (a command lost or overtaken on the way), is no
        longer what the layer tracks: release it, to be taken back from what it reports."""
        for intersection_id in list(self.safety.network.intersections):
            signal = self.state.signals.get(intersection_id)
            if (signal is None or not self.safety.controls(intersection_id)
                    or signal.updated <= self._last_sent.get(intersection_id, float("-inf"))):
                continue
            settled = self.safety.settled_phase(intersection_id, now)
            if signal.mode != "remote" or (signal.phase is not None and settled is not None and signal.phase != settled):
                self.safety.release(intersection_id)

    def _heartbeat(self, intersection_id: str, now: float) -> None:
        self._send(self.safety.keepalive(intersection_id, now))

    def _send(self, command) -> None:
        self.commands_sent += 1
        self._last_sent[command.intersection] = command.time
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
