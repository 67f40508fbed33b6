"""The safety layer: the one place every signal command passes through.

Whatever a controller asks for, what reaches a device obeys the signal rules:
minimum green, the full change interval (yellow + all-red) before any conflicting
movement gets green, maximum green, and never two conflicting movements green.
An unsafe command is corrected (timings raised, a premature change deferred until
it is allowed, an over-long green forced off) or refused, and every intervention is
logged with the rule that caused it. It also watches controller reports as a
conflict monitor, so a device showing conflicting greens is flagged at once.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import dataclass, field

from urbanbrain.devices.protocol import ControllerState, SignalCommand
from urbanbrain.devices.signal_controller import change_interval_states
from urbanbrain.network.model import Intersection, Network

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SafetyLimits:
    min_green_s: float = 5.0
    max_green_s: float = 120.0
    min_yellow_s: float = 3.0  # never less yellow than this, whatever a program says (the field controllers' own floor)

    def __post_init__(self) -> None:
        if not 0 < self.min_green_s <= self.max_green_s:
            raise ValueError(f"safety limits need 0 < min_green_s <= max_green_s, got {self.min_green_s} and {self.max_green_s}")


@dataclass(frozen=True)
class SafetyIntervention:
    time: float
    intersection: str
    outcome: str  # corrected | deferred | refused | forced | violation
    rule: str
    detail: str


class UnsafePhaseError(ValueError):
    """A phase table shows conflicting movements green together."""


@dataclass
class _Track:
    """The layer's own record of what it let a controller do."""

    phase: int
    green_since: float
    min_green_s: float
    change_until: float = float("-inf")
    pending: SignalCommand | None = None


@dataclass
class SafetyLayer:
    network: Network
    limits: SafetyLimits = field(default_factory=SafetyLimits)
    issuer: str = "brain"
    keep: int = 10_000
    counts: Counter[str] = field(default_factory=Counter)  # interventions by outcome, since start

    def __post_init__(self) -> None:
        for intersection in self.network.intersections.values():
            for phase in intersection.phases:
                pairs = intersection.conflicting_pairs(phase.state)
                if pairs:
                    raise UnsafePhaseError(
                        f"intersection {intersection.id!r} phase {phase.index} shows conflicting groups green: {pairs}"
                    )
        self._tracks: dict[str, _Track] = {}
        self._seq = 0
        self.interventions: deque[SafetyIntervention] = deque(maxlen=self.keep)  # the most recent

    def take_control(self, intersection_id: str, phase: int, now: float, green_for_s: float = 0.0) -> None:
        """Start tracking a controller handed to remote control: it has shown green `phase`
        for `green_for_s` seconds (so its minimum green is honoured from when it began)."""
        intersection = self.network.intersection(intersection_id)
        if not 0 <= phase < len(intersection.phases):
            raise ValueError(f"intersection {intersection_id!r} has no phase {phase}")
        self._tracks[intersection_id] = _Track(phase=phase, green_since=now - green_for_s, min_green_s=self.limits.min_green_s)

    def controls(self, intersection_id: str) -> bool:
        return intersection_id in self._tracks

    def settled_phase(self, intersection_id: str, now: float) -> int | None:
        """The green the layer has let the controller show, once its change interval is
        over (None while one runs, or when it does not control the intersection)."""
        track = self._tracks.get(intersection_id)
        return None if track is None or now < track.change_until else track.phase

    def phase(self, intersection_id: str) -> int | None:
        """The green the layer has let the controller show or change to (None when not under remote control)."""
        track = self._tracks.get(intersection_id)
        return None if track is None else track.phase

    def earliest_change_s(self, intersection_id: str, now: float) -> float | None:
        """Seconds until the layer would let the current green end: the change interval
        still running plus the minimum green still owed (None when not under remote control)."""
        track = self._tracks.get(intersection_id)
        if track is None:
            return None
        return max(0.0, track.change_until - now) + max(0.0, track.green_since + track.min_green_s - max(now, track.change_until))

    def release(self, intersection_id: str) -> None:
        """Stop tracking a controller that runs on its own now (its plan, flashing, a
        fail-safe fallback): remote control resumes only through `take_control`, from
        what it reports then."""
        self._tracks.pop(intersection_id, None)

    def submit(self, command: SignalCommand, now: float) -> SignalCommand | None:
        """Return the command a device may execute now, or None if refused or deferred.

        `plan` and `flash` hand the junction to the field controller's own safe
        sequences (it finishes or starts a full change interval itself) and end remote
        control."""
        if command.action in ("plan", "flash"):
            if command.intersection not in self.network.intersections:
                return self._refuse(command, now, "intersection", f"no intersection {command.intersection!r}")
            self.release(command.intersection)
            return command
        track = self._tracks.get(command.intersection)
        if track is None:
            return self._refuse(command, now, "remote-control", "intersection is not under remote control")
        intersection = self.network.intersections[command.intersection]
        if command.phase is not None and command.phase >= len(intersection.phases):
            return self._refuse(command, now, "phase", f"phase {command.phase} does not exist (has {len(intersection.phases)})")
        if now < track.change_until:
            return self._refuse(command, now, "clearance", f"change interval runs until {track.change_until:.1f}")
        if command.action == "hold" or command.phase == track.phase or len(intersection.phases) == 1:
            if now - track.green_since >= self.limits.max_green_s and len(intersection.phases) > 1:
                return self._force_off(intersection, track, now, "max-green")
            track.pending = None
            return command.model_copy(update={"action": "hold", "phase": track.phase})
        return self._change(intersection, track, command, now)

    def keepalive(self, intersection_id: str, now: float) -> SignalCommand:
        """The brain's heartbeat to a controller: `hold` what it shows. It changes
        nothing the layer tracks (a deferred change stays pending); to a controller not
        under remote control it asks it to resume remote control at what it shows (from
        flashing through all-red first), which starts no conflicting movement."""
        track = self._tracks.get(intersection_id)
        return self.command(intersection_id, "hold", None if track is None else track.phase, now, reason="heartbeat")

    def tick(self, now: float) -> list[SignalCommand]:
        """Release deferred changes whose minimum green is served; force off greens past maximum."""
        released = []
        for intersection_id, track in self._tracks.items():
            if now < track.change_until:
                continue
            intersection = self.network.intersections[intersection_id]
            if track.pending is not None and now - track.green_since >= track.min_green_s:
                command, track.pending = track.pending, None
                result = self._change(intersection, track, command, now)
                if result is not None:
                    released.append(result)
            elif now - track.green_since >= self.limits.max_green_s and len(intersection.phases) > 1:
                forced = self._force_off(intersection, track, now, "max-green")
                if forced is not None:
                    released.append(forced)
        return released

    def observe(self, report: ControllerState) -> None:
        """Conflict monitor: flag any reported state that shows conflicting greens."""
        intersection = self.network.intersections.get(report.intersection)
        if intersection is None:
            return
        if len(report.signal_state) != intersection.n_groups:
            self._log(report.time, report.intersection, "violation", "report",
                      f"state has {len(report.signal_state)} signal groups, the intersection {intersection.n_groups}")
            return
        pairs = intersection.conflicting_pairs(report.signal_state)
        if pairs:
            self._log(report.time, report.intersection, "violation", "conflict-monitor", f"conflicting greens {pairs}")

    def _change(self, intersection: Intersection, track: _Track, command: SignalCommand, now: float) -> SignalCommand | None:
        target = command.phase if command.phase is not None else (track.phase + 1) % len(intersection.phases)
        served = now - track.green_since
        if served < track.min_green_s:
            track.pending = command
            self._log(now, intersection.id, "deferred", "min-green", f"green {track.phase} served {served:.1f} s of {track.min_green_s:.1f} s")
            return None
        # Stamped with when it is let through (a deferred change leaves later than it was asked for).
        safe = self._corrected_timings(intersection, command.model_copy(update={"phase": target, "time": now}), now)
        states = (*change_interval_states(intersection.phases[track.phase].state, intersection.phases[target].state), intersection.phases[target].state)
        for state in states:
            if intersection.conflicting_pairs(state):
                return self._refuse(command, now, "conflict", f"change to {target} would show conflicting greens")
        track.phase = target
        track.change_until = now + safe.yellow_s + safe.all_red_s
        track.green_since = track.change_until
        track.min_green_s = safe.min_green_s
        track.pending = None
        return safe

    def _corrected_timings(self, intersection: Intersection, command: SignalCommand, now: float) -> SignalCommand:
        clearance = intersection.clearance
        yellow = max(clearance.yellow_s, self.limits.min_yellow_s)
        update: dict[str, float] = {}
        if command.yellow_s < yellow:
            update["yellow_s"] = yellow
        if command.all_red_s < clearance.all_red_s:
            update["all_red_s"] = clearance.all_red_s
        if command.min_green_s < self.limits.min_green_s:
            update["min_green_s"] = self.limits.min_green_s
        elif command.min_green_s > self.limits.max_green_s:
            update["min_green_s"] = self.limits.max_green_s
        if update:
            self._log(now, intersection.id, "corrected", "timings", ", ".join(f"{k} -> {v:g}" for k, v in update.items()))
        return command.model_copy(update=update)

    def _force_off(self, intersection: Intersection, track: _Track, now: float, rule: str) -> SignalCommand | None:
        command = self.command(intersection.id, "force_off", (track.phase + 1) % len(intersection.phases), now,
                               reason=f"{rule}: green {track.phase} reached {self.limits.max_green_s:g} s")
        self._log(now, intersection.id, "forced", rule, command.reason)
        track.pending = None
        track.min_green_s = min(track.min_green_s, self.limits.max_green_s)
        return self._change(intersection, track, command, now)

    def command(self, intersection_id: str, action: str, phase: int | None, now: float, *, min_green_s: float | None = None,
                reason: str = "") -> SignalCommand:
        """Build a command stamped with the issuer's id and next sequence number."""
        clearance = self.network.intersection(intersection_id).clearance
        self._seq += 1
        return SignalCommand(
            device_id=self.issuer,
            seq=self._seq,
            time=now,
            intersection=intersection_id,
            action=action,
            phase=phase,
            min_green_s=self.limits.min_green_s if min_green_s is None else min_green_s,
            yellow_s=max(clearance.yellow_s, self.limits.min_yellow_s),
            all_red_s=clearance.all_red_s,
            reason=reason,
        )

    def _refuse(self, command: SignalCommand, now: float, rule: str, detail: str) -> None:
        self._log(now, command.intersection, "refused", rule, detail)
        return None

    def _log(self, now: float, intersection: str, outcome: str, rule: str, detail: str) -> None:
        self.interventions.append(SafetyIntervention(now, intersection, outcome, rule, detail))
        self.counts[outcome] += 1
        log.debug("safety %s %s at %.1f: %s (%s)", outcome, intersection, now, detail, rule)
