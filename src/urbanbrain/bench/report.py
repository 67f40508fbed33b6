"""Benchmark output: the comparison table, the JSON record and the plot."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from urbanbrain.bench.session import RunResult

PEERS = ("fixed", "actuated", "delaybased", "maxpressure")


def result_record(result: RunResult) -> dict[str, float | int]:
    k = result.kpis
    return {
        "att_s": round(k.att_s, 2),
        "delay_s": round(k.delay_s, 2),
        "total_delay_s": round(k.total_delay_s, 2),
        "throughput": k.throughput,
        "not_inserted": k.not_inserted,
        "stops": round(k.stops, 3),
        "wall_s": round(result.wall_s, 2),
    }


def bench_record(scenario: str, horizon_s: int, observation: str, sumo_version: str, results: list[RunResult]) -> dict:
    """The JSON document `bench --json` writes, exactly in the published shape."""
    return {
        "scenario": scenario,
        "horizon_s": horizon_s,
        "observation": observation,
        "sumo_version": sumo_version,
        "results": {r.controller: result_record(r) for r in results},
    }


def write_json(record: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def best_peer_delay(results: list[RunResult]) -> float | None:
    delays = [r.kpis.total_delay_s for r in results if r.controller in PEERS]
    return min(delays) if delays else None


def table(record: dict, results: list[RunResult]) -> Table:
    observation = record["observation"]
    title = f"{record['scenario']} — {record['horizon_s']} s, observation: {observation}"
    out = Table(title=title)
    for column in ("controller", "total delay s", "vs best peer", "att s", "delay s", "throughput",
                   "not inserted", "stops/veh", "max queue", "longest stop s", "est. MAE veh/lane", "safety", "wall s"):
        out.add_column(column, justify="left" if column in ("controller", "safety") else "right")
    best = best_peer_delay(results)
    for r in results:
        k = r.kpis
        ratio = f"{k.total_delay_s / best:.2f}" if best else "-"
        mae = f"{r.estimator_mae_veh:.2f}" if r.estimator_mae_veh is not None else "-"
        safety = ", ".join(f"{n} {kind}" for kind, n in sorted(r.safety.items())) or "-"
        out.add_row(r.controller, f"{k.total_delay_s:.1f}", ratio, f"{k.att_s:.1f}", f"{k.delay_s:.1f}",
                    str(k.throughput), str(k.not_inserted), f"{k.stops:.2f}", str(r.max_queue), f"{r.longest_stop_s:.0f}", mae, safety,
                    f"{r.wall_s:.1f}")
    return out


def plot(record: dict, path: Path) -> None:
    """Bars per KPI, one bar per controller."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = record["results"]
    names = list(results)
    keys = ("total_delay_s", "att_s", "delay_s", "throughput", "not_inserted", "stops")
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    colors = plt.get_cmap("tab10").colors
    for ax, key in zip(axes.flat, keys):
        values = [results[n][key] for n in names]
        ax.bar(names, values, color=[colors[i % 10] for i in range(len(names))])
        ax.set_title(key)
        ax.tick_params(axis="x", rotation=30)
        for i, v in enumerate(values):
            ax.annotate(f"{v:.4g}", (i, v), ha="center", va="bottom", fontsize=8)
    fig.suptitle(f"{record['scenario']} — {record['horizon_s']} s, observation {record['observation']}, "
                 f"SUMO {record['sumo_version']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
