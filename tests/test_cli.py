"""The command line, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import scenario_cfg


def urbanbrain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "urbanbrain.cli", *args], capture_output=True, text=True, timeout=600)


def test_bench_writes_the_published_json_shape_and_a_plot(tmp_path: Path):
    cfg = scenario_cfg("cologne1")
    out = urbanbrain("bench", "--scenario", str(cfg), "--controller", "fixed,maxpressure", "--horizon", "120",
                     "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png"), "--explain", str(tmp_path / "e.jsonl"))
    assert out.returncode == 0, out.stderr
    record = json.loads((tmp_path / "r.json").read_text())
    assert set(record) == {"scenario", "horizon_s", "observation", "sumo_version", "results"}
    assert record["horizon_s"] == 120 and record["observation"] == "sensors" and record["sumo_version"] == "1.28.0"
    assert list(record["results"]) == ["fixed", "maxpressure"]
    for kpis in record["results"].values():
        assert set(kpis) == {"att_s", "delay_s", "total_delay_s", "throughput", "not_inserted", "stops", "wall_s"}
    assert (tmp_path / "r.png").stat().st_size > 10_000
    decisions = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert decisions and all(d["controller"] == "maxpressure" and d["reason"] for d in decisions)
    assert "vs best peer" in out.stdout


def test_bad_arguments_are_named(tmp_path: Path):
    out = urbanbrain("bench", "--scenario", str(tmp_path / "missing.sumocfg"))
    assert out.returncode == 2 and "scenario not found" in out.stderr
    out = urbanbrain("bench", "--scenario", str(tmp_path / "missing.sumocfg"), "--controller", "magic")
    assert out.returncode == 2 and "magic" in out.stderr
    out = urbanbrain("bench", "--observation", "psychic")
    assert out.returncode == 2 and "psychic" in out.stderr
    out = urbanbrain("run", "--emergency", "-1", "--data-dir", str(tmp_path / "data"))
    assert out.returncode == 2 and "--emergency" in out.stderr and "greater than or equal to 0" in out.stderr
    out = urbanbrain("run", "--no-twin", "--emergency", "2", "--data-dir", str(tmp_path / "data"))
    assert out.returncode == 2 and "--no-twin" in out.stderr
    out = urbanbrain("run", "--incidents", "2", "--duration", "300", "--data-dir", str(tmp_path / "data"))
    assert out.returncode == 2 and "--incidents" in out.stderr and "at least 360" in out.stderr
    out = urbanbrain("twin", "--brain", "http://127.0.0.1:9", "--key", "ub_x", "--emergency", "-1")
    assert out.returncode == 2 and "--emergency" in out.stderr and "greater than or equal to 0" in out.stderr
    assert not (tmp_path / "data").exists(), "refused before the service starts"


def test_a_bench_run_does_not_depend_on_the_runs_before_it(tmp_path: Path):
    """libsumo keeps state between simulations in one process (measured: max-pressure on
    cologne1 differed after a delay_based run); bench runs each controller in its own."""
    cfg = scenario_cfg("cologne1")
    figures = []
    for controllers in ("maxpressure", "delaybased,maxpressure"):
        out = urbanbrain("bench", "--scenario", str(cfg), "--controller", controllers, "--observation", "oracle",
                         "--horizon", "1800", "--json", str(tmp_path / "r.json"))
        assert out.returncode == 0, out.stderr
        figures.append(json.loads((tmp_path / "r.json").read_text())["results"]["maxpressure"]["total_delay_s"])
    assert figures[0] == figures[1]
