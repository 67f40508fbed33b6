"""Bad input is rejected with the field and reason named, and changes no state."""

from __future__ import annotations

import json

import pytest

from urbanbrain.core.bus import EventBus
from urbanbrain.devices import ProtocolError, SignalCommand, parse_command, parse_event
from urbanbrain.devices.ingress import Ingress
from urbanbrain.network import read_network
from urbanbrain.state import SensorEstimator

GOOD_DETECTOR = {
    "kind": "detector", "device_id": "det_A", "seq": 1, "time": 10.0, "interval_s": 1.0,
    "readings": [{"detector_id": "d1", "lane": "L1", "position": "advance", "count": 2, "occupancy": 0.3}],
}


def fields(exc: ProtocolError) -> list[str]:
    return [field for field, _ in exc.errors]


def test_valid_messages_round_trip_as_json():
    event = parse_event(json.dumps(GOOD_DETECTOR))
    assert parse_event(event.model_dump_json()) == event
    command = parse_command({"device_id": "brain", "seq": 3, "time": 5, "intersection": "J1", "action": "go", "phase": 2})
    assert command.version == "1.2"
    assert parse_command(command.model_dump_json()) == command


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"seq": -1}, "detector.seq"),
        ({"time": "soon"}, "detector.time"),
        ({"interval_s": 0}, "detector.interval_s"),
        ({"readings": []}, "detector.readings"),
        ({"readings": [{**GOOD_DETECTOR["readings"][0], "occupancy": 1.5}]}, "detector.readings.0.occupancy"),
        ({"readings": [{**GOOD_DETECTOR["readings"][0], "position": "middle"}]}, "detector.readings.0.position"),
        ({"version": "0.9"}, "detector.version"),
        ({"colour": "red"}, "detector.colour"),
    ],
)
def test_malformed_event_names_the_field(change, field):
    with pytest.raises(ProtocolError) as caught:
        parse_event({**GOOD_DETECTOR, **change})
    assert field in fields(caught.value)
    assert field in str(caught.value)


def test_unknown_kind_and_non_json_are_named():
    with pytest.raises(ProtocolError) as caught:
        parse_event({**GOOD_DETECTOR, "kind": "radar"})
    assert "kind" in str(caught.value)
    with pytest.raises(ProtocolError, match="not valid JSON"):
        parse_event("{not json")
    with pytest.raises(ProtocolError, match="expected a JSON object"):
        parse_event("[1, 2]")


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"action": "go"}, "phase"),  # go without a phase
        ({"action": "jump", "phase": 1}, "action"),
        ({"action": "go", "phase": -2}, "phase"),
        ({"action": "hold", "min_green_s": 1e9}, "min_green_s"),
        ({"action": "hold", "yellow_s": float("nan")}, "yellow_s"),
    ],
)
def test_malformed_command_names_the_field(data, field):
    base = {"device_id": "brain", "seq": 1, "time": 1.0, "intersection": "J1"}
    with pytest.raises(ProtocolError) as caught:
        parse_command({**base, **data})
    assert field in fields(caught.value) or field in str(caught.value)


def test_go_without_phase_says_why():
    with pytest.raises(ProtocolError, match="needs a target phase"):
        parse_command({"device_id": "b", "seq": 1, "time": 1.0, "intersection": "J1", "action": "go"})


def test_commands_are_immutable():
    command = SignalCommand(device_id="b", seq=1, time=1.0, intersection="J", action="hold")
    with pytest.raises(Exception):
        command.phase = 3  # type: ignore[misc]


def test_a_bad_item_rejects_the_whole_batch_and_changes_no_state(grid_net):
    network = read_network(grid_net)
    bus = EventBus()
    estimator = SensorEstimator(network, bus)
    lane = next(iter(estimator.state.lanes))
    good = {**GOOD_DETECTOR, "readings": [{"detector_id": "d", "lane": lane, "position": "advance", "count": 3, "occupancy": 0.1}]}
    bad = {**good, "seq": 2, "readings": [{**good["readings"][0], "count": -4}]}
    before = estimator.state.lanes[lane].vehicles
    ingress = Ingress(bus)
    with pytest.raises(ProtocolError) as caught:
        ingress.publish_batch([good, bad])
    assert fields(caught.value) == ["[1].detector.readings.0.count"]
    assert estimator.state.lanes[lane].vehicles == before
    assert ingress.publish_batch([good]) == 1
    assert estimator.state.lanes[lane].vehicles == before + 3
    # a device resending (same or older sequence number) is not counted twice
    assert ingress.publish_batch([good, {**good, "seq": 0}]) == 0
    assert estimator.state.lanes[lane].vehicles == before + 3


@pytest.mark.parametrize(
    ("change", "field"),
    [({"seq": True}, "detector.seq"), ({"seq": "7"}, "detector.seq"), ({"time": "12"}, "detector.time"),
     ({"device_id": "det\x00A"}, "detector.device_id")],
)
def test_no_lax_conversions(change, field):
    with pytest.raises(ProtocolError) as caught:
        parse_event({**GOOD_DETECTOR, **change})
    assert field in fields(caught.value)


def test_a_loop_reported_twice_in_one_report_is_rejected():
    reading = GOOD_DETECTOR["readings"][0]
    with pytest.raises(ProtocolError, match="reported twice"):
        parse_event({**GOOD_DETECTOR, "readings": [reading, reading]})
