"""The API's published shapes: what it answers, what it is asked, and its one error body.

FastAPI checks every answer against these models and publishes them in the OpenAPI
document, so a client can trust `/openapi.json`; the device events' own schemas come
from the protocol (urbanbrain.devices.protocol). Every error, whatever its status, has
one shape (`ErrorBody`), so a client reads `detail[i].error` wherever it failed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter

from urbanbrain.devices.protocol import DeviceEvent, SignalCommand
from urbanbrain.service.keys import CONFINED, NAME_PATTERN, ROLES
from urbanbrain.store.store import as_utc

MAX_BATCH = 10_000
MAX_BODY_BYTES = 4 * 1024 * 1024  # a second of a city's device events is well under this
MAX_ID = 2**63 - 1  # ids and cursors are the store's signed 64-bit integers
MAX_KEY_DEVICES = 1000  # device ids or prefixes one key may name
ID_PATTERN = r"^[\x21-\x7e]{1,200}$"  # the protocol's identifiers: printable ASCII, no spaces
REF = "#/components/schemas/{model}"  # where the OpenAPI document keeps its schemas

Cursor = Annotated[int, Query(ge=0, le=MAX_ID, description="a command id: those after it")]
DeviceId = Annotated[str, Field(pattern=ID_PATTERN, description="a device id, or an id prefix ending in *")]


# -- errors -----------------------------------------------------------------------------


class ErrorItem(BaseModel):
    item: int | None = Field(description="the batch item it concerns (from 0), null for the request as a whole")
    field: str = Field(description="the bad field, dotted (`readings.0.count`), empty when none")
    error: str


class ErrorBody(BaseModel):
    """Every error the API answers, whatever its status."""

    detail: list[ErrorItem]


ERROR_WHY = {
    400: "the body could not be read",
    401: "no valid API key (header X-API-Key)",
    403: "the key's role, or the devices it speaks for, may not do this",
    404: "no such resource",
    409: "it conflicts with what is stored",
    413: f"the body is larger than the service accepts ({MAX_BODY_BYTES // 1024 // 1024} MiB by default)",
    422: "bad input: every bad item and field named",
    503: "the city is not ready: not loaded yet, or (events) no city clock yet",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of an operation: its error statuses, all with the one error body,
    as JSON (named here, or FastAPI would give them the media type of the operation's
    own answer: NGSI-LD's)."""
    error = {"application/json": {"schema": {"$ref": REF.format(model="ErrorBody")}}}
    return {status: {"description": ERROR_WHY[status], "content": error} for status in statuses}


def problem(status: int, error: str, field: str = "", item: int | None = None) -> HTTPException:
    return HTTPException(status, [{"item": item, "field": field, "error": error}])


def error_response(status: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    """Wraps a plain string detail (Starlette's own 404 and 405, say) into the error body."""
    items = detail if isinstance(detail, list) else [{"item": None, "field": "", "error": str(detail)}]
    return JSONResponse(status_code=status, content={"detail": items}, headers=headers)


# -- what the API answers ---------------------------------------------------------------


UtcTime = Annotated[datetime, AfterValidator(as_utc)]
Controller = Literal["brain", "fixed", "flash"]
AlertStatus = Literal["new", "acknowledged", "resolved"]


class ClockInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    mode: Literal["wall", "replay"]
    time: float | None = Field(description="the brain's clock; null in a replay until its time server is heard")
    max_skew_s: float = Field(description="how far ahead of the clock a device's event may be")


class Health(BaseModel):
    status: Literal["ok"]
    twin: Literal["off", "starting", "running", "finished", "failed"]
    twin_error: str | None
    city_time: float | None
    clock: ClockInfo | None = Field(description="null until the city is loaded")


class CommandRow(BaseModel):
    id: int
    command: SignalCommand


class EventsAccepted(BaseModel):
    accepted: int
    duplicates: int
    city_time: float | None
    last_command_id: int = Field(description="the cursor to send as `commands_after` next time")
    late: int = Field(description="of the accepted, those behind the brain's clock by more than its skew: stored, "
                                  "marked late, not used for the present state")
    commands: list[CommandRow]


class Phase(BaseModel):
    index: int
    state: str


class NetworkIntersection(BaseModel):
    id: str
    x: float
    y: float
    phases: list[Phase]


class NetworkLane(BaseModel):
    id: str
    intersection: str | None = Field(description="the intersection the lane approaches, if any")
    shape: list[tuple[float, float]]
    length_m: float


class CityNetwork(BaseModel):
    name: str
    bounds: tuple[float, float, float, float] = Field(description="min x, min y, max x, max y (metres)")
    intersections: list[NetworkIntersection]
    lanes: list[NetworkLane]


class SupervisorStatus(BaseModel):
    runs: Literal["brain", "cycle"] = Field(description="who decides the greens: the brain, or the actuated cycle "
                                                        "the supervisor handed the intersection to while the brain loses there")
    since: float
    until: float | None = Field(description="when the cycle's hold ends (None while the brain runs it)")
    reason: str = Field(description="why the last hand-over happened, in the measured quantities")
    losses: int = Field(description="hand-overs to the cycle so far")


class IntersectionRow(BaseModel):
    id: str
    x: float
    y: float
    phase: int | None
    signal_state: str | None
    time_in_phase_s: float | None
    mode: Literal["remote", "plan", "fallback", "flash"] | None = Field(description="what its field controller reports")
    controller: Controller = Field(description="what the operator has set")
    supervisor: SupervisorStatus | None = Field(None, description="the no-regret supervisor's hand-over, where the "
                                                                 "brain runs a supervised controller")
    queue_veh: float
    vehicles: float


class LaneDetail(BaseModel):
    id: str
    queue: float
    vehicles: float
    flow_vph: float
    approaching: float = Field(description="vehicles the advance loops saw that have not reached the stop line yet")


class Decision(BaseModel):
    time: float
    intersection: str
    phase: int
    outcome: Literal["switched", "kept", "forced off", "deferred", "refused", "handed over"]
    reason: str
    scores: dict[str, float]
    min_green_s: float
    controller: str
    observation: str


class IntersectionDetail(IntersectionRow):
    phases: list[Phase]
    lanes: list[LaneDetail]
    decisions: list[Decision] = Field(description="its last 20 stored decisions, newest first")


class LaneRow(BaseModel):
    id: str
    intersection: str | None
    queue: float
    vehicles: float
    flow_vph: float


class KpiMinute(BaseModel):
    minute: float = Field(description="the minute's start, city time")
    vehicles: float
    queue_veh: float
    throughput_veh: int
    stopped_delay_veh_s: float
    mean_delay_s: float


class DeviceRow(BaseModel):
    device_id: str
    kind: Literal["detector", "camera", "controller", "emergency", "clock"]
    last_time: float | None
    last_seen_at: UtcTime | None
    events: int
    silent: bool
    status: Literal["reporting", "silent", "waiting", "missing"]


class EmergencyVehicle(BaseModel):
    vehicle: str
    service: Literal["ambulance", "fire", "police"]
    priority: int
    status: Literal["en_route", "arrived", "stood_down"]
    time: float
    edge: str
    lane: str
    position_m: float
    speed_ms: float
    destination: str
    route: list[str] = Field(description="the roads still ahead, the one it is on included")


class Preemption(BaseModel):
    intersection: str
    vehicle: str
    phase: int | None
    started: float
    ended: float | None = Field(description="null: held now")
    queue_before: float
    recovery_s: float | None


class EmergencyState(BaseModel):
    vehicles: list[EmergencyVehicle]
    preemptions: list[Preemption] = Field(description="the latest 200")
    median_recovery_s: float | None


class Alert(BaseModel):
    id: int
    key: str
    type: Literal["carStopped", "carAccident", "trafficJam"]
    severity: Literal["medium", "high"]
    status: AlertStatus
    intersection: str | None
    edge: str | None
    zone_from_m: float | None
    zone_to_m: float | None
    started_at: float = Field(description="city clock")
    detected_at: float = Field(description="city clock")
    resolved_at: float | None = Field(description="city clock")
    acknowledged_by: str | None
    acknowledged_at: UtcTime | None
    evidence: dict[str, Any] = Field(description="the measurements that raised it")
    created_at: UtcTime


class EventConflictRow(BaseModel):
    """A resend refused because its (device, seq) is stored with other content: what was sent this time."""

    id: int
    device_id: str
    seq: int
    key_name: str = Field(description="the key that sent it")
    received_at: UtcTime
    payload: str = Field(description="the event as sent, JSON (the stored one stays as it was)")


class AuditEntry(BaseModel):
    at: UtcTime
    key_name: str
    role: str
    action: str
    target: str
    detail: dict[str, Any]


class KeyRow(BaseModel):
    name: str
    role: Literal[ROLES]
    prefix: str = Field(description="the key's first characters, to recognise it")
    devices: list[str]
    created_at: UtcTime
    revoked_at: UtcTime | None


class KeyCreated(BaseModel):
    name: str
    role: Literal[ROLES]
    devices: list[str]
    key: str = Field(description="the key itself: shown this once, the store keeps only its hash")


class KeyRevoked(BaseModel):
    name: str
    revoked: bool


class LinkedDataResponse(JSONResponse):
    media_type = "application/ld+json"


class NgsiProperty(BaseModel):
    type: Literal["Property"]
    value: Any


class NgsiLdAlert(BaseModel):
    """A FIWARE `Alert` entity, NGSI-LD normalized (urbanbrain.service.fiware)."""

    id: str = Field(pattern=r"^urn:ngsi-ld:Alert:", description="a URN, not the alert's id in this API")
    type: Literal["Alert"]
    category: NgsiProperty
    subCategory: NgsiProperty
    severity: NgsiProperty
    description: NgsiProperty
    dateIssued: NgsiProperty
    alertSource: NgsiProperty
    address: NgsiProperty
    validTo: NgsiProperty | None = Field(default=None, description="when it was resolved (city clock); absent before")
    context: list[str] = Field(alias="@context")


# -- what the API is asked --------------------------------------------------------------

KeyName = Annotated[str, Field(pattern=NAME_PATTERN.pattern, description="letters, digits, '_', '.', '@' or '-'")]


class ControlRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    controller: Controller


class KeyRequest(BaseModel):
    """A new key. Device and emergency keys name the device ids (or prefixes ending in
    *) they speak for, and need at least one; the other roles name none (the schema
    says so; create_key enforces it)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "if": {"properties": {"role": {"enum": sorted(CONFINED)}}},
        "then": {"required": ["devices"], "properties": {"devices": {"minItems": 1}}},
        "else": {"properties": {"devices": {"maxItems": 0}}}})

    name: KeyName
    role: Literal[ROLES]
    devices: list[DeviceId] = Field(default_factory=list, max_length=MAX_KEY_DEVICES)


def components() -> dict[str, Any]:
    """The schemas the operations refer to that FastAPI does not see: the error body,
    and the device event union (POST /api/events parses its body itself)."""
    batch = TypeAdapter(Annotated[list[DeviceEvent], Field(min_length=1, max_length=MAX_BATCH)])
    events = batch.json_schema(ref_template=REF)
    errors = ErrorBody.model_json_schema(ref_template=REF)
    schemas = {"DeviceEventBatch": _without_defs(events), "ErrorBody": _without_defs(errors),
               **events["$defs"], **errors["$defs"]}
    union = events["items"]["discriminator"]
    for ref in union["mapping"].values():  # each event names its kind: its default does not make it optional
        event = schemas[ref.rsplit("/", 1)[1]]
        event["required"] = [union["propertyName"], *event.get("required", [])]
    return schemas


def _without_defs(schema: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k != "$defs"}


BATCH = {"schema": {"$ref": REF.format(model="DeviceEventBatch")}}
EVENTS_BODY = {"requestBody": {"required": True, "content": {"application/json": BATCH, "application/x-ndjson": BATCH},
                               "description": "a batch of device events, all or nothing: a JSON array, or (x-ndjson) "
                                              "the same events one JSON object per line"}}
