"""urbanbrain: an open-source City Brain.

The brain sees the city only through device events and acts only through device
commands; SUMO plays the city's devices as a digital twin.
"""

__version__ = "0.1.0"
