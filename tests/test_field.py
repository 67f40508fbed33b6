"""The field survives anything the brain does (issue 21): outages, restarts, refusals,
answers it cannot use, a full disk. It keeps running its plans, buffers on disk within
a bound, resends in order and says what it is doing.

The brain here is a plain function (a `Transport`) and the twin a short run of the
2x2 grid at full speed; the HTTP transports meet a stub server."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import typer

from urbanbrain.devices.protocol import SignalCommand
from urbanbrain.network import read_network
from urbanbrain.service import field as field_module
from urbanbrain.service.field import TwinField
from urbanbrain.service.outbox import Outbox, RejectLog
from urbanbrain.service.transports import (
    BrainRefused,
    BrainUnreachable,
    http_routes,
    http_transport,
    in_process_routes,
    in_process_transport,
)
from urbanbrain.twin.scenario import load_scenario

HORIZON_S = 40


class FakeBrain:
    """A brain as the field sees it: `answer(batch)` raises (a refusal, no answer) or
    returns the commands; what it took is kept in order, and every request it got."""

    def __init__(self, answer=None):
        self.answer = answer or (lambda batch: [])
        self.calls: list[tuple[float, list[dict], int | None]] = []  # (wall time, events, commands_after)
        self.took: list[dict] = []

    def __call__(self, events: list[str], after: int | None):
        batch = [json.loads(e) for e in events]
        self.calls.append((time.monotonic(), batch, after))
        commands = self.answer(batch)
        self.took += batch
        return commands, max([after or 0, *(command_id for command_id, _ in commands)])

    def events(self) -> list[tuple[str, int]]:
        """What it took, but the clock reports: (device, sequence), in order."""
        return [(e["device_id"], e["seq"]) for e in self.took if e["kind"] != "clock"]


class FullDisk:
    """An outbox's connection whose disk is full: every write fails as SQLite's does."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def executemany(self, *_args):
        raise sqlite3.OperationalError("database or disk is full")

    def __getattr__(self, name: str):
        return getattr(self._db, name)


@pytest.fixture(scope="module")
def city(grid_city: Path):
    scenario = load_scenario(grid_city)
    return scenario, read_network(scenario.net_file)


@pytest.fixture
def make_field(city):
    """make(send, **options) -> (a field over the grid at full speed, what it says, what
    its devices made as (device, sequence) in order)."""
    made_fields = []

    def make(send, **options):
        scenario, network = city
        said: list[str] = []
        field = TwinField(scenario, network, send, speed=0, horizon_s=options.pop("horizon_s", HORIZON_S),
                          say=said.append, **options)
        made: list[tuple[str, int]] = []
        for kind in ("detector", "camera", "controller"):
            field.bus.subscribe(kind, lambda e: made.append((e.device_id, e.seq)))
        made_fields.append(field)
        return field, said, made

    yield make
    for field in made_fields:
        field.close()


def refusal(status: int, items=(None,), retry_after_s: float | None = None) -> BrainRefused:
    return BrainRefused(status, [{"item": i, "field": "seq", "error": f"refused ({status})"} for i in items],
                        retry_after_s)


def down(batch):
    raise BrainUnreachable("connection refused")


def fast_backoff(monkeypatch) -> None:
    """Backoffs of a fifth of a second, doubling to 0.8 s: a test need not wait seconds."""
    monkeypatch.setattr(field_module, "BACKOFF_FIRST_S", 0.2)
    monkeypatch.setattr(field_module, "BACKOFF_MAX_S", 0.8)


# -- the outbox ---------------------------------------------------------------------------------

def test_the_outbox_keeps_order_per_channel_drops_the_oldest_past_its_bound_and_survives_a_reopen(tmp_path: Path):
    path = tmp_path / "outbox.db"
    outbox = Outbox(path, max_bytes=10_000)
    for i in range(60):  # 120 events of 100 bytes: 20 too many
        outbox.append("a", [f"a{i:03d}".ljust(100, ".")])
        outbox.append("b", [f"b{i:03d}".ljust(100, ".")])
    assert (outbox.count, outbox.bytes, outbox.dropped) == (100, 10_000, 20)
    assert [p[:4] for _, p in outbox.oldest("a", 1000, 10**6)] == [f"a{i:03d}" for i in range(10, 60)]
    assert len(outbox.oldest("a", 5, 10**6)) == 5 and len(outbox.oldest("a", 100, 250)) == 2
    assert len(outbox.oldest("a", 100, 10)) == 1, "at least one, whatever its size"
    outbox.remove(outbox.oldest("b", 30, 10**6))
    outbox.close()
    again = Outbox(path, max_bytes=10_000)
    try:
        assert (again.count, again.bytes, again.channels()) == (70, 7_000, ["a", "b"])
        assert [p[:4] for _, p in again.oldest("b", 1000, 10**6)] == [f"b{i:03d}" for i in range(40, 60)]
    finally:
        again.close()


def test_a_full_disk_drops_and_counts_what_the_outbox_cannot_keep_and_leaves_no_transaction_open(tmp_path: Path):
    outbox = Outbox(tmp_path / "outbox.db")
    outbox.append("a", ["kept"])
    disk = outbox._db
    outbox._db = FullDisk(disk)
    assert outbox.append("a", ["lost", "lost too"]) is False
    assert (outbox.count, outbox.dropped) == (1, 2) and "disk is full" in outbox.error
    outbox._db = disk  # room again: the next append works (no transaction left open)
    assert outbox.append("a", ["after"]) is True
    assert [p for _, p in outbox.oldest("a", 10, 10**6)] == ["kept", "after"]
    outbox.close()


def test_rejected_jsonl_stops_at_its_bound_and_counts_what_it_did_not_write(tmp_path: Path):
    log = RejectLog(tmp_path / "rejected.jsonl", max_bytes=1_000)
    lines = [json.dumps({"n": i, "pad": "x" * 80}) for i in range(20)]  # about 100 bytes each
    assert log.write(lines) is False
    assert (tmp_path / "rejected.jsonl").stat().st_size <= 1_000
    written = len((tmp_path / "rejected.jsonl").read_text().splitlines())
    assert written + log.unwritten == 20 and written >= 9 and "bound" in log.error
    unwritable = RejectLog(tmp_path)  # a folder: the disk refuses the file
    assert unwritable.write(lines[:3]) is False and unwritable.unwritten == 3


# -- refusals -----------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [409, 422])
def test_a_refusal_naming_items_sets_just_those_aside_with_reasons_and_delivers_the_rest(make_field, status: int):
    def answer(batch):
        named = [i for i, e in enumerate(batch) if e["kind"] == "controller" and e["seq"] % 5 == 0]
        if named:
            raise refusal(status, named)
        return []

    brain = FakeBrain(answer)
    field, said, made = make_field(brain)
    field.run()
    refused = [(d, s) for d, s in made if d.startswith("ctl_") and s % 5 == 0]
    assert refused and field.rejected == len(refused)
    assert brain.events() == [m for m in made if m not in refused], "the rest delivered, once, in order"
    kept = [json.loads(line) for line in field.rejects.path.read_text().splitlines()]
    assert [(k["event"]["device_id"], k["event"]["seq"]) for k in kept] == refused
    assert all(k["status"] == status and k["errors"][0]["error"] == f"refused ({status})" for k in kept)
    assert field.backlog.count == 0 and field.brain_reachable
    assert sum("refused" in line for line in said) == 1, "one line, not one a second"


def test_a_413_halves_the_batch_and_sets_aside_a_single_event_too_large(make_field):
    def huge(event):
        return event["kind"] == "controller" and event["seq"] % 7 == 0

    def answer(batch):
        if len(batch) > 8 or any(huge(e) for e in batch):
            raise refusal(413)
        return []

    brain = FakeBrain(answer)
    field, _said, made = make_field(brain)
    field.run()
    too_large = [m for m in made if m[0].startswith("ctl_") and m[1] % 7 == 0]
    assert too_large and field.rejected == len(too_large)
    assert brain.events() == [m for m in made if m not in too_large]
    assert max(len(batch) for _, batch, _ in brain.calls) > 8, "it sent whole seconds first"
    assert field.backlog.count == 0


@pytest.mark.parametrize(("status", "retry_after_s"), [(401, None), (403, None), (404, None), (408, None),
                                                       (422, None), (429, None), (429, 0.5)])
def test_a_refusal_of_the_whole_request_keeps_every_event_backs_off_then_delivers_all(
        make_field, monkeypatch, status: int, retry_after_s: float | None):
    fast_backoff(monkeypatch)
    refusals = []

    def answer(batch):
        if len(refusals) < 2:
            refusals.append(time.monotonic())
            raise refusal(status, retry_after_s=retry_after_s)
        return []

    brain = FakeBrain(answer)
    field, said, made = make_field(brain)
    field.run()
    assert field.flush(10.0)
    assert field.rejected == 0 and not field.rejects.path.exists(), "nothing set aside for good"
    assert sorted(brain.events()) == sorted(made) and len(brain.events()) == len(made), "all, once"
    first_wait, second_wait = refusals[1] - refusals[0], brain.calls[2][0] - refusals[1]
    if retry_after_s is None:
        assert first_wait >= 0.2 and second_wait >= 0.4, "it backs off, longer each time"
    else:
        assert first_wait >= retry_after_s and second_wait >= retry_after_s, "as the brain asks"
    assert sum("as a whole" in line for line in said) == 1


def test_when_the_brain_stops_answering_after_a_partial_refusal_the_refused_event_is_not_kept_again(make_field):
    state = {"refused": None, "down": False}

    def answer(batch):
        if state["refused"] is None and len(batch) > 3:
            state["refused"] = (batch[0]["device_id"], batch[0]["seq"])
            raise refusal(422, [0])
        if state["refused"] is not None and not state["down"]:
            state["down"] = True
            raise BrainUnreachable("gone")
        return []

    brain = FakeBrain(answer)
    field, _said, made = make_field(brain)
    field.run()
    assert field.flush(10.0)
    assert field.rejected == 1 and state["refused"] not in brain.events()
    assert sorted(brain.events()) == sorted(m for m in made if m != state["refused"])
    assert len(brain.events()) == len(made) - 1, "the rest delivered once"


# -- outages ------------------------------------------------------------------------------------

def test_an_outage_delivers_every_event_once_the_backlog_in_order_trying_the_brain_only_now_and_then(make_field):
    down_from, down_until = 10.0, 25.0
    twin: dict[str, TwinField] = {}
    tried_at: list[float] = []  # the twin's time at each request

    def answer(batch):
        tried_at.append(twin["field"].twin.now)
        if down_from <= tried_at[-1] < down_until:
            down(batch)
        return []

    brain = FakeBrain(answer)
    field, said, made = make_field(brain)
    twin["field"] = field
    made_at: dict[tuple[str, int], float] = {}
    for kind in ("detector", "camera", "controller"):
        field.bus.subscribe(kind, lambda e: made_at.setdefault((e.device_id, e.seq), field.twin.now))
    field.run()
    assert field.flush(10.0)
    assert sorted(brain.events()) == sorted(made) and len(brain.events()) == len(made), "every event, once"
    waited = {m for m, t in made_at.items() if down_from <= t < down_until}
    assert waited and [e for e in brain.events() if e in waited] == [m for m in made if m in waited], "oldest first"
    tries = [t for t in tried_at if down_from <= t < down_until]
    assert len(tries) <= 6, f"at most once per backoff (1, 2, 4, 4 s), not every second: {tries}"
    back = min(t for t in tried_at if t >= down_until)
    assert back <= down_until + field_module.BACKOFF_MAX_S, "control comes back within seconds"
    assert sum("unreachable" in line for line in said) == 1 and sum("answers again" in line for line in said) == 1


def test_a_hung_brain_does_not_hold_every_step(make_field):
    hang_s = 0.1

    def answer(batch):
        time.sleep(hang_s)
        raise BrainUnreachable("timed out")

    brain = FakeBrain(answer)
    field, _said, made = make_field(brain)
    field.run()
    assert len(brain.calls) <= HORIZON_S // 3, "a try now and then, not one a step"
    assert field.backlog.count == len(made), "the events wait"


def test_flush_tells_a_restarted_replay_brain_the_time_before_the_backlog(make_field):
    """A replay brain started again after the run has no clock: it answers 503 to
    anything until the time server reports."""
    brain_clock: dict[str, float | None] = {"time": None}
    twin: dict[str, TwinField] = {}

    def answer(batch):
        if twin["field"].running and twin["field"].twin.now >= 20:  # down for the rest of the run
            down(batch)
        declared = [e["time"] for e in batch if e["kind"] == "clock"]
        if declared:
            brain_clock["time"] = max(declared)
        if brain_clock["time"] is None:
            raise BrainUnreachable("503: the brain has no city clock yet")
        return []

    brain = FakeBrain(answer)
    field, _said, made = make_field(brain)
    twin["field"] = field
    field.run()
    brain_clock["time"] = None  # started again after the run
    calls = len(brain.calls)
    assert field.flush(10.0), "the backlog is delivered"
    first = brain.calls[calls][1]
    assert [e["kind"] for e in first] == ["clock"] and first[0]["time"] == field.twin.now
    assert sorted(brain.events()) == sorted(made) and len(brain.events()) == len(made)


# -- answers the field cannot use ---------------------------------------------------------------

def test_commands_the_field_cannot_carry_out_are_counted_and_skipped(make_field, city):
    _scenario, network = city
    intersection = min(network.intersections)

    def command(**fields):
        return SignalCommand(device_id="brain", seq=1, time=0.0, intersection=intersection,
                             action="plan").model_dump(mode="json") | fields

    answers = [[(1, command(version="9.9")), (2, command(valid_s=120.0)), (3, "not json"),
                (4, command(action="go", phase=99)), (5, command())]]

    brain = FakeBrain(lambda batch: answers.pop() if answers else [])
    field, said, _made = make_field(brain)
    modes = {}
    field.run(on_step=lambda now: modes.setdefault(now, field.twin.controllers[intersection].mode))
    assert field.twin.now == HORIZON_S, "the field ran on"
    assert field.bad_commands == 4
    assert modes[1.0] == "plan", "the good command was carried out"
    assert brain.calls[1][2] == 5, "the cursor moved past what was carried out or counted"
    assert sum("cannot carry out" in line for line in said) == 1


def test_a_full_disk_drops_and_counts_the_events_and_never_stops_the_signals(make_field):
    field, said, made = make_field(FakeBrain(down))
    field.backlog._db = FullDisk(field.backlog._db)
    field.run()
    assert field.twin.now == HORIZON_S
    assert field.backlog.dropped == len(made) and field.backlog.count == 0
    assert sum("cannot keep" in line for line in said) == 1


def test_refusals_the_disk_cannot_record_are_counted(make_field, tmp_path: Path):
    def answer(batch):
        if len(batch) > 1:
            raise refusal(422, [0])
        return []

    field, said, _made = make_field(FakeBrain(answer))
    field.rejects = RejectLog(tmp_path)  # a folder: the disk refuses the file
    field.run()
    assert field.rejected > 1 and field.rejects.unwritten == field.rejected
    assert sum("not kept" in line for line in said) == 1


# -- the transports -----------------------------------------------------------------------------

class _Stub(BaseHTTPRequestHandler):
    def _reply(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, headers, body = self.server.replies[self.path.split("?")[0]]
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _reply

    def log_message(self, *_args) -> None:
        pass


@pytest.fixture
def stub():
    """An HTTP server answering each path as `replies[path] = (status, headers, body)` says: (url, replies)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    server.replies = {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server.replies
    server.shutdown()
    server.server_close()


HTML = (200, {"Content-Type": "text/html"}, b"<html>a proxy's login page</html>")


def test_http_answers_that_are_no_brains_are_unreachable_and_refusals_carry_retry_after(stub):
    url, replies = stub
    send = http_transport(url, "ub_key", timeout_s=2.0)
    for reply in (HTML, (200, {}, b'{"commands": "none", "last_command_id": 3}'), (200, {}, b"[" * 100_000)):
        replies["/api/events"] = reply
        with pytest.raises(BrainUnreachable, match="no brain's answer"):
            send(["{}"], None)
    replies["/api/events"] = (200, {}, b'{"commands": [{"id": 4, "command": "anything"}], "last_command_id": 4}')
    assert send(["{}"], 3) == ([(4, "anything")], 4), "each command is checked where it is carried out"
    replies["/api/events"] = (429, {"Retry-After": "7"}, b'{"detail": [{"item": null, "field": "", "error": "slow"}]}')
    with pytest.raises(BrainRefused) as refused:
        send(["{}"], 3)
    assert (refused.value.status, refused.value.retry_after_s, refused.value.errors[0]["error"]) == (429, 7.0, "slow")
    route = http_routes(url, "ub_key", timeout_s=2.0)
    replies["/api/emergency/ev-1/route"] = HTML
    with pytest.raises(BrainUnreachable, match="no route advice"):
        route("ev-1")
    replies["/api/emergency/ev-1/route"] = (404, {}, b"")
    assert route("ev-1") is None


def test_a_brain_answering_a_proxy_page_keeps_the_events_in_the_outbox(make_field, stub):
    url, replies = stub
    replies["/api/events"] = HTML
    field, said, made = make_field(http_transport(url, "ub_key", timeout_s=2.0), horizon_s=10)
    field.run()
    assert not field.brain_reachable and field.backlog.count == len(made)
    assert any("no brain's answer" in line for line in said)


def test_the_in_process_brain_failing_is_an_outage_and_its_refusals_are_refusals():
    from urbanbrain.service.city import BatchError

    class Runtime:
        def __init__(self, failure: Exception):
            self.failure = failure

        def ingest(self, *_args):
            raise self.failure

        def route_for(self, *_args):
            raise self.failure

    for failure in (sqlite3.OperationalError("database is locked"), RuntimeError("bug"),
                    BatchError([(None, "time", "no city clock yet")], status=503)):
        with pytest.raises(BrainUnreachable):
            in_process_transport(Runtime(failure), None)(["{}"], None)
    with pytest.raises(BrainRefused) as refused:
        in_process_transport(Runtime(BatchError([(0, "seq", "conflict")], status=409)), None)(["{}"], None)
    assert refused.value.status == 409 and refused.value.errors == [{"item": 0, "field": "seq", "error": "conflict"}]
    with pytest.raises(BrainRefused, match="403"):
        in_process_routes(Runtime(PermissionError("not yours")), None)("ev-1")
    with pytest.raises(BrainUnreachable):
        in_process_routes(Runtime(sqlite3.OperationalError("disk I/O error")), None)("ev-1")


# -- the twin command ---------------------------------------------------------------------------

def test_the_twin_refuses_a_buffer_holding_an_earlier_runs_events(tmp_path: Path, capsys):
    from urbanbrain.cli import _outbox

    earlier = Outbox(tmp_path / "outbox.db")
    earlier.append("field", ['{"kind": "detector"}'])
    earlier.close()
    with pytest.raises(typer.Exit):
        _outbox(tmp_path, 1)
    said = capsys.readouterr().err
    assert "holds 1 events" in said and "move the file away" in said
    _outbox(tmp_path / "fresh", 1).close()


def test_the_twin_refuses_a_brain_whose_replay_is_past_the_scenarios_start(stub, capsys):
    from urbanbrain.cli import _check_brain

    url, replies = stub
    replies["/api/commands"] = (200, {}, b"[]")
    replies["/health"] = (200, {}, b'{"status": "ok", "clock": {"mode": "replay", "time": 500.0}}')
    with pytest.raises(typer.Exit):
        _check_brain(url, "ub_key", 1, 0.0)
    assert "start it again" in capsys.readouterr().err
    replies["/health"] = (200, {}, b'{"status": "ok", "clock": {"mode": "replay", "time": null}}')
    _check_brain(url, "ub_key", 1, 0.0)
