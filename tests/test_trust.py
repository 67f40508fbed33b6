"""Trust in the field, as an attacker and a careless field would test it: the brain's
reference clock, priority only for registered emergency vehicles, plausible reports,
conflicting resends, silent and missing devices, the last admin key. On SQLite and on
PostgreSQL where the store is involved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from service_city import City

from urbanbrain.devices.protocol import SignalCommand
from urbanbrain.devices.signal_controller import SignalController
from urbanbrain.service.keys import LastAdmin, create_key, revoke_key


def post(city: City, events: list[dict], role: str = "device", key: str | None = None):
    return city.client.post("/api/events", json=events, headers={"X-API-Key": key or city.keys[role]})


def test_forged_device_times_never_move_the_brains_clock(city: City):
    """Finding 1: far future, creeping +59 s steps and far past; the wall clock stays the wall clock."""
    def report(seq: int, time: float) -> dict:
        return {**city.controller_report(seq, time), "time_in_phase_s": 1.0}

    city.now = 1_000.0
    assert post(city, [report(0, 1_000.0)]).status_code == 200
    far_future = post(city, [report(1, 1e12)])
    assert far_future.status_code == 422 and far_future.json()["detail"][0]["field"] == "time"
    assert "ahead of the brain's clock" in far_future.json()["detail"][0]["error"]
    for step in range(20):  # each 59 s ahead of the clock as the last one would have moved it
        assert post(city, [report(2 + step, 1_000.0 + 59.0 * (step + 1))]).status_code == 422
    assert city.service.runtime.city_time == 1_000.0
    assert city.client.get("/health").json()["city_time"] == 1_000.0
    city.now = 40 * 86400.0  # a report from 40 days ago: older than the store keeps
    ancient = post(city, [report(30, 1.0)])
    assert ancient.status_code == 422 and "behind the brain's clock" in ancient.json()["detail"][0]["error"]
    assert city.store.count_events() == 1


def test_a_late_event_is_stored_marked_late_and_kept_out_of_the_present(city: City):
    """A field's backlog after an outage is accepted by its timestamp, never refused."""
    city.now = 500.0
    state = city.service.runtime.estimator.state
    answer = post(city, [city.controller_report(0, 100.0)])
    assert answer.status_code == 200 and answer.json()["accepted"] == 1
    stored = city.store.events()
    assert [e.late for e in stored] == [True]
    intersection = city.own[len("ctl_"):]
    assert intersection not in state.signals, "a report of 400 s ago says nothing of the signal now"
    assert post(city, [city.controller_report(1, 499.0)]).status_code == 200
    assert state.signals[intersection].phase == 0
    devices = {d["device_id"]: d for d in city.client.get("/api/devices", headers=city.headers("viewer")).json()}
    assert devices[city.own]["events"] == 2 and devices[city.own]["last_time"] == 499.0


def test_a_replay_follows_only_its_time_server(grid_net: Path, tmp_path: Path):
    city = City(f"sqlite+pysqlite:///{tmp_path / 'store.db'}", grid_net, clock="replay")
    try:
        early = post(city, [city.controller_report(0, 1.0)])
        assert early.status_code == 503, "no clock before the time server is heard"
        assert post(city, [city.clock_report(0, 10.0), city.controller_report(0, 10.0)], role="admin").status_code == 200
        assert city.service.runtime.city_time == 10.0
        forged = post(city, [city.clock_report(1, 1e9)])  # the device key speaks for ctl_ and det_ only
        assert forged.status_code == 403 and city.service.runtime.city_time == 10.0
        every_device = create_key(city.store, "every-device", "device", ["*"])
        wildcard = post(city, [city.clock_report(1, 1e9)], key=every_device)
        assert wildcard.status_code == 403 and "no wildcard" in wildcard.json()["detail"][0]["error"]
        time_server = create_key(city.store, "time-server", "device", ["clock"])
        assert post(city, [city.clock_report(1, 11.0)], key=time_server).status_code == 200
        assert city.service.runtime.city_time == 11.0
        other = {**city.clock_report(1, 1e9), "device_id": city.own}
        assert post(city, [other], role="admin").status_code == 422
        backwards = post(city, [city.clock_report(2, 5.0)], role="admin")
        assert backwards.status_code == 422 and "before the brain's clock" in backwards.json()["detail"][0]["error"]
        assert city.service.runtime.city_time == 11.0
    finally:
        city.client.close()
        city.store.close()


def test_a_wall_clock_brain_refuses_a_time_server(city: City):
    answer = post(city, [city.clock_report(0, 0.0)], role="admin")
    assert answer.status_code == 422 and "wall clock" in answer.json()["detail"][0]["error"]


def test_field_controllers_refuse_stale_and_future_commands(grid_net: Path):
    from urbanbrain.network import read_network

    intersection = next(iter(read_network(grid_net).intersections.values()))
    controller = SignalController(intersection.id, intersection.phases, now=100.0)

    def go(time: float, valid_s: float = 5.0) -> SignalCommand:
        return SignalCommand(device_id="brain", seq=1, time=time, intersection=intersection.id, action="go",
                             phase=1, valid_s=valid_s)

    controller.apply(go(100.0 + 3600.0), 100.0)
    controller.apply(go(100.0 - 6.0), 100.0)
    controller.apply(go(100.0 - 3.0, valid_s=2.0), 100.0)
    controller.apply(SignalCommand(device_id="brain", seq=2, time=100.0, intersection=intersection.id, action="go",
                                   phase=len(intersection.phases)), 100.0)
    assert controller.ignored == {"future": 1, "stale": 2, "unknown phase": 1} and not controller.in_change
    controller.apply(go(99.0), 100.0)
    assert controller.in_change


def test_a_sensor_key_cannot_ask_for_priority(city: City):
    """Finding 3: a camera key posing as an ambulance; only a registered vehicle's emergency key may."""
    road = next(iter(city.network.roads))
    lane = next(lane for lane in city.network.lanes.values() if lane.edge == road)
    camera = sorted(city.service.runtime._camera_lanes)[0]

    def report(vehicle: str, seq: int = 0) -> dict:
        return {"kind": "emergency", "device_id": vehicle, "seq": seq, "time": 0.0, "vehicle": vehicle,
                "service": "ambulance", "priority": 1, "edge": road, "lane": lane.id, "position_m": 0.0,
                "speed_ms": 10.0, "destination": road, "status": "en_route"}

    camera_key = create_key(city.store, "camera", "device", [camera])
    forged = post(city, [report(camera)], key=camera_key)
    assert forged.status_code == 403 and "priority" in forged.json()["detail"][0]["error"]
    every_device = create_key(city.store, "all-devices", "device", ["*"])
    assert post(city, [report("amb-7")], key=every_device).status_code == 403
    assert city.service.runtime.priority.vehicles == {}
    ambulance = create_key(city.store, "amb-7", "emergency", ["amb-7"])
    assert post(city, [city.controller_report(0, 0.0)], key=ambulance).status_code == 403, "nothing but its own reports"
    assert post(city, [report("amb-8")], key=ambulance).status_code == 403, "only its own vehicle"
    assert post(city, [report("amb-7")], key=ambulance).status_code == 200
    assert "amb-7" in city.service.runtime.priority.vehicles
    audited = city.store.audit_log()[0]
    assert (audited["key_name"], audited["action"], audited["target"]) == ("amb-7", "priority request", "amb-7")


@pytest.mark.parametrize(("change", "field"), [
    ({"phase": 99}, "phase"),
    ({"signal_state": "G"}, "signal_state"),
    ({"time_in_phase_s": 1e308}, "time_in_phase_s"),
])
def test_implausible_controller_reports_are_refused(city: City, change: dict, field: str):
    """Finding 7: what a controller reports must fit its intersection."""
    answer = post(city, [{**city.controller_report(0, 0.0), **change}])
    assert answer.status_code == 422 and answer.json()["detail"][0]["field"].endswith(field), answer.json()
    assert city.store.count_events() == 0


def test_a_phase_whose_greens_are_not_shown_is_refused(city: City):
    intersection = city.network.intersections[city.own[len("ctl_"):]]
    answer = post(city, [{**city.controller_report(0, 0.0), "phase": 1, "signal_state": intersection.phases[0].state}])
    assert answer.status_code == 422 and "greens of phase 1" in answer.json()["detail"][0]["error"]


def test_a_loop_cannot_count_more_than_a_lane_passes(city: City):
    report = city.detector_report(0, 0.0)
    report["readings"][0]["count"] = 50
    answer = post(city, [report])
    assert answer.status_code == 422 and "at most 4" in answer.json()["detail"][0]["error"]


def test_a_conflicting_resend_is_refused_and_kept(city: City):
    """Same device and sequence number, other content: a conflict, not a duplicate."""
    assert post(city, [city.controller_report(0, 0.0)]).status_code == 200
    changed = {**city.controller_report(0, 0.0), "time_in_phase_s": 3.0}
    answer = post(city, [city.controller_report(1, 1.0), changed])
    assert answer.status_code == 409
    assert answer.json()["detail"][0]["item"] == 1 and "other content" in answer.json()["detail"][0]["error"]
    assert [(e.seq, json.loads(e.payload)["time_in_phase_s"]) for e in city.store.events()] == [(0, 0.0)]
    kept = city.store.event_conflicts()
    assert len(kept) == 1 and json.loads(kept[0]["payload"])["time_in_phase_s"] == 3.0
    assert kept[0]["key_name"] == "field-unit"
    again = post(city, [city.controller_report(0, 0.0)])
    assert again.status_code == 200 and again.json()["duplicates"] == 1, "an identical resend is still a duplicate"


def test_a_silent_field_and_missing_devices_are_flagged_by_the_wall_clock(grid_net: Path, tmp_path: Path):
    """Finding 8: devices that never reported are listed, waiting and then missing; a
    replayed field that stops altogether is silent, though its clock stops with it."""
    city = City(f"sqlite+pysqlite:///{tmp_path / 'store.db'}", grid_net, clock="replay")
    try:
        runtime = city.service.runtime
        rows = city.client.get("/api/devices", headers=city.headers("viewer")).json()
        expected = runtime.expected_devices()
        assert {r["device_id"] for r in rows} == set(expected) and len(expected) > 10
        assert {r["status"] for r in rows} == {"waiting"}, "not heard from yet, within their interval"
        city.now = 601.0  # ten minutes of wall clock without a word
        rows = city.client.get("/api/devices", headers=city.headers("viewer")).json()
        assert {r["status"] for r in rows} == {"missing"} and all(r["silent"] for r in rows)
        batch = [city.clock_report(0, 10.0), city.controller_report(0, 10.0), city.detector_report(0, 10.0)]
        assert post(city, batch, role="admin").status_code == 200
        rows = {r["device_id"]: r for r in city.client.get("/api/devices", headers=city.headers("viewer")).json()}
        assert rows[city.own]["status"] == rows["clock"]["status"] == "reporting"
        city.now = 701.0  # the whole field stops: the replay's clock stays at 10, the wall clock goes on
        rows = {r["device_id"]: r for r in city.client.get("/api/devices", headers=city.headers("viewer")).json()}
        assert runtime.city_time == 10.0
        assert rows[city.own]["status"] == rows["clock"]["status"] == "silent"
    finally:
        city.client.close()
        city.store.close()


def test_the_last_admin_key_cannot_be_revoked(city: City):
    """Finding 9 (the store's side; the API answers 409)."""
    with pytest.raises(LastAdmin):
        revoke_key(city.store, "admin")
    assert any(k["name"] == "admin" and k["revoked_at"] is None for k in city.store.keys())
    create_key(city.store, "second-admin", "admin")
    revoke_key(city.store, "admin")
    with pytest.raises(LastAdmin):
        revoke_key(city.store, "second-admin")


def test_forged_times_during_a_replay_neither_move_the_clock_nor_cause_a_fallback(grid_net: Path, grid_city: Path,
                                                                                  tmp_path: Path):
    """Finding 1 on a running city: a controller's key posts reports far in the future,
    creeping 59 s ahead, and far in the past while the twin runs; the brain's clock stays
    the twin's and every controller stays under the brain."""
    from urbanbrain.service.field import TwinField
    from urbanbrain.service.host import TWIN_PRINCIPAL
    from urbanbrain.service.transports import in_process_transport
    from urbanbrain.twin.scenario import load_scenario

    city = City(f"sqlite+pysqlite:///{tmp_path / 'store.db'}", grid_net, clock="replay")
    runtime = city.service.runtime
    field = TwinField(load_scenario(grid_city), city.network, in_process_transport(runtime, TWIN_PRINCIPAL),
                      speed=0, horizon_s=150)
    answers: list[int] = []
    modes: dict[float, set[str]] = {}
    seq = iter(range(1, 10**6))

    def attack(now: float) -> None:
        modes[now] = {c.mode for c in field.twin.controllers.values()}
        if 40 <= now < 60:
            for forged in (1e12, runtime.city_time + 59.0, 0.0):
                report = {**city.controller_report(next(seq), forged), "time_in_phase_s": 1.0}
                answers.append(post(city, [report]).status_code)
            assert runtime.city_time == now

    try:
        field.run(on_step=attack)
    finally:
        field.close()
        city.client.close()
    assert answers.count(422) == 40 and answers.count(200) == 20, "future refused, the past taken as late"
    assert all(m == {"remote"} for t, m in modes.items() if t >= 20), "no controller ever fell back"
    assert runtime.city_time == 150.0


def test_two_revocations_at_once_leave_an_admin(city: City):
    """The last-admin check and the revocation are one step: two revocations racing
    for the last two admin keys never both pass (on SQLite and PostgreSQL)."""
    import threading

    create_key(city.store, "spare", "admin")
    survivor = "spare"
    for round_ in range(5):
        newcomer = f"admin-{round_}"
        create_key(city.store, newcomer, "admin")
        if round_ == 0:
            revoke_key(city.store, "admin")
        start = threading.Barrier(2)

        def revoke(name: str) -> None:
            start.wait()
            try:
                revoke_key(city.store, name)
            except Exception:  # LastAdmin, or (SQLite) the loser's write found the database busy
                pass

        threads = [threading.Thread(target=revoke, args=(name,)) for name in (survivor, newcomer)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        active = [k["name"] for k in city.store.keys() if k["role"] == "admin" and k["revoked_at"] is None]
        assert active, "both revocations passed: no admin key is left"
        survivor = active[0]
    assert sum(k["revoked_at"] is not None for k in city.store.keys()) >= 5, "the races revoked something"
