"""The brain service's API on SQLite and on a real PostgreSQL server: bad input,
access control, idempotent resend, restart without loss, and the twin as a field."""

from __future__ import annotations

from pathlib import Path

import pytest
from service_city import City


def test_a_bad_batch_is_rejected_whole_naming_each_bad_item_and_field(city: City):
    good = city.controller_report(0, 1.0)
    assert city.client.post("/api/events", json=[good], headers=city.headers("device")).status_code == 200
    bad_count = city.detector_report(0, 2.0)
    bad_count["readings"][0]["count"] = -1
    batch = [city.controller_report(1, 2.0), bad_count, {**city.controller_report(2, 3.0), "phase": "two"}]
    answer = city.client.post("/api/events", json=batch, headers=city.headers("device"))
    assert answer.status_code == 422
    named = {(d["item"], d["field"]) for d in answer.json()["detail"]}
    assert (1, "detector.readings.0.count") in named, named
    assert any(item == 2 and "phase" in field for item, field in named)
    assert 0 not in {item for item, _ in named}
    assert [(e.device_id, e.seq) for e in city.store.events()] == [(city.own, 0)]  # nothing of the bad batch


def test_malformed_bodies_are_named(city: City):
    device = city.headers("device")
    answer = city.client.post("/api/events", content=b'{"not": "a list"}', headers={**device, "Content-Type": "application/json"})
    assert answer.status_code == 422 and "JSON array" in answer.json()["detail"][0]["error"]
    lines = b'{"kind": "controller"}\n{not json\n'
    answer = city.client.post("/api/events", content=lines, headers={**device, "Content-Type": "application/x-ndjson"})
    assert answer.status_code == 422 and answer.json()["detail"][0]["item"] == 1
    assert city.store.count_events() == 0


def test_json_lines_are_accepted(city: City):
    import json

    body = "\n".join(json.dumps(city.controller_report(seq, float(seq))) for seq in range(3)).encode()
    answer = city.client.post("/api/events", content=body,
                              headers={**city.headers("device"), "Content-Type": "application/x-ndjson"})
    assert answer.status_code == 200 and answer.json()["accepted"] == 3


def test_a_resent_batch_is_acknowledged_but_not_counted_twice(city: City):
    batch = [city.controller_report(seq, float(seq)) for seq in range(5)]
    first = city.client.post("/api/events", json=batch, headers=city.headers("device")).json()
    again = city.client.post("/api/events", json=batch + [city.controller_report(5, 5.0)], headers=city.headers("device")).json()
    assert (first["accepted"], first["duplicates"]) == (5, 0)
    assert (again["accepted"], again["duplicates"]) == (1, 5)
    assert city.store.count_events() == 6
    devices = {d["device_id"]: d for d in city.client.get("/api/devices", headers=city.headers("viewer")).json()}
    assert devices[city.own]["events"] == 6


def test_no_endpoint_but_health_answers_without_a_key(city: City):
    assert city.client.get("/health").status_code == 200
    for method, path in [("get", "/api/network"), ("get", "/api/intersections"), ("get", "/api/kpis"),
                         ("get", "/api/decisions"), ("get", "/api/devices"), ("get", "/api/keys"),
                         ("get", "/api/commands"), ("post", "/api/events"), ("get", "/api/audit")]:
        assert getattr(city.client, method)(path).status_code == 401, path
        assert getattr(city.client, method)(path, headers={"X-API-Key": "ub_wrong"}).status_code == 401, path


def test_roles_are_enforced(city: City):
    event = [city.controller_report(0, 1.0)]
    assert city.client.post("/api/events", json=event, headers=city.headers("viewer")).status_code == 403
    assert city.client.get("/api/intersections", headers=city.headers("device")).status_code == 403
    assert city.client.get("/api/keys", headers=city.headers("operator")).status_code == 403
    assert city.client.get("/api/intersections", headers=city.headers("viewer")).status_code == 200
    assert city.client.get("/api/keys", headers=city.headers("admin")).status_code == 200
    assert city.store.count_events() == 0


def test_a_device_key_speaks_only_for_its_own_devices(city: City):
    other = sorted(city.network.intersections)[1]
    batch = [city.controller_report(0, 1.0), city.controller_report(0, 1.0, intersection=other)]
    answer = city.client.post("/api/events", json=batch, headers=city.headers("device"))
    assert answer.status_code == 403
    assert answer.json()["detail"][0]["item"] == 1 and f"ctl_{other}" in answer.json()["detail"][0]["error"]
    assert city.store.count_events() == 0


def test_keys_are_stored_hashed_and_revocation_takes_effect_at_once(city: City):
    made = city.client.post("/api/keys", json={"name": "wall-screen", "role": "viewer"}, headers=city.headers("admin"))
    assert made.status_code == 201
    key = made.json()["key"]
    assert all(key not in str(row) for row in city.store.keys())
    assert city.client.get("/api/lanes", headers={"X-API-Key": key}).status_code == 200
    assert city.client.delete("/api/keys/wall-screen", headers=city.headers("admin")).status_code == 200
    assert city.client.get("/api/lanes", headers={"X-API-Key": key}).status_code == 401
    actions = [(a["action"], a["target"], a["key_name"]) for a in city.store.audit_log()]
    assert ("create key", "wall-screen", "admin") in actions and ("revoke key", "wall-screen", "admin") in actions
    bad = city.client.post("/api/keys", json={"name": "x y", "role": "viewer"}, headers=city.headers("admin"))
    assert bad.status_code == 422


def test_a_restart_loses_nothing_that_was_acknowledged(city: City):
    city.now = 9.0
    batch = [city.controller_report(seq, float(seq)) for seq in range(10)] + [city.detector_report(0, 9.0)]
    assert city.client.post("/api/events", json=batch, headers=city.headers("device")).json()["accepted"] == 11
    city.restart()
    city.now = 9.0
    assert city.store.count_events() == 11
    again = city.client.post("/api/events", json=batch, headers=city.headers("device")).json()
    assert (again["accepted"], again["duplicates"]) == (0, 11)  # known after the restart too
    devices = {d["device_id"]: d["events"] for d in city.client.get("/api/devices", headers=city.headers("viewer")).json()}
    assert devices[city.own] == 10


def test_the_network_is_served_with_geometry(city: City):
    network = city.client.get("/api/network", headers=city.headers("viewer")).json()
    assert {i["id"] for i in network["intersections"]} == set(city.network.intersections)
    minx, miny, maxx, maxy = network["bounds"]
    assert minx < maxx and miny < maxy
    approaching = [lane for lane in network["lanes"] if lane["intersection"] is not None]
    assert approaching and all(len(lane["shape"]) >= 2 for lane in approaching)


def test_operators_steer_an_intersection_and_are_audited(city: City):
    target = sorted(city.network.intersections)[0]
    path = f"/api/intersections/{target}/control"
    assert city.client.post(path, json={"controller": "fixed"}, headers=city.headers("viewer")).status_code == 403
    assert city.client.post(path, json={"controller": "fixed"}).status_code == 401
    assert city.client.post("/api/intersections/nowhere/control", json={"controller": "fixed"},
                            headers=city.headers("operator")).status_code == 404
    bad = city.client.post(path, json={"controller": "chaos"}, headers=city.headers("operator"))
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "controller"
    answer = city.client.post(path, json={"controller": "fixed"}, headers=city.headers("operator"))
    assert answer.status_code == 200 and answer.json()["controller"] == "fixed"
    sent = [c for _, c in city.store.commands_after(0, [f"ctl_{target}"])]
    assert [c["action"] for c in sent] == ["plan"]
    assert city.store.audit_log()[0]["key_name"] == "operator" and city.store.audit_log()[0]["target"] == target
    city.restart()
    assert city.service.runtime.brain.local == {target: "plan"}, "the order survives a restart"
    rows = {r["id"]: r for r in city.client.get("/api/intersections", headers=city.headers("viewer")).json()}
    assert rows[target]["controller"] == "fixed"


def test_the_operator_switch_reaches_the_field_and_back(grid_net: Path, grid_city: Path, tmp_path: Path):
    """Through the in-process twin: fixed plan, flashing, and back to the brain, with
    no conflicting greens at any second."""
    from urbanbrain.service.field import TwinField
    from urbanbrain.service.host import TWIN_PRINCIPAL
    from urbanbrain.service.transports import in_process_transport
    from urbanbrain.twin.scenario import load_scenario

    city = City(f"sqlite+pysqlite:///{tmp_path / 'store.db'}", grid_net, clock="replay")
    scenario = load_scenario(grid_city)
    field = TwinField(scenario, city.network, in_process_transport(city.service.runtime, TWIN_PRINCIPAL),
                      speed=0, horizon_s=200)
    target = sorted(city.network.intersections)[0]
    seen: dict[float, str] = {}
    conflicts = []
    orders = {40.0: "fixed", 100.0: "flash", 140.0: "brain"}

    def watch(now: float) -> None:
        controller = field.twin.controllers[target]
        seen[now] = controller.mode
        conflicts.extend(i for i, c in field.twin.controllers.items()
                         if city.network.intersections[i].conflicting_pairs(c.state_at(now)))
        if now in orders:
            path = f"/api/intersections/{target}/control"
            assert city.client.post(path, json={"controller": orders[now]}, headers=city.headers("operator")).status_code == 200

    field.run(on_step=watch)
    city.client.close()
    assert not conflicts
    assert seen[39.0] == "remote" and seen[41.0] == "plan" and seen[99.0] == "plan"
    assert seen[101.0] == "flash" and seen[139.0] == "flash"
    assert seen[160.0] == "remote" and seen[199.0] == "remote"
    others = {i: c.mode for i, c in field.twin.controllers.items() if i != target}
    assert set(others.values()) == {"remote"}


def test_live_and_command_streams_need_a_key_and_push(city: City):
    from starlette.websockets import WebSocketDisconnect

    for path in ("/live", "/api/commands/ws"):
        with pytest.raises(WebSocketDisconnect) as refused, city.client.websocket_connect(path) as socket:
            socket.receive_json()
        assert refused.value.code == 4401
    with pytest.raises(WebSocketDisconnect) as refused, \
            city.client.websocket_connect(f"/live?key={city.keys['device']}") as socket:
        socket.receive_json()
    assert refused.value.code == 4403
    target = sorted(city.network.intersections)[0]
    with city.client.websocket_connect(f"/live?key={city.keys['viewer']}") as live, \
            city.client.websocket_connect(f"/api/commands/ws?key={city.keys['device']}") as commands:
        first = live.receive_json()
        assert first["type"] == "tick" and {i["id"] for i in first["intersections"]} == set(city.network.intersections)
        answer = city.client.post(f"/api/intersections/{target}/control", json={"controller": "flash"},
                                  headers=city.headers("operator"))
        assert answer.status_code == 200
        pushed = commands.receive_json()
        assert pushed["command"]["intersection"] == target and pushed["command"]["action"] == "flash"
        assert pushed["id"] == city.store.last_command_id()


def test_silent_devices_are_flagged(city: City):
    device = city.headers("device")
    assert city.client.post("/api/events", json=[city.controller_report(0, 0.0), city.detector_report(0, 0.0)],
                            headers=device).status_code == 200
    city.now = 45.0
    assert city.client.post("/api/events", json=[city.controller_report(1, 45.0)], headers=device).status_code == 200
    rows = {d["device_id"]: d for d in city.client.get("/api/devices", headers=city.headers("viewer")).json()}
    assert rows[city.own]["silent"] is False and rows[city.own]["last_time"] == 45.0
    detector = city.detector_report(0, 0.0)["device_id"]
    assert rows[detector]["silent"] is True and rows[detector]["kind"] == "detector"


def test_the_api_docs_are_served_offline(city: City):
    page = city.client.get("/docs")
    assert page.status_code == 200 and "cdn." not in page.text
    assert city.client.get("/openapi.json").json()["paths"]["/api/events"]["post"]


def test_retention_deletes_old_events_and_decisions_only(city: City):
    from datetime import timedelta

    from sqlalchemy import update

    from urbanbrain.store.schema import device_events
    from urbanbrain.store.store import utcnow

    device = city.headers("device")
    city.client.post("/api/events", json=[city.controller_report(seq, float(seq)) for seq in range(4)], headers=device)
    city.store.put_kpi_minute({"minute": 0.0, "vehicles": 1.0, "queue_veh": 0.0, "throughput_veh": 1,
                               "stopped_delay_veh_s": 0.0, "mean_delay_s": 0.0})
    with city.store.engine.begin() as connection:
        connection.execute(update(device_events).where(device_events.c.seq < 2)
                           .values(received_at=utcnow() - timedelta(days=31)))
    gone, _ = city.store.purge(events_days=30, decisions_days=30)
    assert gone == 2 and [e.seq for e in city.store.events()] == [2, 3]
    assert len(city.store.kpis()) == 1 and len(city.store.keys()) == 4


def test_events_posted_by_an_administrator_are_audited(city: City):
    answer = city.client.post("/api/events", json=[city.controller_report(0, 1.0)], headers=city.headers("admin"))
    assert answer.status_code == 200
    entry = city.store.audit_log()[0]
    assert (entry["key_name"], entry["action"], entry["detail"]["accepted"]) == ("admin", "post events", 1)


def test_a_device_speaks_only_of_what_it_sees(city: City):
    """Whatever its key allows, a controller reports for its own intersection, a station
    for its own loops, a camera for its own lanes; anything else is refused, named."""
    other = sorted(city.network.intersections)[1]
    forged = {**city.controller_report(0, 1.0), "intersection": other,
              "signal_state": city.network.intersections[other].phases[0].state}
    reading = city.detector_report(0, 1.0)
    reading["readings"][0]["lane"] = "nowhere_0"
    unknown = {**city.controller_report(1, 1.0), "device_id": "ctl_ghost"}
    answer = city.client.post("/api/events", json=[forged, reading, unknown], headers=city.headers("admin"))
    assert answer.status_code == 422
    named = {(d["item"], d["field"]): d["error"] for d in answer.json()["detail"]}
    assert "it is the controller of" in named[(0, "intersection")]
    assert "loop" in named[(1, "readings.0.lane")]
    assert "not a signal controller" in named[(2, "device_id")]
    assert city.store.count_events() == 0


def test_a_revoked_key_loses_its_open_stream(city: City, monkeypatch):
    from starlette.websockets import WebSocketDisconnect

    import urbanbrain.service.streams as streams

    monkeypatch.setattr(streams, "KEY_RECHECK_S", 0.2)
    made = city.client.post("/api/keys", json={"name": "screen", "role": "viewer"}, headers=city.headers("admin")).json()
    with city.client.websocket_connect(f"/live?key={made['key']}") as live:
        assert live.receive_json()["type"] == "tick"
        assert city.client.delete("/api/keys/screen", headers=city.headers("admin")).status_code == 200
        with pytest.raises(WebSocketDisconnect) as closed:
            for _ in range(50):
                live.receive_json()
    assert closed.value.code == 4401


def test_a_sequence_number_beyond_64_bits_is_named(city: City):
    answer = city.client.post("/api/events", json=[city.controller_report(2**63, 1.0)], headers=city.headers("device"))
    assert answer.status_code == 422 and answer.json()["detail"][0]["field"].endswith("seq")


def test_a_field_that_starts_again_gets_no_old_commands(grid_net: Path, grid_city: Path, tmp_path: Path):
    """A second run of the twin against the same store (and a restarted brain) is
    sent only the commands issued in answer to its own events, never the history."""
    from urbanbrain.service.field import TwinField
    from urbanbrain.service.host import TWIN_PRINCIPAL
    from urbanbrain.service.transports import in_process_transport
    from urbanbrain.twin.scenario import load_scenario

    scenario = load_scenario(grid_city)
    city = City(f"sqlite+pysqlite:///{tmp_path / 'store.db'}", grid_net, clock="replay")

    def run_field() -> tuple[int, list[int]]:
        before, ids = city.store.last_command_id(), []
        transport = in_process_transport(city.service.runtime, TWIN_PRINCIPAL)

        def send(events, after):
            commands, cursor = transport(events, after)
            ids.extend(command_id for command_id, _ in commands)
            return commands, cursor

        TwinField(scenario, city.network, send, speed=0, horizon_s=120).run()
        return before, ids

    first_before, first = run_field()
    city.restart()
    second_before, second = run_field()
    city.client.close()
    assert first and second and second_before >= max(first)
    assert min(second) > second_before, "nothing from the first run is sent to the second"
