"""The project's own model of a road network, independent of SUMO.

Everything the brain knows about the city's layout lives here: signalised
intersections, their approaches and lanes, movements (in-lane -> out-lane),
signal groups with their conflicts, the green phases and the clearance between
them. The brain never touches simulator objects, so this model is the contract
between a city's data and its controllers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Point = tuple[float, float]

GREEN_CHARS = frozenset("Gg")


@dataclass(frozen=True)
class Lane:
    """A lane of a road, the unit on which detectors sit and queues form."""

    id: str
    edge: str
    index: int
    length_m: float
    speed_limit_ms: float
    shape: tuple[Point, ...]


@dataclass(frozen=True)
class Movement:
    """One permitted turn from an in-lane to an out-lane, controlled by a signal group.

    `out_lane` is the first lane after the junction (the internal junction lane is
    not part of the model), so "vehicles on the out-lane" means downstream space.
    """

    in_lane: str
    out_lane: str
    signal_group: int
    direction: str  # SUMO's direction code: s, l, r, t, L, R


@dataclass(frozen=True)
class Approach:
    """An incoming road at an intersection, with its lanes ordered right to left.

    `feeders` are the roads upstream of it, through unsignalised junctions, within
    reach of the stop line: where the queue stands when the approach road itself is
    short (many real networks split a road just before the junction).
    """

    edge: str
    lanes: tuple[str, ...]
    from_intersection: str | None
    feeders: tuple[str, ...] = ()


@dataclass(frozen=True)
class Clearance:
    """The change interval between two greens: yellow for the movements losing green,
    then all-red. Durations in seconds."""

    yellow_s: float
    all_red_s: float

    @property
    def total_s(self) -> float:
        return self.yellow_s + self.all_red_s


@dataclass(frozen=True)
class Phase:
    """A green stage: a SUMO-style state string with one char per signal group.

    `plan_green_s` is the duration the scenario's own plan gives this green; it
    sets the peers' maximum green (2x plan, at least 40 s).
    """

    index: int
    state: str
    plan_green_s: float

    @property
    def green_groups(self) -> frozenset[int]:
        return frozenset(i for i, c in enumerate(self.state) if c in GREEN_CHARS)


@dataclass
class Intersection:
    """A signalised intersection: one signal controller in the field.

    `conflicts[i]` is the set of signal groups that may never show green together
    with group `i`. `clearance` is the change interval the scenario's own program
    uses between greens (or the generated default).
    """

    id: str
    position: Point
    approaches: tuple[Approach, ...]
    movements: tuple[Movement, ...]
    phases: tuple[Phase, ...]
    conflicts: tuple[frozenset[int], ...]
    clearance: Clearance
    clearance_source: str
    program_id: str
    n_groups: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_groups = len(self.conflicts)

    @property
    def in_lanes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.in_lane for m in self.movements))

    @property
    def out_lanes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.out_lane for m in self.movements))

    def movements_of_phase(self, phase: int) -> tuple[Movement, ...]:
        greens = self.phases[phase].green_groups
        return tuple(m for m in self.movements if m.signal_group in greens)

    def conflicting_pairs(self, state: str) -> list[tuple[int, int]]:
        """Pairs of conflicting signal groups that `state` shows green together."""
        greens = [i for i, c in enumerate(state) if c in GREEN_CHARS]
        green_set = set(greens)
        return [(i, j) for i in greens for j in self.conflicts[i] if j in green_set and i < j]


@dataclass(frozen=True)
class Road:
    """A road (one direction) as route planning sees it: how long, how fast, where it leads."""

    id: str
    length_m: float
    speed_limit_ms: float
    leads_to: tuple[str, ...]  # roads reachable from its end by a motor vehicle
    lanes: tuple[str, ...] = ()  # its lanes, right to left


@dataclass
class Network:
    """A road network: lanes and signalised intersections, plus drawing geometry.

    `roads` is the road graph for route planning (emergency vehicles): every road a
    motor vehicle may use, whether or not a signal controls its end.
    """

    name: str
    lanes: dict[str, Lane]
    intersections: dict[str, Intersection]
    bounds: tuple[float, float, float, float]
    roads: dict[str, Road] = field(default_factory=dict)

    def edge_lanes(self, edge: str) -> tuple[str, ...]:
        return tuple(lane.id for lane in self.lanes.values() if lane.edge == edge)

    def intersection(self, intersection_id: str) -> Intersection:
        try:
            return self.intersections[intersection_id]
        except KeyError:
            raise KeyError(f"unknown intersection {intersection_id!r}") from None
