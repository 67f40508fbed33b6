"""The stress corpus: generated networks the brain has never been tuned on.

The shared real-city scenarios are few, and a controller can be tuned to them
without knowing it. The corpus is many small cities of different shapes (grids,
arterials, irregular random networks, spider webs), with short links of 10-50 m,
unsignalised junctions between signals, one to four lanes, shared and dedicated
left-turn lanes, permissive lefts, and demand from light to 1.3 times the probed
saturation (see :mod:`urbanbrain.bench.corpus_demand`). It deliberately includes the
family that made an adaptive controller gridlock on a real German network: clusters
of signals 20-50 m apart with priority junctions on the short links between them,
permissive lefts and oversaturated demand.

Nothing is checked in but this table: each network is generated on first use from its
spec and seed (byte-identical for one SUMO version) and cached beside the demo city.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import sumolib

from urbanbrain.bench.corpus_demand import generate_demand
from urbanbrain.bench.corpus_net import LEFT_TURNS, MIN_SIGNALS, SHAPES, build_network
from urbanbrain.demo.city import (
    build_cached,
    default_cache_dir,
    sumo_version,
    write_config,
    write_routes,
)
from urbanbrain.network import read_network
from urbanbrain.twin.scenario import CORPUS_PREFIX

# Bump whenever the generated files would change, so stale caches are never reused.
GEN_VERSION = 1
SEEDS = (1, 2, 3)  # every family comes in three seeds: another layout, signal choice and demand each
SHORT_LINK_M = 50.0  # links up to this long count as short


@dataclass(frozen=True)
class CorpusSpec:
    """One corpus network: its shape, sizes, roads, signals, turn lanes and demand.

    size: grid junctions in x and y; arterial junctions (and 1); spider arms and
    circles; random netgenerate iterations (and 0). spacing_m: grid block length in x
    and y; arterial spacing (and 0); spider circle spacing (and 0); random min and max
    road length. lanes: major and minor roads'. signal_share: the share of junctions
    (three roads or more) that are signalised. left: "shared" lefts share the leftmost
    lane and go permissive, "dedicated" get the leftmost lane and a protected phase,
    "permissive" get the leftmost lane and no protected phase. level: demand as a
    multiple of the probed saturation. perturb_m: junctions jittered by up to this.
    """

    name: str
    shape: str
    size: tuple[int, int]
    spacing_m: tuple[float, float]
    lanes: tuple[int, int]
    signal_share: float
    left: str
    level: float
    seed: int
    perturb_m: float = 0.0

    def describe(self) -> str:
        """One line: shape and size, link lengths, lanes, signals and left turns (the demand is `level`)."""
        sizes = {"grid": f"{self.size[0]}x{self.size[1]} grid", "arterial": f"arterial of {self.size[0]}",
                 "spider": f"spider {self.size[0]}x{self.size[1]}", "random": f"random ({self.size[0]} iterations)"}
        spacing = "-".join(dict.fromkeys(f"{s:g}" for s in self.spacing_m if s))
        jitter = f" ±{self.perturb_m:g}" if self.perturb_m else ""
        signals = "all" if self.signal_share >= 1 else f"{self.signal_share:.0%}"
        return (f"{sizes[self.shape]}, links {spacing} m{jitter}, lanes {self.lanes[0]}/{self.lanes[1]}, "
                f"{signals} signalised, {self.left} lefts")


def _family(label: str, shape: str, size: tuple[int, int], spacing_m: tuple[float, float], lanes: tuple[int, int],
            signal_share: float, left: str, levels: tuple[float, float, float], perturb_m: float = 0.0) -> list[CorpusSpec]:
    """One layout in three seeds (another layout, signal choice and demand each), at the demand `levels` of seeds 1-3."""
    return [CorpusSpec(f"{label}-s{seed}", shape, size, spacing_m, lanes, signal_share, left, level, seed, perturb_m)
            for seed, level in zip(SEEDS, levels, strict=True)]


_FAMILIES = (
    # Regular grids: the textbook case, then more junctions with dedicated lefts, then wide roads.
    _family("grid-3x3", "grid", (3, 3), (150, 150), (2, 1), 1.0, "shared", (0.4, 0.8, 1.1), perturb_m=10),
    _family("grid-4x2", "grid", (4, 2), (200, 200), (3, 1), 1.0, "dedicated", (0.6, 0.9, 1.2), perturb_m=15),
    _family("grid-2x2-wide", "grid", (2, 2), (250, 250), (4, 2), 1.0, "dedicated", (0.5, 1.0, 1.3), perturb_m=15),
    # Signals 40 m apart in both directions: every queue reaches the next junction.
    _family("grid-3x3-short", "grid", (3, 3), (40, 40), (1, 1), 1.0, "shared", (0.5, 0.9, 1.3), perturb_m=8),
    # The German family: clusters of signals 25-45 m apart, priority junctions on the short links between them.
    _family("grid-5x3-cluster", "grid", (5, 3), (35, 140), (2, 1), 0.6, "shared", (0.7, 1.0, 1.3), perturb_m=8),
    _family("grid-4x2-cluster", "grid", (4, 2), (30, 120), (2, 1), 0.7, "permissive", (0.8, 1.1, 1.3), perturb_m=6),
    # Arterials: a corridor with dedicated lefts, then short irregular ones with unsignalised junctions on them.
    _family("arterial-6", "arterial", (6, 1), (150, 0), (2, 1), 1.0, "dedicated", (0.4, 0.8, 1.2), perturb_m=30),
    _family("arterial-8-short", "arterial", (8, 1), (30, 0), (2, 1), 0.65, "permissive", (0.8, 1.1, 1.3), perturb_m=12),
    _family("arterial-10", "arterial", (10, 1), (60, 0), (3, 1), 0.7, "shared", (0.6, 1.0, 1.2), perturb_m=20),
    # Irregular random networks: odd angles, three- to five-leg junctions, lane drops.
    _family("random-22", "random", (22, 0), (80, 220), (3, 1), 0.7, "shared", (0.4, 0.8, 1.1)),
    _family("random-30-short", "random", (30, 0), (25, 90), (2, 1), 0.5, "shared", (0.6, 1.0, 1.3)),
    # Spider webs: rings around a centre, short ring links when the circles are close.
    _family("spider-4x2", "spider", (4, 2), (100, 0), (2, 1), 1.0, "dedicated", (0.5, 0.9, 1.2), perturb_m=10),
    _family("spider-6x2-short", "spider", (6, 2), (35, 0), (1, 1), 0.7, "shared", (0.4, 0.9, 1.3)),
)

CORPUS: tuple[CorpusSpec, ...] = tuple(spec for family in _FAMILIES for spec in family)
_BY_NAME = {spec.name: spec for spec in CORPUS}


class UnknownCorpusNetwork(ValueError):
    """A name that is not in the corpus; the message says how to list the names."""


def corpus_spec(name: str) -> CorpusSpec:
    """The spec of a corpus network by name (with or without the corpus: prefix)."""
    spec = _BY_NAME.get(name.removeprefix(CORPUS_PREFIX))
    if spec is None:
        raise UnknownCorpusNetwork(f"no corpus network named {name.removeprefix(CORPUS_PREFIX)!r}: "
                                   "`urbanbrain scenario list` names them")
    return spec


def corpus_dir() -> Path:
    """Where corpus networks are cached by default: a corpus folder in the demo city's cache."""
    return default_cache_dir() / "corpus"


def build_corpus_scenario(name: str, folder: Path | None = None, force: bool = False) -> Path:
    """The .sumocfg of a corpus network in `folder` (default :func:`corpus_dir`), generated on
    first use, atomically, as the demo city is."""
    spec = corpus_spec(name)
    target = _target(spec, folder)
    build_cached(target, _files(spec), lambda staging: _generate(spec, staging), force)
    return target / _files(spec)[2]


def is_generated(name: str, folder: Path | None = None) -> bool:
    """Whether the network is cached already (building it would cost nothing)."""
    spec = corpus_spec(name)
    return all((_target(spec, folder) / file).is_file() for file in _files(spec))


def cached_summary(name: str, folder: Path | None = None) -> dict | None:
    """What was generated for a network (signals, junctions, links, demand), None if it is not yet."""
    spec = corpus_spec(name)
    if not is_generated(name, folder):
        return None
    return json.loads((_target(spec, folder) / _files(spec)[3]).read_text(encoding="utf-8"))


def _target(spec: CorpusSpec, folder: Path | None) -> Path:
    """The SUMO version is part of the key because netconvert's output and SUMO's probe depend on it."""
    return (folder if folder is not None else corpus_dir()) / f"{spec.name}-v{GEN_VERSION}-sumo{sumo_version()}"


def _files(spec: CorpusSpec) -> tuple[str, str, str, str]:
    """Network, routes, configuration, and the summary `scenario list` shows."""
    return f"{spec.name}.net.xml", f"{spec.name}.rou.xml", f"{spec.name}.sumocfg", f"{spec.name}.json"


def _generate(spec: CorpusSpec, folder: Path) -> None:
    net_name, route_name, config_name, summary_name = _files(spec)
    build_network(spec, folder / net_name)
    net = sumolib.net.readNet(str(folder / net_name), withPrograms=True)
    _validate_network(spec, net, folder / net_name)
    vehicles, saturation = generate_demand(folder / net_name, spec.level, spec.seed)
    if not vehicles:
        raise RuntimeError(f"corpus {spec.name}: no demand generated; fix its spec")
    write_routes(folder / route_name, vehicles,
                 f"urbanbrain corpus {spec.name}, generator v{GEN_VERSION}: {len(vehicles)} vehicles, "
                 f"{spec.level:.2f}x the probed saturation of {saturation:.0f} trips/h")
    write_config(folder / config_name, net_name, route_name)
    summary = _summary(net, len(vehicles), saturation)
    (folder / summary_name).write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def _summary(net: sumolib.net.Net, vehicles: int, saturation: float) -> dict:
    """Signals, unsignalised junctions, the links between junctions (centre to centre) and the demand."""
    junctions = [n for n in net.getNodes() if n.getType() not in ("dead_end", "internal")]
    inner = {n.getID() for n in junctions}
    links = [math.dist(e.getFromNode().getCoord(), e.getToNode().getCoord()) for e in net.getEdges(withInternal=False)
             if e.getFromNode().getID() in inner and e.getToNode().getID() in inner]
    return {
        "signals": len(net.getTrafficLights()),
        "unsignalised": sum(1 for n in junctions if n.getType() != "traffic_light" and len(n.getNeighboringNodes()) >= 3),
        "shortest_link_m": round(min(links, default=0.0), 1),
        "short_links": sum(1 for length in links if length <= SHORT_LINK_M),
        "vehicles": vehicles,
        "saturation_trips_h": round(saturation),
    }


def _validate_network(spec: CorpusSpec, net: sumolib.net.Net, net_file: Path) -> None:
    """Refuse a degenerate network (the spec table must then be fixed; nothing is skipped).

    At least MIN_SIGNALS traffic lights, each with a plan of two greens or more, all
    seen by the brain's own network reader; every road that does not leave the network
    leads somewhere (no lane-less trap a vehicle could be routed into).
    """
    problems = []
    lights = net.getTrafficLights()
    if len(lights) < MIN_SIGNALS:
        problems.append(f"{len(lights)} traffic lights, fewer than {MIN_SIGNALS}")
    for tls in lights:
        programs = tls.getPrograms()
        greens = [p for program in programs.values() for p in program.getPhases() if "G" in p.state.upper()
                  and "y" not in p.state.lower()]
        if len(greens) < 2:
            problems.append(f"traffic light {tls.getID()} has {len(greens)} green phases")
    intersections = read_network(net_file).intersections
    if len(intersections) < MIN_SIGNALS:
        problems.append(f"the brain's reader sees {len(intersections)} signalised intersections")
    traps = sorted(e.getID() for e in net.getEdges(withInternal=False)
                   if not e.getOutgoing() and e.getToNode().getType() != "dead_end")
    if traps:
        problems.append(f"roads that lead nowhere: {', '.join(traps)}")
    if problems:
        raise RuntimeError(f"corpus {spec.name} is degenerate ({'; '.join(problems)}): fix its spec")


def _check_table() -> None:
    """The table's own invariants, checked at import: a bad entry is a programming error."""
    for spec in CORPUS:
        if spec.shape not in SHAPES or spec.left not in LEFT_TURNS:
            raise ValueError(f"corpus {spec.name}: shape {spec.shape!r} / left {spec.left!r} unknown")
    if len(_BY_NAME) != len(CORPUS):
        raise ValueError("corpus names are not unique")


_check_table()
