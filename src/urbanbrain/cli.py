"""The `urbanbrain` command line: `run` (the brain service), `twin` (a field for it), `keys`, `bench`, `scenario`."""

from __future__ import annotations

import errno
import os
import socket
import sqlite3
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from urllib.parse import quote

import typer
from rich.console import Console

from urbanbrain.bench import report
from urbanbrain.bench.runner import RunSpec, run_all
from urbanbrain.bench.session import OBSERVATIONS
from urbanbrain.control import CONTROLLERS
from urbanbrain.core.clock import DEFAULT_MAX_SKEW_S
from urbanbrain.network import Network, read_network
from urbanbrain.service.outbox import DEFAULT_MAX_BYTES, Outbox
from urbanbrain.twin.scenario import (
    CORPUS_PREFIX,
    Scenario,
    count_demand,
    load_scenario,
)

if TYPE_CHECKING:
    import httpx  # imported where the twin talks to its brain: the other commands do without it

    from urbanbrain.service.field import TwinField

app = typer.Typer(add_completion=False, no_args_is_help=True, help="urbanbrain: an open-source City Brain.")
console = Console(width=None if sys.stdout.isatty() else 180)

KEY_ENV = "URBANBRAIN_KEY"  # where `twin` finds its devices' key when no --key-file is given
EMERGENCY_KEY_ENV = "URBANBRAIN_EMERGENCY_KEY"  # and its emergency vehicles' key, without --emergency-key-file
BRAIN_WAIT_S = 10.0  # `twin`: how long to wait for a brain that does not answer yet (it may be starting)
BRAIN_RETRY_S = 0.5  # between its tries
BRAIN_REQUEST_S = 2.0  # one try's timeout
FLUSH_WAIT_S = 60.0  # `twin`: at the end, how long to go on resending what the brain has not acknowledged
NO_COMMAND_YET = 2**62  # `twin` checks its key on /api/commands after an id no brain has reached: nothing to read


def _controllers(spec: str | None) -> list[str]:
    names = list(CONTROLLERS) if not spec else [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONTROLLERS]
    if unknown:
        raise typer.BadParameter(f"unknown controller(s) {', '.join(unknown)}; choose from {', '.join(CONTROLLERS)}")
    return names


def _load(scenario: str, simulated: bool = True) -> tuple[Scenario, Network]:
    """The scenario and its network, or one line naming the file and what is wrong
    with it (never a parser's traceback). A scenario the brain has nothing to do on
    is refused too: it would run to a table of zeros. `simulated`: SUMO will run it,
    so its demand must be readable and put someone on the roads."""
    try:
        loaded = load_scenario(scenario)
        network = read_network(loaded.net_file)
        demand = count_demand(loaded) if simulated else None
    except (FileNotFoundError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--scenario") from None
    if not network.intersections:
        raise typer.BadParameter(f"network {loaded.net_file} has no signalised intersection (no traffic light "
                                 "with vehicle movements): nothing for the brain to control", param_hint="--scenario")
    if demand == 0:
        files = ", ".join(str(f) for f in loaded.route_files) or "none named"
        also = " or its additional files" if loaded.additional_files else ""
        raise typer.BadParameter(f"scenario {loaded.sumocfg} has no traffic: no vehicle, trip, flow or person in its "
                                 f"route files ({files}){also}", param_hint="--scenario")
    return loaded, network


bench_app = typer.Typer(help="Benchmarks: controllers side by side (default), incidents, emergency vehicles.")
app.add_typer(bench_app, name="bench")


@bench_app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    scenario: Annotated[str, typer.Option(help="a .sumocfg file, 'demo' for the built-in city, or corpus:NAME (`urbanbrain scenario list`)")] = "demo",
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
    if ctx.invoked_subcommand is not None:
        return
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


@bench_app.command("incidents")
def bench_incidents(
    scenario: Annotated[str, typer.Option(help="a .sumocfg file, 'demo' for the built-in city, or corpus:NAME (`urbanbrain scenario list`)")] = "demo",
    count: Annotated[int, typer.Option(min=1, max=500, help="incidents injected across the hour")] = 50,
    seed: Annotated[int, typer.Option(help="seed of the incidents' places and times, and SUMO's")] = 1,
    controller: Annotated[str, typer.Option(help="the controller running the signals meanwhile")] = "brain",
    json_path: Annotated[Path | None, typer.Option("--json", help="write the scores as JSON here")] = None,
    truth: Annotated[Path | None, typer.Option(help="write the ground truth and the alerts as JSON lines here (a folder)")] = None,
) -> None:
    """Inject incidents into a scenario, detect them from device events only, and score the detector."""
    from urbanbrain.incidents.evaluation import run_incidents, write_run
    from urbanbrain.incidents.injection import IncidentError

    _controllers(controller)
    loaded, network = _load(scenario)
    try:
        with console.status(f"{count} incidents on {loaded.name}, detected from device events ..."):
            score, records, alerts = run_incidents(loaded, network, count, seed, controller=controller)
    except IncidentError as exc:
        raise typer.BadParameter(str(exc), param_hint="--count") from None
    result = score.to_json()
    for key, value in result.items():
        console.print(f"  {key:36s} {value if not isinstance(value, float) else round(value, 3)}")
    if json_path:
        report.write_json(result, json_path)
    if truth:
        write_run(truth, records, alerts)


@bench_app.command("emergency")
def bench_emergency(
    scenario: Annotated[str, typer.Option(help="a .sumocfg file, 'demo' for the built-in city, or corpus:NAME (`urbanbrain scenario list`)")] = "demo",
    count: Annotated[int, typer.Option(min=1, max=200, help="emergency vehicles dispatched across the network")] = 10,
    seed: Annotated[int, typer.Option(help="seed of the trips and of SUMO")] = 1,
    controller: Annotated[str, typer.Option(help="the controller running the signals (one the brain runs)")] = "brain",
    horizon: Annotated[float, typer.Option(min=60, max=86400, help="simulated seconds")] = 3600.0,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the report as JSON here")] = None,
    details: Annotated[Path | None, typer.Option(help="write every trip's travel times and every preemption as JSON here")] = None,
) -> None:
    """Dispatch emergency vehicles, run the city with and without their priority (same seed, side by side), compare."""
    from urbanbrain.emergency.evaluation import run_emergency
    from urbanbrain.twin.emergency import SPEED_FACTOR

    _controllers(controller)
    loaded, _ = _load(scenario)
    try:
        with console.status(f"{count} emergency vehicles on {loaded.name}, with and without priority ..."):
            comparison = run_emergency(scenario, count, seed, controller=controller, horizon_s=horizon)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--controller / --count") from None
    result, with_run, without_run = comparison.report, comparison.with_priority, comparison.without_priority
    for key, value in result.items():
        console.print(f"  {key:28s} {value}")
    console.print(f"  mean travel s with / without  {comparison.mean_travel_s[0]:.1f} / {comparison.mean_travel_s[1]:.1f}")
    console.print(f"  floor of the ratio            {comparison.floor_ratio:.3f} (every trip at {SPEED_FACTOR:g} x the limit on "
                  f"its free-flow route, all green, nobody in front: {comparison.free_flow_s:.1f} s)")
    unfinished = sorted(set(with_run.unfinished) | set(without_run.unfinished))
    if unfinished:
        console.print(f"[yellow]not arrived within the horizon (counted up to its end): {', '.join(unfinished)}[/yellow]")
    if json_path:
        report.write_json(result, json_path)
    if details:
        report.write_json({"with_priority": vars(with_run), "without_priority": vars(without_run),
                           "mean_travel_s": comparison.mean_travel_s, "free_flow_s": comparison.free_flow_s,
                           "floor_ratio": comparison.floor_ratio}, details)


@bench_app.command("corpus")
def bench_corpus(
    names: Annotated[str | None, typer.Option(help="comma-separated corpus networks (default: all; see `urbanbrain scenario list`)")] = None,
    seeds: Annotated[str, typer.Option(help="comma-separated SUMO seeds, each run on every network")] = "1,2,3",
    controller: Annotated[str | None, typer.Option(help="comma-separated controllers (default: all)")] = None,
    observation: Annotated[str, typer.Option(help="sensors (devices only) or oracle (research only: reads the simulator)")] = "sensors",
    horizon: Annotated[int, typer.Option(min=1, help="simulated seconds from the scenario's begin")] = 3600,
    jobs: Annotated[int, typer.Option(min=1, help="runs at once, each in its own process")] = 2,
    json_path: Annotated[Path | None, typer.Option("--json", help="append one JSON line per network and seed here; those already in it (same horizon, observation and controllers) are reused, so an interrupted run continues")] = None,
) -> None:
    """Run controllers on every corpus network and seed; the brain's ratios to the best peer and the fixed plan."""
    from urbanbrain.bench import corpus_report
    from urbanbrain.bench.corpus import CORPUS

    if observation not in OBSERVATIONS:
        raise typer.BadParameter(f"choose sensors or oracle, not {observation!r}", param_hint="--observation")
    controllers = _controllers(controller)
    networks = _corpus_names(_split(names)) if names else [spec.name for spec in CORPUS]
    wanted = [(network, seed) for network in networks for seed in _seeds(seeds)]
    records = _reusable_records(json_path, wanted, controllers, horizon, observation)
    pending = [key for key in wanted if key not in records]
    _generate_corpus(sorted({network for network, _ in pending}, key=networks.index))
    specs = [RunSpec(f"{CORPUS_PREFIX}{network}", name, observation, seed, float(horizon))
             for network, seed in pending for name in controllers]
    done: dict[tuple[str, int], list] = {}
    with console.status(f"{len(specs)} runs on {len(pending)} networks x seeds, {jobs} at once, each in its own process ..."):
        for spec, result in run_all(specs, jobs):
            key = (spec.scenario.removeprefix(CORPUS_PREFIX), spec.seed)
            console.print(f"  {key[0]} seed {key[1]} {spec.controller:<12} total delay {result.kpis.total_delay_s:8.2f} s, "
                          f"longest stop {result.longest_stop_s:5.0f} s (wall {result.wall_s:.1f} s)", highlight=False)
            done.setdefault(key, []).append(result)
            if len(done[key]) == len(controllers):
                records[key] = corpus_report.corpus_record(*key, horizon, observation, version("eclipse-sumo"), done.pop(key))
                if json_path:
                    corpus_report.append_record(json_path, records[key])
    chosen = [{**records[key], "results": {name: records[key]["results"][name] for name in controllers}} for key in wanted]
    console.print(corpus_report.controller_table(corpus_report.controller_summaries(chosen, controllers)))
    cases = corpus_report.brain_cases(chosen)
    if cases:
        console.print(corpus_report.ratio_table(cases))
        long_stops = sum(case.longest_stop_s > corpus_report.STOP_LIMIT_S for case in cases)
        console.print(f"brain runs with a vehicle standing over {corpus_report.STOP_LIMIT_S:g} s at a lane head: "
                      f"{long_stops} of {len(cases)}")
        console.print(corpus_report.worst_table(cases))


def _split(values: str) -> list[str]:
    return [value.strip() for value in values.split(",") if value.strip()]


def _seeds(values: str) -> list[int]:
    try:
        seeds = [int(value) for value in _split(values)]
    except ValueError:
        raise typer.BadParameter(f"{values!r}: give whole numbers separated by commas, e.g. 1,2,3", param_hint="--seeds") from None
    if not seeds:
        raise typer.BadParameter("give at least one seed", param_hint="--seeds")
    return seeds


def _reusable_records(path: Path | None, wanted: list[tuple[str, int]], controllers: list[str], horizon: int,
                      observation: str) -> dict[tuple[str, int], dict]:
    """The (network, seed) of `wanted` already in the JSON-lines file with this horizon, observation and
    every controller asked for; the others run (again: their new line replaces the old one)."""
    from urbanbrain.bench.corpus_report import read_records

    if path is None or not path.exists():
        return {}
    try:
        stored, unreadable = read_records(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}", param_hint="--json") from None
    if unreadable:
        console.print(f"[yellow]{unreadable} line(s) of {path} unreadable (a run killed while writing?): their runs "
                      "are done again[/]")
    reused = {key: stored[key] for key in wanted if key in stored and stored[key].get("horizon_s") == horizon
              and stored[key].get("observation") == observation and set(controllers) <= set(stored[key]["results"])}
    if reused:
        console.print(f"reused from {path} ({len(reused)} of {len(wanted)}, not run again): "
                      + ", ".join(f"{network} seed {seed}" for network, seed in reused), highlight=False)
    return reused


@app.command()
def run(
    scenario: Annotated[str, typer.Option(help="a .sumocfg file, 'demo' for the built-in city, or corpus:NAME (`urbanbrain scenario list`)")] = "demo",
    controller: Annotated[str, typer.Option(help="the controller the brain runs")] = "brain",
    port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port")] = 8000,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    data_dir: Annotated[Path | None, typer.Option(help="where the SQLite store and the admin key live (default: a per-user data directory)")] = None,
    db: Annotated[str | None, typer.Option(help="a database URL instead of SQLite, e.g. postgresql://user:pass@host/db")] = None,
    twin: Annotated[bool, typer.Option("--twin/--no-twin", help="play the city's devices with the SUMO twin in-process (--no-twin: real devices only)")] = True,
    speed: Annotated[float, typer.Option(min=0, help="twin: simulated seconds per real second (0: as fast as possible)")] = 1.0,
    duration: Annotated[float | None, typer.Option(min=1, help="twin: stop after this many simulated seconds (the service stays up)")] = None,
    seed: Annotated[int, typer.Option(help="twin: SUMO's random seed")] = 1,
    retention_days: Annotated[float, typer.Option(min=0.01, help="keep device events and decisions this many days (KPI minutes, keys and the audit trail are kept)")] = 30.0,
    failsafe: Annotated[float, typer.Option(min=1, help="twin: a signal controller runs its own plan after this many seconds without a command")] = 10.0,
    webhook: Annotated[list[str] | None, typer.Option(help="POST every alert change here (repeat for several subscribers)")] = None,
    incidents: Annotated[int, typer.Option(min=0, max=500, help="twin: inject this many random incidents (ground truth to DATA_DIR/incidents-truth.jsonl)")] = 0,
    emergency: Annotated[int, typer.Option(min=0, max=200, help="twin: dispatch this many random emergency vehicles over the run (or the first hour); the brain gives them green waves")] = 0,
    webhook_secret: Annotated[str | None, typer.Option(envvar="URBANBRAIN_WEBHOOK_SECRET", help="shared secret that signs webhook bodies (HMAC-SHA256)")] = None,
    clock: Annotated[str | None, typer.Option(help="the brain's reference clock: wall (a live city) or replay (a replayed scenario's time server); default: replay with the in-process twin, wall without")] = None,
    max_skew: Annotated[float, typer.Option(help="seconds a device's event may be ahead of the brain's clock")] = DEFAULT_MAX_SKEW_S,
) -> None:
    """The brain as a service: device API, store, live cockpit; the twin plays the city's devices."""
    from urbanbrain.service.host import HostOptions, serve

    _controllers(controller)
    if webhook and not webhook_secret:
        raise typer.BadParameter("webhooks need a secret to sign with: --webhook-secret or URBANBRAIN_WEBHOOK_SECRET",
                                 param_hint="--webhook-secret")
    try:
        options = HostOptions(scenario=scenario, controller=controller, host=host, port=port, data_dir=data_dir, db=db,
                              twin=twin, speed=speed, seed=seed, duration_s=duration, retention_days=retention_days,
                              failsafe_s=failsafe, webhooks=tuple(webhook or ()), webhook_secret=webhook_secret,
                              incidents=incidents, emergency=emergency, clock=clock, max_skew_s=max_skew)
    except ValueError as exc:
        option, _, why = str(exc).partition(": ")  # HostOptions names the option first
        raise typer.BadParameter(why, param_hint=f"--{option}") from None
    if scenario != "demo":
        _load(scenario, simulated=twin)  # a bad scenario is named before the service starts
    _check_port(host, port)  # before anything is created or printed: the port may be another service's
    serve(options, _announce)


def _announce(url: str, key: str | None, created: bool, where: Path) -> None:
    """The service's address; the admin key itself only when it was just created (a
    key printed on every start ends up in every terminal's scrollback and log)."""
    console.print(f"urbanbrain brain service on [bold]{url}[/] (API docs: {url}/docs), data in {where}")
    kept = where / "admin.key"
    if key is None:
        console.print(f"admin key: not in {kept}; make one with `urbanbrain keys create NAME --role admin`")
    elif created:
        console.print(f"new admin key: [bold]{key}[/] (kept in {kept})")
        console.print(f"open the cockpit: [bold]{url}/#key={key}[/]")
    else:
        console.print(f"admin key: kept in {kept}")
        console.print(f"open the cockpit: [bold]{url}/[/] and sign in with that key")
    console.print("Ctrl-C stops the service")


def _check_port(host: str, port: int) -> None:
    """Refuse a host:port this machine cannot listen on, by binding each of its
    addresses as the server will (asyncio's: SO_REUSEADDR on POSIX, IPv6 sockets
    IPv6-only) and letting go, so that a taken port is named before a data directory,
    a key or an address that is another service's are."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise typer.BadParameter(f"cannot listen on {host!r}: {exc.strerror}", param_hint="--host") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            if os.name == "posix":
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise typer.BadParameter(f"port {port} on {host} is in use: another program listens there; "
                                             "choose another with --port", param_hint="--port") from None
                raise typer.BadParameter(f"cannot listen on port {port} on {host}: {exc.strerror}",
                                         param_hint="--port / --host") from None


@app.command("twin")
def twin_field(
    brain: Annotated[str, typer.Option(help="the brain service's URL, e.g. http://127.0.0.1:8000")],
    key_file: Annotated[Path | None, typer.Option(help=f"a file holding the device key for the twin's devices (else the {KEY_ENV} environment variable; never on the command line, where `ps` shows it)")] = None,
    scenario: Annotated[str, typer.Option(help="a .sumocfg file, 'demo' for the built-in city, or corpus:NAME (`urbanbrain scenario list`)")] = "demo",
    speed: Annotated[float, typer.Option(min=0, help="simulated seconds per real second (0: as fast as possible)")] = 1.0,
    duration: Annotated[float | None, typer.Option(min=1, help="stop after this many simulated seconds")] = None,
    seed: Annotated[int, typer.Option(help="SUMO's random seed")] = 1,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the run's KPIs (measured in SUMO) as JSON here")] = None,
    failsafe: Annotated[float, typer.Option(min=1, help="a signal controller runs its own plan after this many seconds without a command")] = 10.0,
    emergency: Annotated[int, typer.Option(min=0, max=200, help=f"dispatch this many random emergency vehicles over the run (or the first hour); they report to the brain and follow the routes it plans, with an emergency key (--emergency-key-file or {EMERGENCY_KEY_ENV})")] = 0,
    emergency_key_file: Annotated[Path | None, typer.Option(help=f"with --emergency: a file holding the emergency key the vehicles report and read their routes with (else {EMERGENCY_KEY_ENV})")] = None,
    brain_wait: Annotated[float, typer.Option(min=0, help="seconds to wait for a brain that does not answer yet before giving up")] = BRAIN_WAIT_S,
    buffer: Annotated[Path | None, typer.Option(help="a folder that keeps, for inspection after the run, the field's outbox.db (events the brain has not acknowledged) and rejected.jsonl (what the brain refused, with its reasons); its outbox must hold no events of an earlier run, which no brain replaying this one can take; default: a temporary folder")] = None,
    buffer_mb: Annotated[float, typer.Option(min=1, help="the outbox's bound on disk; past it the oldest events go first, counted")] = DEFAULT_MAX_BYTES / 2**20,
    flush_wait: Annotated[float, typer.Option(min=0, help="at the end, seconds to go on resending what the brain has not acknowledged")] = FLUSH_WAIT_S,
) -> None:
    """The twin as a separate field: its devices post events to a brain over HTTP and apply its commands.

    Nothing the brain does stops it: while the brain is away or refuses, the signal
    controllers run their own plans, events wait in the outbox on disk and are resent
    in order when it answers again; events it refuses are set aside with its reasons.
    The brain must be a replay brain that has followed no other run yet."""
    from dataclasses import asdict

    from urbanbrain.kpi.metrics import trip_kpis
    from urbanbrain.service.field import TwinField
    from urbanbrain.service.transports import http_routes, http_transport
    from urbanbrain.twin.emergency import random_trips

    key = _read_key(key_file, KEY_ENV, "--key-file", "a device key for its devices")
    fleet_key = (_read_key(emergency_key_file, EMERGENCY_KEY_ENV, "--emergency-key-file",
                           "an emergency key for its emergency vehicles") if emergency else None)
    loaded, network = _load(scenario)
    trips = None
    if emergency:  # seeded like `run --emergency`: the same vehicles for the same scenario, seed and duration
        try:
            trips = random_trips(network, emergency, seed=seed, begin_s=loaded.begin_s, horizon_s=duration or 3600.0)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--emergency") from None
    outbox = _outbox(buffer, buffer_mb)
    _check_brain(brain, key, brain_wait, loaded.begin_s, fleet=(fleet_key, trips[0].vehicle) if trips else None)
    with tempfile.TemporaryDirectory(prefix="urbanbrain-twin-") as tmp:
        tripinfo = Path(tmp) / "tripinfo.xml"
        field = TwinField(loaded, network, http_transport(brain, key), seed=seed, speed=speed, horizon_s=duration,
                          tripinfo_path=tripinfo, failsafe_s=failsafe, emergency=trips,
                          routes=http_routes(brain, fleet_key) if trips else None,
                          priority_send=http_transport(brain, fleet_key) if trips else None,
                          outbox=outbox, say=lambda message: console.print(message, highlight=False))
        console.print(f"twin of {loaded.name}: its devices post to {brain}"
                      + (f"; {emergency} emergency vehicles read their routes from it" if trips else ""))
        try:
            field.run()
            field.flush(flush_wait)
        except KeyboardInterrupt:
            console.print("stopped")
        _report_field(field, buffer, flush_wait)
        field.close()
        kpis = trip_kpis(tripinfo, field.twin.now)
    console.print(f"{loaded.name}: {kpis.scheduled} vehicles scheduled, {kpis.throughput} arrived, "
                  f"total delay {kpis.total_delay_s:.1f} s/veh, travel time {kpis.att_s:.1f} s (measured in SUMO)")
    vehicles = []
    for trip in trips or []:
        record = field.fleet.records.get(trip.vehicle)
        vehicles.append({"vehicle": trip.vehicle, "service": trip.service, "dispatch_s": trip.dispatch_s,
                         "arrived_s": record.arrived_s if record else None, "routes_followed": record.advice if record else 0})
        state = ("not dispatched" if record is None else "en route" if record.arrived_s is None
                 else f"arrived after {record.travel_s(field.twin.now):.0f} s")
        console.print(f"{trip.vehicle} ({trip.service}): {state}, followed {vehicles[-1]['routes_followed']} "
                      "route(s) from the brain")
    if json_path:
        report.write_json({"scenario": loaded.name, "until_s": field.twin.now, "brain": brain, "kpis": asdict(kpis),
                           **({"emergency": vehicles} if trips else {})}, json_path)


def _outbox(folder: Path | None, bound_mb: float) -> Outbox:
    """The field's outbox: in `folder` (made if need be), kept there after the run for
    inspection; else temporary. An outbox still holding events is refused: they belong
    to an earlier run, and a replay brain judges events on the clock of the run it
    follows (one that followed that run has moved past this one's start; a fresh one
    has never seen it)."""
    if folder is None:
        return Outbox(max_bytes=int(bound_mb * 2**20))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        outbox = Outbox(folder / "outbox.db", max_bytes=int(bound_mb * 2**20))
    except (OSError, sqlite3.Error) as exc:
        raise typer.BadParameter(f"cannot keep the field's outbox in {folder}: {exc}", param_hint="--buffer") from None
    if outbox.count:
        waiting = outbox.count
        outbox.close()
        raise _fail(f"{outbox.path} holds {waiting} events an earlier run did not deliver, which no brain replaying "
                    "this run can take: move the file away (to keep it) or delete it, or give another --buffer")
    return outbox


def _report_field(field: TwinField, buffer: Path | None, flush_wait: float) -> None:
    """What the field could not do for the brain, at the end of a run."""
    if field.backlog.count:
        console.print(f"[yellow]{field.backlog.count} events not acknowledged by the brain after {flush_wait:g} s"
                      + (f": kept in {field.backlog.path} for inspection (move it away before the next run with "
                         f"--buffer {buffer})[/]" if buffer else " (lost with the temporary outbox: give --buffer to "
                                                                 "keep them for inspection)[/]"))
    if field.backlog.dropped:
        console.print(f"[yellow]{field.backlog.dropped} events dropped: past the outbox's bound, or refused by its "
                      f"disk{f' ({field.backlog.error})' if field.backlog.error else ''}[/]")
    if field.rejected and not buffer:
        console.print(f"[yellow]{field.rejected} events refused by the brain (give --buffer to keep them with its "
                      "reasons)[/]")
    elif field.rejected:
        unwritten = field.rejects.unwritten
        console.print(f"[yellow]{field.rejected} events refused by the brain: with its reasons in {field.rejects.path}"
                      + (f", but for {unwritten} ({field.rejects.error})" if unwritten else "") + "[/]")
    if field.bad_commands or field.bad_advice:
        console.print(f"[yellow]{field.bad_commands} commands and {field.bad_advice} route advice from the brain "
                      "that the field could not carry out, skipped[/]")


def _read_key(key_file: Path | None, env: str, option: str, what: str) -> str:
    """A key from its file (whitespace stripped) or else the environment: a key given
    as an argument would be readable by every user of the machine in `ps`."""
    if key_file is None:
        key = os.environ.get(env, "").strip()
        if not key:
            raise typer.BadParameter(f"the twin needs {what}: put it in a file and give {option} PATH, or set {env}",
                                     param_hint=option)
        return key
    try:
        key = key_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"cannot read the key from {key_file}: {getattr(exc, 'strerror', None) or exc}",
                                 param_hint=option) from None
    if not key:
        raise typer.BadParameter(f"{key_file} is empty: it should hold {what}", param_hint=option)
    return key


def _fail(message: str) -> typer.Exit:
    """Say what is wrong on stderr, in one line, and exit with 1 (not a usage error)."""
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


def _check_brain(brain: str, key: str, wait_s: float, begin_s: float, fleet: tuple[str, str] | None = None) -> None:
    """Before the simulation starts: the brain answers (within `wait_s`: it may be
    starting), follows a replay's clock not yet past the scenario's `begin_s`, takes
    `key` for device events and, with `fleet` (the emergency key and one of its
    vehicles), that key for the vehicle's route; so a wrong URL, brain or key is one
    clear line at once, not minutes of silence, refusals or a traceback mid-run."""
    import httpx

    url = brain.rstrip("/")
    try:
        with httpx.Client(base_url=url, timeout=BRAIN_REQUEST_S) as client:
            clock = _await_health(client, url, wait_s).get("clock") or {}
            if clock.get("mode") == "wall":
                raise _fail(f"the brain at {url} keeps the wall clock of a live city, and the twin replays a scenario "
                            "on a clock of its own: start the brain with `urbanbrain run --no-twin --clock replay`")
            at = clock.get("time")
            if isinstance(at, (int, float)) and at > begin_s:
                raise _fail(f"the brain at {url} has followed a replay to t={at:g}, past this scenario's start "
                            f"(t={begin_s:g}), and its clock never runs backwards: start it again for this run")
            _check_key(client, url, "/api/commands?after=" + str(NO_COMMAND_YET), key,
                       "this key", "post device events")
            if fleet is not None:
                fleet_key, vehicle = fleet
                _check_key(client, url, f"/api/emergency/{quote(vehicle, safe='')}/route", fleet_key,
                           "the emergency key", f"report for emergency vehicle {vehicle} or read its route")
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise typer.BadParameter(f"{brain!r} is not a brain's URL ({exc}); e.g. http://127.0.0.1:8000",
                                 param_hint="--brain") from None


def _await_health(client: httpx.Client, url: str, wait_s: float) -> dict:
    """GET /health until it answers, for at most `wait_s` seconds; its answer."""
    import httpx

    deadline = time.monotonic() + wait_s
    while True:
        try:
            response = client.get("/health")
            health = _health(response)
            if health is not None:
                return health
            why = f"/health answers {response.status_code}" + (" with no brain's health" if response.is_success else "")
            if response.status_code < 500:  # something answers, but not a brain: waiting will not change that
                raise _fail(f"{url} is not an urbanbrain brain service ({why})")
        except httpx.UnsupportedProtocol:
            raise  # no brain has such a URL: _check_brain names it
        except httpx.TransportError as exc:
            why = str(exc) or type(exc).__name__
        if time.monotonic() + BRAIN_RETRY_S > deadline:
            raise _fail(f"the brain at {url} does not answer ({why}) after {wait_s:g} s: is `urbanbrain run` "
                        "started there, and is the address right?")
        time.sleep(BRAIN_RETRY_S)


def _health(response: httpx.Response) -> dict | None:
    """A brain's /health answer (a JSON object, its clock one too), None if this is none."""
    if response.status_code != 200:
        return None
    try:
        health = response.json()
    except (ValueError, RecursionError):
        return None
    return health if isinstance(health, dict) and isinstance(health.get("clock") or {}, dict) else None


def _check_key(client: httpx.Client, url: str, path: str, key: str, whose: str, what: str) -> None:
    """GET `path` with `key`: a 401 or 403 now would stop the field at its first batch
    (what the answer holds does not matter: a city not loaded yet, 503, or no route yet,
    404, says the key passed)."""
    import httpx

    from urbanbrain.service.transports import error_list

    try:
        response = client.get(path, headers={"X-API-Key": key})
    except httpx.TransportError as exc:
        raise _fail(f"the brain at {url} stopped answering ({exc})") from None
    if response.status_code == 401:
        raise _fail(f"the brain at {url} refuses {whose} (401): it is unknown or revoked; make one with "
                    "`urbanbrain keys create NAME --role device|emergency --device ...`")
    if response.status_code == 403:
        reasons = "; ".join(str(e.get("error")) for e in error_list(response))
        raise _fail(f"{whose} may not {what} at the brain at {url} (403: {reasons})")


def _corpus_names(names: list[str]) -> list[str]:
    """The corpus networks named, in the corpus's order; an unknown name is refused, named."""
    from urbanbrain.bench.corpus import UnknownCorpusNetwork, corpus_spec

    try:
        return [corpus_spec(name).name for name in names]
    except UnknownCorpusNetwork as exc:
        raise typer.BadParameter(str(exc)) from None


def _generate_corpus(names: list[str], folder: Path | None = None, force: bool = False) -> dict[str, Path]:
    """Each network's .sumocfg, generating (with the probe of its saturation) those not cached yet."""
    from urbanbrain.bench.corpus import build_corpus_scenario, is_generated

    configs = {}
    for name in names:
        if not force and is_generated(name, folder):
            configs[name] = build_corpus_scenario(name, folder)
            continue
        started = time.perf_counter()
        with console.status(f"generating {name} (network, then its saturation probed under the fixed plan) ..."):
            configs[name] = build_corpus_scenario(name, folder, force)
        console.print(f"  generated {name} in {time.perf_counter() - started:.1f} s")
    return configs


scenario_app = typer.Typer(no_args_is_help=True, help="The stress corpus: generated networks of many shapes (corpus:NAME).")
app.add_typer(scenario_app, name="scenario")


@scenario_app.command("list")
def scenario_list(
    out: Annotated[Path | None, typer.Option(help="the folder they were generated into (default: the cache beside the demo city)")] = None,
) -> None:
    """Every corpus network: its shape, and for those generated already, its signals, short links and demand."""
    from rich.table import Table

    from urbanbrain.bench.corpus import CORPUS, SHORT_LINK_M, cached_summary

    table = Table("name", "description", "signals", "unsignalised", f"links ≤ {SHORT_LINK_M:g} m (shortest m)",
                  "demand level", "vehicles")
    missing = 0
    for spec in CORPUS:
        summary = cached_summary(spec.name, out)
        missing += summary is None
        junctions = (str(summary["signals"]), str(summary["unsignalised"]),
                     f"{summary['short_links']} ({summary['shortest_link_m']:g})") if summary else ("-", "-", "-")
        table.add_row(spec.name, spec.describe(), *junctions, f"{spec.level:.2f}x saturation",
                      str(summary["vehicles"]) if summary else "-")
    console.print(table)
    if missing:
        console.print(f"{missing} of {len(CORPUS)} not generated yet (- above): `urbanbrain scenario generate --all` "
                      "generates them (a few seconds to a minute each)")


@scenario_app.command("generate")
def scenario_generate(
    names: Annotated[list[str] | None, typer.Argument(help="corpus networks (see `urbanbrain scenario list`)")] = None,
    all_: Annotated[bool, typer.Option("--all", help="every corpus network")] = False,
    out: Annotated[Path | None, typer.Option(help="generate into this folder (default: the cache beside the demo city)")] = None,
    force: Annotated[bool, typer.Option(help="generate again even where cached")] = False,
) -> None:
    """Generate corpus networks (or find them cached) and print their .sumocfg files."""
    from urbanbrain.bench.corpus import CORPUS

    if not names and not all_:
        raise typer.BadParameter("name the networks, or give --all", param_hint="NAMES")
    chosen = [spec.name for spec in CORPUS] if all_ else _corpus_names(names or [])
    for config in _generate_corpus(chosen, out, force).values():
        console.print(str(config), highlight=False, soft_wrap=True)


incidents_app = typer.Typer(no_args_is_help=True, help="Incidents injected into the twin (ground truth kept apart).")
app.add_typer(incidents_app, name="incidents")


def _parse_incident(spec: str, begin_s: float, index: int):
    """KIND,EDGE,LANES,POSITION_M,START_S,DURATION_S — e.g. crash,A0B0,0+1,120,600,900 (START from the scenario's begin)."""
    from urbanbrain.incidents.injection import Incident

    parts = spec.split(",")
    if len(parts) != 6:
        raise typer.BadParameter(f"{spec!r}: expected KIND,EDGE,LANES,POSITION_M,START_S,DURATION_S "
                                 "(e.g. crash,A0B0,0+1,120,600,900)", param_hint="--at")
    kind, edge, lanes, position, start, duration = parts
    try:
        return Incident(f"inc{index}", kind, edge, tuple(int(x) for x in lanes.split("+")), float(position),
                        begin_s + float(start), float(duration))
    except ValueError as exc:
        raise typer.BadParameter(f"{spec!r}: {exc}", param_hint="--at") from None


@incidents_app.command("simulate")
def incidents_simulate(
    scenario: Annotated[str, typer.Option(help="a .sumocfg file, 'demo' for the built-in city, or corpus:NAME (`urbanbrain scenario list`)")] = "demo",
    at: Annotated[list[str] | None, typer.Option(help="an incident KIND,EDGE,LANES,POSITION_M,START_S,DURATION_S (repeat); KIND stalled_vehicle or crash, LANES like 0 or 0+1")] = None,
    count: Annotated[int, typer.Option(min=0, max=500, help="random incidents (besides those given with --at)")] = 0,
    seed: Annotated[int, typer.Option(help="seed of the random incidents and of SUMO")] = 1,
    horizon: Annotated[int, typer.Option(min=60, help="simulated seconds")] = 3600,
    controller: Annotated[str, typer.Option(help="the controller running the signals")] = "brain",
    out: Annotated[Path, typer.Option(help="folder for truth.jsonl (ground truth) and alerts.jsonl (what the detector found)")] = Path("incidents"),
) -> None:
    """Run a scenario with incidents; the ground truth goes to its own file, never to the devices or the detector."""
    from urbanbrain.incidents.evaluation import run_incidents, write_run
    from urbanbrain.incidents.injection import IncidentError, random_incidents

    _controllers(controller)
    loaded, network = _load(scenario)
    try:
        chosen = [_parse_incident(spec, loaded.begin_s, k + 1) for k, spec in enumerate(at or [])]
        chosen += [i.__class__(f"inc{len(chosen) + k + 1}", i.kind, i.edge, i.lanes, i.position_m, i.start_s, i.duration_s)
                   for k, i in enumerate(random_incidents(network, count, seed=seed, begin_s=loaded.begin_s,
                                                          horizon_s=float(horizon)) if count else [])]
        if not chosen:
            raise typer.BadParameter("no incident: give --at or --count", param_hint="--at")
        with console.status(f"{len(chosen)} incidents on {loaded.name} ..."):
            score, records, alerts = run_incidents(loaded, network, 0, seed, controller=controller,
                                                   horizon_s=float(horizon), incidents=chosen)
    except IncidentError as exc:
        raise typer.BadParameter(str(exc), param_hint="--at") from None
    write_run(out, records, alerts)
    for record in records:
        i = record.incident
        console.print(f"  {i.id:6s} {i.kind:15s} {i.edge}:{'+'.join(map(str, i.lanes))} at {i.position_m:.0f} m, "
                      f"blocked {record.blocked_from} → {record.cleared_at}")
    console.print(f"{len(alerts)} alerts; detected {score.detected} of {score.happened}; truth and alerts in {out}")


keys_app = typer.Typer(no_args_is_help=True, help="API keys of the brain service (run where its data directory is).")
app.add_typer(keys_app, name="keys")
DataDir = Annotated[Path | None, typer.Option(help="the service's data directory (default: the per-user one)")]
Db = Annotated[str | None, typer.Option(help="the service's database URL, if not the SQLite file in the data directory")]


def _store(data_dir: Path | None, db: str | None):
    from urbanbrain.service.host import default_data_dir, open_store

    return open_store(data_dir or default_data_dir(), db)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="a name for the key (who or what holds it)")],
    role: Annotated[str, typer.Option(help="device, emergency, viewer, operator or admin")] = "viewer",
    device: Annotated[list[str] | None, typer.Option(help="device and emergency keys: a device id it may speak for (repeat; a trailing * matches a prefix)")] = None,
    data_dir: DataDir = None,
    db: Db = None,
) -> None:
    """Make a key; it is printed once and only its hash is stored."""
    from urbanbrain.service.keys import KeyError_, create_key

    store = _store(data_dir, db)
    try:
        key = create_key(store, name, role, device)
    except KeyError_ as exc:
        raise typer.BadParameter(str(exc)) from None
    store.add_audit("command line", "admin", "create key", name, {"role": role, "devices": device or []})
    console.print(f"key {name} ({role}): [bold]{key}[/] — shown once, keep it safe")


@keys_app.command("list")
def keys_list(data_dir: DataDir = None, db: Db = None) -> None:
    """The keys, their roles and devices (never the keys themselves)."""
    from rich.table import Table

    table = Table("name", "role", "starts with", "devices", "created", "revoked")
    for key in _store(data_dir, db).keys():
        table.add_row(key["name"], key["role"], key["prefix"] + "…", ", ".join(key["devices"]),
                      f"{key['created_at']:%Y-%m-%d %H:%M}", f"{key['revoked_at']:%Y-%m-%d %H:%M}" if key["revoked_at"] else "")
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(name: Annotated[str, typer.Argument(help="the key's name")], data_dir: DataDir = None, db: Db = None) -> None:
    """Revoke a key: it stops working at once, also for a running service."""
    from urbanbrain.service.keys import KeyNotFound, LastAdmin, revoke_key

    store = _store(data_dir, db)
    try:
        revoke_key(store, name)
    except (KeyNotFound, LastAdmin) as exc:
        raise typer.BadParameter(str(exc)) from None
    store.add_audit("command line", "admin", "revoke key", name, {})
    console.print(f"key {name} revoked")


if __name__ == "__main__":
    app()
