"""Shared test fixtures: where the real-city scenarios are, and small generated networks."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import sumo

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = Path(os.environ.get("URBANBRAIN_SCENARIOS", ROOT.parent / "shared" / "scenarios"))


def scenario_cfg(folder: str) -> Path:
    """The .sumocfg of a shared real-city scenario, or skip with the reason."""
    configs = sorted((SCENARIOS / folder).glob("*.sumocfg"))
    if not configs:
        pytest.skip(f"real-city scenario {folder!r} not found under {SCENARIOS} (set URBANBRAIN_SCENARIOS)")
    return configs[0]


def netgenerate(out: Path, *args: str) -> Path:
    binary = Path(sumo.SUMO_HOME) / "bin" / "netgenerate"
    subprocess.run([str(binary), *args, "--output-file", str(out), "--seed", "1"], check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def grid_net(tmp_path_factory) -> Path:
    """A 2x2 signalised grid with fringe roads, made by SUMO's netgenerate."""
    out = tmp_path_factory.mktemp("grid") / "grid.net.xml"
    return netgenerate(out, "--grid", "--grid.number", "2", "--grid.length", "150", "--grid.attach-length", "150",
                       "--tls.guess", "--default.lanenumber", "2", "--no-turnarounds")
