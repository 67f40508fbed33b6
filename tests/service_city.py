"""A brain service over the generated 2x2 grid, driven in process (FastAPI's test
client), with one key per role: shared by the service and alert tests."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from urbanbrain.core.clock import CLOCK_DEVICE, CityClock, ClockSettings
from urbanbrain.network import read_network
from urbanbrain.service.app import ServiceState, create_app
from urbanbrain.service.city import CityRuntime
from urbanbrain.service.keys import create_key
from urbanbrain.store import Store


class City:
    """A service over the generated 2x2 grid, with one key per role. Its brain keeps a
    wall clock the test sets (`now`), or follows a replay's time server (`clock_report`)."""

    def __init__(self, url: str, net_file: Path, clock: str = "wall"):
        self.url = url
        self.clock_mode = clock
        self.now = 0.0
        self.network = read_network(net_file)
        self.store = Store(url)
        self.store.migrate()
        self.keys = {role: create_key(self.store, role, role) for role in ("viewer", "operator", "admin")}
        first = sorted(self.network.intersections)[0]
        self.own = f"ctl_{first}"
        self.keys["device"] = create_key(self.store, "field-unit", "device", [self.own, "det_*"])
        self.open()

    def open(self) -> None:
        self.service = ServiceState(self.store)
        clock = CityClock(ClockSettings(mode=self.clock_mode), wall=lambda: self.now)
        self.service.runtime = CityRuntime(self.network, self.store, clock=clock)
        self.client = TestClient(create_app(self.service))

    def restart(self) -> None:
        """A new process: a new store connection and runtime on the same database."""
        self.client.close()
        self.store.close()
        self.store = Store(self.url)
        self.store.migrate()
        self.open()

    def headers(self, role: str) -> dict[str, str]:
        return {"X-API-Key": self.keys[role]}

    def controller_report(self, seq: int, time: float, intersection: str | None = None) -> dict:
        intersection = intersection or self.own[len("ctl_"):]
        phases = self.network.intersections[intersection].phases
        return {"kind": "controller", "device_id": f"ctl_{intersection}", "seq": seq, "time": time,
                "intersection": intersection, "signal_state": phases[0].state, "phase": 0,
                "time_in_phase_s": time, "mode": "remote"}

    def clock_report(self, seq: int, time: float) -> dict:
        return {"kind": "clock", "device_id": CLOCK_DEVICE, "seq": seq, "time": time}

    def detector_report(self, seq: int, time: float) -> dict:
        station = self.service.runtime.stations[0]
        return {"kind": "detector", "device_id": station.device_id, "seq": seq, "time": time,
                "interval_s": 1.0, "readings": [{"detector_id": loop.detector_id, "lane": loop.lane,
                                                 "position": loop.position, "count": 0, "occupancy": 0.0}
                                                for loop in station.loops]}
