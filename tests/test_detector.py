"""The incident detector's rules on hand-made device events of the generated 2x2 grid."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from urbanbrain.devices.inventory import DeviceLayout, place_devices
from urbanbrain.devices.protocol import CameraPassage, ControllerState, DetectorReport, LoopReading
from urbanbrain.incidents.detector import IncidentDetector
from urbanbrain.network import read_network
from urbanbrain.state.model import CityState, LaneState
from urbanbrain.twin.sumo_twin import synthetic_plate


def _setup(grid_net: Path, state: CityState | None, zones: bool = True):
    """`zones` False: an inventory without stop-bar zones (only point loops at the stop line)."""
    network = read_network(grid_net)
    layout = DeviceLayout() if zones else DeviceLayout(presence_zone_m=0.0)
    station = next(s for s in place_devices(network, layout) if s.intersection == "A0")
    edge = next(a.edge for a in network.intersections["A0"].approaches if a.from_intersection is None)
    loops = [loop for loop in station.loops if network.lanes[loop.lane].edge == edge]
    entry_camera = next(station.cameras[loop.detector_id] for loop in loops if loop.position == "entry")
    return IncidentDetector(network, [station], state=state), station, edge, loops, entry_camera


def _second(detector, station, time: float, seq: int, counts: dict[str, int] | None = None, queue: bool = False,
            zone: bool = False):
    """One second of A0's loops: nothing passing unless `counts` (loop id -> vehicles);
    `queue`: a queue standing at every stop line (its loop and stop-bar zone held
    occupied); `zone`: only the stop-bar zones held occupied (the head stopped short of
    the loop)."""
    counts = counts or {}
    occupied = {"stopline": queue, "presence": queue or zone}
    readings = [LoopReading(detector_id=loop.detector_id, lane=loop.lane, position=loop.position,
                            count=counts.get(loop.detector_id, 0),
                            occupancy=1.0 if occupied.get(loop.position) else 0.0)
                for loop in station.loops]
    detector.on_detector(DetectorReport(device_id=station.device_id, seq=seq, time=time, interval_s=1.0, readings=readings))


def _watched(net: Path, zones: bool = True):
    """A0's station with a state estimate, and the approach and entry lane a test watches."""
    state = CityState(source="sensors")
    detector, station, edge, loops, camera = _setup(net, state, zones)
    state.lanes = {loop.lane: LaneState() for loop in loops}
    lane = next(loop.lane for loop in loops if loop.position == "entry")
    return detector, station, loops, camera, state, detector._entry_camera[camera], lane


def _enter(detector, camera: str, lane: str, plate: str, time: float, seq: int) -> None:
    detector.on_camera(CameraPassage(device_id=camera, seq=seq, time=time, lane=lane, speed_ms=10.0,
                                     plate=synthetic_plate(plate), vehicle_class="car"))


def test_a_vehicle_explained_away_for_ten_minutes_is_forgotten_not_alerted(grid_net: Path):
    """A plate never read at the stop line while a queue stood there the whole time
    (a missed read, a vehicle towed or parked) must not raise an alert once the queue
    clears; one that is overdue now does."""
    detector, station, edge, loops, camera = _setup(grid_net, None)
    lane = next(loop.lane for loop in loops if loop.position == "entry")
    approach = detector._entry_camera[camera]
    _enter(detector, camera, lane, "old", 0.0, 0)
    late = approach.expected_s + detector.settings.stale_s + 5.0
    for second in range(1, int(late)):
        _second(detector, station, float(second), second, queue=True)
    assert detector.alerts == []
    _enter(detector, camera, lane, "new", late - approach.expected_s - 20.0, 1)
    for second in range(int(late), int(late) + 15):
        _second(detector, station, float(second), second)
    assert len(detector.alerts) == 1 and detector.alerts[0].evidence["vehicles_stopped"] == 1
    assert detector.alerts[0].started_at == late - approach.expected_s - 20.0, "the alert is about the new vehicle"


def test_a_drifted_lane_count_does_not_explain_a_stopped_vehicle_away(grid_net: Path):
    """Five vehicles counted in at a red lane's advance loop and never out (they changed
    lanes around something) would say five may be waiting there; the state estimate,
    corrected by occupancy, says none are, and then the overdue vehicle is alerted (on
    point loops alone: an empty stop-bar zone would tell so by itself)."""
    for state, alerted in ((None, False), (CityState(source="sensors"), True)):
        detector, station, edge, loops, camera = _setup(grid_net, state, zones=False)
        advance = next(loop for loop in loops if loop.position == "advance")
        if state is not None:
            state.lanes = {loop.lane: LaneState() for loop in loops}
        approach = detector._entry_camera[camera]
        _second(detector, station, 1.0, 1, counts={advance.detector_id: 3})  # five over two seconds: as many
        _second(detector, station, 2.0, 2, counts={advance.detector_id: 2})  # as a lane can pass
        _enter(detector, camera, advance.lane, "v", 2.0, 0)
        for second in range(3, int(approach.expected_s) + 10):
            _second(detector, station, float(second), second)
        assert bool(detector.alerts) is alerted


def test_a_long_jam_ahead_explains_the_delay_until_it_clears(grid_net: Path):
    """While the exits are full every vehicle on the link is held back; when a jam that
    lasted longer than the link's expected time eases, its vehicles are all late at
    once and must get their driving time again before one counts as stopped (the demo
    city's bench alerted 27 "stopped" vehicles the second such a jam eased). A jam
    shorter than that cannot make a vehicle overdue by itself and changes nothing."""
    for jam_factor, first_alert in ((1.5, "after the jam"), (0.5, "in time")):
        state = CityState(source="sensors")
        detector, station, edge, loops, camera = _setup(grid_net, state)
        approach = detector._entry_camera[camera]
        state.lanes = {loop.lane: LaneState() for loop in loops}
        lane = next(loop.lane for loop in loops if loop.position == "entry")
        _enter(detector, camera, lane, "v", 2.0, 0)
        jam_end = 3 + int(jam_factor * approach.expected_s)
        due = (jam_end if first_alert == "after the jam" else 2.0) + approach.expected_s
        for second in range(3, int(due) + 10):
            for exit_lane, capacity in approach.exits:
                state.lanes[exit_lane] = LaneState(vehicles=capacity if second < jam_end else 0.0)
            _second(detector, station, float(second), second, queue=second < jam_end)
            if second < due - 2:
                assert detector.alerts == [], f"{first_alert}: alerted at {second} s, due {due:.0f} s"
        assert len(detector.alerts) == 1, first_alert


def test_a_full_exit_explains_nothing_while_no_queue_stands_at_the_stop_line(grid_net: Path):
    """A jam on the exits holds the approach's vehicles back only through its queue at the
    stop line. When nothing stands there for all that time, the vehicle that does not
    arrive stopped before it: it is alerted in its expected time (the demo city's bench
    missed a vehicle stalled on a one-lane link for 26 minutes because one of its exits
    was full, with nobody standing at its stop line)."""
    for queue, alerted in ((False, True), (True, False)):
        detector, station, loops, camera, state, approach, lane = _watched(grid_net)
        _enter(detector, camera, lane, "v", 1.0, 0)
        for second in range(2, int(approach.expected_s) + 15):
            for exit_lane, capacity in approach.exits:
                state.lanes[exit_lane] = LaneState(vehicles=capacity)
            _second(detector, station, float(second), second, queue=queue)
        assert bool(detector.alerts) is alerted


def test_vehicles_on_the_stop_bar_zone_off_the_loop_may_hold_an_overdue_one(grid_net: Path):
    """The head of a queue may stop short of the stop-line point loop (behind a vehicle
    still in the junction); the stop-bar zone still has it. Vehicles standing on the
    zone, or streaming across it (one coming on every two seconds), while it has not
    stood empty since the overdue vehicle was due, may include that vehicle: no alert.
    Once the zone stood empty after it was due, the same stream does not hold it."""
    for empty_after_due, alerted in ((None, False), (False, False), (True, True)):
        detector, station, loops, camera, state, approach, lane = _watched(grid_net)
        zones = [loop.detector_id for loop in loops if loop.position == "presence"]
        assert zones, "every approach lane has a stop-bar zone"
        _enter(detector, camera, lane, "v", 1.0, 0)
        due = 1.0 + detector.settings.drive_factor * approach.drive_s
        for second in range(2, int(approach.expected_s) + 15):
            counts = {zone_id: 1 for zone_id in zones} if empty_after_due is not None and second % 2 == 0 else None
            occupied = not (empty_after_due and due < second <= due + 5)
            _second(detector, station, float(second), second, counts=counts if occupied else None, zone=occupied)
        assert bool(detector.alerts) is alerted


def test_a_queue_holds_only_vehicles_due_after_its_stop_line_last_stood_clear(grid_net: Path):
    """A queue standing at the stop line may hold an overdue vehicle only if that vehicle
    was due there after the stop-bar zone last stood empty: one due before had arrived
    while nobody stood there, and would have been let across or be standing first. So a
    queue that formed after the vehicle was due does not explain it away (on hangzhou_4x4
    the red queues of other lanes hid a vehicle stalled for ten minutes), and one that
    stood since before it was due does."""
    for cleared_after_due, alerted in ((True, True), (False, False)):
        detector, station, loops, camera, state, approach, lane = _watched(grid_net)
        _enter(detector, camera, lane, "v", 1.0, 0)
        due = 1.0 + detector.settings.drive_factor * approach.drive_s
        for second in range(2, int(approach.expected_s) + 15):
            queue = second > due + 5 if cleared_after_due else True
            _second(detector, station, float(second), second, queue=queue)
        assert bool(detector.alerts) is alerted


def test_an_alerted_vehicle_that_drives_on_resolves_its_alert_and_has_more_time_next(grid_net: Path):
    """A vehicle alerted as stopped and then read at the stop line had not stopped for good
    (slow, or stalled and started again): its alert is resolved then, and the others on
    the link, held by whatever held it, have their time again. On the next link it drives
    it has as many times its free driving time as it took here (hangzhou_4x4: one vehicle
    at half the speed limit was alerted on three links in a row)."""
    detector, station, loops, camera, state, approach, lane = _watched(grid_net)
    stop_camera = _stop_camera(station, loops)
    _enter(detector, camera, lane, "slow", 0.0, 0)
    _enter(detector, camera, lane, "other", 10.0, 1)
    alerted = int(approach.expected_s) + 2
    for second in range(1, alerted + 1):
        _second(detector, station, float(second), second)
    assert len(detector.alerts) == 1 and detector.alerts[0].started_at == 0.0
    arrived = alerted + 20
    for second in range(alerted + 1, arrived):
        _second(detector, station, float(second), second)
    _enter(detector, stop_camera, lane, "slow", float(arrived), 2)
    assert detector.alerts[0].resolved_at == arrived, "it drove on"
    for second in range(arrived, arrived + int(approach.expected_s) - 2):
        _second(detector, station, float(second), second)
    assert len(detector.alerts) == 1, "the other vehicle, held like it, has its time again"
    _enter(detector, stop_camera, lane, "other", float(arrived + approach.expected_s - 2), 3)
    again = arrived + int(approach.expected_s)
    _enter(detector, camera, lane, "slow", float(again), 4)
    slow_s = arrived - detector.settings.drive_factor * approach.drive_s  # it took `arrived` s here: that much longer
    for second in range(again + 1, again + int(approach.expected_s + slow_s) - 2):
        _second(detector, station, float(second), second)
    assert len(detector.alerts) == 1, "on its next trip it has the time it took"
    for second in range(again + int(approach.expected_s + slow_s) - 2, again + int(approach.expected_s + slow_s) + 5):
        _second(detector, station, float(second), second)
    assert len(detector.alerts) == 2, "and no more"


def test_a_vehicle_that_stalled_and_drove_on_is_not_taken_for_slow(grid_net: Path):
    """A vehicle read at the stop line long after its alert (more than the link's expected
    time) had stopped and started again, not driven slowly: on its next trip it has the
    usual time. One found slow is remembered only for `slow_memory_s`."""
    for came_after_s, memory_s, alerted_next_trip in ((200.0, 3600.0, True), (20.0, 3600.0, False), (20.0, 30.0, True)):
        detector, station, loops, camera, state, approach, lane = _watched(grid_net)
        detector.settings = replace(detector.settings, slow_memory_s=memory_s)
        _enter(detector, camera, lane, "v", 0.0, 0)
        alerted = int(approach.expected_s) + 2
        arrived = alerted + int(came_after_s)
        for second in range(1, arrived):
            _second(detector, station, float(second), second)
        assert len(detector.alerts) == 1
        _enter(detector, _stop_camera(station, loops), lane, "v", float(arrived), 1)
        again = arrived + 60
        _enter(detector, camera, lane, "v", float(again), 2)
        for second in range(arrived, again + int(approach.expected_s) + 10):
            _second(detector, station, float(second), second)
        assert (len(detector.alerts) == 2) is alerted_next_trip, (came_after_s, memory_s)


def _stop_camera(station, loops) -> str:
    return next(station.cameras[loop.detector_id] for loop in loops if loop.position == "stopline")


def test_on_one_lane_a_vehicle_from_behind_at_the_stop_line_resolves_the_alert(grid_net: Path, one_lane_grid_net: Path):
    """Nobody overtakes on one lane: a vehicle that entered behind the alert's vehicle and
    reached the stop line proves it is gone (towed), so the alert is resolved; any other
    vehicle that entered before the alert and was never read went with it (a crash
    partner, towed too) and is not alerted later; one that entered after the alert has
    its driving time again from the tow, and is stopped if it does not come. On two
    lanes the same read proves nothing (it may have driven round)."""
    for net, resolves in ((one_lane_grid_net, True), (grid_net, False)):
        detector, station, loops, camera, state, approach, lane = _watched(net)
        _enter(detector, camera, lane, "stalled", 0.0, 0)
        _enter(detector, camera, lane, "partner", 3.0, 1)
        _enter(detector, camera, lane, "behind", 5.0, 2)
        towed = int(approach.expected_s) + 30
        for second in range(1, towed):
            if second == towed - 10:
                _enter(detector, camera, lane, "late", float(second), 3)
            _second(detector, station, float(second), second)
        assert len(detector.alerts) == 1 and detector.alerts[0].started_at == 0.0
        assert detector.alerts[0].evidence["vehicles_stopped"] == 1
        _enter(detector, _stop_camera(station, loops), lane, "behind", float(towed), 4)
        assert (detector.alerts[0].resolved_at == towed) is resolves
        for second in range(towed, towed + int(approach.expected_s) - 5):
            _second(detector, station, float(second), second)
        assert len(detector.alerts) == 1, "the vehicle held behind has its driving time again"
        for second in range(towed + int(approach.expected_s) - 5, towed + int(approach.expected_s) + 10):
            _second(detector, station, float(second), second)
        if resolves:
            assert len(detector.alerts) == 2, "a vehicle still missing after that is stopped"
            assert detector.alerts[1].started_at == towed - 10 and detector.alerts[1].evidence["vehicles_stopped"] == 1, \
                "the one that entered after the alert, not the towed partner"
        else:
            assert len(detector.alerts) == 1


def test_a_vehicle_a_long_jam_held_is_not_forgotten_when_it_eases(grid_net: Path):
    """A vehicle unseen for ten minutes beyond its driving time is forgotten (a missed
    read, a vehicle that left the road), but not when a jam ahead held it all that time:
    its clock starts again when the jam eases, and if it does not come then it has
    stopped (ingolstadt7's bench: a vehicle queued for 15 minutes broke down as the
    queue moved)."""
    detector, station, loops, camera, state, approach, lane = _watched(grid_net)
    _enter(detector, camera, lane, "v", 0.0, 0)
    eased = int(approach.expected_s + detector.settings.stale_s) + 60
    for second in range(1, eased + int(approach.expected_s) + 10):
        for exit_lane, capacity in approach.exits:
            state.lanes[exit_lane] = LaneState(vehicles=capacity if second < eased else 0.0)
        _second(detector, station, float(second), second, queue=second < eased)
        if second < eased + approach.expected_s - 2:
            assert detector.alerts == [], f"alerted at {second} s"
    assert len(detector.alerts) == 1 and detector.alerts[0].started_at == 0.0


def test_vehicles_behind_a_queue_longer_than_the_loops_see_have_time_to_leave(grid_net: Path):
    """A queue at a red reaching back past the advance loop: the loops count the vehicles
    near the stop line as waiting, the ones behind them are late only by the time the
    vehicles ahead need to leave, so no alert (without that allowance there is one);
    when nobody leaves for long the first vehicles are alerted all the same (point loops
    only, as the loops count them)."""
    for headway_s, alerted_early in ((4.0, False), (0.0, True)):
        detector, station, loops, camera, state, approach, lane = _watched(grid_net, zones=False)
        detector.settings = replace(detector.settings, queue_headway_s=headway_s)
        advance = next(loop for loop in loops if loop.position == "advance" and loop.lane == lane)
        state.lanes[lane] = LaneState(vehicles=8, queue=3)
        _second(detector, station, 0.5, 0, counts={advance.detector_id: 3})
        for k in range(8):
            _enter(detector, camera, lane, f"v{k}", float(k), k)
        early = int(approach.expected_s) + 8  # two lanes: 2 s per vehicle ahead, so v0-v2 are overdue, v3-v7 not yet
        for second in range(1, early + 1):
            _second(detector, station, float(second), second)
        assert bool(detector.alerts) is alerted_early
        for second in range(early + 1, early + 40):
            _second(detector, station, float(second), second)
        assert len(detector.alerts) == 1


def test_a_junction_that_lets_no_one_across_at_green_holds_its_queue_like_a_jam(grid_net: Path):
    """A queue at the stop line that does not move at green (the junction's box locked,
    its exits jammed beyond what the loops see) held every vehicle behind it: when it
    moves again after longer than the link's expected time, they get their driving time
    again. A queue that crossed at its greens explains nothing once it has gone. The head
    may stand short of the stop-line loop: a stop-bar zone held with nobody coming onto
    it for 3 s is a standing queue too."""
    for crossing, short, alerted_at_once in ((False, False, False), (True, False, True), (False, True, False)):
        detector, station, loops, camera, state, approach, lane = _watched(grid_net)
        stopline = [loop.detector_id for loop in loops if loop.position == "stopline"]
        groups = {g for lane_groups in detector._groups["A0"].values() for g in lane_groups}
        mine = {g for stop_lane in approach.lanes for g in detector._groups["A0"][stop_lane]}
        green = "".join("G" if g in mine else "r" for g in range(max(groups) + 1))
        detector.on_controller(ControllerState(device_id="ctl", seq=0, time=0.0, intersection="A0", signal_state=green,
                                               phase=0, time_in_phase_s=0.0, mode="remote"))
        _enter(detector, camera, lane, "v", 1.0, 0)
        eased = 2 + int(1.5 * approach.expected_s)
        for second in range(2, eased):
            counts = {loop: 1 for loop in stopline} if crossing and second % 3 == 0 else None
            _second(detector, station, float(second), second, counts=counts, queue=not short, zone=short)
        assert detector.alerts == []
        for second in range(eased, eased + 15):
            _second(detector, station, float(second), second)
        assert bool(detector.alerts) is alerted_at_once
