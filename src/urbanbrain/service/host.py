"""`urbanbrain run`: the brain service, with the twin playing the city's devices.

The server listens first (so /health answers at once); the city — reading or
generating the network, starting SUMO — loads in a background thread, and the
in-process twin then talks to the brain through the same ingress as remote devices.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from urbanbrain.core.clock import CLOCK_DEVICE, DEFAULT_MAX_SKEW_S, CityClock, ClockSettings
from urbanbrain.incidents.injection import MIN_HORIZON_S, IncidentInjector, random_incidents
from urbanbrain.network import read_network
from urbanbrain.service.app import ServiceState, create_app
from urbanbrain.service.city import CityRuntime
from urbanbrain.service.field import TwinField
from urbanbrain.service.keys import Principal, create_key
from urbanbrain.service.server import run_server
from urbanbrain.service.transports import in_process_routes, in_process_transport
from urbanbrain.service.webhooks import WebhookDispatcher
from urbanbrain.store import Store
from urbanbrain.store.store import sqlite_url
from urbanbrain.twin.emergency import random_trips
from urbanbrain.twin.scenario import load_scenario

LOG = logging.getLogger(__name__)
TWIN_PRINCIPAL = Principal("in-process twin", "device", ("*", CLOCK_DEVICE))  # its devices and its time server
FLEET_PRINCIPAL = Principal("in-process twin fleet", "emergency", ("*",))  # its emergency vehicles' own credentials
TICK_S = 1.0  # a live city's brain decides every second of the wall clock
STOP_BUDGET_S = 4.0  # the city's part of the service's 5 s to stop (the server takes what is left)


@dataclass(frozen=True)
class HostOptions:
    scenario: str = "demo"
    controller: str = "brain"
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path | None = None
    db: str | None = None
    twin: bool = True
    speed: float = 1.0
    seed: int = 1
    duration_s: float | None = None
    failsafe_s: float = 10.0  # twin: a field controller runs its own plan after this long without a command
    retention_days: float = 30.0  # device events and decisions older than this are deleted (KPI minutes and audit stay)
    webhooks: tuple[str, ...] = ()  # alert subscribers (URLs)
    incidents: int = 0  # twin: random incidents injected over the run (ground truth to DATA_DIR/incidents-truth.jsonl)
    emergency: int = 0  # twin: random emergency vehicles dispatched over the run (their transponders report to the brain)
    webhook_secret: str | None = None  # signs webhook bodies (HMAC-SHA256)
    clock: str | None = None  # wall (a live city) or replay (a twin's time server); None: replay with the twin, else wall
    max_skew_s: float = DEFAULT_MAX_SKEW_S  # how far ahead of the brain's clock a device's event may be

    def __post_init__(self) -> None:
        if self.emergency < 0:
            raise ValueError(f"emergency: the number of emergency vehicles must be 0 or more, got {self.emergency}")
        if self.emergency and not self.twin:
            raise ValueError("emergency: vehicles are dispatched in the twin, which --no-twin turns off")
        if self.twin and self.clock == "wall":
            raise ValueError("clock: the in-process twin replays a scenario on its own clock: it needs --clock replay")
        self.clock_settings()  # a bad clock or skew is named before anything starts
        if self.incidents and self.duration_s is not None and self.duration_s < MIN_HORIZON_S:
            raise ValueError(f"incidents: random incidents last 5 to 30 minutes: the run needs a --duration of at "
                             f"least {MIN_HORIZON_S:g} s, not {self.duration_s:g}")


    def clock_settings(self) -> ClockSettings:
        mode = self.clock or ("replay" if self.twin else "wall")
        return ClockSettings(mode=mode, max_skew_s=self.max_skew_s,
                             max_late_s=max(self.retention_days * 86400.0, self.max_skew_s))


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("urbanbrain"))


def open_store(data_dir: Path, db: str | None) -> Store:
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # the city's data and the admin key: this user's only
    store = Store(db or sqlite_url(data_dir / "urbanbrain.db"))
    store.migrate()
    return store


def admin_key(store: Store, data_dir: Path) -> tuple[str | None, bool]:
    """The admin key: created on first start and kept in DATA_DIR/admin.key, readable
    by this user only (the store has only its hash). Returns (key, created now)."""
    path = data_dir / "admin.key"
    if not any(k["role"] == "admin" and k["revoked_at"] is None for k in store.keys()):
        name = "admin" if not any(k["name"] == "admin" for k in store.keys()) else f"admin-{len(store.keys())}"
        key = create_key(store, name, "admin")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never readable by others
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            out.write(key + "\n")
        return key, True
    return (path.read_text(encoding="utf-8").strip() if path.exists() else None), False


class CityHost:
    """Loads the city and runs the in-process twin in a background thread."""

    def __init__(self, service: ServiceState, options: HostOptions, data_dir: Path):
        self.service = service
        self.options = options
        self.data_dir = data_dir
        self.field: TwinField | None = None
        self.thread = threading.Thread(target=self._run, name="city", daemon=True)
        self._stopping = threading.Event()
        self.dispatcher = None
        if options.webhooks:
            self.dispatcher = WebhookDispatcher(service.store, options.webhook_secret or "")

    def start(self) -> None:
        self.service.twin = "starting" if self.options.twin else "off"
        self.thread.start()
        if self.dispatcher is not None:
            self.dispatcher.start()
        threading.Thread(target=self._retain, name="retention", daemon=True).start()
        threading.Thread(target=self._tick, name="clock", daemon=True).start()

    def stop(self) -> None:
        """Stop the twin and the webhook deliveries within STOP_BUDGET_S together (what
        they have not finished is in the store: deliveries are retried at the next start)."""
        deadline = time.monotonic() + STOP_BUDGET_S
        self._stopping.set()
        if self.field is not None:
            self.field.stop()
        if self.dispatcher is not None:
            self.dispatcher.stop(timeout_s=max(0.0, deadline - time.monotonic()) / 2)
        self.thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def _tick(self) -> None:
        """A live city's brain decides every second of the wall clock, whether or not
        the field reports (a replay's brain ticks when its time server declares), on a
        fixed schedule; a tick that fails (the database away a moment) is logged and the
        next one tried: the brain must not stop deciding for one error."""
        next_tick = time.monotonic() + TICK_S
        while not self._stopping.wait(max(0.0, next_tick - time.monotonic())):
            next_tick += TICK_S
            runtime = self.service.runtime
            if runtime is None:
                continue
            try:
                runtime.tick()
            except Exception:  # noqa: BLE001 - any failure of one tick; the next may succeed
                LOG.exception("the brain's tick failed")

    def _retain(self) -> None:
        """Apply the retention at start and every hour after."""
        while True:
            days = self.options.retention_days
            self.service.store.purge(events_days=days, decisions_days=days)
            if self._stopping.wait(3600.0):
                return

    def _run(self) -> None:
        try:
            scenario = load_scenario(self.options.scenario)
            network = read_network(scenario.net_file)
            runtime = CityRuntime(network, self.service.store, self.options.controller, webhooks=self.options.webhooks,
                                  clock=CityClock(self.options.clock_settings()))
            self.service.runtime = runtime
            if not self.options.twin:
                return
            send = in_process_transport(runtime, TWIN_PRINCIPAL)
            injector = None
            if self.options.incidents:
                injector = IncidentInjector(random_incidents(
                    network, self.options.incidents, seed=self.options.seed, begin_s=scenario.begin_s,
                    horizon_s=self.options.duration_s or 3600.0), network=network, seed=self.options.seed)
            trips = None
            if self.options.emergency:  # their transponders report through the ingress; navigation reads the advice
                trips = random_trips(network, self.options.emergency, seed=self.options.seed, begin_s=scenario.begin_s,
                                     horizon_s=self.options.duration_s or 3600.0)
            self.field = TwinField(scenario, network, send, seed=self.options.seed, speed=self.options.speed,
                                   horizon_s=self.options.duration_s, failsafe_s=self.options.failsafe_s,
                                   world=[injector.step] if injector else None, emergency=trips,
                                   routes=in_process_routes(runtime, FLEET_PRINCIPAL),
                                   priority_send=in_process_transport(runtime, FLEET_PRINCIPAL))
            try:
                self.field.run(on_start=lambda: setattr(self.service, "twin", "running"))
            finally:
                self.field.close()
                if injector is not None:  # for whoever evaluates; the brain never reads it
                    injector.write_truth(self.data_dir / "incidents-truth.jsonl")
            self.service.twin = "finished"
        except Exception as exc:  # the service stays up to say what went wrong
            self.service.twin = "failed"
            self.service.twin_error = f"{type(exc).__name__}: {exc}"
            raise


def serve(options: HostOptions, announce) -> None:
    data_dir = options.data_dir or default_data_dir()
    store = open_store(data_dir, options.db)
    key, created = admin_key(store, data_dir)
    service = ServiceState(store)
    host = CityHost(service, options, data_dir)
    app = create_app(service, on_shutdown=host.stop)
    announce(f"http://{options.host}:{options.port}", key, created, data_dir)
    host.start()
    run_server(app, options.host, options.port, on_interrupt=host.stop)
