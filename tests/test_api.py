"""The API as an attacker meets it ("Trust the field"): the service stops in bounded
time whatever its clients do, bounds what it reads, refuses bad numbers and bytes
without a 500, and is what its documents say — close codes a browser can read, one
error shape, and an OpenAPI document with its security scheme, bodies and errors,
which Schemathesis holds the running service to.

Where the behaviour is the server's (shutdown, close codes, body limits) the tests
talk to a real uvicorn server: `urbanbrain run` in a process of its own, or uvicorn
in a thread over the app.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient
from service_city import City
from starlette.websockets import WebSocketDisconnect
from test_service_e2e import free_port, start_service, wait_for
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from urbanbrain.service.app import create_app

ROOT = Path(__file__).resolve().parents[1]
SHUTDOWN_S = 5.0  # the most a stop may take, whatever the clients do
BIG = 187_000_000  # the body that took the old service from 332 to 844 MB before its 401


class Served:
    """A real uvicorn server, in a thread, over an app: what a client on the network meets."""

    def __init__(self, app):
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.server.started, "uvicorn did not start"

    def socket(self, path: str) -> ClientConnection:
        return connect(f"ws://127.0.0.1:{self.port}{path}", open_timeout=5)

    def running_tasks(self) -> int:
        """The requests and streams the server is still running for its clients."""
        return len(self.server.server_state.tasks)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def served(tmp_path: Path, grid_net: Path):
    """An idle city (no device reports, no clock ticks) on SQLite, served by uvicorn."""
    city = City(f"sqlite+pysqlite:///{tmp_path / 'store.db'}", grid_net)
    server = Served(create_app(city.service))
    yield city, server
    server.close()
    city.client.close()
    city.store.close()


def is_error(body: dict) -> bool:
    """The one error shape: {"detail": [{"item": int | null, "field": str, "error": str}, ...]}."""
    return (set(body) == {"detail"} and isinstance(body["detail"], list) and len(body["detail"]) >= 1
            and all(set(d) == {"item", "field", "error"} and (d["item"] is None or isinstance(d["item"], int))
                    and isinstance(d["field"], str) and isinstance(d["error"], str) for d in body["detail"]))


def close_code(socket: ClientConnection) -> int:
    """The close code the server ends a stream with, sending nothing (more) before."""
    with pytest.raises(ConnectionClosed) as closed:
        socket.recv(timeout=5)
    return closed.value.rcvd.code


def closed_with(opening: ClientConnection) -> int:
    with opening as socket:
        return close_code(socket)


def raw_post(port: int, path: str, headers: dict[str, str], chunks: Iterable[bytes] = ()) -> tuple[int, dict]:
    """A POST written by hand, so a body can be announced and never sent, or sent in
    chunks without an end; the answer is read as soon as it comes."""
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": "127.0.0.1", **headers}.items())
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(f"POST {path} HTTP/1.1\r\n{head}\r\n".encode())
        for chunk in chunks:
            raw.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        answer = http.client.HTTPResponse(raw)
        answer.begin()
        return answer.status, json.loads(answer.read())


# -- finding 4: stopping -------------------------------------------------------------------


def test_a_stream_ends_as_soon_as_its_client_leaves(served):
    """In an idle city nothing is ever sent to a closed tab, so only reading the socket
    notices it has gone: no task may be left running for it."""
    city, server = served
    for path, role in (("/live", "viewer"), ("/live", "viewer"), ("/api/commands/ws", "device")):
        with server.socket(f"{path}?key={city.keys[role]}") as socket:
            if path == "/live":
                assert socket.recv(timeout=5)
    with server.socket(f"/live?key={city.keys['viewer']}") as abrupt:
        assert abrupt.recv(timeout=5)
        abrupt.socket.close()  # a tab killed with the browser: no close frame
    deadline = time.monotonic() + 2.0
    while server.running_tasks() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.running_tasks() == 0, "a stream outlived its client"


def _idle_service_with_streams(grid_city: Path, data: Path, streams: ExitStack) -> tuple[subprocess.Popen, list]:
    """`urbanbrain run` with its twin finished (an idle city), after three tabs came and
    went, with two streams still open (in `streams`, which also ends the service if the
    test fails first)."""
    port = free_port()
    service = start_service(data, port, "--scenario", str(grid_city), "--speed", "0", "--duration", "20")
    streams.callback(service.kill)
    wait_for(f"http://127.0.0.1:{port}/health", lambda h: h["twin"] == "finished", timeout_s=60)
    key = (data / "admin.key").read_text().strip()
    url = f"ws://127.0.0.1:{port}"
    for _ in range(3):
        with connect(f"{url}/live?key={key}", open_timeout=5) as tab:
            assert tab.recv(timeout=5)
    held = [streams.enter_context(connect(f"{url}{path}?key={key}", open_timeout=5))
            for path in ("/live", "/api/commands/ws")]
    assert held[0].recv(timeout=5)
    return service, held


def _stopped_within(service: subprocess.Popen, seconds: float) -> str:
    """The service's stderr, once it has stopped, which it must within `seconds`."""
    try:
        return service.communicate(timeout=seconds)[1]
    except subprocess.TimeoutExpired:
        service.kill()
        err = service.communicate()[1]
        pytest.fail(f"the service was still running {seconds:g} s after it was asked to stop\n{err[-3000:]}")


def test_sigterm_stops_the_service_within_seconds_with_streams_open_and_gone(grid_city: Path, tmp_path: Path):
    with ExitStack() as streams:
        service, held = _idle_service_with_streams(grid_city, tmp_path, streams)
        service.send_signal(signal.SIGTERM)
        err = _stopped_within(service, SHUTDOWN_S)
        assert [close_code(socket) for socket in held] == [1012, 1012], "open streams are told the service restarts"
    assert service.returncode == 0, err
    assert "Traceback" not in err, err


def test_a_second_ctrl_c_stops_the_service_quietly(grid_city: Path, tmp_path: Path):
    with ExitStack() as streams:
        service, _ = _idle_service_with_streams(grid_city, tmp_path, streams)
        service.send_signal(signal.SIGINT)
        time.sleep(0.05)
        service.send_signal(signal.SIGINT)  # impatient: cut the shutdown short
        err = _stopped_within(service, SHUTDOWN_S)
    assert service.returncode == 0, err
    assert "Traceback" not in err and "Exception in ASGI" not in err, err


# -- finding 5: bounded requests ------------------------------------------------------------


def test_a_huge_body_is_refused_before_it_is_read(served):
    """By its Content-Length, before a byte of it is sent, key or no key."""
    city, server = served
    for headers in ({}, city.headers("device")):
        started = time.monotonic()
        status, body = raw_post(server.port, "/api/events", {**headers, "Content-Type": "application/json",
                                                             "Content-Length": str(BIG)})
        assert status == 413 and is_error(body), body
        assert time.monotonic() - started < 2.0


def test_a_chunked_body_is_refused_once_it_grows_past_the_limit(served):
    city, server = served
    chunk = b" " * 65536
    chunks = [b"["] + [chunk] * 64  # one byte past 4 MiB, and no end in sight
    status, body = raw_post(server.port, "/api/events", {**city.headers("device"), "Content-Type": "application/json",
                                                         "Transfer-Encoding": "chunked"}, chunks)
    assert status == 413 and is_error(body), body
    assert city.store.count_events() == 0


def test_a_key_holds_a_limited_number_of_streams(served):
    city, server = served
    viewer = f"/live?key={city.keys['viewer']}"
    with ExitStack() as streams:
        opened = [streams.enter_context(server.socket(viewer)) for _ in range(8)]
        assert all(socket.recv(timeout=5) for socket in opened)
        assert closed_with(server.socket(viewer)) == 4429, "the ninth stream of one key"
        with server.socket(f"/live?key={city.keys['operator']}") as other:
            assert other.recv(timeout=5), "another key is not held to the first one's streams"
        opened[0].close()
        time.sleep(0.3)  # the server sees it go at once; the client's close handshake takes a moment
        with server.socket(viewer) as again:
            assert again.recv(timeout=5), "a closed stream no longer counts against its key"


def test_the_limits_are_settings_of_the_app(city: City):
    small = TestClient(create_app(city.service, max_body_bytes=1024, max_streams_per_key=1))
    answer = small.post("/api/events", content=b"[" + b" " * 2000 + b"]", headers={**city.headers("device"),
                                                                                  "Content-Type": "application/json"})
    assert answer.status_code == 413 and is_error(answer.json())
    streamed = small.post("/api/events", content=iter([b"[" + b" " * 700, b" " * 700 + b"]"]),
                          headers={**city.headers("device"), "Content-Type": "application/json"})
    assert streamed.status_code == 413 and is_error(streamed.json())
    with small.websocket_connect(f"/live?key={city.keys['viewer']}") as first:
        assert first.receive_json()["type"] == "tick"
        with pytest.raises(WebSocketDisconnect) as refused, \
                small.websocket_connect(f"/live?key={city.keys['viewer']}") as second:
            second.receive_json()
        assert refused.value.code == 4429
    small.close()


# -- finding 6: bad numbers and bytes --------------------------------------------------------

TOO_BIG = 2**63
BAD_PARAMETERS = [  # (method, path, role): each must be refused as bad input, not answered 500
    ("post", f"/api/alerts/{TOO_BIG}/acknowledge", "operator"),
    ("post", "/api/alerts/-1/acknowledge", "operator"),
    ("get", f"/api/commands?after={TOO_BIG}", "device"),
    ("get", "/api/commands?after=-1", "device"),
    ("get", "/api/commands?limit=1001", "device"),
    ("get", "/api/commands?limit=0", "device"),
    ("get", "/api/kpis?since=nan", "viewer"),
    ("get", "/api/kpis?since=inf", "viewer"),
    ("get", "/api/kpis?since=-Infinity", "viewer"),
    ("get", f"/api/decisions?limit={10**30}", "viewer"),
    ("get", "/api/decisions?intersection=a%00b", "viewer"),
    ("get", "/api/intersections/a%00b", "viewer"),
    ("get", "/api/intersections/%C3%A9", "viewer"),
    ("get", "/api/emergency/a%20b/route", "admin"),
    ("delete", "/api/keys/a%00b", "admin"),
    ("get", f"/api/audit?limit={10**30}", "admin"),
]
BAD_BODIES = [  # (path, content type, body, role)
    ("/api/events", "application/json", b"[" * 1000 + b"]" * 1000, "device"),
    ("/api/events", "application/json", b'[{"kind": "controller", "device_id": "\xff\xfe"}]', "device"),
    ("/api/events", "application/x-ndjson", b'{"kind": "controller"}\n{"device_id": "\xc3"}\n', "device"),
    ("/api/events", "application/json", b'[{"kind": "controller", "seq": ' + b"9" * 5000 + b"}]", "device"),
    ("/api/events", "application/json", b'[{"kind": "controller", "time": 1e999}]', "device"),
    ("/api/keys", "application/json", b'{"name": ' + b"[" * 1000 + b"]" * 1000 + b', "role": "viewer"}', "admin"),
    ("/api/keys", "application/json", b'{"name": "\xff", "role": "viewer"}', "admin"),
    ("/api/intersections/A0/control", "application/json", b'{"controller": ' + b"{" * 900 + b"}" * 900 + b"}",
     "operator"),
]


def test_bad_numbers_and_bytes_are_refused_never_a_500(city: City):
    for method, path, role in BAD_PARAMETERS:
        answer = getattr(city.client, method)(path, headers=city.headers(role))
        assert answer.status_code in (400, 422) and is_error(answer.json()), (path, answer.status_code, answer.text)
    for path, content_type, body, role in BAD_BODIES:
        answer = city.client.post(path, content=body, headers={**city.headers(role), "Content-Type": content_type})
        assert answer.status_code in (400, 422) and is_error(answer.json()), (path, body[:60], answer.text[:300])
    deep = city.client.post("/api/events", content=b"[" * 100 + b"]" * 100, headers=city.headers("device"))
    assert "nested" in deep.json()["detail"][0]["error"], "refused for its depth, before it is parsed"
    stored = city.store.count_events()
    batch = [city.controller_report(0, 1.0)]
    late_cursor = city.client.post(f"/api/events?commands_after={TOO_BIG}", json=batch, headers=city.headers("device"))
    assert late_cursor.status_code == 422 and is_error(late_cursor.json())
    assert city.store.count_events() == stored, "a batch refused for its cursor is not stored either"


# -- finding 10: what the documents say -----------------------------------------------------


def test_websocket_refusals_are_close_codes_a_browser_can_read(served):
    """A browser never sees the HTTP status of a refused handshake: the service accepts,
    then closes with the documented code."""
    city, server = served
    assert closed_with(server.socket("/live")) == 4401
    assert closed_with(server.socket("/live?key=ub_wrong")) == 4401
    assert closed_with(server.socket(f"/live?key={city.keys['device']}")) == 4403
    assert closed_with(server.socket(f"/api/commands/ws?key={city.keys['viewer']}")) == 4403


def test_every_error_has_the_one_shape(city: City):
    client, headers = city.client, city.headers
    target = sorted(city.network.intersections)[0]
    answers = {
        401: client.get("/api/network"),
        403: client.get("/api/keys", headers=headers("viewer")),
        404: client.get("/api/intersections/nowhere", headers=headers("viewer")),
        405: client.put("/api/network", headers=headers("viewer")),
        409: client.delete("/api/keys/admin", headers=headers("admin")),  # the last admin key
        422: client.post(f"/api/intersections/{target}/control", json={"controller": "chaos"},
                         headers=headers("operator")),
        "404 unrouted": client.get("/api/nothing-here", headers=headers("viewer")),
    }
    city.service.runtime, runtime = None, city.service.runtime
    answers[503] = client.get("/api/network", headers=headers("viewer"))
    city.service.runtime = runtime
    for status, answer in answers.items():
        assert answer.status_code == int(str(status)[:3]) and is_error(answer.json()), (status, answer.text)
    assert answers[405].headers["allow"] == "GET"
    assert answers[401].json()["detail"][0]["field"] == "X-API-Key"


def test_the_openapi_document_says_what_the_api_does(city: City):
    document = city.client.get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert [(s["type"], s["in"], s["name"]) for s in schemes.values()] == [("apiKey", "header", "X-API-Key")]
    operations = {(method.upper(), path): op for path, item in document["paths"].items()
                  for method, op in item.items() if path.startswith("/api/")}
    assert all(op.get("security") for op in operations.values()), "every /api operation needs the key"
    assert "security" not in document["paths"]["/health"]["get"]
    error = {"$ref": "#/components/schemas/ErrorBody"}
    for (method, path), op in operations.items():
        for status, response in op["responses"].items():
            if status[0] in "45":
                assert response["content"]["application/json"]["schema"] == error, (method, path, status)
    assert "HTTPValidationError" not in document["components"]["schemas"]
    events = operations[("POST", "/api/events")]
    assert set(events["requestBody"]["content"]) == {"application/json", "application/x-ndjson"}
    batch = document["components"]["schemas"]["DeviceEventBatch"]
    assert set(batch["items"]["discriminator"]["mapping"]) == {"detector", "camera", "controller", "emergency", "clock"}
    assert {"409", "413", "422", "503"} <= set(events["responses"])
    limit = {p["name"]: p for p in operations[("GET", "/api/commands")]["parameters"]}["limit"]["schema"]
    assert (limit["minimum"], limit["maximum"]) == (1, 1000)
    assert set(operations[("GET", "/api/ngsi-ld/alerts")]["responses"]["200"]["content"]) == {"application/ld+json"}
    assert operations[("GET", "/api/network")]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]


def test_commands_page_with_after_and_limit(city: City):
    for target in city.network.intersections:
        assert city.client.post(f"/api/intersections/{target}/control", json={"controller": "flash"},
                                headers=city.headers("operator")).status_code == 200
    every = city.client.get("/api/commands", headers=city.headers("admin")).json()
    first = city.client.get("/api/commands", params={"limit": 2}, headers=city.headers("admin")).json()
    rest = city.client.get("/api/commands", params={"after": first[-1]["id"]}, headers=city.headers("admin")).json()
    assert len(every) >= 3 and len(first) == 2 and first + rest == every


def test_keys_routes_and_health_follow_the_roles(city: City):
    admin = city.headers("admin")
    fleet = city.client.post("/api/keys", json={"name": "fleet", "role": "emergency", "devices": ["ev-*"]},
                             headers=admin)
    assert fleet.status_code == 201 and fleet.json()["role"] == "emergency"
    assert city.client.post("/api/keys", json={"name": "fleet2", "role": "emergency"}, headers=admin).status_code == 422
    assert city.client.post("/api/keys", json={"name": "fleet", "role": "viewer"}, headers=admin).status_code == 409
    route = "/api/emergency/ev-1/route"
    assert city.client.get(route, headers=city.headers("device")).status_code == 403, "a sensor's key reads no route"
    assert city.client.get(route, headers={"X-API-Key": fleet.json()["key"]}).status_code == 404
    assert city.client.get("/api/emergency/other/route", headers={"X-API-Key": fleet.json()["key"]}).status_code == 403
    last = city.client.delete("/api/keys/admin", headers=admin)
    assert last.status_code == 409 and "last active admin" in last.json()["detail"][0]["error"]
    assert city.client.delete("/api/keys/nobody", headers=admin).status_code == 404
    assert city.client.delete("/api/keys/fleet", headers=admin).json() == {"name": "fleet", "revoked": True}
    health = city.client.get("/health").json()
    assert health["clock"]["mode"] == "wall" and health["clock"]["time"] == city.now


# -- Schemathesis ---------------------------------------------------------------------------


def test_schemathesis_finds_nothing_on_the_running_service(grid_city: Path):
    """scripts/api-fuzz, smaller: every check, every phase, 10 test cases per operation."""
    fuzz = subprocess.run([sys.executable, str(ROOT / "scripts" / "api-fuzz"), "--scenario", str(grid_city),
                           "--max-examples", "10", "--seed", "1", "--roles", "device,admin", "--warmup", "10"],
                          capture_output=True, text=True, timeout=300)
    assert fuzz.returncode == 0, fuzz.stdout[-6000:] + fuzz.stderr[-3000:]
    assert "server errors logged: 0" in fuzz.stdout
