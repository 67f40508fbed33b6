"""Incident detection from device events only: a vehicle that entered an approach and
has not arrived at its stop line, though the road ahead of it is free.

Every long approach has an ANPR camera where it begins and one at its stop line. A
vehicle read at the first and not yet at the second is on the way; normally it
arrives within the time it takes to drive the link, plus the wait in the queue at a
red. So when a vehicle is overdue (well past the driving time) and nothing at the
stop line explains it, nothing explains where it is but that it has stopped on the
link: broken down, or crashed (if more than one vehicle is overdue together on the
same link, a crash). What explains it:
- vehicles at the stop line it may be among: a loop held occupied, or a stop-bar zone
  occupied by vehicles standing or moving across; but a lane's stop line holds only
  vehicles due there after it last stood empty;
- a red (or yielding) lane: as many overdue vehicles as it holds may wait there;
- an exit lane full back to its start while the approach's own queue reaches its stop
  line: a jam ahead. After a jam that lasted longer than the link's expected time
  (which holds back every vehicle on it) the clock of each starts again when it eases;
  a queue at the stop line that no green lets across, its junction locked, is such a
  jam;
- a vehicle has a headway more for each vehicle that entered before it and is still on
  the link: the queue it waits behind.

Plate reads are exact identities, so unlike loop counts they do not drift: a count
that lost one vehicle would raise a false alarm for ever, a plate never read
downstream raises it once.

What may be waiting at the signal is counted between each lane's advance and stop-line
loops, but never above the state estimate where there is one (vehicles changing lanes
in that stretch, round a stalled vehicle for one, leave a lane's own count too high for
good, and a stopped vehicle would be explained away). A plate overdue for ten minutes
beyond its driving time (counted, like the rest, from the end of a long jam that held it)
without an alert is forgotten: a read was missed or the vehicle
left the road (towed, parked), and an alert that late would help nobody.

The alert is resolved when the overdue vehicles are read at the stop line (they drove
on: whatever held them held the others on the link too, whose clocks start again, and
a vehicle that came soon after its alert, slow, has as many times its driving time as
it took on every link it drives in the next hour), on a one-lane link when a vehicle that entered behind them is (nobody overtakes
there: they were taken away), or when the link has carried traffic normally again — every vehicle that
entered after the incident was found arriving in its driving time — for a while
(they were towed away; nothing on the road says so).

One configuration for every city: times are multiples of each link's own driving
time, plus seconds of traffic-signal waiting.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from urbanbrain.core.bus import EventBus
from urbanbrain.devices.inventory import Station
from urbanbrain.devices.protocol import CameraPassage, ControllerState, DetectorReport
from urbanbrain.network.model import Network
from urbanbrain.state.estimator import JAM_SPACING_M
from urbanbrain.state.model import CityState

ON_WAY_SLACK = 2  # vehicles on the way to a link's stop line: at most this many times what it holds standing


@dataclass(frozen=True)
class DetectorSettings:
    drive_factor: float = 1.5  # a vehicle is expected within this many times the link's free driving time ...
    signal_wait_s: float = 40.0  # ... plus this much waiting at the signal
    queue_occupancy: float = 0.9  # a stop-line loop this occupied holds a standing queue
    queue_memory_s: float = 10.0  # ... and the queue counts as still there this long after
    start_up_s: float = 10.0  # vehicles waiting at a red are still leaving this long into the green
    full_exit: float = 0.85  # an exit lane this full (of its standing capacity) holds the approach back: a jam ...
    jam_at_line_s: float = 10.0  # ... while its queue reaches the stop line (a vehicle stood there this recently)
    standing_s: float = 3.0  # a stop-bar zone occupied this long with no vehicle coming onto it holds a standing queue
    slow_memory_s: float = 3600.0  # a plate found slow is remembered this long (a trip)
    at_line_s: float = 3.0  # a lane with a vehicle at its stop line this recently may hold an overdue vehicle (see _check)
    recovered_vehicles: int = 5  # vehicles in a row arriving in time after the alert ...
    recovered_s: float = 120.0  # ... over at least this long: traffic has recovered
    queue_headway_s: float = 4.0  # a vehicle still has this long per vehicle ahead of it on its lane (a saturation headway at half green)
    stale_s: float = 600.0  # a vehicle overdue this much longer, never alerted, is forgotten (an alert so late helps nobody)


@dataclass
class IncidentAlert:
    """An incident found: where (the approach edge), when, and why."""

    id: str
    edge: str
    intersection: str
    zone: str
    from_m: float
    to_m: float
    detected_at: float
    started_at: float  # when the overdue vehicle entered the link
    evidence: dict
    resolved_at: float | None = None


@dataclass
class _Lane:
    """What one approach lane's loops and signal heads tell."""

    between: int = 0  # vehicles counted in at the advance loop and not yet out at the stop line
    protected_since: float | None = None  # its movements all show protected green (`G`) since
    green_since: float | None = None  # one of its movements shows green (`G` or `g`) since
    crossed: float = float("-inf")  # last time a vehicle crossed its stop line
    occupied: float = float("-inf")  # last time a vehicle was at its stop line (its loop held, or its zone occupied)
    still_s: float = 0.0  # its stop-bar zone has been held with no vehicle coming onto it this long
    clear_s: float = 0.0  # its stop-bar zone has been empty this long ...
    cleared: float = float("-inf")  # ... and was empty for `standing_s` last then


@dataclass
class _Approach:
    edge: str
    intersection: str
    expected_s: float
    drive_s: float  # its free driving time
    from_m: float
    to_m: float
    stoplines: frozenset[str]
    on_way: dict[str, tuple[float, int]] = field(default_factory=dict)  # plate -> (entered, entry number), in the order they entered
    entries: int = 0
    arrived_after: dict[str, int] = field(default_factory=dict)  # plate -> later entrants arrived
    queue_seen: float = float("-inf")  # last time a queue stood at its stop line (see on_detector)
    jam_seen: float = float("-inf")  # last time a long jam ahead held the approach back
    jam_since: float | None = None  # the jam ahead now holding it back began then
    blocked: bool = False  # the junction let none of its queue across at its last green (see _blocked_at_line)
    lanes: dict[str, _Lane] = field(default_factory=dict)
    exits: tuple[tuple[str, float], ...] = ()  # (exit lane, its standing capacity in vehicles)
    alert: IncidentAlert | None = None
    stopped: dict[str, float] = field(default_factory=dict)  # the alert's vehicles: plate -> when it entered
    stopped_last: int = 0  # entry number of the alert's last vehicle
    in_time: int = 0  # vehicles entering after the alert that arrived in time, in a row


class IncidentDetector:
    """Listens to camera passages and detector reports on the bus; `alerts` lists what it found."""

    def __init__(self, network: Network, stations: list[Station], bus: EventBus | None = None,
                 settings: DetectorSettings | None = None, state: CityState | None = None):
        """`state` is the city state estimated from the same events (its exit lanes tell a
        jam ahead, which holds vehicles back without any of them having stopped)."""
        self.settings = settings or DetectorSettings()
        self.state = state
        self.alerts: list[IncidentAlert] = []
        # plate -> (how many times its free driving time a vehicle took on a link where it
        # was alerted and soon drove on, when): slow (a learner, a truck, a lost driver), it
        # has that long on every link it drives next, for `slow_memory_s`
        self._slow: dict[str, tuple[float, float]] = {}
        self._entry_camera: dict[str, _Approach] = {}
        self._stop_camera: dict[str, _Approach] = {}
        self._stopline_loop: dict[str, _Approach] = {}
        self._presence_zone: dict[str, _Approach] = {}
        self._lane_loop: dict[str, tuple[_Approach, str, int]] = {}  # advance / stop-line loop -> (approach, lane, sign)
        self._groups: dict[str, dict[str, tuple[int, ...]]] = {}  # intersection -> lane -> its signal groups
        for intersection in network.intersections.values():
            groups: dict[str, set[int]] = {}
            for movement in intersection.movements:
                groups.setdefault(movement.in_lane, set()).add(movement.signal_group)
            self._groups[intersection.id] = {lane: tuple(g) for lane, g in groups.items()}
        self._by_intersection: dict[str, list[_Approach]] = {}
        # The loop at each lane's upstream end (entry, feeder-in, or an advance loop at the
        # start of a short approach): held occupied, its lane is full back to its start.
        self._start_loop: dict[str, str] = {}
        for station in stations:
            for loop in sorted(station.loops, key=lambda l: l.pos_m, reverse=True):
                if loop.position in ("entry", "feeder_in", "advance"):
                    self._start_loop[loop.detector_id] = loop.lane
        self._full_since: dict[str, float] = {}  # lane -> last time its start loop was held occupied
        owner = {a.edge: i.id for i in network.intersections.values() for a in i.approaches}
        for station in stations:
            by_edge: dict[str, dict] = {}
            for loop in station.loops:
                edge = network.lanes[loop.lane].edge
                camera = station.cameras.get(loop.detector_id)
                if edge in owner and camera is not None:
                    by_edge.setdefault(edge, {}).setdefault(loop.position, []).append((loop, camera))
            for edge, seen in by_edge.items():
                if "entry" not in seen and "advance" in seen:
                    seen["entry"] = seen["advance"]  # a short approach: its camera stands over the advance loops at its start
                if "entry" not in seen or "stopline" not in seen:
                    continue
                start = min(loop.pos_m for loop, _ in seen["entry"])
                end = max(loop.pos_m for loop, _ in seen["stopline"])
                speed = min(network.lanes[loop.lane].speed_limit_ms for loop, _ in seen["entry"])
                drive_s = (end - start) / max(1.0, speed)
                approach = _Approach(edge, owner[edge], self.settings.drive_factor * drive_s + self.settings.signal_wait_s,
                                     drive_s, start, end, frozenset(loop.detector_id for loop, _ in seen["stopline"]))
                for _, camera in seen["entry"]:
                    self._entry_camera[camera] = approach
                for loop, camera in seen["stopline"]:
                    self._stop_camera[camera] = approach
                    self._stopline_loop[loop.detector_id] = approach
                    self._lane_loop[loop.detector_id] = (approach, loop.lane, -1)
                    approach.lanes[loop.lane] = _Lane()
                for loop in station.loops:
                    if loop.position == "advance" and loop.lane in approach.lanes:
                        self._lane_loop[loop.detector_id] = (approach, loop.lane, +1)
                    elif loop.position == "presence" and loop.lane in approach.lanes:
                        self._presence_zone[loop.detector_id] = approach
                self._by_intersection.setdefault(approach.intersection, []).append(approach)
                exits = {m.out_lane for m in network.intersections[approach.intersection].movements
                         if m.in_lane in approach.lanes}
                approach.exits = tuple((lane, max(1.0, network.lanes[lane].length_m / JAM_SPACING_M))
                                       for lane in sorted(exits) if lane in network.lanes)
        if bus is not None:
            bus.subscribe("camera", self.on_camera)
            bus.subscribe("detector", self.on_detector)
            bus.subscribe("controller", self.on_controller)

    def on_controller(self, report: ControllerState) -> None:
        """Which lanes show protected green, and since when: vehicles waiting at a red, or
        yielding at a permissive green (`g`), are no incident; and which show any green:
        a queue that no green lets across is a blocked junction (`_blocked_at_line`)."""
        groups = self._groups.get(report.intersection, {})
        for approach in self._by_intersection.get(report.intersection, ()):
            for lane, entry in approach.lanes.items():
                shown = [report.signal_state[g] for g in groups.get(lane, ()) if g < len(report.signal_state)]
                protected = bool(groups.get(lane)) and len(shown) == len(groups[lane]) and all(c == "G" for c in shown)
                entry.protected_since = (entry.protected_since if entry.protected_since is not None
                                         else report.time) if protected else None
                green = any(c in "Gg" for c in shown)
                entry.green_since = (entry.green_since if entry.green_since is not None else report.time) if green else None

    def on_detector(self, report: DetectorReport) -> None:
        """Update what the loops tell, then check the approaches this station watches
        (each once per report of its own station, after that second's camera reads).
        A queue stands at the stop line when its loop is held occupied, or its stop-bar
        zone is with no vehicle coming onto it for `standing_s` (the head stopped short of
        the loop); a zone held by vehicles streaming across is no queue."""
        watched: dict[int, _Approach] = {}
        for reading in report.readings:
            approach = self._stopline_loop.get(reading.detector_id)
            if approach is not None:
                watched[id(approach)] = approach
                if reading.occupancy >= self.settings.queue_occupancy:
                    approach.queue_seen = approach.lanes[reading.lane].occupied = report.time
            zoned = self._presence_zone.get(reading.detector_id)
            if zoned is not None:
                held = reading.occupancy >= self.settings.queue_occupancy
                lane_entry = zoned.lanes[reading.lane]
                if held:
                    lane_entry.occupied = report.time
                lane_entry.clear_s = 0.0 if reading.occupancy > 0 else lane_entry.clear_s + report.interval_s
                if lane_entry.clear_s >= self.settings.standing_s:
                    lane_entry.cleared = report.time
                lane_entry.still_s = lane_entry.still_s + report.interval_s if held and not reading.count else 0.0
                if lane_entry.still_s >= self.settings.standing_s:
                    zoned.queue_seen = report.time
            lane = self._start_loop.get(reading.detector_id)
            if lane is not None and reading.occupancy >= self.settings.queue_occupancy:
                self._full_since[lane] = report.time
            placed = self._lane_loop.get(reading.detector_id)
            if placed is not None and reading.count:
                lane_entry = placed[0].lanes[placed[1]]
                lane_entry.between = max(0, lane_entry.between + placed[2] * reading.count)
                if placed[2] < 0:
                    lane_entry.crossed = report.time
        for approach in watched.values():
            self._check(approach, report.time)

    def on_camera(self, passage: CameraPassage) -> None:
        approach = self._entry_camera.get(passage.device_id)
        if approach is not None:
            approach.entries += 1
            approach.on_way.pop(passage.plate, None)  # so that `on_way` stays in the order they entered
            approach.on_way[passage.plate] = (passage.time, approach.entries)
            self._within_capacity(approach)
            return
        approach = self._stop_camera.get(passage.device_id)
        if approach is None:
            return
        if passage.plate in approach.stopped:
            self._drove_on(approach, passage.plate, passage.time)
            return
        if passage.plate not in approach.on_way:
            return
        entered, number = approach.on_way.pop(passage.plate)
        approach.arrived_after.pop(passage.plate, None)
        for plate, (_, earlier) in approach.on_way.items():
            if earlier < number:
                approach.arrived_after[plate] = approach.arrived_after.get(plate, 0) + 1
        self._arrived(approach, passage.plate, number, passage.time - entered, passage.time)

    @staticmethod
    def _within_capacity(approach: _Approach) -> None:
        """A link holds no more vehicles than fit on it standing: past ON_WAY_SLACK times
        that, the oldest on the way left unseen (a read missed at the stop line). Bounds
        the work per passage and the memory whatever a camera reports."""
        most = ON_WAY_SLACK * max(1, round((approach.to_m - approach.from_m) * max(1, len(approach.lanes)) / JAM_SPACING_M))
        while len(approach.on_way) > most:
            plate = next(iter(approach.on_way))
            del approach.on_way[plate]
            approach.arrived_after.pop(plate, None)

    def _drove_on(self, approach: _Approach, plate: str, now: float) -> None:
        """An alert's vehicle read at the stop line: it had not stopped for good (slow, or
        stalled and started again). When all of them are, the alert is resolved. One that
        came within the link's expected time of the alert was slow, not stalled: that is
        remembered for a while (no longer: the plate is personal data)."""
        took = (now - approach.stopped.pop(plate)) / max(1.0, approach.drive_s)
        self._slow = {p: seen for p, seen in self._slow.items() if now - seen[1] < self.settings.slow_memory_s}
        if approach.alert is not None and now - approach.alert.detected_at <= approach.expected_s:
            self._slow[plate] = (max(took, self._slow.get(plate, (0.0, now))[0]), now)
        if not approach.stopped and approach.alert is not None:
            approach.jam_seen = now  # what held them held the others too: they have their time again
            self._resolve(approach, now)

    def _slowness(self, plate: str, now: float) -> float:
        """How many times its free driving time the plate is known to take (0: not known)."""
        factor, found = self._slow.get(plate, (0.0, now))
        return factor if now - found < self.settings.slow_memory_s else 0.0

    def _arrived(self, approach: _Approach, plate: str, number: int, took_s: float, now: float) -> None:
        alert = approach.alert
        if alert is None:
            return
        if len(approach.lanes) == 1 and number > approach.stopped_last:
            # One lane: nobody overtakes, so a vehicle that entered behind the alert's
            # vehicles and reached the stop line proves they are gone (towed, pushed
            # aside). Everyone who queued behind them was held like in a jam: their
            # clocks start again now (those that entered before the alert went with
            # them, see `_resolve`).
            approach.jam_seen = now
            self._resolve(approach, now, towed=True)
            return
        approach.in_time = approach.in_time + 1 if took_s <= approach.expected_s else 0
        if approach.in_time >= self.settings.recovered_vehicles and now - alert.detected_at >= self.settings.recovered_s:
            self._resolve(approach, now)  # traffic flows normally again: they were taken away

    def _jam_ahead(self, approach: _Approach, now: float) -> bool:
        """An exit lane full back to its start (its first loop held occupied), or
        estimated nearly full, while the approach's own queue stands at its stop line: the
        approach is held back by a jam, not by a stopped vehicle. With nothing standing at
        the stop line a full exit holds nobody back: the vehicles that do not arrive
        stopped before it (behind a vehicle stalled on the link)."""
        if now - max(lane.occupied for lane in approach.lanes.values()) >= self.settings.jam_at_line_s:
            return False
        if any(now - self._full_since.get(lane, float("-inf")) < self.settings.queue_memory_s for lane, _ in approach.exits):
            return True
        if self.state is None:
            return False
        return any(self.state.vehicles(lane) >= self.settings.full_exit * capacity for lane, capacity in approach.exits)

    def _blocked_at_line(self, approach: _Approach, now: float) -> bool:
        """A queue stands at the stop line and its green lanes, green for the start-up time,
        let no vehicle across: the junction ahead is blocked (its box locked, an exit jammed
        beyond what the loops see), a jam like one on the exits. It stays so through the
        reds that follow, until a vehicle crosses."""
        if now - approach.queue_seen >= self.settings.queue_memory_s:
            approach.blocked = False
            return False
        start_up_s = self.settings.start_up_s
        green = [lane.crossed for lane in approach.lanes.values()
                 if lane.green_since is not None and now - lane.green_since >= start_up_s]
        if green:
            approach.blocked = all(now - crossed >= start_up_s for crossed in green)
        elif any(now - lane.crossed < start_up_s for lane in approach.lanes.values()):
            approach.blocked = False
        return approach.blocked

    def _held(self, lane: str, count: int) -> float:
        """Vehicles that may be waiting on a lane between its advance and stop-line loops:
        the loops' own count, but no more than the state estimate (queue and vehicles
        arriving) where there is one: vehicles changing lanes inside that stretch, around
        a stalled vehicle say, leave one lane's count too high for ever, while the
        estimator corrects its counts by what occupancy proves."""
        if self.state is None or lane not in self.state.lanes:
            return count
        lane_state = self.state.lanes[lane]
        return min(count, lane_state.queue + lane_state.approaching)

    def _resolve(self, approach: _Approach, now: float, towed: bool = False) -> None:
        """Close the approach's alert. When its vehicles were taken away, so were any
        others of the same crash not read yet: every vehicle that entered before the alert
        and has not arrived is forgotten (one still driving is read, and ignored, at the
        stop line), else the tow would be alerted again as a vehicle that stopped."""
        if towed:
            for plate in [p for p, (entered, _) in approach.on_way.items() if entered < approach.alert.detected_at]:
                del approach.on_way[plate]
                approach.arrived_after.pop(plate, None)
        approach.alert.resolved_at = now
        approach.alert = None
        approach.stopped = {}
        approach.in_time = 0

    def _check(self, approach: _Approach, now: float) -> None:
        s = self.settings
        if approach.alert is not None:
            return
        if self._jam_ahead(approach, now) or self._blocked_at_line(approach, now):
            if approach.jam_since is None:
                approach.jam_since = now
            if now - approach.jam_since >= approach.expected_s:
                approach.jam_seen = now
            return
        approach.jam_since = None
        for plate in [p for p, (entered, _) in approach.on_way.items()
                      if now - max(entered, approach.jam_seen) > approach.expected_s + s.stale_s]:
            del approach.on_way[plate]  # explained away so long: read missed, or it left the road (towed, parked)
            approach.arrived_after.pop(plate, None)
        # A jam ahead explains any delay until it clears; from then on each vehicle has
        # its driving time again (else a long jam's vehicles, late by many minutes, would
        # all be "stopped" the moment it eases).
        # Each vehicle also has the time the vehicles still ahead of it on the link need to
        # leave it (a residual queue discharging after a jam or an incident cleared).
        per_vehicle_s = s.queue_headway_s / len(approach.lanes)
        overdue = [(plate, entered) for ahead, (plate, (entered, _)) in enumerate(approach.on_way.items())
                   if now - max(entered, approach.jam_seen) > approach.expected_s + ahead * per_vehicle_s
                   + (max(0.0, self._slowness(plate, now) - s.drive_factor) * approach.drive_s if plate in self._slow else 0.0)]
        if not overdue:
            return
        # A lane's queue can hold only the overdue vehicles due at its stop line after the
        # last time nobody stood there: the ones due before had arrived while it was
        # empty, and were let across or would be standing first in it now.
        due = sorted(max(entered, approach.jam_seen) + s.drive_factor * approach.drive_s for _, entered in overdue)

        def could_hold(lane: _Lane) -> int:
            return len(due) - bisect.bisect_left(due, lane.cleared)

        if any(now - lane.occupied < s.at_line_s and could_hold(lane) for lane in approach.lanes.values()):
            return  # vehicles stand at the stop line, or move across it, and the overdue ones may be among them
        # As many overdue vehicles as stand before a red (or a green just begun, or a
        # permissive one) may be waiting there.
        waiting = round(sum(min(self._held(lane_id, lane.between), could_hold(lane))
                            for lane_id, lane in approach.lanes.items()
                            if lane.protected_since is None or now - lane.protected_since < s.start_up_s))
        if len(overdue) <= waiting:
            return
        overdue.sort(key=lambda item: item[1])
        overdue = overdue[:len(overdue) - waiting]
        plates = dict(overdue)
        first = min(plates.values())
        approach.alert = IncidentAlert(
            id=f"{approach.edge}@{now:.0f}", edge=approach.edge, intersection=approach.intersection, zone="link",
            from_m=approach.from_m, to_m=approach.to_m, detected_at=now, started_at=first,
            evidence={"vehicles_stopped": len(plates), "overdue_s": round(now - first, 1),
                      "expected_s": round(approach.expected_s, 1),
                      "overtaken_by": max(approach.arrived_after.get(p, 0) for p in plates),
                      "queue_at_stop_line": False})
        approach.stopped = plates
        approach.stopped_last = max(approach.on_way[plate][1] for plate in plates)
        for plate in plates:
            approach.on_way.pop(plate, None)  # one alert per stopped vehicle, whatever follows
            approach.arrived_after.pop(plate, None)
        self.alerts.append(approach.alert)
