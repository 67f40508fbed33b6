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
DEFAULT_MAX_SKEW_S = 5.0  # how far a device's clock may be off the brain's (NTP keeps field clocks within ms)
DEFAULT_MAX_LATE_S = 30 * 86400.0  # older than the store keeps by default: nothing left to use it for

Verdict = Literal["on_time", "late", "ahead", "too_old"]


class ClockError(ValueError):
    """A declared time the brain's clock cannot follow."""


@dataclass
class ClockSettings:
    mode: Literal["wall", "replay"] = "wall"
    max_skew_s: float = DEFAULT_MAX_SKEW_S
    max_late_s: float = DEFAULT_MAX_LATE_S
    source: str = CLOCK_DEVICE  # replay: the one device whose reports set the time

    def __post_init__(self) -> None:
        if self.mode not in ("wall", "replay"):
            raise ValueError(f"clock: choose wall or replay, not {self.mode!r}")
        if not 0 < self.max_skew_s <= 3600:
            raise ValueError(f"max-skew: between 0 and 3600 s, not {self.max_skew_s:g}")
        if self.max_late_s < self.max_skew_s:
            raise ValueError(f"max-late: at least the skew ({self.max_skew_s:g} s), not {self.max_late_s:g}")


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
        self.check_declared(declared)
        self._declared = declared

    def judge(self, event_time: float, now: float) -> Verdict:
        if event_time > now + self.settings.max_skew_s:
            return "ahead"
        if event_time < now - self.settings.max_late_s:
            return "too_old"
        if event_time < now - self.settings.max_skew_s:
            return "late"
        return "on_time"

    def info(self) -> dict[str, object]:
        return {"mode": self.mode, "time": self.now(), "max_skew_s": self.settings.max_skew_s,
                "max_late_s": self.settings.max_late_s, "source": self.settings.source if self.mode == "replay" else None}
