"""A signal controller in the field: remote commands, its own plan, fail-safe, flash.

It knows its green phases (its timing database) and turns commands into the signal
heads' states second by second: yellow for the movements losing green, then all-red,
then the new green. Deciding what is safe is the brain's safety layer's job (one
place for the rules); like a real field controller, it keeps a floor of its own: it
never shows a yellow shorter than its configured minimum, whatever a command says,
and it never depends on the brain to stay safe. If the brain falls silent for longer
than the fail-safe timeout it runs its own plan (mode `fallback`) and says so in
every report; the next remote command takes it back.

Modes: `remote` (the brain's commands), `plan` (its own timing plan, an operator's
order), `fallback` (its plan, because the brain is silent), `flash` (after clearing
the junction: flashing, every head `o`).
"""

from __future__ import annotations

from dataclasses import dataclass

from urbanbrain.devices.protocol import SignalCommand
from urbanbrain.network.model import GREEN_CHARS, Phase

FLASH = "o"  # SUMO's "off, blinking": drivers give way as at an unsignalised junction


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
    target: int | None  # None: to flashing
    started: float
    yellow_until: float
    red_until: float
    from_state: str  # what the heads showed when it began
    to_state: str  # the green it leads to, or all red (to flashing, or out of flashing)


class SignalController:
    """One intersection's controller. `state_at(now)` gives what the heads show;
    `apply(cmd, now)` executes a command. Time is the city clock in seconds."""

    def __init__(self, intersection_id: str, phases: tuple[Phase, ...], start_phase: int = 0, now: float = 0.0,
                 min_yellow_s: float = 3.0, plan_yellow_s: float = 3.0, plan_all_red_s: float = 2.0,
                 failsafe_s: float | None = 10.0, max_command_age_s: float = 5.0, max_skew_s: float = 2.0):
        self.intersection_id = intersection_id
        self.min_yellow_s = min_yellow_s
        self.plan_yellow_s = max(plan_yellow_s, min_yellow_s)
        self.plan_all_red_s = plan_all_red_s
        self.failsafe_s = failsafe_s
        self.max_command_age_s = max_command_age_s
        self.max_skew_s = max_skew_s
        self.ignored: dict[str, int] = {"stale": 0, "future": 0, "unknown phase": 0}  # commands not carried out, and why
        self.phases = phases
        self.phase = start_phase
        self.green_since = now
        self.mode = "remote"
        self.last_heard = now
        self._flashing = False
        self._change: _Change | None = None

    @property
    def in_change(self) -> bool:
        return self._change is not None

    def apply(self, command: SignalCommand, now: float) -> None:
        """Execute a command the safety layer let through. One past its validity window
        (its own `valid_s`, at most `max_command_age_s`: delayed in the network, or left
        over from before a restart) is ignored, and so is one stamped more than
        `max_skew_s` ahead of this controller's clock: a clock that far off is a fault or
        a forgery, and obeying it could hold a green on a time that has not come."""
        self.advance(now)
        if now - command.time > min(command.valid_s, self.max_command_age_s):
            self.ignored["stale"] += 1
            return
        if command.time - now > self.max_skew_s:
            self.ignored["future"] += 1
            return
        if command.phase is not None and command.phase >= len(self.phases):
            self.ignored["unknown phase"] += 1  # not in its timing database: it keeps what it shows
            return
        self.last_heard = now
        if command.action == "flash":
            self.mode = "flash"
            self.advance(now)  # starts clearing towards flashing now, or after a change under way
            return
        if self.mode == "flash":
            self._leave_flash(now)  # through all-red; the next mode takes over at the green
        if command.action == "plan":
            self.mode = "plan"
            return
        self.mode = "remote"
        if command.action == "hold" or self._change is not None:
            return
        target = command.phase if command.phase is not None else (self.phase + 1) % len(self.phases)
        if target == self.phase:
            return
        self._start_change(target, now, max(command.yellow_s, self.min_yellow_s), command.all_red_s)

    def advance(self, now: float) -> None:
        """Finish a change interval whose time is up; in plan or fallback mode, run the
        plan; in remote mode, fall back when the brain has been silent too long."""
        if self._change is not None and now >= self._change.red_until:
            if self._change.target is None:
                self._flashing = True
            else:
                self.phase = self._change.target
                self.green_since = self._change.red_until
            self._change = None
        if self.mode == "remote" and self.failsafe_s is not None and now - self.last_heard > self.failsafe_s:
            self.mode = "fallback"
        if self.mode == "flash" and self._change is None and not self._flashing:
            self._start_change(None, now, self.plan_yellow_s, self.plan_all_red_s)
        if self.mode in ("plan", "fallback") and self._change is None and len(self.phases) > 1:
            if now - self.green_since >= self.phases[self.phase].plan_green_s:
                self._start_change((self.phase + 1) % len(self.phases), now, self.plan_yellow_s, self.plan_all_red_s)

    def state_at(self, now: float) -> str:
        self.advance(now)
        if self._flashing:
            return FLASH * len(self.phases[self.phase].state)
        change = self._change
        if change is None:
            return self.phases[self.phase].state
        yellow, red = change_interval_states(change.from_state, change.to_state)
        return yellow if now < change.yellow_until else red

    def report_phase(self, now: float) -> tuple[int | None, float]:
        """(green phase or None during a change interval or flashing, seconds since it began)."""
        self.advance(now)
        if self._change is None and not self._flashing:
            return self.phase, now - self.green_since
        return None, now - (self._change.started if self._change is not None else self.green_since)

    def _start_change(self, target: int | None, now: float, yellow_s: float, all_red_s: float) -> None:
        current = self.phases[self.phase].state
        self._change = _Change(target=target, started=now, yellow_until=now + yellow_s,
                               red_until=now + yellow_s + all_red_s, from_state=current,
                               to_state="r" * len(current) if target is None else self.phases[target].state)

    def _leave_flash(self, now: float) -> None:
        """Out of flashing (or out of the clearance towards it) into the current phase's
        green, through a full all-red."""
        all_red = "r" * len(self.phases[self.phase].state)
        if self._change is not None and self._change.target is None:
            self._change.target = self.phase  # finish the clearance to all-red, then green again
        elif self._flashing:
            self._flashing = False
            self._change = _Change(target=self.phase, started=now, yellow_until=now,
                                   red_until=now + max(self.plan_all_red_s, self.plan_yellow_s),
                                   from_state=all_red, to_state=all_red)
