"""How a field reaches its brain: a transport for device events (and the commands that
come back), a route source for emergency vehicles' navigation units; in-process through
the service's own ingress, or over HTTP as a real city's devices do. Whatever the brain
answers becomes a result, `BrainUnreachable` (no answer, or none a brain gives: the
events wait) or `BrainRefused` (its refusal, with its reasons): never anything else.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

RETRY_AFTER_MAX_S = 300.0  # a longer Retry-After is taken for a misconfigured proxy's

# send(events as JSON, commands_after) -> (the (id, command) pairs issued after that id, the
# cursor for next time); commands_after None: only those issued in answer to these events
Transport = Callable[[list[str], int | None], tuple[list[tuple[int, Any]], int]]
# routes(vehicle) -> the RouteAdvice (as JSON) the brain planned for it, None while none is planned
RouteSource = Callable[[str], dict[str, Any] | None]


class BrainUnreachable(ConnectionError):
    """The brain did not answer; the field keeps running on its controllers' fail-safe."""


class BrainRefused(ValueError):
    """The brain answered with a refusal: `status`, its errors (item, field, error), and
    how long it asks to be left alone (Retry-After), if it says."""

    def __init__(self, status: int, errors: list[dict[str, Any]], retry_after_s: float | None = None):
        self.status = status
        self.errors = errors
        self.retry_after_s = retry_after_s
        super().__init__(f"{status}: " + "; ".join(f"item {e.get('item')}: {e.get('field')}: {e.get('error')}"
                                                   for e in errors[:5]))


def in_process_transport(runtime, principal) -> Transport:
    """The field inside the service's own process, through the same ingress as HTTP
    devices (`CityRuntime.ingest`: validated, stored, then acted on). A refusal is
    `BrainRefused` as over HTTP; a brain not ready (5xx) or failing in any other way
    (its store locked, its disk full) is `BrainUnreachable`: the events wait."""
    from urbanbrain.service.city import BatchError

    def send(events: list[str], after: int | None) -> tuple[list[tuple[int, Any]], int]:
        try:
            result = runtime.ingest(events, principal, after)
        except BatchError as exc:
            if exc.status >= 500:
                raise BrainUnreachable(f"the brain: {exc.status}: {exc}") from None
            raise BrainRefused(exc.status, [{"item": i, "field": f, "error": r} for i, f, r in exc.errors]) from None
        except Exception as exc:  # noqa: BLE001 - whatever fails under the brain is its outage, not the field's end
            raise BrainUnreachable(f"the brain: {type(exc).__name__}: {exc}") from None
        return result.commands, result.last_command_id
    return send


def in_process_routes(runtime, principal) -> RouteSource:
    """A navigation unit inside the service's own process, reading the brain's route advice
    as `GET /api/emergency/{vehicle}/route` does (`CityRuntime.route_for`: the same key
    check, a refusal `BrainRefused` 403; any other failure `BrainUnreachable`)."""
    def route(vehicle: str) -> dict[str, Any] | None:
        try:
            advice = runtime.route_for(principal, vehicle)
        except PermissionError as exc:
            raise BrainRefused(403, [{"item": None, "field": "vehicle", "error": str(exc)}]) from None
        except Exception as exc:  # noqa: BLE001 - whatever fails under the brain is its outage, not the field's end
            raise BrainUnreachable(f"the brain: {type(exc).__name__}: {exc}") from None
        return None if advice is None else advice.model_dump(mode="json")
    return route


def http_transport(brain_url: str, key: str, timeout_s: float = 5.0) -> Transport:
    """Post a batch of events to a brain service. No answer, a server error (a brain
    not ready: 503) or a 200 that is no brain's answer (a proxy's page) raises
    `BrainUnreachable`, and the field resends the batch later; the brain drops what it
    already has, by device and sequence number. A refusal raises `BrainRefused` with
    the brain's reasons and its Retry-After."""
    where = f"brain at {brain_url}"
    client = httpx.Client(base_url=brain_url.rstrip("/"), headers={"X-API-Key": key}, timeout=timeout_s)

    def send(events: list[str], after: int | None) -> tuple[list[tuple[int, Any]], int]:
        body = ("[" + ",".join(events) + "]").encode()
        try:
            response = client.post("/api/events", content=body, headers={"Content-Type": "application/json"},
                                   params={} if after is None else {"commands_after": after})
        except httpx.RequestError as exc:  # no answer, or one that cannot be decoded
            raise BrainUnreachable(f"{where}: {str(exc) or type(exc).__name__}") from None
        if response.status_code >= 500:
            raise BrainUnreachable(f"{where}: {response.status_code}")
        if response.status_code != 200:
            raise BrainRefused(response.status_code, error_list(response), _retry_after(response))
        return _answer(response, where)
    return send


def _answer(response: httpx.Response, where: str) -> tuple[list[tuple[int, Any]], int]:
    """The commands and cursor of the brain's answer to a batch (each command is checked
    where it is carried out); `BrainUnreachable` if the 200 holds anything else."""
    answer = _json(response)
    rows = answer.get("commands") if isinstance(answer, dict) else None
    cursor = answer.get("last_command_id") if isinstance(answer, dict) else None
    if not (isinstance(rows, list) and _is_id(cursor) and all(isinstance(r, dict) and _is_id(r.get("id")) for r in rows)):
        raise BrainUnreachable(f"{where}: a 200 that is no brain's answer "
                               f"({response.headers.get('content-type', 'no content type')}: {response.text[:80]!r})")
    return [(row["id"], row.get("command")) for row in rows], cursor


def _json(response: httpx.Response) -> Any:
    """The body as JSON, None if it is not."""
    try:
        return response.json()
    except (ValueError, RecursionError):
        return None


def _is_id(value: Any) -> bool:
    return type(value) is int and value >= 0


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds (given as seconds or as an HTTP date), at most RETRY_AFTER_MAX_S."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_S) if math.isfinite(seconds) else None


def error_list(response: httpx.Response) -> list[dict[str, Any]]:
    """The brain's errors as (item, field, error) dicts, whatever shape the body has."""
    body = _json(response)
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list) and all(isinstance(d, dict) for d in detail):
        return detail
    return [{"item": None, "field": "body", "error": str(detail if detail is not None else response.text[:500])}]


def http_routes(brain_url: str, key: str, timeout_s: float = 5.0) -> RouteSource:
    """A navigation unit reading the brain's route advice over HTTP
    (`GET /api/emergency/{vehicle}/route` with the field's key, which must speak for the
    vehicle: a device key for '*' or an admin key). No route planned yet (404) is None;
    no answer (or a server error, or a 200 that is no JSON object) raises
    `BrainUnreachable`, and the unit asks again later; a refusal (bad key, a key that
    may not read the vehicle's route) raises `BrainRefused` with the brain's explanation."""
    where = f"brain at {brain_url}"
    client = httpx.Client(base_url=brain_url.rstrip("/"), headers={"X-API-Key": key}, timeout=timeout_s)

    def route(vehicle: str) -> dict[str, Any] | None:
        try:
            response = client.get(f"/api/emergency/{quote(vehicle, safe='')}/route")
        except httpx.RequestError as exc:
            raise BrainUnreachable(f"{where}: {str(exc) or type(exc).__name__}") from None
        if response.status_code >= 500:
            raise BrainUnreachable(f"{where}: {response.status_code}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise BrainRefused(response.status_code, error_list(response), _retry_after(response))
        payload = _json(response)
        if not isinstance(payload, dict):
            raise BrainUnreachable(f"{where}: a 200 that is no route advice ({response.text[:80]!r})")
        return payload
    return route
