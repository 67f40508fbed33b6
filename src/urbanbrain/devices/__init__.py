"""Field devices: the protocol they speak and the behaviour of a signal controller."""

from urbanbrain.devices.protocol import (
    PROTOCOL_VERSION,
    CameraPassage,
    ClockReport,
    ControllerState,
    DetectorReport,
    EmergencyVehicleReport,
    LoopReading,
    ProtocolError,
    RouteAdvice,
    SignalCommand,
    parse_command,
    parse_event,
)

__all__ = [
    "PROTOCOL_VERSION",
    "CameraPassage",
    "ClockReport",
    "ControllerState",
    "DetectorReport",
    "EmergencyVehicleReport",
    "LoopReading",
    "ProtocolError",
    "RouteAdvice",
    "SignalCommand",
    "parse_command",
    "parse_event",
]
