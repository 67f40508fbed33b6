"""The HTTP API (FastAPI): device ingress, read API, operator steering, live WebSockets.
The contract is docs/api.md; OpenAPI is served at /docs. Every endpoint with city data
or actions needs an API key (only /health, the API's own documentation and the
cockpit's static files load without one), checked against the store on every request
and every few seconds on open WebSockets, so a key revoked from the command line
stops working at once, even while the service runs.
"""

import asyncio
import json
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field

from urbanbrain.service.city import BatchError, CityRuntime, jsonable
from urbanbrain.service.fiware import alert_entity
from urbanbrain.service.keys import ADMIN, POST_EVENTS, READ, STEER, KeyError_, Principal, authenticate, create_key
from urbanbrain.store import Store

COCKPIT = Path(__file__).resolve().parent.parent / "cockpit" / "static"
MAX_BATCH = 10_000
LIVE_TICKS_PER_S = 4.0  # a twin running faster than real time still sends the cockpit at most this many ticks
KEY_RECHECK_S = 5.0  # how soon a revoked key's open stream is closed


class ServiceState:
    """What the app serves: the store at once, the city once it is loaded."""

    def __init__(self, store: Store):
        self.store = store
        self.runtime: CityRuntime | None = None
        self.twin = "off"  # off | starting | running | finished | failed
        self.twin_error: str | None = None


class ControlRequest(BaseModel):
    controller: Literal["brain", "fixed", "flash"]


class KeyRequest(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    role: Literal["device", "viewer", "operator", "admin"]
    devices: list[str] = Field(default_factory=list)


def create_app(service: ServiceState, on_shutdown: Callable[[], None] | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        if on_shutdown is not None:
            await asyncio.to_thread(on_shutdown)

    # FastAPIOffline serves the OpenAPI pages' scripts from the package, not a CDN:
    # a control centre's network is often closed.
    app = FastAPIOffline(title="urbanbrain", summary="An open-source City Brain: the brain service's API (docs/api.md)",
                         version="1", lifespan=lifespan, redoc_url=None)
    store = service.store

    def principal(roles: frozenset[str]) -> Callable[..., Principal]:
        def check(x_api_key: Annotated[str | None, Header()] = None) -> Principal:
            who = authenticate(store, x_api_key)
            if who is None:
                raise HTTPException(401, "a valid API key is needed (header X-API-Key)")
            if who.role not in roles:
                raise HTTPException(403, f"role {who.role!r} may not do this (needs {' or '.join(sorted(roles))})")
            return who
        return check

    def runtime() -> CityRuntime:
        if service.runtime is None:
            raise HTTPException(503, f"the city is not loaded yet (twin: {service.twin})")
        return service.runtime

    reader = Depends(principal(READ))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": [
            {"item": None, "field": ".".join(str(p) for p in err["loc"] if p != "body"), "error": err["msg"]}
            for err in exc.errors()]})

    @app.get("/health")
    def health() -> dict[str, Any]:
        city = service.runtime
        return {"status": "ok", "twin": service.twin, "twin_error": service.twin_error,
                "city_time": None if city is None else city.city_time}

    @app.post("/api/events")
    async def post_events(request: Request, who: Annotated[Principal, Depends(principal(POST_EVENTS))],
                          commands_after: int | None = None) -> JSONResponse:
        items = _parse_batch(await request.body(), request.headers.get("content-type", ""))
        try:
            result = await asyncio.to_thread(runtime().ingest, items, who, commands_after)
        except BatchError as exc:
            return JSONResponse(status_code=exc.status, content={"detail": [
                {"item": item, "field": field, "error": reason} for item, field, reason in exc.errors]})
        if who.role == "admin":  # an administrator speaking for devices is audited like any admin write
            store.add_audit(who.name, who.role, "post events", "devices",
                            {"accepted": result.accepted, "duplicates": result.duplicates})
        return JSONResponse({"accepted": result.accepted, "duplicates": result.duplicates,
                             "city_time": result.city_time, "last_command_id": result.last_command_id,
                             "commands": [{"id": i, "command": c} for i, c in result.commands]})

    @app.get("/api/commands")
    def get_commands(who: Annotated[Principal, Depends(principal(POST_EVENTS))], after: int = 0) -> list[dict[str, Any]]:
        return [{"id": i, "command": c} for i, c in runtime().commands_for(who, after)]

    @app.get("/api/network", dependencies=[reader])
    def network() -> dict[str, Any]:
        return _network_json(runtime())

    @app.get("/api/intersections", dependencies=[reader])
    def intersections() -> list[dict[str, Any]]:
        return runtime().intersection_rows()

    @app.get("/api/intersections/{intersection_id}", dependencies=[reader])
    def intersection(intersection_id: str) -> dict[str, Any]:
        city = runtime()
        if intersection_id not in city.network.intersections:
            raise HTTPException(404, f"no intersection {intersection_id!r}")
        return city.intersection_detail(intersection_id)

    @app.get("/api/lanes", dependencies=[reader])
    def lanes() -> list[dict[str, Any]]:
        return runtime().lane_rows()

    @app.get("/api/kpis", dependencies=[reader])
    def kpis(since: float | None = None) -> list[dict[str, Any]]:
        return store.kpis(since)

    @app.get("/api/decisions", dependencies=[reader])
    def decisions(intersection: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                  switches_only: bool = False) -> list[dict[str, Any]]:
        """Switches and other acted-on decisions are stored; decisions to keep a green
        (one per contested second) only in memory, so after a restart only the stored ones."""
        city = runtime()
        recent = [d for d in reversed(city.brain.recent)
                  if (intersection is None or d["intersection"] == intersection)
                  and not (switches_only and d["outcome"] == "kept")]
        if recent:
            return [jsonable(d) for d in recent[:limit]]
        return store.decisions(intersection, limit)

    @app.get("/api/devices", dependencies=[reader])
    def devices() -> list[dict[str, Any]]:
        return runtime().device_rows()

    @app.get("/api/emergency", dependencies=[reader])
    def emergency() -> dict[str, Any]:
        return runtime().emergency_json()

    @app.get("/api/emergency/{vehicle}/route")
    def emergency_route(vehicle: str, who: Annotated[Principal, Depends(principal(POST_EVENTS))]) -> dict[str, Any]:
        """The route the brain planned for a vehicle, for its navigation unit (its device key) or an administrator."""
        try:
            advice = runtime().route_for(who, vehicle)
        except PermissionError as exc:
            raise HTTPException(403, str(exc)) from None
        if advice is None:
            raise HTTPException(404, f"no route planned for {vehicle!r} (is it reporting, en route?)")
        return advice.model_dump()

    @app.get("/api/alerts", dependencies=[reader])
    def alerts(status: Literal["new", "acknowledged", "resolved"] | None = None) -> list[dict[str, Any]]:
        return store.alerts(status)

    @app.get("/api/ngsi-ld/alerts", dependencies=[reader])
    def alerts_ngsi_ld(status: Literal["new", "acknowledged", "resolved"] | None = None) -> JSONResponse:
        city = runtime().network.name
        return JSONResponse([alert_entity(a, city) for a in store.alerts(status)], media_type="application/ld+json")

    @app.post("/api/alerts/{alert_id}/acknowledge")
    def acknowledge(alert_id: int, who: Annotated[Principal, Depends(principal(STEER))]) -> dict[str, Any]:
        current = store.alert(alert_id)
        if current is None:
            raise HTTPException(404, f"no alert {alert_id}")
        changed = runtime().acknowledge_alert(alert_id, who.name)
        if changed is None:
            raise HTTPException(409, f"alert {alert_id} is {current['status']}, not new")
        store.add_audit(who.name, who.role, "acknowledge alert", str(alert_id), {})
        return changed

    @app.post("/api/intersections/{intersection_id}/control")
    def control(intersection_id: str, body: ControlRequest,
                who: Annotated[Principal, Depends(principal(STEER))]) -> dict[str, Any]:
        city = runtime()
        if intersection_id not in city.network.intersections:
            raise HTTPException(404, f"no intersection {intersection_id!r}")
        row = city.set_controller(intersection_id, body.controller)
        store.add_audit(who.name, who.role, "control", intersection_id, {"controller": body.controller})
        return row

    @app.get("/api/audit")
    def audit_log(who: Annotated[Principal, Depends(principal(ADMIN))],
                  limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> list[dict[str, Any]]:
        return store.audit_log(limit)

    @app.get("/api/keys", dependencies=[Depends(principal(ADMIN))])
    def keys() -> list[dict[str, Any]]:
        return store.keys()

    @app.post("/api/keys", status_code=201)
    def new_key(body: KeyRequest, who: Annotated[Principal, Depends(principal(ADMIN))]) -> dict[str, Any]:
        try:
            key = create_key(store, body.name, body.role, body.devices)
        except KeyError_ as exc:
            raise HTTPException(422, [{"item": None, "field": "body", "error": str(exc)}]) from None
        store.add_audit(who.name, who.role, "create key", body.name, {"role": body.role, "devices": body.devices})
        return {"name": body.name, "role": body.role, "devices": body.devices, "key": key}

    @app.delete("/api/keys/{name}")
    def revoke(name: str, who: Annotated[Principal, Depends(principal(ADMIN))]) -> dict[str, Any]:
        if not store.revoke_key(name):
            raise HTTPException(404, f"no active key named {name!r}")
        store.add_audit(who.name, who.role, "revoke key", name, {})
        return {"name": name, "revoked": True}

    @app.websocket("/live")
    async def live(socket: WebSocket, key: str | None = None) -> None:
        await _stream(socket, key, READ, lambda who, m: None if m["type"] == "command" else m)

    @app.websocket("/api/commands/ws")
    async def command_stream(socket: WebSocket, key: str | None = None) -> None:
        def commands_only(who: Principal, message: dict[str, Any]) -> dict[str, Any] | None:
            if message["type"] != "command" or not who.may_speak_for(message["controller"]):
                return None
            return {"id": message["id"], "command": message["command"]}
        await _stream(socket, key, POST_EVENTS, commands_only)

    async def _stream(socket: WebSocket, key: str | None, roles: frozenset[str],
                      select: Callable[[Principal, dict[str, Any]], dict[str, Any] | None]) -> None:
        who = authenticate(store, key)
        if who is None or who.role not in roles:
            await socket.close(code=4401 if who is None else 4403)
            return
        await socket.accept()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=2000)
        last_tick = [0.0]

        def deliver(message: dict[str, Any]) -> None:
            chosen = select(who, message)
            if chosen is None:
                return
            if chosen.get("type") == "tick":
                now = time.monotonic()
                if now - last_tick[0] < 1.0 / LIVE_TICKS_PER_S:
                    return
                last_tick[0] = now
            loop.call_soon_threadsafe(_offer, queue, chosen)

        while service.runtime is None:
            await asyncio.sleep(0.2)
        stop = service.runtime.listen(deliver)
        try:
            if roles is READ:
                await socket.send_json(jsonable(service.runtime.tick_message()))
            checked = time.monotonic()
            while True:
                try:
                    message = await asyncio.wait_for(queue.get(), timeout=KEY_RECHECK_S)
                except TimeoutError:
                    message = None
                if time.monotonic() - checked >= KEY_RECHECK_S:  # a key revoked meanwhile ends the stream
                    if authenticate(store, key) is None:
                        await socket.close(code=4401)
                        return
                    checked = time.monotonic()
                if message is not None:
                    await socket.send_json(jsonable(message))
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            stop()

    if COCKPIT.is_dir():
        app.mount("/", StaticFiles(directory=COCKPIT, html=True), name="cockpit")
    return app


def _offer(queue: asyncio.Queue, message: dict[str, Any]) -> None:
    """A client too slow to keep up loses live messages, never the service its memory."""
    if not queue.full():
        queue.put_nowait(message)


def _parse_batch(body: bytes, content_type: str) -> list[Any]:
    """A JSON array, or JSON lines; a line that is not JSON is named by its item number."""
    if "ndjson" in content_type or "jsonl" in content_type:
        items = []
        for index, line in enumerate(l for l in body.splitlines() if l.strip()):
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise HTTPException(422, [{"item": index, "field": "message", "error": f"not valid JSON: {exc.msg}"}]) from None
    else:
        try:
            items = json.loads(body)
        except json.JSONDecodeError as exc:
            raise HTTPException(422, [{"item": None, "field": "body", "error": f"not valid JSON: {exc.msg} at position {exc.pos}"}]) from None
        if not isinstance(items, list):
            raise HTTPException(422, [{"item": None, "field": "body", "error": "expected a JSON array of device events"}])
    if not items:
        raise HTTPException(422, [{"item": None, "field": "body", "error": "the batch is empty"}])
    if len(items) > MAX_BATCH:
        raise HTTPException(413, [{"item": None, "field": "body", "error": f"at most {MAX_BATCH} events per batch, got {len(items)}"}])
    return items


def _network_json(city: CityRuntime) -> dict[str, Any]:
    network = city.network
    owner = {lane: i.id for i in network.intersections.values() for lane in i.in_lanes}
    points = [p for lane in network.lanes.values() for p in lane.shape] or [i.position for i in network.intersections.values()]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return {
        "name": network.name,
        "bounds": [min(xs), min(ys), max(xs), max(ys)],
        "intersections": [{"id": i.id, "x": i.position[0], "y": i.position[1],
                           "phases": [{"index": p.index, "state": p.state} for p in i.phases]}
                          for i in network.intersections.values()],
        "lanes": [{"id": lane.id, "intersection": owner.get(lane.id), "shape": [list(p) for p in lane.shape],
                   "length_m": lane.length_m} for lane in network.lanes.values()],
    }
