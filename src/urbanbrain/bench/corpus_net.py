"""The road networks of the stress corpus: netgenerate's layout, re-typed and re-laned, built by netconvert.

netgenerate lays out the shape (grid, arterial, random, spider) as plain XML; this
module then decides, from the spec and its seed, which junctions are signalised and
which are priority junctions, how many lanes and what speed each road has, jitters
the junctions so that blocks are not all alike, and writes which lane serves which
turn; netconvert builds the network with SUMO's own fixed-time plans,
the plan every adaptive controller is measured against. Every step is seeded, so a
spec always gives the same bytes for one SUMO version.
"""

from __future__ import annotations

import math
import re
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from urbanbrain.demo.city import run_tool, turn_letter, without_timestamp

if TYPE_CHECKING:
    from urbanbrain.bench.corpus import CorpusSpec

SHAPES = ("grid", "arterial", "random", "spider")
LEFT_TURNS = ("shared", "dedicated", "permissive")
ATTACH_M = 150.0  # the entry and exit roads at the boundary: room for a queue and the detectors
MAJOR_SPEED_MS = 13.89  # 50 km/h
MINOR_SPEED_MS = 11.11  # 40 km/h
MAJOR_PRIORITY = 3  # major roads have the right of way at priority junctions
MINOR_PRIORITY = 1
MIN_SIGNALS = 2
SPIDER_MAX_CENTRE_ARMS = 4  # a wider centre would be one junction with more arms than any real one
PLAIN = "plain"  # netgenerate's plain-XML output prefix
NODE_FILE, EDGE_FILE, CONNECTION_FILE = "corpus.nod.xml", "corpus.edg.xml", "corpus.con.xml"


def build_network(spec: CorpusSpec, net_file: Path) -> None:
    """Write the spec's network to `net_file` (build files go to a scratch folder beside it)."""
    scratch = net_file.parent / "build"
    scratch.mkdir()
    run_tool("netgenerate", _netgenerate_args(spec), scratch)
    nodes = ET.parse(scratch / f"{PLAIN}.nod.xml")
    edges = ET.parse(scratch / f"{PLAIN}.edg.xml")
    rng = np.random.default_rng(spec.seed)
    _set_roads(spec, edges, nodes, rng)
    layout = _edit_nodes(spec, nodes, edges, rng)
    for tree, name in ((nodes, NODE_FILE), (edges, EDGE_FILE)):
        tree.write(scratch / name, encoding="UTF-8", xml_declaration=True)
    _write_connections(scratch / CONNECTION_FILE, edges, layout, dedicated=spec.left != "shared")
    files = ["--node-files", NODE_FILE, "--edge-files", EDGE_FILE, "--connection-files", CONNECTION_FILE]
    run_tool("netconvert", [*files, *_netconvert_args(spec), "--output-file", net_file.name], scratch)
    net_file.write_text(without_timestamp((scratch / net_file.name).read_text(encoding="UTF-8")), encoding="UTF-8")
    shutil.rmtree(scratch)


def _netgenerate_args(spec: CorpusSpec) -> list[str]:
    """The shape's layout as plain XML; junction types and lanes are decided afterwards."""
    (a, b), (length_a, length_b) = spec.size, spec.spacing_m
    if spec.shape == "grid":
        shape = ["--grid", "--grid.x-number", str(a), "--grid.y-number", str(b), "--grid.x-length", f"{length_a:g}",
                 "--grid.y-length", f"{length_b:g}", "--grid.attach-length", f"{ATTACH_M:g}"]
    elif spec.shape == "arterial":  # one row of junctions: the arterial, with a cross street at each
        shape = ["--grid", "--grid.x-number", str(a), "--grid.y-number", "1", "--grid.x-length", f"{length_a:g}",
                 "--grid.attach-length", f"{ATTACH_M:g}"]
    elif spec.shape == "spider":
        shape = ["--spider", "--spider.arm-number", str(a), "--spider.circle-number", str(b),
                 "--spider.space-radius", f"{length_a:g}", "--spider.attach-length", f"{ATTACH_M:g}"]
        shape += ["--spider.omit-center"] if a > SPIDER_MAX_CENTRE_ARMS else []
    elif spec.shape == "random":
        shape = ["--rand", "--rand.iterations", str(a), "--rand.min-distance", f"{length_a:g}",
                 "--rand.max-distance", f"{length_b:g}"]
    else:
        raise ValueError(f"corpus {spec.name}: unknown shape {spec.shape!r}; choose from {', '.join(SHAPES)}")
    return [*shape, "--default.lanenumber", "1", "--no-turnarounds", "--seed", str(spec.seed),
            "--plain-output-prefix", PLAIN, "--output-file", "netgenerate.net.xml"]


def _netconvert_args(spec: CorpusSpec) -> list[str]:
    """Static plans with 3 s yellow and 2 s all-red, as the demo city's; `permissive` builds no left phase."""
    args = ["--no-turnarounds", "--tls.default-type", "static", "--tls.yellow.time", "3", "--tls.allred.time", "2"]
    return [*args, "--tls.left-green.time", "0"] if spec.left == "permissive" else args


# --- roads -------------------------------------------------------------------


def _set_roads(spec: CorpusSpec, edges: ET.ElementTree, nodes: ET.ElementTree, rng: np.random.Generator) -> None:
    """Lanes, speed and priority of every road from its class (major or minor).

    Grids: the middle row and column are major; arterials: the arterial itself;
    spiders: the radial arms; random networks: each road (both directions alike)
    draws its lane count between the minor's and the major's, and is major with more
    lanes than a minor road. netgenerate's own geometry is dropped: roads run straight between
    their (possibly moved) junctions.
    """
    coords = {n.get("id", ""): (float(n.get("x", 0)), float(n.get("y", 0))) for n in nodes.getroot().iter("node")}
    junctions = [n.get("id", "") for n in nodes.getroot().iter("node") if n.get("type") != "dead_end"]
    xs = sorted({coords[n][0] for n in junctions})
    ys = sorted({coords[n][1] for n in junctions})
    major_lanes, minor_lanes = spec.lanes
    drawn: dict[frozenset[str], int] = {}
    for edge in sorted(edges.getroot().iter("edge"), key=lambda e: e.get("id", "")):
        start, end = edge.get("from", ""), edge.get("to", "")
        (x0, y0), (x1, y1) = coords[start], coords[end]
        if spec.shape == "random":
            lanes = drawn.setdefault(frozenset((start, end)), int(rng.integers(minor_lanes, major_lanes + 1)))
            major = lanes > minor_lanes
        else:
            if spec.shape == "grid":
                major = x0 == x1 == xs[len(xs) // 2] or y0 == y1 == ys[len(ys) // 2]
            elif spec.shape == "arterial":
                major = y0 == y1
            else:
                major = _spider_arm(start) == _spider_arm(end) or None in (_spider_arm(start), _spider_arm(end))
            lanes = major_lanes if major else minor_lanes
        edge.set("numLanes", str(lanes))
        edge.set("speed", f"{MAJOR_SPEED_MS if major else MINOR_SPEED_MS:.2f}")
        edge.set("priority", str(MAJOR_PRIORITY if major else MINOR_PRIORITY))
        edge.attrib.pop("shape", None)


def _spider_arm(node: str) -> str | None:
    """The arm of a spider node: netgenerate names them circle letter + arm number (B3: the
    first circle's third arm); the centre, A1, is on every arm (None)."""
    match = re.fullmatch(r"([A-Z]+)(\d+)", node)
    if match is None:
        raise ValueError(f"spider node {node!r} is not named as netgenerate names them")
    return None if match.group(1) == "A" else match.group(2)


# --- junctions ---------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    coords: dict[str, tuple[float, float]]
    signalised: frozenset[str]


def _edit_nodes(spec: CorpusSpec, nodes: ET.ElementTree, edges: ET.ElementTree, rng: np.random.Generator) -> _Layout:
    """Jitter the junctions and choose the signalised ones; every other junction gives way by priority.

    Junctions with three neighbours or more are candidates; each is signalised with
    the spec's share (seeded), and at least two always are. Jitter moves a junction
    by up to `perturb_m` in x (and in y, except on an arterial, which stays straight).
    """
    neighbours: dict[str, set[str]] = {}
    for edge in edges.getroot().iter("edge"):
        neighbours.setdefault(edge.get("from", ""), set()).add(edge.get("to", ""))
        neighbours.setdefault(edge.get("to", ""), set()).add(edge.get("from", ""))
    elements = sorted(nodes.getroot().iter("node"), key=lambda n: n.get("id", ""))
    candidates = [n.get("id", "") for n in elements
                  if n.get("type") != "dead_end" and len(neighbours.get(n.get("id", ""), ())) >= 3]
    draws = rng.random(len(candidates))
    chosen = {node for node, draw in zip(candidates, draws, strict=True) if draw < spec.signal_share}
    for node in (candidates[i] for i in rng.permutation(len(candidates))):
        if len(chosen) >= MIN_SIGNALS:
            break
        chosen.add(node)
    coords = {}
    for element in elements:
        node_id = element.get("id", "")
        x, y = float(element.get("x", 0)), float(element.get("y", 0))
        if element.get("type") != "dead_end":
            dx, dy = rng.uniform(-spec.perturb_m, spec.perturb_m, 2) if spec.perturb_m else (0.0, 0.0)
            x, y = x + dx, y + (0.0 if spec.shape == "arterial" else dy)
            element.set("type", "traffic_light" if node_id in chosen else "priority")
        element.attrib.pop("tl", None)
        element.attrib.pop("fringe", None)
        element.set("x", f"{x:.2f}")
        element.set("y", f"{y:.2f}")
        coords[node_id] = (x, y)
    return _Layout(coords, frozenset(chosen))


# --- lanes at junctions ------------------------------------------------------


def _write_connections(path: Path, edges: ET.ElementTree, layout: _Layout, dedicated: bool) -> None:
    """Which lane of every road serves which turn, and onto which lanes of the next road.

    Right turns from the rightmost lane, left turns from the leftmost, straight on
    from every lane; with `dedicated`, the leftmost lane of a multi-lane approach to
    a signal turns left only (and gets a protected phase unless the plan is built
    permissive). A turn may enter any lane of the next road, and straight-on traffic
    spreads over them, so a vehicle takes the lane it needs at the next junction as it
    crosses this one: on a link of 10-30 m there is no room to change lanes, and a
    vehicle left on a lane that does not serve its turn would wait there for ever.
    """
    roads = sorted((e.get("id", ""), e.get("from", ""), e.get("to", ""), int(e.get("numLanes", "1")))
                   for e in edges.getroot().iter("edge"))

    def heading(start: str, end: str) -> float:
        (x0, y0), (x1, y1) = layout.coords[start], layout.coords[end]
        return math.atan2(y1 - y0, x1 - x0)

    root = ET.Element("connections")
    for edge_id, start, end, lanes in roads:
        turns = [(out_id, turn_letter(heading(start, end), heading(end, out_end)), out_lanes)
                 for out_id, out_start, out_end, out_lanes in roads if out_start == end and out_end != start]
        use = _lane_use({turn for _, turn, _ in turns}, lanes, dedicated and end in layout.signalised)
        for out_id, turn, out_lanes in turns:
            for from_lane, to_lane in _lane_pairs(use.get(turn, []), out_lanes, spread=turn == "s"):
                ET.SubElement(root, "connection", {"from": edge_id, "to": out_id, "fromLane": str(from_lane),
                                                   "toLane": str(to_lane)})
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="UTF-8", xml_declaration=True)


def _lane_use(present: set[str], lanes: int, dedicated: bool) -> dict[str, list[int]]:
    """The approach lanes of each turn (s, l, r) `present` at a junction; a turn back is not built.

    Without a straight movement (the stem of a T) the right half of the lanes turns
    right and the left half left.
    """
    everything = list(range(lanes))
    if lanes == 1:
        return {"s": everything, "l": everything, "r": everything}
    if "s" in present:
        through = everything[:-1] if dedicated and "l" in present else everything
        return {"s": through, "l": [lanes - 1], "r": [0]}
    if {"l", "r"} <= present:
        return {"r": everything[: lanes // 2], "l": everything[lanes // 2:]}
    return {"l": everything, "r": everything}


def _lane_pairs(from_lanes: list[int], out_lanes: int, spread: bool) -> list[tuple[int, int]]:
    """(from lane, to lane) of one turn: straight on, the lanes spread side by side over the
    next road's (each to at least one, none crossing); a turn from each of its lanes to all."""
    if not spread:
        return [(lane, to) for lane in from_lanes for to in range(out_lanes)]
    pairs = []
    for k, lane in enumerate(from_lanes):
        first = k * out_lanes // len(from_lanes)
        last = max(first, (k + 1) * out_lanes // len(from_lanes) - 1)
        pairs += [(lane, to) for to in range(first, last + 1)]
    return pairs
