"""The city's traffic state, estimated from device events (or, for research, read from the simulator)."""

from urbanbrain.state.estimator import SensorEstimator
from urbanbrain.state.model import CityState, LaneState, SignalStatus

__all__ = ["CityState", "LaneState", "SensorEstimator", "SignalStatus"]
