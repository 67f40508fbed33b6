"""A SUMO scenario as the twin runs it: where its files are and when it begins."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from urbanbrain.network.sumo_reader import NET_ROOT, open_sumo_xml

# The elements of a SUMO demand that put someone on the roads (SUMO reads them from
# route files and additional files alike).
DEMAND_TAGS = frozenset({"vehicle", "trip", "flow", "person", "personFlow", "container", "containerFlow"})
TOP_LEVEL = 2  # the depth of the root's children, where a SUMO file defines its demand
CORPUS_PREFIX = "corpus:"  # a stress-corpus network by name (urbanbrain.bench.corpus)


class ScenarioError(ValueError):
    """A .sumocfg that does not describe a scenario SUMO can run; the message names the file and why."""


@dataclass(frozen=True)
class Scenario:
    name: str
    sumocfg: Path
    net_file: Path
    begin_s: float
    additional_files: tuple[Path, ...]
    route_files: tuple[Path, ...] = ()


def _option(root: ET.Element, name: str) -> str | None:
    element = root.find(f".//{name}")
    return None if element is None else element.get("value")


def _files(root: ET.Element, name: str, base: Path) -> tuple[Path, ...]:
    """The files of a comma-separated file option, relative to the configuration's folder."""
    value = _option(root, name) or ""
    return tuple((base / f.strip()).resolve() for f in value.split(",") if f.strip())


def load_scenario(spec: str | Path, cache_dir: Path | None = None) -> Scenario:
    """Resolve `demo` (the built-in city), `corpus:NAME` (a stress-corpus network; both
    generated on first use) or a `.sumocfg` path.

    An unknown corpus name raises :class:`ScenarioError` saying how to list the names.
    A missing configuration raises FileNotFoundError; one that is not XML, is another
    kind of SUMO file, names no network or a network that is not there, or has a begin
    that is not a number raises :class:`ScenarioError` naming it. Route files are
    checked by :func:`count_demand`, since a brain with no twin never reads them.
    """
    name = None
    if str(spec) == "demo":
        from urbanbrain.demo import build_demo_city

        path, name = build_demo_city(cache_dir), "demo"
    elif str(spec).startswith(CORPUS_PREFIX):
        from urbanbrain.bench import corpus

        try:
            name = corpus.corpus_spec(str(spec)).name
        except corpus.UnknownCorpusNetwork as exc:
            raise ScenarioError(str(exc)) from None
        path = corpus.build_corpus_scenario(name, None if cache_dir is None else Path(cache_dir) / "corpus")
    else:
        path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"scenario not found: {path} (give a .sumocfg file, 'demo' or 'corpus:NAME')")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ScenarioError(f"scenario {path} is not valid XML: {exc}") from None
    if root.tag == NET_ROOT:
        raise ScenarioError(f"scenario {path} is a SUMO network, not a scenario: give the .sumocfg that names "
                            "this network and its route files")
    base = path.parent
    net = _option(root, "net-file")
    if not net:
        raise ScenarioError(f"scenario {path} names no net-file (a .sumocfg names its network as "
                            '<input><net-file value="..."/></input>)')
    net_file = (base / net).resolve()
    if not net_file.is_file():
        raise ScenarioError(f"scenario {path} names net-file {net}, which is not there ({net_file})")
    return Scenario(
        name=name or path.name.removesuffix(".sumocfg"),
        sumocfg=path.resolve(),
        net_file=net_file,
        begin_s=_begin(root, path),
        additional_files=_files(root, "additional-files", base),
        route_files=_files(root, "route-files", base),
    )


def _begin(root: ET.Element, path: Path) -> float:
    value = _option(root, "begin") or "0"
    try:
        return float(value)
    except ValueError:
        raise ScenarioError(f"scenario {path}: begin {value!r} is not a number of seconds") from None


def count_demand(scenario: Scenario) -> int:
    """How many vehicles, trips, flows and persons the scenario's route and additional
    files define. Each file is read whole, so one that is missing, not XML or cut short
    is named here, before a simulation starts, instead of by SUMO mid-way."""
    return sum(_demand_in(scenario.sumocfg, path) for path in (*scenario.route_files, *scenario.additional_files))


def _demand_in(sumocfg: Path, path: Path) -> int:
    if not path.is_file():
        raise ScenarioError(f"scenario {sumocfg} names {path.name}, which is not there ({path})")
    count = depth = 0
    root: ET.Element | None = None
    try:
        with open_sumo_xml(path) as source:
            for event, element in ET.iterparse(source, events=("start", "end")):
                if event == "start":
                    root = element if root is None else root
                    depth += 1
                    count += depth == TOP_LEVEL and element.tag in DEMAND_TAGS
                    continue
                depth -= 1
                if depth == TOP_LEVEL - 1 and root is not None:
                    root.clear()  # a city's demand can be large: keep none of what was counted
    except (ET.ParseError, OSError, EOFError) as exc:
        raise ScenarioError(f"scenario {sumocfg}: {path} is not well-formed XML ({exc}): "
                            "is it cut short or corrupted?") from None
    return count
