"""`bench corpus` output: one JSON line per (network, seed), and what the brain's ratios look like over them.

The bar the corpus checks: on every network and seed, the brain's total delay is at
most the best peer's and at most ``FIXED_BAR`` times the fixed plan's, and no vehicle
stands more than ``STOP_LIMIT_S`` at the head of a lane. The functions here are pure
(records in, numbers or tables out), so they are tested on hand-made records.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.table import Table

from urbanbrain.bench.report import PEERS, result_record
from urbanbrain.bench.session import RunResult

BRAIN = "brain"
FIXED = "fixed"
PEER_BAR = 1.0  # the brain's total delay over the best peer's
FIXED_BAR = 0.9  # the brain's total delay over the fixed plan's
STOP_LIMIT_S = 300.0  # the longest a vehicle may stand at the head of a lane
WORST_CASES = 10

Key = tuple[str, int]  # (network, seed)


def corpus_record(network: str, seed: int, horizon_s: int, observation: str, sumo_version: str,
                  results: list[RunResult]) -> dict:
    """One JSON line: every controller's KPIs on one network and seed, with its longest stop and queue."""
    return {
        "network": network,
        "seed": seed,
        "horizon_s": horizon_s,
        "observation": observation,
        "sumo_version": sumo_version,
        "results": {r.controller: {**result_record(r), "longest_stop_s": round(r.longest_stop_s, 1),
                                   "max_queue": r.max_queue} for r in results},
    }


def read_records(path: Path) -> tuple[dict[Key, dict], int]:
    """The records of a JSON-lines file by (network, seed), a later line replacing an earlier one,
    and how many lines could not be read (a run killed while writing leaves a cut last line)."""
    records: dict[Key, dict] = {}
    unreadable = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            records[(record["network"], int(record["seed"]))] = record
        except (ValueError, KeyError, TypeError):
            unreadable += 1
    return records, unreadable


def append_record(path: Path, record: dict) -> None:
    """Add one line and flush it, so an interrupted corpus run keeps every finished (network, seed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(record, sort_keys=True) + "\n")


@dataclass(frozen=True)
class Case:
    """The brain on one network and seed, against the best peer and the fixed plan."""

    network: str
    seed: int
    ratio: float  # to the best peer
    best_peer: str
    brain_delay_s: float
    peer_delay_s: float
    fixed_ratio: float | None  # None when the fixed plan did not run
    longest_stop_s: float
    not_inserted: int


def _ratio(value: float, reference: float) -> float:
    """value / reference; a reference of 0 (no delay at all) makes any delay infinitely worse."""
    if reference > 0:
        return value / reference
    return 1.0 if value <= 0 else math.inf


def brain_cases(records: list[dict]) -> list[Case]:
    """The brain's case on every record where it and at least one peer ran."""
    cases = []
    for record in records:
        results = record["results"]
        peers = {name: results[name]["total_delay_s"] for name in PEERS if name in results}
        if BRAIN not in results or not peers:
            continue
        brain = results[BRAIN]
        best = min(peers, key=lambda name: (peers[name], name))
        fixed = _ratio(brain["total_delay_s"], results[FIXED]["total_delay_s"]) if FIXED in results else None
        cases.append(Case(record["network"], int(record["seed"]), _ratio(brain["total_delay_s"], peers[best]), best,
                          brain["total_delay_s"], peers[best], fixed, brain["longest_stop_s"], brain["not_inserted"]))
    return cases


@dataclass(frozen=True)
class Distribution:
    count: int
    minimum: float
    q1: float
    median: float
    q3: float
    maximum: float
    geomean: float
    above: int  # how many are above the bar


def distribution(values: list[float], bar: float) -> Distribution:
    """Quartiles (linear interpolation, as numpy's percentile), geometric mean and the count above `bar`."""
    if not values:
        raise ValueError("no values to summarise")
    q1, median, q3 = (float(q) for q in np.percentile(values, [25, 50, 75]))
    geomean = math.exp(sum(math.log(v) for v in values) / len(values)) if min(values) > 0 else 0.0
    return Distribution(len(values), min(values), q1, median, q3, max(values), geomean, sum(v > bar for v in values))


def ratio_table(cases: list[Case]) -> Table:
    """The distribution of the brain's ratios to the best peer and to the fixed plan."""
    table = Table(title="brain total_delay_s ratio over the corpus (network x seed)")
    for column in ("against", "count", "min", "q1", "median", "q3", "max", "geomean", "above bar"):
        table.add_column(column, justify="left" if column == "against" else "right")
    rows = [(f"best peer (bar {PEER_BAR:g})", [c.ratio for c in cases], PEER_BAR),
            (f"fixed plan (bar {FIXED_BAR:g})", [c.fixed_ratio for c in cases if c.fixed_ratio is not None], FIXED_BAR)]
    for label, values, bar in rows:
        if values:
            d = distribution(values, bar)
            table.add_row(label, str(d.count), *(f"{v:.3f}" for v in (d.minimum, d.q1, d.median, d.q3, d.maximum,
                                                                      d.geomean)), f"{d.above} of {d.count}")
    return table


def worst_table(cases: list[Case], count: int = WORST_CASES) -> Table:
    """The cases where the brain does worst against the best peer."""
    table = Table(title=f"worst {min(count, len(cases))} cases against the best peer")
    for column in ("network", "seed", "ratio", "vs fixed", "best peer", "brain total delay s", "peer total delay s",
                   "brain longest stop s", "brain not inserted"):
        table.add_column(column, justify="left" if column in ("network", "best peer") else "right")
    for c in sorted(cases, key=lambda c: (-c.ratio, c.network, c.seed))[:count]:
        table.add_row(c.network, str(c.seed), f"{c.ratio:.3f}", f"{c.fixed_ratio:.3f}" if c.fixed_ratio is not None else "-",
                      c.best_peer, f"{c.brain_delay_s:.1f}", f"{c.peer_delay_s:.1f}", f"{c.longest_stop_s:.0f}",
                      str(c.not_inserted))
    return table


@dataclass(frozen=True)
class ControllerSummary:
    controller: str
    runs: int
    median_delay_s: float
    worst_delay_s: float
    longest_stop_s: float
    long_stops: int  # runs with a stop over STOP_LIMIT_S
    not_inserted: int


def controller_summaries(records: list[dict], controllers: list[str]) -> list[ControllerSummary]:
    """Each controller over the corpus, on its own: delay, its longest stops and who never got in."""
    summaries = []
    for name in controllers:
        runs = [r["results"][name] for r in records if name in r["results"]]
        if runs:
            delays = [run["total_delay_s"] for run in runs]
            summaries.append(ControllerSummary(name, len(runs), float(np.median(delays)), max(delays),
                                               max(run["longest_stop_s"] for run in runs),
                                               sum(run["longest_stop_s"] > STOP_LIMIT_S for run in runs),
                                               sum(run["not_inserted"] for run in runs)))
    return summaries


def controller_table(summaries: list[ControllerSummary]) -> Table:
    table = Table(title="each controller over the corpus")
    for column in ("controller", "runs", "median total delay s", "worst total delay s", "longest stop s",
                   f"runs with a stop > {STOP_LIMIT_S:g} s", "not inserted"):
        table.add_column(column, justify="left" if column == "controller" else "right")
    for s in summaries:
        table.add_row(s.controller, str(s.runs), f"{s.median_delay_s:.1f}", f"{s.worst_delay_s:.1f}",
                      f"{s.longest_stop_s:.0f}", str(s.long_stops), str(s.not_inserted))
    return table
