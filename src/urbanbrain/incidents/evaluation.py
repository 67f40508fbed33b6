"""`urbanbrain bench incidents`: inject incidents into a scenario, run the detector on
the device events, and score it against the ground truth it never saw."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from urbanbrain.bench.session import CitySession
from urbanbrain.incidents.detector import IncidentAlert, IncidentDetector
from urbanbrain.incidents.injection import (Incident, IncidentError, IncidentInjector, TruthRecord, random_incidents,
                                            validate)
from urbanbrain.network.model import Network
from urbanbrain.twin.scenario import Scenario

LATE_S = 60.0  # an alert this soon after an incident was cleared still belongs to it


@dataclass
class IncidentScore:
    scenario: str
    incidents: int  # injected
    happened: int  # of which a vehicle really stopped (a lane nobody drove on had none)
    detected: int
    detection_rate: float
    false_alarms: int
    false_alarms_per_intersection_hour: float
    median_time_to_detect_s: float | None
    p90_time_to_detect_s: float | None
    right_link_rate: float | None

    def to_json(self) -> dict:
        return {"scenario": self.scenario, "incidents": self.incidents, "happened": self.happened,
                "detected": self.detected, "detection_rate": self.detection_rate,
                "false_alarms": self.false_alarms,
                "false_alarms_per_intersection_hour": self.false_alarms_per_intersection_hour,
                "median_time_to_detect_s": self.median_time_to_detect_s,
                "p90_time_to_detect_s": self.p90_time_to_detect_s, "right_link_rate": self.right_link_rate}


def run_incidents(scenario: Scenario, network: Network, count: int, seed: int, *, controller: str = "brain",
                  horizon_s: float = 3600.0, incidents: list[Incident] | None = None,
                  ) -> tuple[IncidentScore, list[TruthRecord], list[IncidentAlert]]:
    """Run the scenario with `incidents` (or `count` random ones) and the detector on
    its device events. When `count` incidents do not fit in one horizon of a small
    network (one at a time per road), the horizon is played as several episodes
    (other seeds), each with its share, and scored together."""
    if incidents is not None:
        return _episode(scenario, network, incidents, seed, controller, horizon_s)
    for episodes in range(1, count + 1):
        shares = [count // episodes + (k < count % episodes) for k in range(episodes)]
        try:
            plans = [random_incidents(network, share, seed=seed * 1000 + k, begin_s=scenario.begin_s, horizon_s=horizon_s)
                     for k, share in enumerate(shares)]
        except IncidentError:
            continue
        break
    else:
        raise IncidentError(f"could not place {count} incidents on {network.name!r}")
    truth: list[TruthRecord] = []
    alerts: list[IncidentAlert] = []
    for k, plan in enumerate(plans):
        renamed = [replace(i, id=f"e{k + 1}.{i.id}") for i in plan] if len(plans) > 1 else plan
        _, episode_truth, episode_alerts = _episode(scenario, network, renamed, seed + k, controller, horizon_s)
        truth += episode_truth
        alerts += [replace(a, id=f"e{k + 1}.{a.id}") for a in episode_alerts] if len(plans) > 1 else episode_alerts
    return score(scenario.name, network, truth, alerts, horizon_s * len(plans)), truth, alerts


def write_run(folder: Path, truth: list[TruthRecord], alerts: list[IncidentAlert]) -> None:
    """The ground truth (`truth.jsonl`) and what the detector found (`alerts.jsonl`), apart."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "truth.jsonl").write_text("".join(json.dumps(r.to_json()) + "\n" for r in truth), encoding="utf-8")
    (folder / "alerts.jsonl").write_text("".join(json.dumps(asdict(a)) + "\n" for a in alerts), encoding="utf-8")


def _episode(scenario: Scenario, network: Network, incidents: list[Incident], seed: int, controller: str,
             horizon_s: float) -> tuple[IncidentScore, list[TruthRecord], list[IncidentAlert]]:
    for incident in incidents:
        validate(incident, network)
    injector = IncidentInjector(incidents, network=network, seed=seed)
    session = CitySession(scenario, network, controller, seed=seed, horizon_s=horizon_s, world=[injector.step])
    detector = IncidentDetector(network, session.twin.stations, session.bus, state=session.estimator.state)
    try:
        session.start()
        while not session.done:
            session.step()
    finally:
        session.close()
    truth = list(injector.truth.values())
    return score(scenario.name, network, truth, detector.alerts, horizon_s), truth, detector.alerts


def score(name: str, network: Network, truth: list[TruthRecord], alerts: list[IncidentAlert],
          horizon_s: float) -> IncidentScore:
    """An incident is detected by an alert raised while it stood (or just after) on its
    own link or on a link leading into it, one alert per incident; the alert is on the
    right link if it is its own. Every other alert is a false alarm."""
    upstream: dict[str, set[str]] = {}
    for intersection in network.intersections.values():
        outs = {network.lanes[m.out_lane].edge for m in intersection.movements}
        for approach in intersection.approaches:
            for out in outs:
                upstream.setdefault(out, set()).add(approach.edge)
    happened = sorted((r for r in truth if r.blocked_from is not None), key=lambda r: r.blocked_from)

    def during(record: TruthRecord, edges: set[str]) -> list[IncidentAlert]:
        end = (record.cleared_at if record.cleared_at is not None else float("inf")) + LATE_S
        episode = _episode_of(record.incident.id)
        return sorted((a for a in alerts if a.edge in edges and _episode_of(a.id) == episode
                       and record.blocked_from <= a.detected_at <= end), key=lambda a: a.detected_at)

    # One alert detects one incident: first, in the order the incidents began, the
    # earliest alert on an incident's own link not credited yet (so a second incident
    # on a link while the first still stands can be detected by an alert after it
    # began); any other alert on a link during an incident there is a repeat, not a
    # false alarm. Then, for the incidents still undetected, the earliest alert not
    # credited nor a repeat on a link leading into it.
    credited: dict[str, IncidentAlert] = {}
    used: set[str] = set()
    repeats: set[str] = set()
    for record in happened:
        own = during(record, {record.incident.edge})
        repeats.update(a.id for a in own)
        fresh = [a for a in own if a.id not in used]
        if fresh:
            credited[record.incident.id] = fresh[0]
            used.add(fresh[0].id)
    for record in happened:
        if record.incident.id not in credited:
            near = [a for a in during(record, upstream.get(record.incident.edge, set()))
                    if a.id not in used and a.id not in repeats]
            if near:
                credited[record.incident.id] = near[0]
                used.add(near[0].id)
    explained = used | repeats
    delays = sorted(credited[r.incident.id].detected_at - r.blocked_from for r in happened if r.incident.id in credited)
    right = sum(1 for r in happened if r.incident.id in credited and credited[r.incident.id].edge == r.incident.edge)
    false_alarms = sum(1 for a in alerts if a.id not in explained)
    hours = horizon_s / 3600.0
    return IncidentScore(
        scenario=name, incidents=len(truth), happened=len(happened), detected=len(delays),
        detection_rate=len(delays) / len(happened) if happened else 0.0,
        false_alarms=false_alarms,
        false_alarms_per_intersection_hour=false_alarms / (len(network.intersections) * hours),
        median_time_to_detect_s=statistics.median(delays) if delays else None,
        p90_time_to_detect_s=delays[min(len(delays) - 1, int(0.9 * len(delays)))] if delays else None,
        right_link_rate=right / len(delays) if delays else None,
    )


def _episode_of(identifier: str) -> str:
    """The episode an incident or alert belongs to (`e2.` prefixes; none for a single one)."""
    head, dot, _ = identifier.partition(".")
    return head if dot and head.startswith("e") and head[1:].isdigit() else ""
