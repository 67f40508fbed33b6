"""One city run: the twin plays the devices, the brain controls through the device path.

Used by `urbanbrain bench` (one session per controller, same scenario and seed) and
by `urbanbrain run` (the live view). The evaluator parts (KPIs, estimator error)
read the simulator; the brain never does, except in the labelled oracle mode.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from urbanbrain.control import CONTROLLERS, SafetyLayer, SafetyLimits
from urbanbrain.control.brain_loop import BrainLoop, DecisionSink
from urbanbrain.core.bus import EventBus
from urbanbrain.emergency.priority import EmergencyPriority
from urbanbrain.kpi import QueueMonitor, TripKpis, trip_kpis
from urbanbrain.network.model import Network
from urbanbrain.state.estimator import SensorEstimator
from urbanbrain.state.oracle import OracleObserver
from urbanbrain.twin.emergency import EmergencyFleet, EmergencyTrip
from urbanbrain.twin.scenario import Scenario
from urbanbrain.twin.sumo_twin import Twin

OBSERVATIONS = ("sensors", "oracle")
ESTIMATOR_SAMPLE_S = 10.0


@dataclass
class RunResult:
    controller: str
    observation: str
    kpis: TripKpis
    max_queue: int
    longest_stop_s: float
    per_intersection: dict[str, dict[str, float]]
    wall_s: float
    estimator_mae_veh: float | None
    safety: dict[str, int] = field(default_factory=dict)
    commands: int = 0


class CitySession:
    """A scenario under one controller, stepped one simulated second at a time."""

    def __init__(self, scenario: Scenario, network: Network, controller: str, *, observation: str = "sensors",
                 seed: int = 1, horizon_s: float = 3600.0, explain: DecisionSink | None = None,
                 measure_estimator: bool = False, safety_limits: SafetyLimits | None = None,
                 world: list | None = None, emergency: list[EmergencyTrip] | None = None, priority: bool = False):
        if controller not in CONTROLLERS:
            raise ValueError(f"unknown controller {controller!r}; choose from {', '.join(CONTROLLERS)}")
        if observation not in OBSERVATIONS:
            raise ValueError(f"unknown observation {observation!r}; choose from {', '.join(OBSERVATIONS)}")
        self.controller = CONTROLLERS[controller](network)
        if priority and self.controller.local_program is not None:
            raise ValueError(f"emergency priority needs a controller the brain runs, not the local program of {controller!r}")
        self.scenario = scenario
        self.network = network
        self.observation = observation
        self.end_s = scenario.begin_s + horizon_s
        self._tmp = tempfile.TemporaryDirectory(prefix="urbanbrain-run-")
        self.tripinfo = Path(self._tmp.name) / "tripinfo.xml"
        self.bus = EventBus()
        self.fleet = EmergencyFleet(network, self.bus, emergency) if emergency else None
        world = [*(world or []), *([self.fleet] if self.fleet else [])]
        self.twin = Twin(scenario, network, self.bus, local_program=self.controller.local_program, seed=seed,
                         tripinfo_path=self.tripinfo, world=world)
        self.estimator: SensorEstimator | None = None
        self.brain: BrainLoop | None = None
        remote = self.controller.local_program is None
        if observation == "oracle" and remote:
            observer = OracleObserver(network, self.twin.sumo, self.bus)
        else:
            observer = SensorEstimator(network, self.bus, stations=self.twin.stations)
            self.estimator = observer
        self.priority = EmergencyPriority(network, self.bus) if priority else None
        if remote:
            safety = SafetyLayer(network, safety_limits or SafetyLimits())
            self.brain = BrainLoop(self.controller, observer, safety, self.bus, explain=explain, priority=self.priority)
        self.monitor: QueueMonitor | None = None
        self._measure_estimator = measure_estimator and self.estimator is not None
        self._errors: list[float] = []
        self._started = 0.0

    @property
    def now(self) -> float:
        return self.twin.now

    @property
    def done(self) -> bool:
        return self.twin.now >= self.end_s - 1e-9

    def start(self) -> None:
        self._started = time.perf_counter()
        self.twin.start()
        self.monitor = QueueMonitor(self.network, self.twin.sumo)
        if self.brain is not None:
            self.brain.take_control(self.twin.now)

    def step(self) -> None:
        now = self.twin.step()
        self.monitor.sample(self.twin.step_length_s)
        if self.brain is not None:
            self.brain.tick(now)
        if self._measure_estimator and now % ESTIMATOR_SAMPLE_S < self.twin.step_length_s:
            self._errors.append(self.estimator_error())

    def estimator_error(self) -> float:
        """Mean absolute error, vehicles per approach lane, of the estimate against the simulator."""
        lane_api = self.twin.sumo.lane
        lanes = self.estimator.state.lanes
        errors = [abs(state.vehicles - lane_api.getLastStepVehicleNumber(lane)) for lane, state in lanes.items()]
        return sum(errors) / len(errors) if errors else 0.0

    def close(self) -> None:
        """Stop the simulator and remove the run's files; safe to call twice."""
        try:
            self.twin.close()
        finally:
            self._tmp.cleanup()

    def __enter__(self) -> CitySession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def finish(self) -> RunResult:
        """Close the simulation and measure it, up to the horizon or to where it was stopped."""
        stopped_at = min(self.end_s, self.twin.now)
        self.twin.close()
        kpis = trip_kpis(self.tripinfo, stopped_at, exclude=frozenset(self.fleet.records) if self.fleet else frozenset())
        wall = time.perf_counter() - self._started
        self._tmp.cleanup()
        safety = dict(self.brain.safety.counts) if self.brain is not None else {}
        return RunResult(
            controller=self.controller.name,
            observation=self.observation,
            kpis=kpis,
            max_queue=self.monitor.max_queue,
            longest_stop_s=self.monitor.longest_stop_s,
            per_intersection={k: vars(v).copy() for k, v in self.monitor.per_intersection.items()},
            wall_s=wall,
            estimator_mae_veh=sum(self._errors) / len(self._errors) if self._errors else None,
            safety=safety,
            commands=self.brain.commands_sent if self.brain is not None else 0,
        )
