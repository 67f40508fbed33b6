"""The service as a user starts it: `urbanbrain run` with the in-process twin, and
`urbanbrain twin` as a separate process posting to a brain over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from urbanbrain.bench.session import CitySession
from urbanbrain.network import read_network
from urbanbrain.twin.scenario import load_scenario

CLI = [sys.executable, "-m", "urbanbrain.cli"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str, until, timeout_s: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(url, timeout=2).json()
            if until(last):
                return last
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not reach the expected state in {timeout_s} s; last answer {last}")


def start_service(data: Path, port: int, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*CLI, "run", "--data-dir", str(data), "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(process: subprocess.Popen) -> tuple[str, str]:
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    return out, err


def test_run_serves_the_brain_live_with_the_twin_in_process(grid_city: Path, tmp_path: Path):
    port = free_port()
    service = start_service(tmp_path, port, "--scenario", str(grid_city), "--speed", "0", "--duration", "300")
    try:
        health = wait_for(f"http://127.0.0.1:{port}/health", lambda h: h["twin"] == "finished")
        assert health["city_time"] == 300.0
        key = (tmp_path / "admin.key").read_text().strip()
        assert oct((tmp_path / "admin.key").stat().st_mode & 0o777) == "0o600"
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": key})
        rows = api.get("/api/intersections").json()
        assert {r["id"] for r in rows} == set(read_network(load_scenario(grid_city).net_file).intersections)
        assert all(r["signal_state"] and r["mode"] == "remote" for r in rows)
        switches = api.get("/api/decisions", params={"switches_only": True}).json()
        assert switches and all(d["outcome"] != "kept" and d["reason"] for d in switches)
        kpis = api.get("/api/kpis").json()
        assert len(kpis) >= 4 and sum(k["throughput_veh"] for k in kpis) > 50
        assert all(not d["silent"] for d in api.get("/api/devices").json())
    finally:
        out, err = stop(service)
    assert service.returncode == 0, err
    assert f"http://127.0.0.1:{port}/#key=" in out
    assert "new admin key" in out

    again = start_service(tmp_path, port, "--scenario", str(grid_city), "--speed", "0", "--duration", "60")
    try:
        wait_for(f"http://127.0.0.1:{port}/health", lambda h: h["twin"] == "finished")
        rows = api.get("/api/intersections").json()
        assert all(r["mode"] == "remote" for r in rows), "a second run's events are new, not resends of the first's"
        assert not api.get("/api/devices").json()[0]["silent"]
    finally:
        out, _ = stop(again)
    assert "new admin key" not in out and key not in out, "the admin key is printed only when it is made"


def test_the_twin_over_http_gives_the_kpis_of_the_twin_in_process(grid_city: Path, tmp_path: Path):
    """Same controller, same seed: the field in another process, over HTTP, against the
    benchmark's in-process session (acceptance: within 5%)."""
    port = free_port()
    service = start_service(tmp_path, port, "--scenario", str(grid_city), "--no-twin", "--clock", "replay")
    try:
        wait_for(f"http://127.0.0.1:{port}/health", lambda h: h["status"] == "ok", timeout_s=60)
        made = subprocess.run([*CLI, "keys", "create", "twin", "--role", "device", "--device", "*", "--device", "clock",
                               "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
        key = made.stdout.split(": ")[1].split()[0]
        out = tmp_path / "twin.json"
        field = subprocess.run([*CLI, "twin", "--brain", f"http://127.0.0.1:{port}", "--scenario", str(grid_city),
                                "--speed", "0", "--duration", "400", "--json", str(out)],
                               capture_output=True, text=True, timeout=300, env={**os.environ, "URBANBRAIN_KEY": key})
        assert field.returncode == 0, field.stderr
    finally:
        stop(service)
    over_http = json.loads(out.read_text())["kpis"]
    scenario = load_scenario(grid_city)
    session = CitySession(scenario, read_network(scenario.net_file), "brain", horizon_s=400)
    session.start()
    while not session.done:
        session.step()
    in_process = session.finish().kpis
    assert over_http["throughput"] > 100
    assert abs(over_http["total_delay_s"] - in_process.total_delay_s) <= 0.05 * in_process.total_delay_s
    assert abs(over_http["att_s"] - in_process.att_s) <= 0.05 * in_process.att_s


def test_fail_safe_when_the_brain_dies_and_control_resumes_when_it_returns(grid_city: Path, tmp_path: Path,
                                                                          store_url: str):
    """Kill the brain mid-run: every controller falls back to its plan within the
    timeout (10 s), with no conflicting greens at any second; restart the brain:
    remote control resumes, safely, and every event of the outage reaches the store
    (a backlog of 160 s, resent in order behind the live second: before the brain kept
    its own clock, its second batch was refused as too far ahead and the field died).
    On SQLite and on PostgreSQL."""
    from urbanbrain.service.field import TwinField
    from urbanbrain.service.transports import http_transport
    from urbanbrain.store import Store

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ("--scenario", str(grid_city), "--no-twin", "--clock", "replay", "--db", store_url)
    service = start_service(tmp_path, port, *args)
    wait_for(f"{url}/health", lambda h: h["status"] == "ok", timeout_s=60)
    made = subprocess.run([*CLI, "keys", "create", "field", "--role", "device", "--device", "*", "--device", "clock",
                           "--data-dir", str(tmp_path), "--db", store_url], capture_output=True, text=True, timeout=60)
    key = made.stdout.split(": ")[1].split()[0]
    scenario = load_scenario(grid_city)
    network = read_network(scenario.net_file)
    field = TwinField(scenario, network, http_transport(url, key, timeout_s=2.0), speed=0, horizon_s=320)
    produced = [0]
    for kind in ("detector", "camera", "controller"):
        field.bus.subscribe(kind, lambda _e: produced.__setitem__(0, produced[0] + 1))
    modes: dict[float, set[str]] = {}
    conflicts: list[tuple[float, str]] = []
    killed_at, restarted_at = 100.0, 260.0

    def watch(now: float) -> None:
        nonlocal service
        controllers = field.twin.controllers
        modes[now] = {c.mode for c in controllers.values()}
        conflicts.extend((now, i) for i, c in controllers.items()
                         if network.intersections[i].conflicting_pairs(c.state_at(now)))
        if now == killed_at:
            service.kill()
            service.wait(timeout=30)
        if now == restarted_at:
            service = start_service(tmp_path, port, *args)
            wait_for(f"{url}/health", lambda h: h["status"] == "ok", timeout_s=60)

    try:
        field.run(on_step=watch)
        assert field.flush(60.0), "the backlog is delivered"
    finally:
        stop(service)
        field.close()
    assert not conflicts
    assert modes[killed_at - 1] == {"remote"}, "under the brain before it dies"
    assert modes[killed_at + 11] == {"fallback"}, "every controller on its own plan within the 10 s timeout"
    assert all(modes[t] == {"fallback"} for t in modes if killed_at + 11 <= t < restarted_at)
    assert modes[restarted_at + 15] == {"remote"}, "control resumes once the brain is back"
    assert field.rejected == 0
    store = Store(store_url)
    try:
        stored = [e for e in store.events(limit=10**7) if e.kind != "clock"]
    finally:
        store.close()
    assert len(stored) == produced[0], "every event the devices made reaches the store"
    assert any(e.late for e in stored) and not any(e.late and e.time < killed_at for e in stored)


def test_the_twin_over_http_dispatches_emergency_vehicles_that_follow_the_brains_routes(grid_city: Path, tmp_path: Path):
    """`urbanbrain twin --emergency 2`: the transponders' reports go over HTTP with the
    fleet's emergency key and are stored like every device event; each navigation unit
    reads its route from `GET /api/emergency/{vehicle}/route` and the vehicle follows it."""
    from urbanbrain.service.host import open_store
    from urbanbrain.service.transports import BrainRefused, http_routes

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    service = start_service(tmp_path, port, "--scenario", str(grid_city), "--no-twin", "--clock", "replay")
    try:
        wait_for(f"{url}/health", lambda h: h["status"] == "ok", timeout_s=60)
        keys = {}
        for name, role, devices in (("twin", "device", ("*", "clock")), ("fleet", "emergency", ("ev-*",)),
                                    ("one-detector", "device", ("det-1",))):
            named = [arg for device in devices for arg in ("--device", device)]
            made = subprocess.run([*CLI, "keys", "create", name, "--role", role, *named,
                                   "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
            assert made.returncode == 0, made.stderr
            keys[name] = made.stdout.split(": ")[1].split()[0]
        assert http_routes(url, keys["fleet"])("ev-1") is None, "404: no route planned yet"
        for sensor in ("one-detector", "twin"):  # no sensor's key reads a vehicle's route
            with pytest.raises(BrainRefused, match="403"):
                http_routes(url, keys[sensor])("ev-1")
        out = tmp_path / "twin.json"
        field = subprocess.run([*CLI, "twin", "--brain", url, "--scenario", str(grid_city), "--speed", "0",
                                "--duration", "240", "--seed", "3", "--emergency", "2", "--json", str(out)],
                               capture_output=True, text=True, timeout=300,
                               env={**os.environ, "URBANBRAIN_KEY": keys["twin"], "URBANBRAIN_EMERGENCY_KEY": keys["fleet"]})
        assert field.returncode == 0, field.stderr
        admin = httpx.Client(base_url=url, headers={"X-API-Key": (tmp_path / "admin.key").read_text().strip()})
        devices = {d["device_id"]: d for d in admin.get("/api/devices").json()}
        routes = {v: admin.get(f"/api/emergency/{v}/route") for v in ("ev-1", "ev-2")}
    finally:
        stop(service)
    vehicles = {v["vehicle"]: v for v in json.loads(out.read_text())["emergency"]}
    assert sorted(vehicles) == ["ev-1", "ev-2"]
    store = open_store(tmp_path, None)
    try:
        for vehicle, seen in vehicles.items():
            assert devices[vehicle]["kind"] == "emergency" and devices[vehicle]["events"] >= 10
            stored = [json.loads(e.payload) for e in store.events(vehicle, limit=10_000)]
            assert len(stored) == devices[vehicle]["events"] and {e["kind"] for e in stored} == {"emergency"}
            assert routes[vehicle].status_code == 200, routes[vehicle].text
            advice = routes[vehicle].json()
            assert advice["edges"][-1] == stored[0]["destination"]
            assert seen["routes_followed"] >= 1, f"{vehicle} never followed the brain's route"
            last = [e["edge"] for e in stored if e["status"] == "en_route"][-1]
            assert last in advice["edges"], "it drove on the brain's latest route"
        assert any(seen["arrived_s"] is not None for seen in vehicles.values()), "no vehicle finished its trip"
    finally:
        store.close()


def test_http_routes_raise_brain_unreachable_when_no_brain_answers():
    from urbanbrain.service.transports import BrainUnreachable, http_routes

    route = http_routes(f"http://127.0.0.1:{free_port()}", "ub_none", timeout_s=1.0)  # a closed port
    with pytest.raises(BrainUnreachable, match="127.0.0.1"):
        route("ev-1")
