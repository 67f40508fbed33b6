"""The digital twin: SUMO (through libsumo) playing a city's field devices.

Each simulated second it publishes on the bus exactly what field devices would send
(loop counts and occupancies, camera passages with synthetic stable plates,
controller state reports) and it applies only the signal commands it receives from
the bus. The brain gets nothing else from it; the `sumo` handle is exposed only for
KPI evaluation and the labelled research `oracle` observation mode.
"""

from __future__ import annotations

import base64
import hashlib
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import libsumo

from urbanbrain.core.bus import EventBus
from urbanbrain.devices.protocol import CameraPassage, ControllerState, DetectorReport, SignalCommand
from urbanbrain.devices.signal_controller import SignalController
from urbanbrain.network.model import Network
from urbanbrain.devices.inventory import DeviceLayout, Station, place_devices
from urbanbrain.twin.devices import write_detector_file, write_local_program_file
from urbanbrain.twin.scenario import Scenario

_VEHICLE_CLASSES = {
    "passenger": "car", "private": "car", "taxi": "car", "evehicle": "car",
    "truck": "truck", "trailer": "truck", "delivery": "truck",
    "bus": "bus", "coach": "bus", "motorcycle": "motorcycle", "moped": "motorcycle",
    "bicycle": "bicycle", "emergency": "emergency",
}
_IDS = libsumo.constants.LAST_STEP_VEHICLE_ID_LIST
_OCC = libsumo.constants.LAST_STEP_OCCUPANCY
_SPEED = libsumo.constants.LAST_STEP_MEAN_SPEED


def synthetic_plate(vehicle_id: str) -> str:
    """A plate that is the same every time the same vehicle is seen, and reveals nothing else."""
    digest = hashlib.blake2b(vehicle_id.encode(), digest_size=5).digest()
    return "UB-" + base64.b32encode(digest).decode().rstrip("=")


class Twin:
    """Runs one scenario. `local_program` None puts every signal under remote control;
    'static', 'actuated' or 'delay_based' lets the field controllers run that program."""

    def __init__(
        self,
        scenario: Scenario,
        network: Network,
        bus: EventBus,
        *,
        local_program: str | None = None,
        seed: int = 1,
        layout: DeviceLayout | None = None,
        tripinfo_path: Path | None = None,
        step_length_s: float = 1.0,
        failsafe_s: float | None = 10.0,
        sequence_base: int = 0,
        world: list[Callable[[ModuleType, float], None]] | None = None,
    ):
        if local_program not in (None, "static", "actuated", "delay_based"):
            raise ValueError(f"unknown local program {local_program!r}")
        self.scenario = scenario
        self.network = network
        self.bus = bus
        self.local_program = local_program
        self.seed = seed
        self.layout = layout or DeviceLayout()
        self.tripinfo_path = tripinfo_path
        self.step_length_s = step_length_s
        self.failsafe_s = failsafe_s  # remote controllers run their plan after this long without a command
        self.sequence_base = sequence_base  # first sequence number of every device (see TwinField)
        self.world = list(world or [])  # things that happen in the simulated city (incidents), after each step
        self.stations: list[Station] = place_devices(network, self.layout)
        self.controllers: dict[str, SignalController] = {}
        self._shown: dict[str, str] = {}
        self._on_loop: dict[str, frozenset[str]] = {}
        self._seq: dict[str, int] = {}
        self._workdir = tempfile.TemporaryDirectory(prefix="urbanbrain-twin-")
        self.now = scenario.begin_s
        self._started = self._closed = False
        bus.subscribe("signal", self._on_command)

    @property
    def sumo(self) -> ModuleType:
        """The simulator itself: for KPI evaluation and the research oracle only."""
        return libsumo

    def start(self) -> None:
        work = Path(self._workdir.name)
        detectors = work / "detectors.add.xml"
        write_detector_file(self.stations, detectors)
        additional = [*map(str, self.scenario.additional_files)]
        if self.local_program in ("actuated", "delay_based"):
            programs = work / f"{self.local_program}.add.xml"
            write_local_program_file(self.scenario.net_file, self.local_program, programs)
            additional.append(str(programs))
        additional.append(str(detectors))
        args = [
            "sumo", "-c", str(self.scenario.sumocfg),
            "--seed", str(self.seed),
            "--time-to-teleport", "-1",
            "--step-length", str(self.step_length_s),
            "--no-step-log", "true", "--no-warnings", "true",
            "--additional-files", ",".join(additional),
        ]
        if self.tripinfo_path is not None:
            args += ["--tripinfo-output", str(self.tripinfo_path),
                     "--tripinfo-output.write-unfinished", "true", "--tripinfo-output.write-undeparted", "true"]
        libsumo.start(args)
        self._started = True
        self.now = libsumo.simulation.getTime()
        for station in self.stations:
            for loop in station.loops:
                if loop.length_m > 0:
                    libsumo.lanearea.subscribe(loop.detector_id, [_IDS])
                else:
                    libsumo.inductionloop.subscribe(loop.detector_id, [_IDS, _OCC, _SPEED])
        if self.local_program is None:
            for intersection in self.network.intersections.values():
                self.controllers[intersection.id] = SignalController(
                    intersection.id, intersection.phases, 0, self.now, plan_yellow_s=intersection.clearance.yellow_s,
                    plan_all_red_s=intersection.clearance.all_red_s, failsafe_s=self.failsafe_s)
        self._show_remote_states()
        self.bus.publish_all(self._controller_reports())

    def step(self) -> float:
        """Advance one step and publish what the devices saw during it."""
        libsumo.simulationStep()
        self.now = libsumo.simulation.getTime()
        for happen in self.world:
            happen(libsumo, self.now)
        self._show_remote_states()
        events: list = self._detector_reports()
        events += self._controller_reports()
        self.bus.publish_all(events)
        return self.now

    def close(self) -> None:
        """Close the simulation (writing its trip information); safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._started:
                libsumo.close()
        finally:
            self._workdir.cleanup()

    def _on_command(self, command: SignalCommand) -> None:
        controller = self.controllers.get(command.intersection)
        if controller is not None:
            controller.apply(command, self.now)
            self._show_remote_states()

    def _show_remote_states(self) -> None:
        for tls, controller in self.controllers.items():
            state = controller.state_at(self.now)
            if self._shown.get(tls) != state:
                libsumo.trafficlight.setRedYellowGreenState(tls, state)
                self._shown[tls] = state

    def _next_seq(self, device_id: str) -> int:
        seq = self._seq.get(device_id, self.sequence_base)
        self._seq[device_id] = seq + 1
        return seq

    def _detector_reports(self) -> list:
        results = libsumo.inductionloop.getAllSubscriptionResults()
        zones = libsumo.lanearea.getAllSubscriptionResults()
        events: list = []
        for station in self.stations:
            readings = []
            for loop in station.loops:
                data = zones[loop.detector_id] if loop.length_m > 0 else results[loop.detector_id]
                present = frozenset(data[_IDS])
                entered = present - self._on_loop.get(loop.detector_id, frozenset())
                self._on_loop[loop.detector_id] = present
                # a zone's presence is sampled at the end of the step (as a video zone's state)
                occupancy = (1.0 if present else 0.0) if loop.length_m > 0 else min(1.0, data[_OCC] / 100.0)
                readings.append({"detector_id": loop.detector_id, "lane": loop.lane, "position": loop.position,
                                 "count": len(entered), "occupancy": occupancy})
                camera = station.cameras.get(loop.detector_id)
                if camera is not None:
                    events += [self._passage(camera, loop.lane, vid, data[_SPEED]) for vid in sorted(entered)]
            events.append(DetectorReport.model_validate({
                "device_id": station.device_id, "seq": self._next_seq(station.device_id), "time": self.now,
                "interval_s": self.step_length_s, "readings": readings,
            }))
        return events

    def _passage(self, camera: str, lane: str, vehicle_id: str, loop_speed_ms: float) -> CameraPassage:
        """What the camera saw; a vehicle that ended its trip on the line is measured by the loop."""
        try:
            speed = libsumo.vehicle.getSpeed(vehicle_id)
            vehicle_class = libsumo.vehicle.getVehicleClass(vehicle_id)
        except libsumo.TraCIException:
            speed, vehicle_class = loop_speed_ms, "passenger"
        return CameraPassage(
            device_id=camera, seq=self._next_seq(camera), time=self.now, lane=lane,
            speed_ms=min(100.0, max(0.0, speed)), plate=synthetic_plate(vehicle_id),
            vehicle_class=_VEHICLE_CLASSES.get(vehicle_class, "other"),
        )

    def _controller_reports(self) -> list[ControllerState]:
        reports = []
        for intersection in self.network.intersections.values():
            device_id = f"ctl_{intersection.id}"
            controller = self.controllers.get(intersection.id)
            if controller is not None:
                phase, in_stage = controller.report_phase(self.now)
                state, mode = controller.state_at(self.now), controller.mode
            else:
                state = libsumo.trafficlight.getRedYellowGreenState(intersection.id)
                phase = next((p.index for p in intersection.phases if p.state == state), None)
                in_stage, mode = libsumo.trafficlight.getSpentDuration(intersection.id), "plan"
            reports.append(ControllerState(
                device_id=device_id, seq=self._next_seq(device_id), time=self.now, intersection=intersection.id,
                signal_state=state, phase=phase, time_in_phase_s=max(0.0, in_stage), mode=mode,
            ))
        return reports
