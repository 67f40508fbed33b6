"""The brain's reference clock: the city time it decides at, which no device can move.

A live city's brain keeps the wall clock (Unix seconds, as its devices' NTP-set clocks
do). A replayed city — the SUMO twin, which may run faster or slower than real time —
has a time server of its own: the brain follows the time that one device declares
(`ClockReport`), and only that device, named in the brain's settings. Either way,
device events are judged against this clock (`judge`): one stamped too far ahead is
refused, one from long ago is refused, one merely late (a field's backlog after an
outage) is accepted and marked late. A controller's report no longer sets the time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

CLOCK_DEVICE = "clock"  # the twin's time server
DEFAULT_MAX_SKEW_S = 5.0  # how far ahead a device's clock may be (NTP keeps field clocks within ms)
DEFAULT_LATE_AFTER_S = 10.0  # an event older than this says nothing of the present (a field link's delay is less)
DEFAULT_MAX_LATE_S = 30 * 86400.0  # older than the store keeps by default: nothing left to use it for

Verdict = Literal["on_time", "late", "ahead", "too_old"]


class ClockError(ValueError):
    """A declared time the brain's clock cannot follow."""


@dataclass
class ClockSettings:
    """Which clock the brain keeps and how far device times may stray from it: ahead by
    `max_skew_s` at most (more is refused), behind by `late_after_s` before an event is
    late (stored, kept out of the present state), by `max_late_s` before it is refused."""

    mode: Literal["wall", "replay"] = "wall"
    max_skew_s: float = DEFAULT_MAX_SKEW_S
    late_after_s: float = DEFAULT_LATE_AFTER_S
    max_late_s: float = DEFAULT_MAX_LATE_S
    source: str = CLOCK_DEVICE  # replay: the one device whose reports set the time

    def __post_init__(self) -> None:
        if self.mode not in ("wall", "replay"):
            raise ValueError(f"clock: choose wall or replay, not {self.mode!r}")
        if not 0 < self.max_skew_s <= 3600:
            raise ValueError(f"max-skew: between 0 and 3600 s, not {self.max_skew_s:g}")
        if not 0 <= self.late_after_s <= self.max_late_s:
            raise ValueError(f"late-after: between 0 and the retention ({self.max_late_s:g} s), not {self.late_after_s:g}")


class CityClock:
    """The brain's clock: `now()` is None until a replayed city's time server is first heard."""

    def __init__(self, settings: ClockSettings | None = None, wall: Callable[[], float] = time.time):
        self.settings = settings or ClockSettings()
        self._wall = wall
        self._declared: float | None = None

    @property
    def mode(self) -> str:
        return self.settings.mode

    def now(self) -> float | None:
        return self._wall() if self.mode == "wall" else self._declared

    def wall(self) -> float:
        """The wall clock (Unix seconds), whatever the mode: a replay's time stops when its
        field stops, and device liveness must not stop with it."""
        return self._wall()

    def follows(self, device_id: str) -> bool:
        """Whether this device's clock reports set the time."""
        return self.mode == "replay" and device_id == self.settings.source

    def check_declared(self, declared: float) -> None:
        """Raise ClockError if the time server's `declared` time cannot be followed:
        the clock never runs backwards (a replay started again from its beginning
        needs a fresh brain, or its events would be judged against the old run)."""
        if self._declared is not None and declared < self._declared:
            raise ClockError(f"the time server declares {declared:g}, before the brain's clock ({self._declared:g}); "
                             "a replay from an earlier time needs the brain started again")

    def declare(self, declared: float) -> None:
        """Move a replay's clock to the time its time server declares (never back)."""
        self.check_declared(declared)
        self._declared = declared

    def judge(self, event_time: float, now: float) -> Verdict:
        """An event stamped `event_time` against the clock at `now`: `ahead` and `too_old`
        are refused, `late` is stored but kept out of the present state."""
        if event_time > now + self.settings.max_skew_s:
            return "ahead"
        if event_time < now - self.settings.max_late_s:
            return "too_old"
        if event_time < now - self.settings.late_after_s:
            return "late"
        return "on_time"

    def info(self) -> dict[str, object]:
        return {"mode": self.mode, "time": self.now(), "max_skew_s": self.settings.max_skew_s,
                "late_after_s": self.settings.late_after_s, "max_late_s": self.settings.max_late_s, "source": self.settings.source if self.mode == "replay" else None}
