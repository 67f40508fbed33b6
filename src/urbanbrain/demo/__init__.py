"""The built-in demo city, generated on first use and cached."""

from urbanbrain.demo.city import DEMO_SEED, build_demo_city

__all__ = ["DEMO_SEED", "build_demo_city"]
