"""The SUMO files that make the twin's virtual devices and local signal programs."""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import quoteattr

import sumolib

from urbanbrain.devices.inventory import Station
from urbanbrain.network.sumo_reader import is_green_state


def write_detector_file(stations: list[Station], path: Path) -> None:
    lines = ["<additional>"]
    for station in stations:
        for loop in station.loops:
            # A zone is a lane-area detector: an extended induction loop misses a vehicle
            # that changes onto the lane inside it, which a field zone sees.
            kind, length = ("laneAreaDetector", f' length="{loop.length_m:.2f}"') if loop.length_m > 0 else ("inductionLoop", "")
            lines.append(
                f'  <{kind} id={quoteattr(loop.detector_id)} lane={quoteattr(loop.lane)} '
                f'pos="{loop.pos_m:.2f}"{length} period="3600" file="NUL"/>'
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
