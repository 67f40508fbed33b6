"""Alerts: lifecycle (new -> acknowledged -> resolved) through the API on SQLite and
PostgreSQL, FIWARE export, and webhook delivery that survives failures and restarts."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path


from service_city import City
from urbanbrain.incidents.detector import IncidentAlert
from urbanbrain.service.webhooks import WebhookDispatcher, signature
from urbanbrain.store import Store


def found(edge: str, intersection: str, at: float, held: int = 1) -> IncidentAlert:
    """What the detector hands over when it finds an incident."""
    return IncidentAlert(id=f"{edge}@{at:.0f}", edge=edge, intersection=intersection, zone="link",
                         from_m=100.0, to_m=200.0, detected_at=at, started_at=at - 60.0,
                         evidence={"vehicles_stopped": held, "overdue_s": 75.0})


def tick(city: City, seq: int, at: float) -> None:
    """A controller reports at `at` and the brain's clock ticks there."""
    city.now = at
    answer = city.client.post("/api/events", json=[city.controller_report(seq, at)], headers=city.headers("device"))
    assert answer.status_code == 200
    city.service.runtime.tick()


def test_an_alert_goes_from_new_to_acknowledged_to_resolved(city: City):
    intersection = sorted(city.network.intersections)[0]
    edge = city.network.intersections[intersection].approaches[0].edge
    incident = found(edge, intersection, 100.0, held=2)
    city.service.runtime.detector.alerts.append(incident)
    tick(city, 0, 100.0)
    listed = city.client.get("/api/alerts", headers=city.headers("viewer")).json()
    assert len(listed) == 1
    alert = listed[0]
    assert (alert["type"], alert["severity"], alert["status"], alert["edge"]) == ("carAccident", "high", "new", edge)
    assert alert["evidence"]["vehicles_stopped"] == 2
    path = f"/api/alerts/{alert['id']}/acknowledge"
    assert city.client.post(path, headers=city.headers("viewer")).status_code == 403
    assert city.client.post("/api/alerts/999/acknowledge", headers=city.headers("operator")).status_code == 404
    acknowledged = city.client.post(path, headers=city.headers("operator"))
    assert acknowledged.status_code == 200 and acknowledged.json()["acknowledged_by"] == "operator"
    assert city.client.post(path, headers=city.headers("operator")).status_code == 409
    assert city.store.audit_log()[0]["action"] == "acknowledge alert"
    incident.resolved_at = 140.0  # traffic recovered
    tick(city, 1, 141.0)
    resolved = city.client.get("/api/alerts", params={"status": "resolved"}, headers=city.headers("viewer")).json()
    assert [a["id"] for a in resolved] == [alert["id"]] and resolved[0]["resolved_at"] == 140.0
    entities = city.client.get("/api/ngsi-ld/alerts", headers=city.headers("viewer"))
    assert entities.headers["content-type"].startswith("application/ld+json")
    entity = entities.json()[0]
    assert entity["type"] == "Alert" and entity["category"]["value"] == "traffic"
    assert entity["subCategory"]["value"] == "carAccident" and entity["id"].startswith("urn:ngsi-ld:Alert:")
    assert edge in entity["address"]["value"]["streetAddress"] and "@context" in entity


class Receiver:
    """A dispatch centre's endpoint that fails its first `failures` requests."""

    def __init__(self, failures: int):
        self.failures = failures
        self.got: list[tuple[str, dict, str]] = []  # (delivery id, body, signature)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.failures > 0:
                    receiver.failures -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                receiver.got.append((self.headers["X-Urbanbrain-Delivery"], json.loads(body),
                                     self.headers["X-Urbanbrain-Signature"] == signature("s3cret", body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_webhooks_deliver_every_alert_change_once_through_failures_and_a_restart(store_url: str, grid_net: Path):
    receiver = Receiver(failures=3)
    city = City(store_url, grid_net)
    runtime = city.service.runtime
    runtime.webhooks = (receiver.url,)
    intersection = sorted(city.network.intersections)[0]
    edges = [a.edge for a in city.network.intersections[intersection].approaches]
    for k, edge in enumerate(edges[:3]):
        runtime.detector.alerts.append(found(edge, intersection, 100.0 + k))
    tick(city, 0, 110.0)
    assert len(city.store.deliveries()) == 3
    first = WebhookDispatcher(city.store, "s3cret", first_backoff_s=0.01)
    first.deliver_due()  # every attempt fails (the receiver is down for 3 requests)
    assert receiver.got == [] and all(d["attempts"] == 1 for d in city.store.deliveries())
    city.restart()  # the service restarts: the outbox is in the store
    second = WebhookDispatcher(city.store, "s3cret", first_backoff_s=0.01)
    for _ in range(200):
        if len(receiver.got) == 3:
            break
        second.deliver_due()
        threading.Event().wait(0.02)
    receiver.close()
    city.client.close()
    assert sorted(body["alert"]["edge"] for _, body, _ in receiver.got) == sorted(edges[:3])
    assert len({delivery for delivery, _, _ in receiver.got}) == 3, "each alert exactly once"
    assert all(signed for _, _, signed in receiver.got), "signed with the shared secret"
    assert all(d["delivered_at"] is not None for d in Store(store_url).deliveries())
