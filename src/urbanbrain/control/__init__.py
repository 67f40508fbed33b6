"""Signal control: controllers, the safety layer, and the loop that joins them."""

from urbanbrain.control.base import (
    Controller,
    LocalProgram,
    PhaseDecision,
    actuated,
    delaybased,
    fixed,
)
from urbanbrain.control.brain import BrainController
from urbanbrain.control.maxpressure import MaxPressure
from urbanbrain.control.safety import SafetyIntervention, SafetyLayer, SafetyLimits
from urbanbrain.control.supervisor import SupervisedBrain

CONTROLLERS = {
    "fixed": fixed,
    "actuated": actuated,
    "delaybased": delaybased,
    "maxpressure": MaxPressure,
    "brain": SupervisedBrain,
}

__all__ = [
    "CONTROLLERS",
    "BrainController",
    "Controller",
    "LocalProgram",
    "MaxPressure",
    "PhaseDecision",
    "SafetyIntervention",
    "SafetyLayer",
    "SafetyLimits",
    "SupervisedBrain",
]
