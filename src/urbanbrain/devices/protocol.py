"""The device protocol: what field devices send the brain and what the brain sends back.

These pydantic models are the single definition of the wire format; the digital
twin, the in-process brain and (later) the HTTP/MQTT ingress all use them, so a real
city's devices and the twin are interchangeable. Every message carries the protocol
version, the device id and a per-device sequence number (for idempotent resend).
Invalid input raises :class:`ProtocolError`, which names each bad field and why.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import (BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, ValidationInfo, field_validator,
                      model_validator)

PROTOCOL_VERSION = "1.2"
MAX_STAGE_S = 366 * 86400.0  # a controller reporting a stage older than a year reports nonsense
MAX_COMMAND_VALID_S = 60.0
# A lane's loop counts at most about one vehicle per second even at saturation (1,800-2,000
# veh/h); twice that, plus two for vehicles on the loop at the interval's edges, is a fault.
MAX_VEHICLES_PER_S = 2.0
EDGE_VEHICLES = 2

Identifier = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")]  # printable ASCII, no spaces
SignalState = Annotated[str, Field(min_length=1, max_length=512, pattern=r"^[rRyYgGsuoO]+$")]


class ProtocolError(ValueError):
    """A message that does not follow the protocol; `errors` lists (field, reason)."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{field}: {reason}" for field, reason in errors))


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    version: Literal["1.0", "1.1", "1.2"] = PROTOCOL_VERSION
    device_id: Identifier
    seq: int = Field(ge=0, le=2**63 - 1, description="per-device sequence number, for idempotent resend")
    time: float = Field(ge=0, allow_inf_nan=False, description="seconds (scenario clock or Unix time)")


class LoopReading(BaseModel):
    """One inductive loop's count and occupancy over the report interval (a `presence`
    or `exit` zone's: vehicles that came onto it, and the share of the interval it was
    occupied). `exit` (protocol 1.2) is a zone just past the junction on a road leaving
    it, where no other loop watches: occupied with nobody coming onto it, the queue on
    that road reaches back to the junction."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    detector_id: Identifier
    lane: Identifier
    position: Literal["entry", "mid", "advance", "stopline", "presence", "feeder_in", "feeder_out", "exit"]
    count: int = Field(ge=0, le=1000)
    occupancy: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)


class DetectorReport(_Message):
    """A detector station's per-lane loop readings for one interval (NTCIP volume/occupancy style)."""

    kind: Literal["detector"] = "detector"
    interval_s: float = Field(gt=0, le=3600, allow_inf_nan=False)
    readings: list[LoopReading] = Field(min_length=1)

    @field_validator("readings")
    @classmethod
    def _one_reading_per_loop(cls, readings: list[LoopReading]) -> list[LoopReading]:
        seen: set[str] = set()
        for reading in readings:
            if reading.detector_id in seen:
                raise ValueError(f"detector {reading.detector_id!r} reported twice in one interval")
            seen.add(reading.detector_id)
        return readings

    @model_validator(mode="after")
    def _counts_fit_the_interval(self) -> DetectorReport:
        most = int(MAX_VEHICLES_PER_S * self.interval_s) + EDGE_VEHICLES
        for reading in self.readings:
            if reading.count > most:
                raise ValueError(f"loop {reading.detector_id!r} counted {reading.count} vehicles in {self.interval_s:g} s; "
                                 f"a lane passes at most {most} in that time")
        return self


class CameraPassage(_Message):
    """An ANPR camera saw one vehicle cross its line."""

    kind: Literal["camera"] = "camera"
    lane: Identifier
    speed_ms: float = Field(ge=0, le=100, allow_inf_nan=False)
    plate: Annotated[str, Field(pattern=r"^[A-Z0-9-]{2,16}$")]
    vehicle_class: Literal["car", "truck", "bus", "motorcycle", "bicycle", "emergency", "other"]


class ControllerState(_Message):
    """A signal controller's report of what its signal heads show right now."""

    kind: Literal["controller"] = "controller"
    intersection: Identifier
    signal_state: SignalState
    phase: int | None = Field(ge=0, description="green phase index, None during a change interval")
    time_in_phase_s: float = Field(ge=0, le=MAX_STAGE_S, allow_inf_nan=False)
    mode: Literal["remote", "plan", "fallback", "flash"]


class EmergencyVehicleReport(_Message):
    """An emergency vehicle's transponder (AVL unit): where it is, where it must go, how urgent.

    Sent every second or two while its blue lights are on; `status` `arrived` or
    `stood_down` ends its priority. `priority` 1 is the most urgent (a cardiac arrest),
    3 the least; between vehicles of equal priority the first to arrive goes first.
    """

    kind: Literal["emergency"] = "emergency"
    vehicle: Identifier
    service: Literal["ambulance", "fire", "police"]
    priority: int = Field(ge=1, le=3)
    edge: Identifier
    lane: Identifier
    position_m: float = Field(ge=0, le=100_000, allow_inf_nan=False, description="from the lane's start")
    speed_ms: float = Field(ge=0, le=100, allow_inf_nan=False)
    destination: Identifier = Field(description="the road it must reach")
    status: Literal["en_route", "arrived", "stood_down"] = "en_route"


class ClockReport(_Message):
    """The city's time server: the time it keeps, in `time`.

    A brain following a replayed city (the twin running faster or slower than real
    time) takes its clock from this one device, named in its settings, and from no
    other; a brain of a live city keeps the wall clock and refuses it.
    """

    kind: Literal["clock"] = "clock"


DeviceEvent = Annotated[Union[DetectorReport, CameraPassage, ControllerState, EmergencyVehicleReport, ClockReport],
                        Field(discriminator="kind")]


class SignalCommand(_Message):
    """A command to a signal controller, in the spirit of NTCIP 1202.

    - `go`: end the current green and, after the change interval given here (yellow
      to the movements losing green, then all-red), show green `phase` for at least
      `min_green_s`;
    - `hold`: keep the current green;
    - `force_off`: end the current green now, moving to `phase` (or the next in sequence);
    - `plan`: run the controller's own timing plan (an operator's "fixed plan");
    - `flash`: clear the junction (yellow, all-red), then flash.
    Any `go` or `hold` puts a controller back under remote control; one that hears
    nothing from the brain for its fail-safe timeout falls back to its plan by itself,
    so `hold` doubles as the brain's heartbeat.
    `device_id` names the issuer (the brain), `intersection` the controller. `time` is
    the brain's clock when it was issued, and the command holds for `valid_s` from
    then: a controller ignores it once that has passed (delayed, or left over from
    before a restart) and ignores one stamped ahead of its own clock.
    """

    kind: Literal["signal"] = "signal"
    intersection: Identifier
    action: Literal["go", "hold", "force_off", "plan", "flash"]
    phase: int | None = Field(default=None, ge=0, validate_default=True)
    min_green_s: float = Field(default=5.0, ge=0, le=300, allow_inf_nan=False)
    yellow_s: float = Field(default=3.0, ge=0, le=30, allow_inf_nan=False)
    all_red_s: float = Field(default=0.0, ge=0, le=30, allow_inf_nan=False)
    reason: str = Field(default="", max_length=2000)
    valid_s: float = Field(default=5.0, gt=0, le=MAX_COMMAND_VALID_S, allow_inf_nan=False,
                           description="seconds from `time` during which the command may be carried out")

    @field_validator("phase")
    @classmethod
    def _go_needs_phase(cls, phase: int | None, info: ValidationInfo) -> int | None:
        if phase is None and info.data.get("action") == "go":
            raise ValueError("action 'go' needs a target phase")
        return phase


class RouteAdvice(_Message):
    """The brain's route for an emergency vehicle, to its navigation unit: the roads
    from the one it is on to its destination, fastest on the current travel times."""

    kind: Literal["route"] = "route"
    vehicle: Identifier
    edges: list[Identifier] = Field(min_length=1, max_length=10_000)
    reason: str = Field(default="", max_length=2000)


_event_adapter: TypeAdapter[DeviceEvent] = TypeAdapter(DeviceEvent)


def _errors(exc: ValidationError) -> list[tuple[str, str]]:
    return [(".".join(str(p) for p in err["loc"]) or "message", err["msg"]) for err in exc.errors()]


def _load(data: str | bytes | dict[str, Any]) -> dict[str, Any]:
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise ProtocolError([("message", f"not valid JSON: {exc.msg} at position {exc.pos}")]) from None
    if not isinstance(data, dict):
        raise ProtocolError([("message", f"expected a JSON object, got {type(data).__name__}")])
    return data


def parse_event(data: str | bytes | dict[str, Any]) -> (DetectorReport | CameraPassage | ControllerState
                                                       | EmergencyVehicleReport | ClockReport):
    """Validate one device event (JSON text or a decoded object)."""
    try:
        return _event_adapter.validate_python(_load(data), strict=True)
    except ValidationError as exc:
        raise ProtocolError(_errors(exc)) from None


def parse_command(data: str | bytes | dict[str, Any]) -> SignalCommand:
    """Validate one signal command (JSON text or a decoded object)."""
    try:
        return SignalCommand.model_validate(_load(data))
    except ValidationError as exc:
        raise ProtocolError(_errors(exc)) from None
