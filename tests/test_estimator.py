"""The state estimator's corrections from loop occupancy, on a real feeder road."""

from __future__ import annotations

import pytest

from conftest import scenario_cfg
from urbanbrain.devices.inventory import DeviceLayout, place_devices
from urbanbrain.devices.protocol import DetectorReport, LoopReading
from urbanbrain.network import read_network
from urbanbrain.state import SensorEstimator
from urbanbrain.state.estimator import JAM_SPACING_M
from urbanbrain.twin.scenario import load_scenario

FEEDER = "10425609#0"  # ingolstadt7: a 44 m road at the network's edge feeding a 1 m approach of gneJ143
APPROACH = "10425609#1"


@pytest.fixture(scope="module")
def ingolstadt7():
    network = read_network(load_scenario(scenario_cfg("ingolstadt7")).net_file)
    station = next(s for s in place_devices(network, DeviceLayout()) if s.intersection == "gneJ143")
    return network, station


def _report(station, seq: int, time: float, occupancy: dict[str, float]) -> DetectorReport:
    """One second with nothing counted; each loop's occupancy by its position."""
    readings = [LoopReading(detector_id=loop.detector_id, lane=loop.lane, position=loop.position, count=0,
                            occupancy=occupancy.get(loop.position, 0.0) if loop.lane.startswith(FEEDER) else 0.0)
                for loop in station.loops]
    return DetectorReport(device_id=station.device_id, seq=seq, time=time, interval_s=1.0, readings=readings)


def _upstream_queue(estimator: SensorEstimator) -> float:
    return sum(lane.upstream_queue for lane_id, lane in estimator.state.lanes.items() if lane_id.startswith(APPROACH))


def test_a_feeder_standing_full_to_its_start_counts_as_full(ingolstadt7):
    """Vehicles that appear on a road at the network's edge are never counted in by its
    start loop (they are placed beside it); a queue standing over the start loop
    proves the road is full, whatever the counts say."""
    network, station = ingolstadt7
    estimator = SensorEstimator(network)
    for second in range(10):
        estimator.on_detector(_report(station, second, 100.0 + second, {"feeder_in": 1.0, "feeder_out": 1.0}))
    lanes = network.edge_lanes(FEEDER)
    full = len(lanes) * (network.lanes[lanes[0]].length_m / JAM_SPACING_M - 1.0)
    assert _upstream_queue(estimator) == pytest.approx(full)


def test_a_queue_standing_only_at_the_end_is_not_taken_for_a_full_road(ingolstadt7):
    network, station = ingolstadt7
    estimator = SensorEstimator(network)
    for second in range(10):
        estimator.on_detector(_report(station, second, 100.0 + second, {"feeder_out": 1.0}))
    assert _upstream_queue(estimator) == 0.0  # nothing was counted in, and nothing proves more
