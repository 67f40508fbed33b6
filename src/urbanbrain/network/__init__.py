"""The city's roads and signals, as the brain knows them."""

from urbanbrain.network.model import Approach, Clearance, Intersection, Lane, Movement, Network, Phase
from urbanbrain.network.sumo_reader import NetworkError, read_network

__all__ = ["Approach", "Clearance", "Intersection", "Lane", "Movement", "Network", "NetworkError", "Phase", "read_network"]
