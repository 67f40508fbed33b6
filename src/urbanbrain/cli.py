"""The `urbanbrain` command line: `run` (the brain live on a city) and `bench`."""

from __future__ import annotations

import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from urbanbrain.bench import report
from urbanbrain.bench.runner import RunSpec, run_all
from urbanbrain.bench.session import OBSERVATIONS, CitySession
from urbanbrain.control import CONTROLLERS
from urbanbrain.network import read_network
from urbanbrain.twin.scenario import load_scenario

app = typer.Typer(add_completion=False, no_args_is_help=True, help="urbanbrain: an open-source City Brain.")
console = Console(width=None if sys.stdout.isatty() else 180)


def _controllers(spec: str | None) -> list[str]:
    names = list(CONTROLLERS) if not spec else [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONTROLLERS]
    if unknown:
        raise typer.BadParameter(f"unknown controller(s) {', '.join(unknown)}; choose from {', '.join(CONTROLLERS)}")
    return names


def _load(scenario: str):
    try:
        loaded = load_scenario(scenario)
        return loaded, read_network(loaded.net_file)
    except (FileNotFoundError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--scenario") from None


@app.command()
def bench(
    scenario: Annotated[str, typer.Option(help="a .sumocfg file, or 'demo' for the built-in city")] = "demo",
    controller: Annotated[str | None, typer.Option(help="comma-separated controllers (default: all)")] = None,
    observation: Annotated[str, typer.Option(help="sensors (devices only) or oracle (research only: reads the simulator)")] = "sensors",
    horizon: Annotated[int, typer.Option(min=1, help="simulated seconds from the scenario's begin")] = 3600,
    seed: Annotated[int, typer.Option(help="SUMO's random seed")] = 1,
    json_path: Annotated[Path | None, typer.Option("--json", help="write results as JSON here")] = None,
    plot: Annotated[Path | None, typer.Option(help="write a PNG plot of the KPIs here")] = None,
    explain: Annotated[Path | None, typer.Option(help="write every decision and why as JSON lines here")] = None,
    details: Annotated[Path | None, typer.Option(help="write per-intersection KPIs, estimator error and safety log counts here")] = None,
    jobs: Annotated[int, typer.Option(min=1, help="controllers run at once (wall times are comparable only with 1)")] = 1,
) -> None:
    """Run controllers side by side on one scenario (each in its own simulation and process) and compare KPIs."""
    if observation not in OBSERVATIONS:
        raise typer.BadParameter(f"choose sensors or oracle, not {observation!r}", param_hint="--observation")
    names = _controllers(controller)
    loaded, network = _load(scenario)
    if observation == "oracle":
        console.print("[bold yellow]oracle observation: controllers read the simulator directly — research comparison only[/]")
    results = []
    with tempfile.TemporaryDirectory(prefix="urbanbrain-bench-") as tmp:
        specs = [RunSpec(scenario, name, observation, seed, float(horizon),
                         Path(tmp) / f"{name}.jsonl" if explain else None) for name in names]
        with console.status(f"running {', '.join(names)} on {loaded.name}, each in its own process ..."):
            for spec, result in run_all(specs, jobs):
                console.print(f"  {spec.controller:<12} done: total delay {result.kpis.total_delay_s:.1f} s "
                              f"(wall {result.wall_s:.1f} s)")
                results.append(result)
        if explain:
            with explain.open("w", encoding="utf-8") as out:
                for spec in specs:
                    out.write(spec.explain_path.read_text(encoding="utf-8"))
    record = report.bench_record(loaded.name, horizon, observation, version("eclipse-sumo"), results)
    console.print(report.table(record, results))
    if json_path:
        report.write_json(record, json_path)
    if plot:
        report.plot(record, plot)
    if details:
        report.write_json({r.controller: {"per_intersection": r.per_intersection, "max_queue": r.max_queue, "longest_stop_s": r.longest_stop_s,
                                          "estimator_mae_veh": r.estimator_mae_veh, "safety": r.safety,
                                          "commands": r.commands} for r in results}, details)


@app.command()
def run(
    scenario: Annotated[str, typer.Option(help="a .sumocfg file, or 'demo' for the built-in city")] = "demo",
    controller: Annotated[str, typer.Option(help="the controller the brain runs")] = "maxpressure",
    duration: Annotated[float | None, typer.Option(min=1, help="stop after this many simulated seconds")] = None,
    speed: Annotated[float, typer.Option(min=0, help="simulated seconds per real second (0: as fast as possible)")] = 1.0,
    seed: Annotated[int, typer.Option(help="SUMO's random seed")] = 1,
) -> None:
    """The brain live on a city: the twin plays the devices, the brain controls every signal."""
    _controllers(controller)
    loaded, network = _load(scenario)
    horizon = duration if duration is not None else 24 * 3600.0
    session = CitySession(loaded, network, controller, seed=seed, horizon_s=horizon)
    start = time.monotonic()
    drawn = 0.0
    try:
        session.start()
        with Live(_live_view(session), console=console, refresh_per_second=4) as live:
            while not session.done and session.twin.sumo.simulation.getMinExpectedNumber() > 0:
                session.step()
                if time.monotonic() - drawn >= 0.25:
                    live.update(_live_view(session))
                    drawn = time.monotonic()
                if speed > 0:
                    lag = (session.now - loaded.begin_s) / speed - (time.monotonic() - start)
                    if lag > 0:
                        time.sleep(lag)
            live.update(_live_view(session))
    except KeyboardInterrupt:
        console.print("stopped")
    except BaseException:
        session.close()
        raise
    result = session.finish()
    k = result.kpis
    console.print()
    console.print(f"{loaded.name}: {k.scheduled} vehicles scheduled, {k.throughput} arrived, "
                  f"total delay {k.total_delay_s:.1f} s/veh, travel time {k.att_s:.1f} s")


def _live_view(session: CitySession) -> Table:
    sumo = session.twin.sumo
    in_network = sumo.vehicle.getIDList()
    vehicles = len(in_network)
    delay = sum(sumo.vehicle.getTimeLoss(v) for v in in_network) / vehicles if vehicles else 0.0
    state = session.brain.state if session.brain is not None else session.estimator.state
    clock = time.strftime("%H:%M:%S", time.gmtime(session.now))
    view = Table(title=f"urbanbrain — {session.scenario.name} — {clock} — {vehicles} vehicles in the network "
                       f"— controller {session.controller.name} ({state.source})")
    for column in ("intersection", "phase", "in phase s", "signal", "queue veh", "on approaches veh"):
        view.add_column(column, justify="left" if column in ("intersection", "signal") else "right")
    for intersection in session.network.intersections.values():
        signal = state.signals.get(intersection.id)
        lanes = [state.lanes[lane] for lane in intersection.in_lanes if lane in state.lanes]
        view.add_row(
            intersection.id,
            "change" if signal is None or signal.phase is None else str(signal.phase),
            f"{signal.time_in_phase_s:.0f}" if signal else "-",
            signal.signal_state if signal else "-",
            f"{sum(lane.queue for lane in lanes):.0f}",
            f"{sum(lane.vehicles for lane in lanes):.0f}",
        )
    view.caption = (f"network delay: {delay:.1f} s mean time loss of the vehicles now in the network "
                    "(measured by the twin, not seen by the brain)")
    return view


if __name__ == "__main__":
    app()
