"""Run one controller on one scenario in a process of its own.

libsumo keeps state in the process between simulations: measured, max-pressure on
cologne1 gave 24.7 s on its own and 26.0 s when it followed a `delay_based` run in
the same process. A benchmark must not depend on what ran before it, so every run
gets a fresh interpreter (the `spawn` start method, never `fork`, which would copy
that state).
"""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from urbanbrain.bench.session import CitySession, RunResult
from urbanbrain.network import Network, read_network
from urbanbrain.twin.scenario import Scenario, load_scenario


@dataclass(frozen=True)
class RunSpec:
    scenario: str  # as given to load_scenario: a .sumocfg path, "demo" or "corpus:NAME"
    controller: str
    observation: str = "sensors"
    seed: int = 1
    horizon_s: float = 3600.0
    explain_path: Path | None = None  # decisions as JSON lines, written by the run's process


def run_isolated(spec: RunSpec) -> RunResult:
    """The whole run, in this process; meant to be called in a fresh one (see `run_all`)."""
    scenario = load_scenario(spec.scenario)
    return run_on(spec, scenario, read_network(scenario.net_file))


def run_on(spec: RunSpec, scenario: Scenario, network: Network) -> RunResult:
    """The run of `spec` on a network already read (a research tool may have changed it,
    scripts/plan-probe adds stages), in this process."""
    explain_file = spec.explain_path.open("w", encoding="utf-8") if spec.explain_path else None
    sink = (lambda entry: explain_file.write(json.dumps(entry) + "\n")) if explain_file else None
    try:
        with CitySession(scenario, network, spec.controller, observation=spec.observation, seed=spec.seed,
                         horizon_s=spec.horizon_s, explain=sink,
                         measure_estimator=spec.observation == "sensors") as session:
            session.start()
            while not session.done:
                session.step()
            return session.finish()
    finally:
        if explain_file:
            explain_file.close()


def run_all(specs: list[RunSpec], jobs: int = 1):
    """Yield (spec, result) in the order given, each run in its own fresh process.
    With jobs > 1 runs overlap, which makes their wall times incomparable. When the
    caller stops early (Ctrl-C, an error, or no longer iterating), the runs not
    started yet are dropped: only those under way are waited for."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=context, max_tasks_per_child=1) as pool:
        futures = [pool.submit(run_isolated, spec) for spec in specs]
        try:
            for spec, future in zip(specs, futures):
                yield spec, future.result()
        finally:
            for future in futures:
                future.cancel()
