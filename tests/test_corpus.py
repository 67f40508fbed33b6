"""The stress corpus: its table, deterministic generation, `corpus:NAME`, `bench corpus` and its summary."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from urbanbrain.bench import corpus_report
from urbanbrain.bench.corpus import CORPUS, build_corpus_scenario, corpus_spec
from urbanbrain.bench.corpus_net import SHAPES
from urbanbrain.cli import app
from urbanbrain.network import read_network
from urbanbrain.twin.scenario import ScenarioError, load_scenario

SMALL = "spider-4x2-s1"  # among the quickest to generate (its saturation probe included) and to run
WIDE = {"COLUMNS": "400"}  # rich wraps at the terminal's width; a wide one keeps a message whole


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A cache of its own, so the test generates instead of finding a user's cached network."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def small(cache: Path) -> Path:
    return build_corpus_scenario(SMALL, cache / "corpus")


def test_the_table_has_thirty_unique_networks_of_every_shape_and_demand():
    names = [spec.name for spec in CORPUS]
    assert len(names) >= 30 and len(set(names)) == len(names)
    assert {spec.shape for spec in CORPUS} == set(SHAPES)
    assert {spec.left for spec in CORPUS} == {"shared", "dedicated", "permissive"}
    assert min(spec.level for spec in CORPUS) <= 0.4 and max(spec.level for spec in CORPUS) >= 1.3
    assert any(spec.signal_share < 1 and spec.spacing_m[0] <= 40 for spec in CORPUS), "the German cluster family"
    assert {lanes for spec in CORPUS for lanes in spec.lanes} >= {1, 2, 3, 4}
    assert corpus_spec("corpus:" + names[0]) == corpus_spec(names[0]) == CORPUS[0]


def test_a_network_is_generated_byte_for_byte_the_same(small: Path, tmp_path: Path):
    again = build_corpus_scenario(SMALL, tmp_path)
    first = sorted(p.name for p in small.parent.iterdir())
    assert first == sorted(p.name for p in again.parent.iterdir())
    assert len(first) == 4 and not (small.parent / "build").exists()
    for name in first:
        assert (small.parent / name).read_bytes() == (again.parent / name).read_bytes(), name
    assert "generated on" not in (small.parent / f"{SMALL}.net.xml").read_text()


def test_the_network_is_what_the_brain_reads_and_corpus_names_resolve(small: Path, cache: Path):
    network = read_network(small.parent / f"{SMALL}.net.xml")
    assert len(network.intersections) >= 2
    scenario = load_scenario(f"corpus:{SMALL}", cache)
    assert scenario.name == SMALL and scenario.sumocfg == small.resolve()
    summary = json.loads((small.parent / f"{SMALL}.json").read_text())
    assert summary["signals"] == len(network.intersections) and summary["vehicles"] > 0
    with pytest.raises(ScenarioError, match="nosuch.*scenario list"):
        load_scenario("corpus:nosuch", cache)


def test_bench_corpus_writes_a_line_per_network_and_seed_and_reuses_it(small: Path, cache: Path, tmp_path: Path,
                                                                        monkeypatch):
    monkeypatch.setenv("URBANBRAIN_CACHE", str(cache))
    out = tmp_path / "corpus.jsonl"
    args = ["bench", "corpus", "--names", SMALL, "--seeds", "1", "--controller", "fixed,brain", "--horizon", "120",
            "--jobs", "2", "--json", str(out)]
    result = CliRunner().invoke(app, args, env=WIDE)
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert (record["network"], record["seed"], record["horizon_s"]) == (SMALL, 1, 120)
    assert set(record["results"]) == {"fixed", "brain"}
    for kpis in record["results"].values():
        assert {"total_delay_s", "not_inserted", "longest_stop_s", "max_queue"} <= set(kpis)
    assert "best peer (bar 1)" in result.output and "fixed plan (bar 0.9)" in result.output
    assert "worst 1 cases" in result.output and "each controller over the corpus" in result.output

    again = CliRunner().invoke(app, args, env=WIDE)
    assert again.exit_code == 0, again.output
    assert f"reused from {out}" in again.output and "total delay" not in again.output.split("each controller")[0]
    assert len(out.read_text().splitlines()) == 1


def test_bad_names_are_refused_cleanly(tmp_path: Path):
    for args in (["scenario", "generate", "nosuch"], ["bench", "--scenario", "corpus:nosuch"],
                 ["bench", "corpus", "--names", "nosuch"]):
        out = subprocess.run([sys.executable, "-m", "urbanbrain.cli", *args], capture_output=True, text=True, check=False,
                             env={**os.environ, "URBANBRAIN_CACHE": str(tmp_path), **WIDE}, timeout=120)
        said = " ".join((out.stdout + out.stderr).replace("│", " ").split())
        assert out.returncode == 2 and "Traceback" not in said, said
        assert "'nosuch'" in said and "urbanbrain scenario list" in said, said
    assert not any(tmp_path.iterdir()), "nothing generated for a bad name"


def _record(network: str, seed: int, **delays: float) -> dict:
    return {"network": network, "seed": seed, "results": {
        name: {"total_delay_s": delay, "longest_stop_s": 100.0 + delay, "not_inserted": int(delay) % 7}
        for name, delay in delays.items()}}


def test_the_summary_of_hand_made_records():
    records = [
        _record("a", 1, fixed=100.0, actuated=80.0, maxpressure=90.0, brain=40.0),  # 0.5 of actuated, 0.4 of fixed
        _record("a", 2, fixed=50.0, actuated=60.0, brain=50.0),  # 1.0 of fixed (the best peer), 1.0 of fixed
        _record("b", 1, fixed=200.0, delaybased=100.0, brain=200.0),  # 2.0 of delaybased, 1.0 of fixed
        _record("c", 1, fixed=10.0, brain=9.5),  # 0.95 of fixed
        _record("d", 1, fixed=10.0, actuated=5.0),  # no brain: not a case
    ]
    cases = corpus_report.brain_cases(records)
    assert [(c.network, c.seed, c.best_peer) for c in cases] == [("a", 1, "actuated"), ("a", 2, "fixed"),
                                                                ("b", 1, "delaybased"), ("c", 1, "fixed")]
    assert [c.ratio for c in cases] == pytest.approx([0.5, 1.0, 2.0, 0.95])
    assert [c.fixed_ratio for c in cases] == pytest.approx([0.4, 1.0, 1.0, 0.95])
    assert cases[2].longest_stop_s == 300.0 and cases[2].not_inserted == 200 % 7

    peer = corpus_report.distribution([c.ratio for c in cases], corpus_report.PEER_BAR)
    assert (peer.count, peer.minimum, peer.maximum) == (4, 0.5, 2.0)
    assert (peer.q1, peer.median, peer.q3) == pytest.approx((0.8375, 0.975, 1.25))
    assert peer.geomean == pytest.approx(math.exp((math.log(0.5) + math.log(2.0) + math.log(0.95)) / 4))
    assert peer.above == 1  # 1.0 is on the bar, not above it
    fixed = corpus_report.distribution([c.fixed_ratio for c in cases], corpus_report.FIXED_BAR)
    assert fixed.above == 3 and fixed.median == pytest.approx(0.975)

    summaries = {s.controller: s for s in corpus_report.controller_summaries(records, ["fixed", "brain", "maxpressure"])}
    assert summaries["fixed"].runs == 5 and summaries["fixed"].median_delay_s == 50.0
    assert summaries["brain"].long_stops == 0 and summaries["fixed"].long_stops == 0
    assert summaries["maxpressure"].runs == 1 and summaries["brain"].worst_delay_s == 200.0
    assert corpus_report.controller_summaries([_record("e", 1, brain=250.0)], ["brain"])[0].long_stops == 1


def test_a_cut_last_line_is_skipped_and_a_later_line_wins(tmp_path: Path):
    path = tmp_path / "c.jsonl"
    corpus_report.append_record(path, _record("a", 1, fixed=1.0))
    corpus_report.append_record(path, _record("a", 1, fixed=2.0))
    with path.open("a") as out:
        out.write('{"network": "b", "se')
    records, unreadable = corpus_report.read_records(path)
    assert unreadable == 1 and list(records) == [("a", 1)]
    assert records[("a", 1)]["results"]["fixed"]["total_delay_s"] == 2.0
