"""The device inventory: which loops, cameras and controllers an intersection has, and where.

A real city's inventory comes from its device registry; for the twin it is placed
automatically (configurable), and the estimator reads loop positions from it.

Every approach lane of a signalised intersection gets a stop-line loop (just before
the stop line), an advance loop (by default 100 m upstream of it, where vehicles
are in the lane they will leave by: lane changes happen further upstream), and on
links long enough an entry loop at the link's upstream end, so that counting
between them covers the whole link, plus a mid-zone loop whose occupancy tells how
the vehicles between entry and advance loops are spread over the lanes; every approach gets an ANPR camera at the stop
line, and one where it begins (over its entry loops, or over its advance loops where
those sit at its start) when it is at least `min_entry_zone_m` long: two plate reads
of a vehicle give its travel time, one read without the other a vehicle that did not
arrive; every signalised intersection gets a controller. Each lane of a feeder road
(upstream of a short approach, see the network model) gets a loop at its start and
one at its end, so that the queue standing there is counted too.

Each approach lane also gets a stop-bar presence zone over its last `presence_zone_m`
(an extended loop or a video zone, as stop-bar detection is laid in the field: SCATS
lays 4.5 m loops, US practice 6-15 m zones). A point loop tells a vehicle standing over
it, but the first vehicle of a queue may stop short of it (behind a vehicle still in the
junction, or keeping clear of a blocked exit) and the point may fall in the gap between
two standing vehicles; a zone longer than that gap always has a standing queue on it.

Each road leaving a signalised intersection that no loop watches otherwise (not an
approach to another signal, not a feeder road) gets an exit zone over its first
`exit_zone_m`, as SCOOT lays exit-blocking detectors: the queue on that road may stand
behind an unsignalised junction or the network's edge, out of the brain's sight, and
a green into it only blocks the junction. When the zone stands occupied, the queue
reaches back to the junction: the exit cannot take more vehicles.
"""

from __future__ import annotations

from dataclasses import dataclass
from urbanbrain.network.model import Network


@dataclass(frozen=True)
class DeviceLayout:
    """Placement settings for the twin's virtual devices."""

    # A waiting car's front can stop short of the lane's end (measured on atlanta_1x5: 1.0 m
    # short, so a loop 1 m back never saw a standing queue); 2.5 m back lies under it.
    stopline_setback_m: float = 2.5
    advance_before_stopline_m: float = 100.0
    entry_from_start_m: float = 3.0
    min_entry_zone_m: float = 30.0  # shorter zones get no entry loop: the advance loop sits at the entry
    presence_zone_m: float = 10.0  # stop-bar presence zone length; 0: none
    cameras: bool = True
    entry_cameras: bool = True  # a second camera where the approach begins (plate matches: who did not arrive)
    exit_zone_m: float = 15.0  # exit zone on unwatched roads leaving a signal; 0: none
    exit_setback_m: float = 1.0  # where the exit zone begins, past the junction


@dataclass(frozen=True)
class Loop:
    detector_id: str
    lane: str
    position: str  # entry | mid | advance | stopline | presence | feeder_in | feeder_out | exit
    pos_m: float  # where it begins on its lane
    length_m: float = 0.0  # 0: a point loop; else a presence zone from pos_m on


@dataclass(frozen=True)
class Station:
    """The loops one intersection's detector unit reports, and its cameras."""

    device_id: str
    intersection: str
    loops: tuple[Loop, ...]
    cameras: dict[str, str]  # stop-line loop id -> camera id


def place_devices(network: Network, layout: DeviceLayout) -> list[Station]:
    stations = []
    fed: set[str] = set()  # feeder lanes already equipped (a road may feed two approaches)
    watched = {lane for i in network.intersections.values() for a in i.approaches for lane in a.lanes}
    watched |= {lane for i in network.intersections.values() for a in i.approaches
                for edge in a.feeders for lane in network.edge_lanes(edge)}
    for intersection in network.intersections.values():
        loops: list[Loop] = []
        cameras: dict[str, str] = {}
        for approach in intersection.approaches:
            for lane_id in approach.lanes:
                lane = network.lanes[lane_id]
                stop_pos = max(0.1, lane.length_m - layout.stopline_setback_m)
                entry_pos = min(layout.entry_from_start_m, stop_pos * 0.5)
                adv_pos = stop_pos - layout.advance_before_stopline_m
                stop = Loop(f"ub_stop_{lane_id}", lane_id, "stopline", stop_pos)
                loops.append(stop)
                zone_m = min(layout.presence_zone_m, lane.length_m - 0.2)
                if zone_m > 0:
                    loops.append(Loop(f"ub_zone_{lane_id}", lane_id, "presence", lane.length_m - 0.1 - zone_m, zone_m))
                if adv_pos - entry_pos >= layout.min_entry_zone_m:
                    loops += [Loop(f"ub_adv_{lane_id}", lane_id, "advance", adv_pos),
                              Loop(f"ub_entry_{lane_id}", lane_id, "entry", entry_pos),
                              Loop(f"ub_mid_{lane_id}", lane_id, "mid", 0.5 * (entry_pos + adv_pos))]
                    if layout.cameras and layout.entry_cameras:
                        cameras[f"ub_entry_{lane_id}"] = f"cam_in_{approach.edge}"
                else:
                    loops.append(Loop(f"ub_adv_{lane_id}", lane_id, "advance", entry_pos))
                    if layout.cameras and layout.entry_cameras and stop_pos - entry_pos >= layout.min_entry_zone_m:
                        cameras[f"ub_adv_{lane_id}"] = f"cam_in_{approach.edge}"
                if layout.cameras:
                    cameras[stop.detector_id] = f"cam_{approach.edge}"
            for edge in approach.feeders:
                for lane_id in network.edge_lanes(edge):
                    if lane_id in fed:
                        continue
                    fed.add(lane_id)
                    length = network.lanes[lane_id].length_m
                    loops += [Loop(f"ub_fin_{lane_id}", lane_id, "feeder_in", min(layout.entry_from_start_m, length * 0.25)),
                              Loop(f"ub_fout_{lane_id}", lane_id, "feeder_out", max(0.1, length - layout.stopline_setback_m))]
        loops += _exit_zones(network, intersection.out_lanes, watched, layout)
        watched |= set(intersection.out_lanes)
        stations.append(Station(f"det_{intersection.id}", intersection.id, tuple(loops), cameras))
    return stations


def _exit_zones(network: Network, out_lanes: tuple[str, ...], watched: set[str], layout: DeviceLayout) -> list[Loop]:
    """An exit zone on each lane leaving the intersection that nothing else watches."""
    zones = []
    for lane_id in out_lanes:
        length = network.lanes[lane_id].length_m if lane_id in network.lanes else 0.0
        start = min(layout.exit_setback_m, 0.25 * length)
        zone_m = min(layout.exit_zone_m, length - start - 0.1)
        if lane_id not in watched and layout.exit_zone_m > 0 and zone_m > 0:
            zones.append(Loop(f"ub_exit_{lane_id}", lane_id, "exit", start, zone_m))
    return zones


