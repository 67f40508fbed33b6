"""A SUMO scenario as the twin runs it: where its files are and when it begins."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Scenario:
    name: str
    sumocfg: Path
    net_file: Path
    begin_s: float
    additional_files: tuple[Path, ...]


def _option(root: ET.Element, name: str) -> str | None:
    element = root.find(f".//{name}")
    return None if element is None else element.get("value")


def load_scenario(spec: str | Path, cache_dir: Path | None = None) -> Scenario:
    """Resolve `demo` (the built-in city, generated on first use) or a `.sumocfg` path."""
    if str(spec) == "demo":
        from urbanbrain.demo import build_demo_city

        path = build_demo_city(cache_dir)
    else:
        path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"scenario not found: {path} (give a .sumocfg file or 'demo')")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"scenario {path} is not valid XML: {exc}") from None
    net = _option(root, "net-file")
    if not net:
        raise ValueError(f"scenario {path} names no net-file")
    base = path.parent
    additional = _option(root, "additional-files") or ""
    begin = float(_option(root, "begin") or 0.0)
    return Scenario(
        name="demo" if str(spec) == "demo" else path.name.removesuffix(".sumocfg"),
        sumocfg=path.resolve(),
        net_file=(base / net).resolve(),
        begin_s=begin,
        additional_files=tuple((base / a.strip()).resolve() for a in additional.split(",") if a.strip()),
    )
