"""Alert subscribers: every alert change is POSTed to each webhook (a police dispatch
system, say) until it answers 2xx.

Deliveries live in the store's outbox, written in the same transaction as the alert
change itself, so none is lost across a restart; they are retried with exponential
backoff. Each request carries the delivery's id (`X-Urbanbrain-Delivery`, the same on
every retry, for the receiver to drop a repeat if an answer was lost on the way) and
an HMAC-SHA256 of the body with the shared secret (`X-Urbanbrain-Signature:
sha256=<hex>`), so the receiver knows it comes from the brain and was not altered.
"""

from __future__ import annotations

import hashlib
import hmac
import threading

import httpx

from urbanbrain.store import Store

MAX_BACKOFF_S = 300.0


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookDispatcher:
    def __init__(self, store: Store, secret: str, *, poll_s: float = 0.5, timeout_s: float = 5.0,
                 first_backoff_s: float = 1.0):
        self.store = store
        self.secret = secret
        self.poll_s = poll_s
        self.first_backoff_s = first_backoff_s
        self._client = httpx.Client(timeout=timeout_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop delivering (a delivery under way is given `timeout_s`; one cut short is retried at the next start)."""
        self._stop.set()
        self._thread.join(timeout=timeout_s)
        self._client.close()

    def deliver_due(self) -> int:
        """Try every delivery that is due once; returns how many got through."""
        done = 0
        for delivery in self.store.due_deliveries():
            if self._stop.is_set():
                break
            body = delivery["payload"].encode()
            headers = {"Content-Type": "application/json", "X-Urbanbrain-Event": delivery["event"],
                       "X-Urbanbrain-Delivery": str(delivery["id"]),
                       "X-Urbanbrain-Signature": signature(self.secret, body)}
            try:
                answer = self._client.post(delivery["url"], content=body, headers=headers)
                error = None if 200 <= answer.status_code < 300 else f"HTTP {answer.status_code}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            if error is None:
                self.store.delivery_done(delivery["id"])
                done += 1
            else:
                backoff = min(MAX_BACKOFF_S, self.first_backoff_s * 2 ** delivery["attempts"])
                self.store.delivery_failed(delivery["id"], error, backoff)
        return done

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.deliver_due()
