"""The controller interface: city state in, phase decisions out.

A controller never talks to devices. Its decisions become signal commands and pass
through the safety layer; a controller whose field devices run a local program
(the scenario's fixed plan, SUMO's actuated logic) says so with `local_program` and
decides nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from urbanbrain.network.model import Network
from urbanbrain.state.model import CityState


@dataclass(frozen=True)
class PhaseDecision:
    """Show green `phase` at `intersection` (keep it, if it already shows), and why."""

    intersection: str
    phase: int
    min_green_s: float
    reason: str
    scores: dict[int, float] = field(default_factory=dict)
    keep: bool = False  # a considered change rejected: explained, but no command is sent
    note: bool = False  # not a phase decision: who decides here has changed (the supervisor), and why


class Controller(Protocol):
    name: str
    local_program: str | None

    def decide(self, state: CityState, now: float) -> list[PhaseDecision]: ...

    def forget_orders(self, intersection_id: str) -> None:
        """Something else (an emergency vehicle's priority) decided for this intersection:
        whatever the controller ordered there was not carried out."""


@dataclass
class LocalProgram:
    """The field controllers run a program of their own; the brain only watches."""

    name: str
    local_program: str

    def decide(self, state: CityState, now: float) -> list[PhaseDecision]:
        return []

    def forget_orders(self, intersection_id: str) -> None:
        """The field runs its own program: the brain ordered nothing."""


def fixed(network: Network) -> LocalProgram:
    """The scenario's own static plan."""
    return LocalProgram("fixed", "static")


def actuated(network: Network) -> LocalProgram:
    """SUMO's gap-based actuated logic on the scenario's phases (peer)."""
    return LocalProgram("actuated", "actuated")


def delaybased(network: Network) -> LocalProgram:
    """SUMO's delay-based logic on the scenario's phases (peer)."""
    return LocalProgram("delaybased", "delay_based")
