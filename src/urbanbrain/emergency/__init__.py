"""Emergency vehicles: routes on current travel times and green waves through the signals."""

from urbanbrain.emergency.priority import EmergencyPriority, Preemption, PrioritySettings
from urbanbrain.emergency.routing import RouteError, fastest_route

__all__ = ["EmergencyPriority", "Preemption", "PrioritySettings", "RouteError", "fastest_route"]
