"""A signal controller in the field, executing remote commands faithfully.

It knows its green phases (its timing database) and turns a command into the signal
heads' states second by second: yellow for the movements losing green, then all-red,
then the new green. Deciding what is safe is the brain's safety layer's job (one place for the rules);
like a real field controller, it keeps one last floor of its own: it never shows a
yellow shorter than its configured minimum, whatever a command says.
"""

from __future__ import annotations

from dataclasses import dataclass

from urbanbrain.devices.protocol import SignalCommand
from urbanbrain.network.model import GREEN_CHARS, Phase


def change_interval_states(from_state: str, to_state: str) -> tuple[str, str]:
    """The (yellow, all-red) states between two greens.

    A movement green in both keeps its green, unless it loses priority (a protected
    `G` becoming a permissive `g`: its foes are about to get green, so it must be
    cleared like any movement losing green); one losing green shows yellow, then red;
    one gaining green waits at red until the interval ends.
    """
    yellow = []
    red = []
    for old, new in zip(from_state, to_state):
        if old in GREEN_CHARS and new in GREEN_CHARS and not (old == "G" and new == "g"):
            yellow.append(old)
            red.append(old)
        elif old in GREEN_CHARS:
            yellow.append("y")
            red.append("r")
        else:
            yellow.append("r")
            red.append("r")
    return "".join(yellow), "".join(red)


@dataclass
class _Change:
    target: int
    started: float
    yellow_until: float
    red_until: float


class SignalController:
    """Remote-mode controller state machine for one intersection.

    `state_at(now)` gives what the heads show; `apply(cmd, now)` starts a change.
    Time is the scenario clock in seconds.
    """

    def __init__(self, intersection_id: str, phases: tuple[Phase, ...], start_phase: int = 0, now: float = 0.0,
                 min_yellow_s: float = 3.0):
        self.intersection_id = intersection_id
        self.min_yellow_s = min_yellow_s
        self.phases = phases
        self.phase = start_phase
        self.green_since = now
        self._change: _Change | None = None

    @property
    def in_change(self) -> bool:
        return self._change is not None

    def apply(self, command: SignalCommand, now: float) -> None:
        """Execute a command the safety layer let through."""
        self.advance(now)
        if command.action == "hold" or self._change is not None:
            return
        target = command.phase if command.phase is not None else (self.phase + 1) % len(self.phases)
        if target == self.phase:
            return
        yellow = max(command.yellow_s, self.min_yellow_s)
        self._change = _Change(
            target=target,
            started=now,
            yellow_until=now + yellow,
            red_until=now + yellow + command.all_red_s,
        )

    def advance(self, now: float) -> None:
        """Finish a change interval whose time is up."""
        if self._change is not None and now >= self._change.red_until:
            self.phase = self._change.target
            self.green_since = self._change.red_until
            self._change = None

    def state_at(self, now: float) -> str:
        self.advance(now)
        current = self.phases[self.phase].state
        if self._change is None:
            return current
        yellow, red = change_interval_states(current, self.phases[self._change.target].state)
        return yellow if now < self._change.yellow_until else red

    def report_phase(self, now: float) -> tuple[int | None, float]:
        """(green phase or None during a change interval, seconds since it began)."""
        self.advance(now)
        if self._change is None:
            return self.phase, now - self.green_since
        return None, now - self._change.started
