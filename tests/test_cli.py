"""The command line, as a user runs it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import netgenerate, scenario_cfg

QUICK_S = 60  # a refusal comes at once; the old code ran on (or waited for a brain) well past this
WIDE = {"COLUMNS": "400"}  # the error panel wraps at the terminal's width, mid-path; a wide one keeps a message whole


def urbanbrain(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """The command in a process of its own; a URBANBRAIN_KEY of whoever runs the tests is not passed on."""
    environment = {k: v for k, v in os.environ.items() if k != "URBANBRAIN_KEY"}
    return subprocess.run([sys.executable, "-m", "urbanbrain.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**environment, **WIDE, **(env or {})})


def said(out: subprocess.CompletedProcess) -> str:
    """Everything the command printed, as one line: the error panel wraps long messages."""
    return " ".join((out.stdout + out.stderr).replace("│", " ").split())


def refused(out: subprocess.CompletedProcess, *words: str) -> bool:
    """A clean refusal: a non-zero exit, no traceback, every word said."""
    text = said(out)
    return out.returncode != 0 and "Traceback" not in text and all(w in text for w in words)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def sumocfg(folder: Path, net: Path, routes: str | None = "<routes/>", name: str = "city") -> Path:
    """A .sumocfg for `net`, with a route file holding `routes` (None: a route file that is not there)."""
    if routes is not None:
        (folder / f"{name}.rou.xml").write_text(routes)
    cfg = folder / f"{name}.sumocfg"
    cfg.write_text(f'<configuration><input><net-file value="{net}"/><route-files value="{name}.rou.xml"/></input>'
                   '</configuration>')
    return cfg


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
    out = urbanbrain("twin", "--brain", "http://127.0.0.1:9", "--emergency", "-1")
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


# -- broken input: one line naming the file, never a traceback ------------------------------------

BROKEN_NETWORKS = {  # what the file holds -> what the refusal says
    "garbage": ("this is not XML at all", "is not XML"),
    "empty": ("", "is empty"),
    "not_a_network": ('<routes><vehicle id="v" depart="0"/></routes>', "is not a SUMO network"),
}
COMMANDS = (("bench",), ("bench", "incidents"), ("bench", "emergency"), ("incidents", "simulate"), ("run",), ("twin",))


def invoke(*args: str, env: dict[str, str] | None = None):
    """The command in this process (fast: no interpreter to start), as a user would type it."""
    from typer.testing import CliRunner

    from urbanbrain.cli import app

    return CliRunner().invoke(app, list(args), env={"URBANBRAIN_KEY": "ub_test", **WIDE, **(env or {})})


def cleanly_refused(result, *words: str) -> bool:
    """Exit 2 with every word said, and no exception but the exit itself."""
    text = " ".join(result.output.replace("│", " ").split())
    return result.exit_code == 2 and isinstance(result.exception, SystemExit) and all(w in text for w in words)


def test_broken_networks_and_scenarios_are_named_in_one_line_by_every_command(tmp_path: Path, grid_net: Path):
    cases: dict[str, tuple[Path, str]] = {}
    for name, (text, why) in BROKEN_NETWORKS.items():
        (tmp_path / f"{name}.net.xml").write_text(text)
        cases[name] = (sumocfg(tmp_path, tmp_path / f"{name}.net.xml", name=name), why)
    net = grid_net.read_text()
    (tmp_path / "truncated.net.xml").write_text(net[:len(net) // 2])
    cases["truncated"] = (sumocfg(tmp_path, tmp_path / "truncated.net.xml", name="truncated"), "not well-formed XML")
    cases["missing_net"] = (sumocfg(tmp_path, tmp_path / "gone.net.xml", name="missing_net"), "gone.net.xml, which is not there")
    cases["missing_routes"] = (sumocfg(tmp_path, grid_net, routes=None, name="missing_routes"),
                               "missing_routes.rou.xml, which is not there")
    (tmp_path / "cut.sumocfg").write_text("<configuration><input><net-file")
    cases["truncated_sumocfg"] = (tmp_path / "cut.sumocfg", "cut.sumocfg is not valid XML")
    cases["network_as_scenario"] = (grid_net, "is a SUMO network, not a scenario")
    for name, (cfg, why) in cases.items():
        result = invoke("bench", "--scenario", str(cfg), "--controller", "fixed", "--horizon", "60")
        assert cleanly_refused(result, why), (name, result.output, result.exception)
    cfg, why = cases["truncated"]
    needs = {("twin",): ("--brain", "http://127.0.0.1:9"), ("run",): ("--data-dir", str(tmp_path / "data"))}
    for command in COMMANDS:
        result = invoke(*command, "--scenario", str(cfg), *needs.get(command, ()))
        assert cleanly_refused(result, "truncated.net.xml", why), (command, result.output, result.exception)
    assert not (tmp_path / "data").exists()


# -- a scenario with nothing to benchmark --------------------------------------------------------

def test_bench_refuses_a_scenario_without_signals_or_without_traffic(tmp_path: Path, grid_net: Path):
    no_signals = netgenerate(tmp_path / "priority.net.xml", "--grid", "--grid.number", "2", "--grid.length", "150",
                             "--grid.attach-length", "150", "--no-turnarounds")
    out = urbanbrain("bench", "--scenario", str(sumocfg(tmp_path, no_signals, name="nosignals")),
                     "--controller", "fixed", "--horizon", "60", timeout=QUICK_S)
    assert refused(out, "priority.net.xml", "no signalised intersection"), out.stdout + out.stderr
    assert "total delay" not in out.stdout, "no table of zeros"
    out = urbanbrain("bench", "--scenario", str(sumocfg(tmp_path, grid_net, routes="<routes/>", name="empty")),
                     "--controller", "fixed", "--horizon", "60", timeout=QUICK_S)
    assert refused(out, "empty.sumocfg", "has no traffic", "empty.rou.xml"), out.stdout + out.stderr
    assert "total delay" not in out.stdout, "no table of zeros"


# -- the twin checks its brain and key before it starts ------------------------------------------

@pytest.fixture
def brain(tmp_path: Path) -> Iterator[tuple[str, object]]:
    """A real brain service's API (no city loaded) on a free port, in a thread: (url, store)."""
    import uvicorn

    from urbanbrain.service.app import ServiceState, create_app
    from urbanbrain.store import Store

    store = Store(f"sqlite+pysqlite:///{tmp_path / 'brain.db'}")
    store.migrate()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(ServiceState(store)), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", store
    server.should_exit = True
    thread.join(timeout=10)
    store.close()


def test_twin_checks_the_brain_and_its_key_before_it_starts(grid_city: Path, brain):
    from urbanbrain.service.keys import create_key

    url, store = brain
    out = urbanbrain("twin", "--brain", url, "--scenario", str(grid_city), env={"URBANBRAIN_KEY": "ub_unknown"},
                     timeout=QUICK_S)
    assert refused(out, url, "refuses this key"), out.stdout + out.stderr
    viewer = create_key(store, "screen", "viewer")
    out = urbanbrain("twin", "--brain", url, "--scenario", str(grid_city), env={"URBANBRAIN_KEY": viewer},
                     timeout=QUICK_S)
    assert refused(out, "may not post device events", "viewer"), out.stdout + out.stderr
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    out = urbanbrain("twin", "--brain", closed, "--scenario", str(grid_city), "--brain-wait", "1",
                     env={"URBANBRAIN_KEY": "ub_whatever"}, timeout=QUICK_S)
    assert refused(out, closed, "does not answer"), out.stdout + out.stderr
    assert time.monotonic() - started < 15, "a bounded wait"


def test_twin_takes_its_key_from_a_file_or_the_environment_never_the_command_line(tmp_path: Path, grid_city: Path,
                                                                                   brain):
    from urbanbrain.service.keys import create_key

    url, store = brain
    twin = ("twin", "--brain", url, "--scenario", str(grid_city))
    out = urbanbrain(*twin, timeout=QUICK_S)
    assert refused(out, "--key-file", "URBANBRAIN_KEY"), out.stdout + out.stderr
    out = urbanbrain(*twin, "--emergency", "1", env={"URBANBRAIN_KEY": "ub_device"}, timeout=QUICK_S)
    assert refused(out, "emergency key", "--emergency-key-file", "URBANBRAIN_EMERGENCY_KEY"), out.stdout + out.stderr
    out = urbanbrain(*twin, "--key", "ub_secret", timeout=QUICK_S)
    assert out.returncode == 2 and "No such option" in said(out), "a key on the command line shows in `ps`"
    out = urbanbrain(*twin, "--key-file", str(tmp_path / "nowhere.key"), timeout=QUICK_S)
    assert refused(out, "nowhere.key"), out.stdout + out.stderr
    (tmp_path / "empty.key").write_text("\n")
    out = urbanbrain(*twin, "--key-file", str(tmp_path / "empty.key"), timeout=QUICK_S)
    assert refused(out, "empty.key", "is empty"), out.stdout + out.stderr
    key_file = tmp_path / "viewer.key"
    key_file.write_text(f"  {create_key(store, 'screen', 'viewer')}\n")  # a key file as an editor leaves it
    out = urbanbrain(*twin, "--key-file", str(key_file), timeout=QUICK_S)
    assert refused(out, "may not post device events", "viewer"), "the file's key reached the brain, stripped"


# -- run: a taken port, and the admin key printed once --------------------------------------------

def test_run_refuses_a_taken_port_before_it_creates_or_prints_anything(tmp_path: Path):
    with socket.socket() as other_service:
        other_service.bind(("127.0.0.1", 0))
        other_service.listen()
        port = other_service.getsockname()[1]
        out = urbanbrain("run", "--no-twin", "--port", str(port), "--data-dir", str(tmp_path / "data"), timeout=QUICK_S)
    assert refused(out, f"port {port} on 127.0.0.1 is in use", "--port"), out.stdout + out.stderr
    assert not (tmp_path / "data").exists() and "key" not in out.stdout and "http://" not in out.stdout


def start_brain(data: Path, port: int, scenario: Path) -> str:
    """`urbanbrain run --no-twin` until its /health answers, then Ctrl-C: what it printed."""
    import signal

    import httpx

    process = subprocess.Popen([sys.executable, "-m", "urbanbrain.cli", "run", "--no-twin", "--scenario", str(scenario),
                                "--port", str(port), "--data-dir", str(data)], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + QUICK_S
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=QUICK_S)
    return out


def test_run_prints_the_admin_key_only_when_it_creates_it(tmp_path: Path, grid_city: Path):
    port = free_port()
    first = start_brain(tmp_path, port, grid_city)
    key = (tmp_path / "admin.key").read_text().strip()
    assert key in first and f"/#key={key}" in first, first
    again = start_brain(tmp_path, port, grid_city)
    assert key not in again and "#key=" not in again, again
    assert str(tmp_path / "admin.key") in again.replace("\n", "") and f"http://127.0.0.1:{port}" in again, again
