"""The HTTP API (FastAPI): device ingress, read API, operator steering, live WebSockets.
The contract is docs/api.md; OpenAPI is served at /docs. Every endpoint with city data
or actions needs an API key (only /health, the API's own documentation and the
cockpit's static files load without one), checked against the store on every request
and every few seconds on open WebSockets, so a key revoked from the command line
stops working at once, even while the service runs.

Input is bounded before it can cost anything: bodies over a size limit are refused
(by their Content-Length before a byte is read, and as a chunked body grows), JSON
nested deeper than a device event ever is or not valid UTF-8 is refused before it is
decoded, ids and cursors fit the store's 64-bit integers, floats are finite, and each
key holds a limited number of open streams. Every error, whatever its status, has one
shape (`ErrorBody`), so a client reads `detail[i].error` wherever it failed.
"""

import asyncio
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security, WebSocket
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from urbanbrain.devices.protocol import RouteAdvice
from urbanbrain.service.api_schema import (
    EVENTS_BODY,
    ID_PATTERN,
    MAX_BODY_BYTES,
    MAX_ID,
    Alert,
    AlertStatus,
    AuditEntry,
    CityNetwork,
    ClockInfo,
    CommandRow,
    ControlRequest,
    Cursor,
    Decision,
    DeviceRow,
    EmergencyState,
    EventConflictRow,
    EventsAccepted,
    Health,
    IntersectionDetail,
    IntersectionRow,
    KeyCreated,
    KeyRequest,
    KeyRevoked,
    KeyRow,
    KpiMinute,
    LaneRow,
    LinkedDataResponse,
    NgsiLdAlert,
    components,
    error_response,
    error_responses,
    problem,
)
from urbanbrain.service.bounded import BodyLimit, BoundedJsonRoute, parse_batch
from urbanbrain.service.city import BatchError, CityRuntime, jsonable
from urbanbrain.service.fiware import alert_entity
from urbanbrain.service.keys import (
    ADMIN,
    NAME_PATTERN,
    POST_EVENTS,
    READ,
    ROUTES,
    STEER,
    KeyError_,
    KeyNotFound,
    LastAdmin,
    Principal,
    authenticate,
    create_key,
    revoke_key,
)
from urbanbrain.service.streams import Streams
from urbanbrain.store import Store

COCKPIT = Path(__file__).resolve().parent.parent / "cockpit" / "static"
MAX_STREAMS_PER_KEY = 8  # open WebSockets per key: a wall of screens, not a flood
MAX_COMMANDS = 1000  # per GET /api/commands: page with `after`


# -- the service ------------------------------------------------------------------------


class ServiceState:
    """What the app serves: the store at once, the city once it is loaded."""

    def __init__(self, store: Store):
        self.store = store
        self.runtime: CityRuntime | None = None
        self.twin = "off"  # off | starting | running | finished | failed
        self.twin_error: str | None = None


def create_app(service: ServiceState, on_shutdown: Callable[[], None] | None = None, *,
               max_body_bytes: int = MAX_BODY_BYTES, max_streams_per_key: int = MAX_STREAMS_PER_KEY) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        if on_shutdown is not None:
            await asyncio.to_thread(on_shutdown)

    # FastAPIOffline serves the OpenAPI pages' scripts from the package, not a CDN:
    # a control centre's network is often closed.
    app = FastAPIOffline(title="urbanbrain", summary="An open-source City Brain: the brain service's API (docs/api.md)",
                         version="1", lifespan=lifespan, redoc_url=None)
    app.router.route_class = BoundedJsonRoute
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    _handle_errors(app)
    _add_components(app)
    store = service.store
    api_key = APIKeyHeader(name="X-API-Key", auto_error=False,
                           description="an API key (`urbanbrain keys create`); WebSockets take it as `?key=`")

    def principal(roles: frozenset[str]) -> Callable[..., Principal]:
        def check(key: Annotated[str | None, Security(api_key)] = None) -> Principal:
            who = authenticate(store, key)
            if who is None:
                raise problem(401, "a valid API key is needed (header X-API-Key)", "X-API-Key")
            if who.role not in roles:
                needs = " or ".join(sorted(roles))
                raise problem(403, f"role {who.role!r} may not do this (needs {needs})", "X-API-Key")
            return who
        return check

    def runtime() -> CityRuntime:
        if service.runtime is None:
            raise problem(503, f"the city is not loaded yet (twin: {service.twin})")
        return service.runtime

    reader = Depends(principal(READ))
    keyed = (401, 403, 503)  # what any keyed endpoint reading the city may answer

    @app.get("/health")
    def health() -> Health:
        city = service.runtime
        return Health(status="ok", twin=service.twin, twin_error=service.twin_error,
                      city_time=None if city is None else city.city_time,
                      clock=None if city is None else ClockInfo(**city.clock_info()))

    @app.post("/api/events", openapi_extra=EVENTS_BODY,
              responses=error_responses(400, 401, 403, 409, 413, 422, 503))
    async def post_events(request: Request, who: Annotated[Principal, Depends(principal(POST_EVENTS))],
                          commands_after: Cursor | None = None) -> EventsAccepted:
        """A batch of device events (`DeviceEventBatch`), as a JSON array or JSON lines
        (`application/x-ndjson`). Parsed here rather than by FastAPI so that every bad
        item is named by its index, the batch's own errors."""
        items = await asyncio.to_thread(parse_batch, await request.body(), request.headers.get("content-type", ""))
        try:
            result = await asyncio.to_thread(runtime().ingest, items, who, commands_after)
        except BatchError as exc:
            raise HTTPException(exc.status, [{"item": item, "field": field, "error": reason}
                                             for item, field, reason in exc.errors]) from None
        if who.role == "admin":  # an administrator speaking for devices is audited like any admin write
            await asyncio.to_thread(store.add_audit, who.name, who.role, "post events", "devices",
                                    {"accepted": result.accepted, "duplicates": result.duplicates})
        return EventsAccepted(accepted=result.accepted, duplicates=result.duplicates, city_time=result.city_time,
                              last_command_id=result.last_command_id, late=result.late,
                              commands=[CommandRow(id=i, command=c) for i, c in result.commands])

    @app.get("/api/commands", responses=error_responses(*keyed, 422))
    def get_commands(who: Annotated[Principal, Depends(principal(POST_EVENTS))], after: Cursor = 0,
                     limit: Annotated[int, Query(ge=1, le=MAX_COMMANDS)] = MAX_COMMANDS) -> list[CommandRow]:
        """Commands for the key's controllers with id > `after`, oldest first, at most
        `limit`: page by sending the last id seen as `after`."""
        return [CommandRow(id=i, command=c) for i, c in runtime().commands_for(who, after, limit)]

    @app.get("/api/network", dependencies=[reader], responses=error_responses(*keyed))
    def network() -> CityNetwork:
        return _network_json(runtime())

    @app.get("/api/intersections", dependencies=[reader], responses=error_responses(*keyed))
    def intersections() -> list[IntersectionRow]:
        return runtime().intersection_rows()

    @app.get("/api/intersections/{intersection_id}", dependencies=[reader], responses=error_responses(*keyed, 404, 422))
    def intersection(intersection_id: Annotated[str, PathParam(pattern=ID_PATTERN)]) -> IntersectionDetail:
        city = runtime()
        if intersection_id not in city.network.intersections:
            raise problem(404, f"no intersection {intersection_id!r}", "intersection_id")
        return city.intersection_detail(intersection_id)

    @app.get("/api/lanes", dependencies=[reader], responses=error_responses(*keyed))
    def lanes() -> list[LaneRow]:
        return runtime().lane_rows()

    @app.get("/api/kpis", dependencies=[reader], responses=error_responses(401, 403, 422))
    def kpis(since: Annotated[float | None, Query(allow_inf_nan=False)] = None) -> list[KpiMinute]:
        return store.kpis(since)

    @app.get("/api/decisions", dependencies=[reader], responses=error_responses(*keyed, 422))
    def decisions(intersection: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100, switches_only: bool = False) -> list[Decision]:
        """Switches and other acted-on decisions are stored; decisions to keep a green
        (one per contested second) only in memory, so after a restart only the stored ones."""
        city = runtime()
        recent = [d for d in reversed(city.brain.recent)
                  if (intersection is None or d["intersection"] == intersection)
                  and not (switches_only and d["outcome"] == "kept")]
        if recent:
            return [jsonable(d) for d in recent[:limit]]
        return store.decisions(intersection, limit)

    @app.get("/api/devices", dependencies=[reader], responses=error_responses(*keyed))
    def devices() -> list[DeviceRow]:
        return runtime().device_rows()

    @app.get("/api/emergency", dependencies=[reader], responses=error_responses(*keyed))
    def emergency() -> EmergencyState:
        return runtime().emergency_json()

    @app.get("/api/emergency/{vehicle}/route", responses=error_responses(*keyed, 404, 422))
    def emergency_route(vehicle: Annotated[str, PathParam(pattern=ID_PATTERN)],
                        who: Annotated[Principal, Depends(principal(ROUTES))]) -> RouteAdvice:
        """The route the brain planned for a vehicle, for its navigation unit (its emergency
        key) or an administrator."""
        try:
            advice = runtime().route_for(who, vehicle)
        except PermissionError as exc:
            raise problem(403, str(exc), "vehicle") from None
        if advice is None:
            raise problem(404, f"no route planned for {vehicle!r} (is it reporting, en route?)", "vehicle")
        return advice

    @app.get("/api/alerts", dependencies=[reader], responses=error_responses(401, 403, 422))
    def alerts(status: AlertStatus | None = None) -> list[Alert]:
        return store.alerts(status)

    @app.get("/api/ngsi-ld/alerts", dependencies=[reader], response_class=LinkedDataResponse,
             response_model_exclude_unset=True, responses=error_responses(*keyed, 422))
    def alerts_ngsi_ld(status: AlertStatus | None = None) -> list[NgsiLdAlert]:
        """The alerts as FIWARE `Alert` entities (NGSI-LD, normalized), their times in UTC
        with the offset said, as in GET /api/alerts."""
        city = runtime().network.name
        return [alert_entity(Alert.model_validate(a).model_dump(mode="json"), city) for a in store.alerts(status)]

    @app.post("/api/alerts/{alert_id}/acknowledge", responses=error_responses(*keyed, 404, 409, 422))
    def acknowledge(alert_id: Annotated[int, PathParam(ge=0, le=MAX_ID)],
                    who: Annotated[Principal, Depends(principal(STEER))]) -> Alert:
        current = store.alert(alert_id)
        if current is None:
            raise problem(404, f"no alert {alert_id}", "alert_id")
        changed = runtime().acknowledge_alert(alert_id, who.name)
        if changed is None:
            raise problem(409, f"alert {alert_id} is {current['status']}, not new", "alert_id")
        store.add_audit(who.name, who.role, "acknowledge alert", str(alert_id), {})
        return changed

    @app.post("/api/intersections/{intersection_id}/control", responses=error_responses(*keyed, 400, 404, 413, 422))
    def control(intersection_id: Annotated[str, PathParam(pattern=ID_PATTERN)], body: ControlRequest,
                who: Annotated[Principal, Depends(principal(STEER))]) -> IntersectionRow:
        city = runtime()
        if intersection_id not in city.network.intersections:
            raise problem(404, f"no intersection {intersection_id!r}", "intersection_id")
        row = city.set_controller(intersection_id, body.controller)
        store.add_audit(who.name, who.role, "control", intersection_id, {"controller": body.controller})
        return row

    @app.get("/api/audit", responses=error_responses(401, 403, 422))
    def audit_log(who: Annotated[Principal, Depends(principal(ADMIN))],
                  limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> list[AuditEntry]:
        return store.audit_log(limit)

    @app.get("/api/conflicts", responses=error_responses(401, 403, 422))
    def conflicts(who: Annotated[Principal, Depends(principal(ADMIN))],
                  limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> list[EventConflictRow]:
        """Resends refused as conflicts (same device and sequence number, other content), newest first."""
        return store.event_conflicts(limit)

    @app.get("/api/keys", dependencies=[Depends(principal(ADMIN))], responses=error_responses(401, 403))
    def keys() -> list[KeyRow]:
        return store.keys()

    @app.post("/api/keys", status_code=201, responses=error_responses(400, 401, 403, 409, 413, 422))
    def new_key(body: KeyRequest, who: Annotated[Principal, Depends(principal(ADMIN))]) -> KeyCreated:
        """A new key (shown once, in the answer); device and emergency keys name the ids
        they speak for. A name is never used twice, revoked keys' names included (409)."""
        if any(row["name"] == body.name for row in store.keys()):
            raise problem(409, f"a key named {body.name!r} exists already (revoked keys keep their names)", "name")
        try:
            key = create_key(store, body.name, body.role, body.devices)
        except KeyError_ as exc:
            raise problem(422, str(exc), "body") from None
        store.add_audit(who.name, who.role, "create key", body.name, {"role": body.role, "devices": body.devices})
        return KeyCreated(name=body.name, role=body.role, devices=body.devices, key=key)

    @app.delete("/api/keys/{name}", responses=error_responses(401, 403, 404, 409, 422))
    def revoke(name: Annotated[str, PathParam(pattern=NAME_PATTERN.pattern)],
               who: Annotated[Principal, Depends(principal(ADMIN))]) -> KeyRevoked:
        """Revoke a key at once; the last active admin key cannot be (409)."""
        try:
            revoke_key(store, name)
        except KeyNotFound as exc:
            raise problem(404, str(exc), "name") from None
        except LastAdmin as exc:
            raise problem(409, str(exc), "name") from None
        store.add_audit(who.name, who.role, "revoke key", name, {})
        return KeyRevoked(name=name, revoked=True)

    streams = Streams(service, max_streams_per_key)

    @app.websocket("/live")
    async def live(socket: WebSocket, key: str | None = None) -> None:
        await streams.serve(socket, key, READ, lambda who, m: None if m["type"] == "command" else m)

    @app.websocket("/api/commands/ws")
    async def command_stream(socket: WebSocket, key: str | None = None) -> None:
        def commands_only(who: Principal, message: dict[str, Any]) -> dict[str, Any] | None:
            if message["type"] != "command" or not who.may_speak_for(message["controller"]):
                return None
            return {"id": message["id"], "command": message["command"]}
        await streams.serve(socket, key, POST_EVENTS, commands_only)

    if COCKPIT.is_dir():
        app.mount("/", StaticFiles(directory=COCKPIT, html=True), name="cockpit")
    return app


def _handle_errors(app: FastAPI) -> None:
    """Every error in the one shape, FastAPI's and Starlette's own included."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, [
            {"item": None, "field": ".".join(str(p) for p in err["loc"] if p != "body"), "error": err["msg"]}
            for err in exc.errors()])

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # The cockpit's static files answer every request the API does not route, an
        # API path asked with a method it does not take included: that is a 405.
        methods = _api_methods(app, request.url.path)
        if exc.status_code in (404, 405) and methods and request.method not in methods:
            return error_response(405, f"{request.url.path} takes {', '.join(methods)}", {"Allow": ", ".join(methods)})
        return error_response(exc.status_code, exc.detail, exc.headers)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        return error_response(500, "internal error (logged by the service)")


def _api_methods(app: FastAPI, path: str) -> list[str]:
    """The methods the API takes at `path` (none: not an API path)."""
    return sorted({m for route in app.routes if isinstance(route, APIRoute) and route.path_regex.match(path)
                   for m in route.methods})


def _add_components(app: FastAPI) -> None:
    """FastAPI builds the OpenAPI document once, on first request: with it, the schemas
    its operations refer to that FastAPI does not see (`components`)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(components())
        return app.openapi_schema

    app.openapi = openapi



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
