"""Where the twin puts its virtual field devices, and the SUMO files that make them.

Every approach lane of a signalised intersection gets a stop-line loop (just before
the stop line) and an advance loop (near the lane's upstream end, so that
input-output counting between the two covers the whole link); every approach gets
an ANPR camera at the stop line; every signalised intersection gets a controller.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

import sumolib

from urbanbrain.network.model import Network
from urbanbrain.network.sumo_reader import is_green_state


@dataclass(frozen=True)
class DeviceLayout:
    """Placement settings for the twin's virtual devices."""

    stopline_setback_m: float = 1.0
    advance_from_start_m: float = 3.0
    cameras: bool = True


@dataclass(frozen=True)
class Loop:
    detector_id: str
    lane: str
    position: str  # stopline | advance
    pos_m: float


@dataclass(frozen=True)
class Station:
    """The loops one intersection's detector unit reports, and its cameras."""

    device_id: str
    intersection: str
    loops: tuple[Loop, ...]
    cameras: dict[str, str]  # stop-line loop id -> camera id


def place_devices(network: Network, layout: DeviceLayout) -> list[Station]:
    stations = []
    for intersection in network.intersections.values():
        loops: list[Loop] = []
        cameras: dict[str, str] = {}
        for approach in intersection.approaches:
            for lane_id in approach.lanes:
                lane = network.lanes[lane_id]
                stop_pos = max(0.1, lane.length_m - layout.stopline_setback_m)
                adv_pos = min(layout.advance_from_start_m, stop_pos * 0.5)
                stop = Loop(f"ub_stop_{lane_id}", lane_id, "stopline", stop_pos)
                loops += [stop, Loop(f"ub_adv_{lane_id}", lane_id, "advance", adv_pos)]
                if layout.cameras:
                    cameras[stop.detector_id] = f"cam_{approach.edge}"
        stations.append(Station(f"det_{intersection.id}", intersection.id, tuple(loops), cameras))
    return stations


def write_detector_file(stations: list[Station], path: Path) -> None:
    lines = ["<additional>"]
    for station in stations:
        for loop in station.loops:
            lines.append(
                f'  <inductionLoop id={quoteattr(loop.detector_id)} lane={quoteattr(loop.lane)} '
                f'pos="{loop.pos_m:.2f}" period="3600" file="NUL"/>'
            )
    lines.append("</additional>")
    path.write_text("\n".join(lines), encoding="utf-8")


def write_local_program_file(net_file: Path, program_type: str, path: Path) -> None:
    """The scenario's own phases as a SUMO actuated or delay-based program.

    Greens get a 5 s minimum and a maximum of twice the plan's green (at least 40 s);
    change intervals keep the plan's durations. Loaded after the net, the new program
    becomes the one SUMO runs.
    """
    net = sumolib.net.readNet(str(net_file), withPrograms=True)
    lines = ["<additional>"]
    for tls in net.getTrafficLights():
        programs = tls.getPrograms()
        if not programs:
            continue
        program = next(iter(programs.values()))
        lines.append(f'  <tlLogic id={quoteattr(tls.getID())} type="{program_type}" programID="ub_{program_type}" offset="0">')
        for phase in program.getPhases():
            if is_green_state(phase.state):
                max_green = max(2 * phase.duration, 40)
                lines.append(f'    <phase duration="{phase.duration:g}" minDur="5" maxDur="{max_green:g}" state="{phase.state}"/>')
            else:
                lines.append(f'    <phase duration="{phase.duration:g}" state="{phase.state}"/>')
        lines.append("  </tlLogic>")
    lines.append("</additional>")
    path.write_text("\n".join(lines), encoding="utf-8")
