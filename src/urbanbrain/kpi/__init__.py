"""How well the city runs: network and per-intersection KPIs (evaluation only)."""

from urbanbrain.kpi.metrics import IntersectionKpis, QueueMonitor, TripKpis, trip_kpis

__all__ = ["IntersectionKpis", "QueueMonitor", "TripKpis", "trip_kpis"]
