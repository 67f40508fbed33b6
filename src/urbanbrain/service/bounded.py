"""Bounded input: a body over the size limit, JSON nested deeper than a device event ever
is, or bytes that are not UTF-8 are refused with 4xx before they can cost anything
(a parser's RecursionError or a decoder's exception would be a 500).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Coroutine
from itertools import accumulate
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from urbanbrain.service.api_schema import MAX_BATCH, error_response, problem

MAX_JSON_DEPTH = 64  # a device event nests 4 deep; anything far deeper is an attack on the parser


class BodyLimit:
    """Refuses a body over `limit` bytes with 413: by its Content-Length before a byte of
    it is read, and a chunked one as soon as it grows past the limit, so a huge body
    costs the service neither memory nor parsing (and is refused before its key is
    even checked)."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        refusal = None if declared is None else self._refusal(declared)
        if refusal is not None:
            await error_response(refusal[0], [{"item": None, "field": "Content-Length", "error": refusal[1]}])(
                scope, receive, send)
            return
        await self.app(scope, self._counted(receive), send)

    def _refusal(self, declared: str) -> tuple[int, str] | None:
        if not re.fullmatch(r"[0-9]{1,19}", declared):
            return 400, f"Content-Length {declared[:40]!r} is not a byte count"
        if int(declared) > self.limit:
            return 413, f"the body is {int(declared)} bytes; the service accepts at most {self.limit}"
        return None

    def _counted(self, receive: Receive) -> Callable[[], Awaitable[Message]]:
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise problem(413, f"the body is over {self.limit} bytes, the most the service accepts", "body")
            return message
        return counted


class _BoundedJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = load_json(await self.body())
        return self._json


class BoundedJsonRoute(APIRoute):
    """FastAPI parses JSON bodies through `Request.json`: this one refuses too deep or
    undecodable JSON with 422 instead of a parser's RecursionError (a 500)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def bounded(request: Request) -> Response:
            return await handler(_BoundedJsonRequest(request.scope, request.receive))
        return bounded


_ESCAPE = re.compile(rb"\\.")
_NOT_QUOTE_OR_BRACKET = bytes(set(range(256)) - set(b'"[]{}'))
_OPENS = bytes.maketrans(b"[{]}", b"\x01\x01\x00\x00")


def _depth(text: bytes) -> int:
    """How deep JSON text nests, counted without parsing it (some 30 ms for 4 MiB): the
    brackets outside its strings, which are every other piece between quotes once the
    escapes are gone."""
    if b"\\" in text:
        text = _ESCAPE.sub(b"", text)
    outside = b"".join(text.translate(None, _NOT_QUOTE_OR_BRACKET).split(b'"')[::2])
    return max(accumulate(outside.translate(_OPENS), lambda depth, opens: depth + (1 if opens else -1), initial=0))


def _number(text: str) -> float | int:
    """A JSON number written with a fraction or exponent; an integral one is the integer
    it equals (JSON, and the published schemas, do not tell 3.0 from 3), so that a
    strict integer field takes it."""
    number = float(text)
    return int(number) if number.is_integer() else number


def _no_constant(name: str) -> float:
    """Python's parser takes NaN and Infinity; JSON has no such numbers."""
    raise ValueError(f"{name} is not a JSON number")


def load_json(text: bytes, item: int | None = None) -> Any:
    """JSON from a client: UTF-8, nested at most MAX_JSON_DEPTH deep, or a 422 naming why."""
    field = "body" if item is None else "message"
    if _depth(text) > MAX_JSON_DEPTH:
        raise problem(422, f"JSON nested more than {MAX_JSON_DEPTH} deep", field, item)
    try:
        return json.loads(text.decode("utf-8"), parse_float=_number, parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise problem(422, f"not valid UTF-8 at byte {exc.start}", field, item) from None
    except json.JSONDecodeError as exc:
        raise problem(422, f"not valid JSON: {exc.msg} at position {exc.pos}", field, item) from None
    except ValueError as exc:  # NaN, or an integer of more digits than Python converts
        raise problem(422, f"not valid JSON: {exc}", field, item) from None


def parse_batch(body: bytes, content_type: str) -> list[Any]:
    """A JSON array, or JSON lines; a line that is not JSON is named by its item number."""
    if "ndjson" in content_type or "jsonl" in content_type:
        lines = [line for line in body.splitlines() if line.strip()]
        items = [load_json(line, index) for index, line in enumerate(lines)]
    else:
        items = load_json(body)
        if not isinstance(items, list):
            raise problem(422, "expected a JSON array of device events", "body")
    if not items:
        raise problem(422, "the batch is empty", "body")
    if len(items) > MAX_BATCH:
        raise problem(413, f"at most {MAX_BATCH} events per batch, got {len(items)}", "body")
    return items
