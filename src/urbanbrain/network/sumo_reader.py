"""Read a SUMO `.net.xml` (through sumolib) into the project's network model.

Phases and clearance come from the scenario's own signal program, because that is
what the city's traffic engineers configured; only a network without a usable
program gets generated phases (one per approach) and a 3 s yellow + 2 s all-red.
"""

from __future__ import annotations

import gzip
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import IO
from xml.sax import SAXException

import sumolib

from urbanbrain.network.model import (
    GREEN_CHARS,
    Approach,
    Clearance,
    Intersection,
    Lane,
    Movement,
    Network,
    Phase,
    Road,
)

FEEDER_REACH_M = 200.0
ROUTING_CLASS = "emergency"  # the road graph is for emergency vehicles' routes
GENERATED_CLEARANCE = Clearance(yellow_s=3.0, all_red_s=2.0)
FALLBACK_CLEARANCE = Clearance(yellow_s=3.0, all_red_s=0.0)
NET_ROOT = "net"  # the root element of every SUMO network file
GZIP_MAGIC = b"\x1f\x8b"  # SUMO (and sumolib) read gzipped networks too
# What reading a file that is XML but not a whole SUMO network raises: the parser's
# errors (expat's SAXException, lxml's SyntaxError subclasses) when it is cut short, and
# KeyError, IndexError, ValueError, AttributeError or TypeError from sumolib's handler
# or from the model built on it when an element or attribute is missing or malformed.
_READER_ERRORS = (SAXException, SyntaxError, KeyError, IndexError, ValueError, AttributeError, TypeError)


class NetworkError(ValueError):
    """A network file that cannot be read as a SUMO network; the message names the file and why."""


def is_green_state(state: str) -> bool:
    """A green stage shows some green and no yellow (yellow marks a change interval)."""
    return any(c in GREEN_CHARS for c in state) and not any(c in "yY" for c in state)


def _is_yellow_state(state: str) -> bool:
    return any(c in "yY" for c in state)


def read_network(net_file: str | Path) -> Network:
    """Load a SUMO network file into a :class:`Network`.

    A missing file raises FileNotFoundError; a file that is not a SUMO network (empty,
    not XML, cut short, another kind of SUMO file, elements missing) raises
    :class:`NetworkError` naming the file and what is wrong, so that a user sees one
    line, not the XML parser's traceback.
    """
    path = Path(net_file)
    if not path.is_file():
        raise FileNotFoundError(f"network file not found: {path}")
    _check_root(path)
    try:
        network = _model(path, sumolib.net.readNet(str(path), withPrograms=True, withInternal=False))
    except _READER_ERRORS as exc:
        raise NetworkError(f"network {path} is not a complete SUMO network: {_reader_error(exc)}") from exc
    if not network.lanes:
        raise NetworkError(f"network {path} has no roads (no edge with lanes)")
    return network


def _model(path: Path, net: sumolib.net.Net) -> Network:
    """The project's model of sumolib's network."""
    lanes = {
        lane.getID(): Lane(
            id=lane.getID(),
            edge=edge.getID(),
            index=lane.getIndex(),
            length_m=lane.getLength(),
            speed_limit_ms=lane.getSpeed(),
            shape=tuple((float(x), float(y)) for x, y in lane.getShape()),
        )
        for edge in net.getEdges(withInternal=False)
        for lane in edge.getLanes()
    }
    node_tls = {node.getID(): node.getTLSID() for node in net.getNodes() if node.getType().startswith("traffic_light")}
    intersections: dict[str, Intersection] = {}
    for tls in net.getTrafficLights():
        intersection = _read_intersection(tls, node_tls)
        if intersection is not None:
            intersections[intersection.id] = intersection
    xmin, ymin, xmax, ymax = net.getBoundary()
    return Network(name=path.name.removesuffix(".net.xml"), lanes=lanes, intersections=intersections,
                   bounds=(xmin, ymin, xmax, ymax), roads=_roads(net))


def _reader_error(exc: Exception) -> str:
    """What the reader found wrong, in words (a KeyError alone says only the missing name)."""
    if isinstance(exc, SAXException | SyntaxError):
        return f"not well-formed XML ({exc}): is it cut short or corrupted?"
    if isinstance(exc, KeyError):
        return f"{exc} is missing (an attribute, or an element that another one refers to)"
    return f"{type(exc).__name__}: {exc}"


def open_sumo_xml(path: Path) -> IO[bytes]:
    """A SUMO XML file opened for reading, gzipped or not (SUMO reads both)."""
    with path.open("rb") as raw:
        gzipped = raw.read(len(GZIP_MAGIC)) == GZIP_MAGIC
    return gzip.open(path) if gzipped else path.open("rb")


def _check_root(path: Path) -> None:
    """Refuse an empty file, a file that is not XML, or XML whose root is not <net>
    (a route file or a .sumocfg given where the network belongs)."""
    if path.stat().st_size == 0:
        raise NetworkError(f"network {path} is empty")
    try:
        with open_sumo_xml(path) as source:
            _, root = next(ET.iterparse(source, events=("start",)))
    except (ET.ParseError, OSError, EOFError, StopIteration) as exc:
        raise NetworkError(f"network {path} is not XML ({exc})") from None
    if root.tag != NET_ROOT:
        raise NetworkError(f"network {path} is not a SUMO network: its root element is <{root.tag}>, not <{NET_ROOT}>")


def _roads(net) -> dict[str, Road]:
    """The road graph of the roads an emergency vehicle may use, with the turns it may take."""
    roads = {}
    for edge in net.getEdges(withInternal=False):
        if not edge.allows(ROUTING_CLASS):
            continue
        leads_to = tuple(sorted(
            target.getID() for target, connections in edge.getOutgoing().items()
            if target.allows(ROUTING_CLASS) and any(c.getFromLane().allows(ROUTING_CLASS)
                                                    and c.getToLane().allows(ROUTING_CLASS) for c in connections)))
        roads[edge.getID()] = Road(edge.getID(), edge.getLength(), edge.getSpeed(), leads_to,
                                   tuple(lane.getID() for lane in edge.getLanes()))
    return roads


def _vehicle_connections(tls: sumolib.net.TLS) -> list:
    """The signal's connections between normal lanes (pedestrian crossings excluded)."""
    result = []
    for in_lane, out_lane, link_index in tls.getConnections():
        if in_lane.getEdge().getFunction() or out_lane.getEdge().getFunction():
            continue
        if link_index < 0:
            continue
        result.append((in_lane, out_lane, link_index))
    return result


def _read_intersection(tls: sumolib.net.TLS, node_tls: dict[str, str]) -> Intersection | None:
    connections = _vehicle_connections(tls)
    if not connections:
        return None
    programs = tls.getPrograms()
    program_id, program = next(iter(programs.items())) if programs else ("", None)
    n_groups = max(len(program.getPhases()[0].state) if program else 0, 1 + max(i for _, _, i in connections))
    movements = []
    for in_lane, out_lane, link_index in connections:
        conn = _find_connection(in_lane, out_lane, link_index)
        movements.append(
            Movement(
                in_lane=in_lane.getID(),
                out_lane=out_lane.getID(),
                signal_group=link_index,
                direction=conn.getDirection() if conn is not None else "s",
            )
        )
    foes = _foe_groups(connections, n_groups)
    phases, clearance, source = _phases_from_program(program, n_groups)
    if phases is None:
        phases = _generated_phases(connections, foes, n_groups)
        clearance, source = GENERATED_CLEARANCE, "generated: conflict-free stages, 3 s yellow + 2 s all-red (no usable program)"
        conflicts = foes
    else:
        conflicts = _conflicts_from_plan(foes, phases)
    approaches = _approaches(connections, node_tls)
    nodes = {in_lane.getEdge().getToNode() for in_lane, _, _ in connections}
    xs = [n.getCoord()[0] for n in nodes]
    ys = [n.getCoord()[1] for n in nodes]
    return Intersection(
        id=tls.getID(),
        position=(sum(xs) / len(xs), sum(ys) / len(ys)),
        approaches=approaches,
        movements=tuple(movements),
        phases=phases,
        conflicts=conflicts,
        clearance=clearance,
        clearance_source=source,
        program_id=program_id,
    )


def _find_connection(in_lane, out_lane, link_index):
    for conn in in_lane.getOutgoing():
        if conn.getToLane() is out_lane and conn.getTLLinkIndex() == link_index:
            return conn
    return None


def _foe_groups(connections: list, n_groups: int) -> tuple[frozenset[int], ...]:
    """Signal groups whose paths cross or merge in the junction (SUMO's `foes` matrix)."""
    foes: list[set[int]] = [set() for _ in range(n_groups)]
    conns = [(_find_connection(i, o, k), k) for i, o, k in connections]
    for a, ka in conns:
        for b, kb in conns:
            if a is None or b is None or ka == kb:
                continue
            node = a.getJunction()
            if node is not b.getJunction():
                continue
            ia, ib = a.getJunctionIndex(), b.getJunctionIndex()
            if ia < 0 or ib < 0:
                continue
            if node.areFoes(ia, ib) or node.areFoes(ib, ia):
                foes[ka].add(kb)
                foes[kb].add(ka)
    return tuple(frozenset(f) for f in foes)


def _conflicts_from_plan(foes: tuple[frozenset[int], ...], phases: tuple[Phase, ...]) -> tuple[frozenset[int], ...]:
    """Foes that the scenario's own plan never shows green together.

    A plan that runs two foes green at once (a permissive left turn, a merge) tells us
    the engineers accepted that pair as yielding; every other foe pair is a conflict.
    """
    together: set[tuple[int, int]] = set()
    for phase in phases:
        greens = sorted(phase.green_groups)
        together.update((i, j) for i in greens for j in greens)
    return tuple(frozenset(j for j in f if (i, j) not in together) for i, f in enumerate(foes))


def _phase_roles(states: list[tuple[float, str]]) -> list[str]:
    """Classify each program step as 'green', 'yellow' or 'red' (an all-red step).

    Some programs (e.g. NGSIM conversions) write their all-red as a step that keeps
    only the movements green on both sides of it (right turns); such a step gives
    nobody a new green, so it is a clearance, not a stage of its own.
    """
    roles = ["yellow" if _is_yellow_state(s) else "green" if is_green_state(s) else "red" for _, s in states]
    greens = [frozenset(i for i, c in enumerate(s) if c in GREEN_CHARS) for _, s in states]
    n = len(states)
    refined = list(roles)
    for i, role in enumerate(roles):
        if role != "green":
            continue
        before = next(greens[(i - k) % n] for k in range(1, n + 1) if roles[(i - k) % n] == "green")
        after = next(greens[(i + k) % n] for k in range(1, n + 1) if roles[(i + k) % n] == "green")
        if greens[i] < before and greens[i] < after and greens[i] <= before & after:
            refined[i] = "red"
    if len({s for (_, s), r in zip(states, refined) if r == "green"}) >= 2:
        return refined
    return roles


def _phases_from_program(program, n_groups: int) -> tuple[tuple[Phase, ...] | None, Clearance, str]:
    if program is None:
        return None, GENERATED_CLEARANCE, ""
    states = [(float(p.duration), p.state) for p in program.getPhases()]
    if any(len(s) != n_groups for _, s in states):
        return None, GENERATED_CLEARANCE, ""
    roles = _phase_roles(states)
    greens: dict[str, float] = {}
    for (duration, state), role in zip(states, roles):
        if role == "green":
            greens[state] = max(greens.get(state, 0.0), duration)
    if len(greens) < 2:
        return None, GENERATED_CLEARANCE, ""
    phases = tuple(Phase(index=i, state=s, plan_green_s=d) for i, (s, d) in enumerate(greens.items()))
    clearance, source = _clearance_of(states, roles)
    return phases, clearance, source


def _clearance_of(states: list[tuple[float, str]], roles: list[str]) -> tuple[Clearance, str]:
    """The change interval the program uses after a green: its yellow then its all-red.

    Without yellow phases, the program's all-red phase is the clearance and is shown
    as yellow to the movements losing green; without either, 3 s of yellow.
    """
    yellows: list[float] = []
    reds: list[float] = []
    n = len(states)
    for i, role in enumerate(roles):
        if role != "green" or roles[(i + 1) % n] == "green":
            continue
        yellow = red = 0.0
        j = (i + 1) % n
        while roles[j] != "green" and j != i:
            if roles[j] == "yellow":
                yellow += states[j][0]
            else:
                red += states[j][0]
            j = (j + 1) % n
        yellows.append(yellow)
        reds.append(red)
    if not yellows:
        return FALLBACK_CLEARANCE, "default: 3 s yellow (program has no change interval)"
    yellow, red = max(yellows), max(reds)
    if yellow > 0:
        return Clearance(yellow_s=yellow, all_red_s=red), "program: yellow + all-red"
    return Clearance(yellow_s=red, all_red_s=0.0), "program: all-red phase, shown as yellow"


def _generated_phases(connections: list, foes: tuple[frozenset[int], ...], n_groups: int) -> tuple[Phase, ...]:
    """Stages for a bare network: approach by approach, each signal group joins the
    first stage none of whose groups are its foes (greedy colouring), so every stage
    is conflict-free by construction."""
    order: list[int] = []
    for in_lane, _, link_index in sorted(connections, key=lambda c: (c[0].getEdge().getID(), c[2])):
        if link_index not in order:
            order.append(link_index)
    stages: list[set[int]] = []
    for group in order:
        stage = next((s for s in stages if not foes[group] & s), None)
        if stage is None:
            stages.append({group})
        else:
            stage.add(group)
    return tuple(
        Phase(index=i, state="".join("G" if k in stage else "r" for k in range(n_groups)), plan_green_s=30.0)
        for i, stage in enumerate(stages)
    )


def _feeders(edge, node_tls: dict[str, str], reach_m: float = FEEDER_REACH_M) -> tuple[str, ...]:
    """Roads upstream of `edge` through unsignalised junctions, while within `reach_m` of its stop line."""
    found: list[str] = []
    frontier = [(edge, edge.getLength())]
    while frontier:
        current, distance = frontier.pop()
        if current.getFromNode().getID() in node_tls or distance >= reach_m:
            continue
        for upstream in current.getIncoming():
            if upstream.getFunction() or upstream.getID() in found or upstream is edge:
                continue
            found.append(upstream.getID())
            frontier.append((upstream, distance + upstream.getLength()))
    return tuple(sorted(found))


def _approaches(connections: list, node_tls: dict[str, str]) -> tuple[Approach, ...]:
    by_edge: dict[str, tuple] = {}
    for in_lane, _, _ in connections:
        edge = in_lane.getEdge()
        by_edge.setdefault(edge.getID(), edge)
    result = []
    for edge_id, edge in by_edge.items():
        from_node = edge.getFromNode().getID()
        result.append(
            Approach(
                edge=edge_id,
                lanes=tuple(lane.getID() for lane in edge.getLanes()),
                from_intersection=node_tls.get(from_node),
                feeders=_feeders(edge, node_tls),
            )
        )
    return tuple(result)
