"""The live WebSockets: who may open one (refusals are a close code the browser can
read), how many each key holds, and each stream's life, which ends as soon as its
client leaves.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from fastapi import WebSocket, WebSocketDisconnect

from urbanbrain.service.city import jsonable
from urbanbrain.service.keys import (
    READ,
    Principal,
    authenticate,
)

if TYPE_CHECKING:
    from urbanbrain.service.app import ServiceState

LIVE_TICKS_PER_S = 4.0  # a twin running faster than real time still sends the cockpit at most this many ticks
LIVE_QUEUE = 2000  # live messages a slow client may fall behind by before it loses some
KEY_RECHECK_S = 5.0  # how soon a revoked key's open stream is closed
RUNTIME_POLL_S = 0.2  # a stream opened before the city is loaded looks this often
CLOSE_NO_KEY = 4401  # WebSocket close codes, read by browsers (which never see a handshake's HTTP status)
CLOSE_FORBIDDEN = 4403
CLOSE_TOO_MANY = 4429

Select = Callable[[Principal, dict[str, Any]], dict[str, Any] | None]


class Streams:
    """The open WebSockets: who may open one (refusals are a close code the browser can
    read, after the handshake), how many each key holds, and each stream's life, which
    ends as soon as its client leaves — noticed by reading the socket, not by the next
    message failing to go out, which an idle city may never send."""

    def __init__(self, service: ServiceState, per_key: int):
        self.service = service
        self.per_key = per_key
        self.open: Counter[str] = Counter()

    async def serve(self, socket: WebSocket, key: str | None, roles: frozenset[str], select: Select) -> None:
        who = await asyncio.to_thread(authenticate, self.service.store, key)
        await socket.accept()
        refusal = self._refusal(who, roles)
        if refusal is not None:
            await socket.close(*refusal)
            return
        self.open[who.name] += 1
        try:
            await _first_of(self._feed(socket, who, key, roles, select), _until_closed(socket))
        except asyncio.CancelledError:  # only the server cancels a stream, when it stops: its end, not an error
            pass
        finally:
            self.open[who.name] -= 1
            if not self.open[who.name]:
                del self.open[who.name]

    def _refusal(self, who: Principal | None, roles: frozenset[str]) -> tuple[int, str] | None:
        if who is None:
            return CLOSE_NO_KEY, "a valid API key is needed (?key=)"
        if who.role not in roles:
            return CLOSE_FORBIDDEN, f"role {who.role!r} may not open this stream"
        if self.open[who.name] >= self.per_key:
            return CLOSE_TOO_MANY, f"key {who.name!r} has {self.per_key} streams open already"
        return None

    async def _feed(self, socket: WebSocket, who: Principal, key: str | None, roles: frozenset[str],
                    select: Select) -> None:
        while self.service.runtime is None:
            await asyncio.sleep(RUNTIME_POLL_S)
        city = self.service.runtime
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=LIVE_QUEUE)
        stop = city.listen(_deliverer(who, select, queue))
        try:
            if roles is READ:
                await socket.send_json(jsonable(city.tick_message()))
            checked = time.monotonic()
            while True:
                try:
                    message = await asyncio.wait_for(queue.get(), timeout=KEY_RECHECK_S)
                except TimeoutError:
                    message = None
                if time.monotonic() - checked >= KEY_RECHECK_S:  # a key revoked meanwhile ends the stream
                    if await asyncio.to_thread(authenticate, self.service.store, key) is None:
                        await socket.close(CLOSE_NO_KEY, "the key was revoked")
                        return
                    checked = time.monotonic()
                if message is not None:
                    await socket.send_json(jsonable(message))
        finally:
            stop()


def _deliverer(who: Principal, select: Select, queue: asyncio.Queue) -> Callable[[dict[str, Any]], None]:
    """The listener the city calls (from its own thread) with every live message."""
    loop = asyncio.get_running_loop()
    last_tick = [0.0]

    def deliver(message: dict[str, Any]) -> None:
        chosen = select(who, message)
        if chosen is None:
            return
        if chosen.get("type") == "tick":
            now = time.monotonic()
            if now - last_tick[0] < 1.0 / LIVE_TICKS_PER_S:
                return
            last_tick[0] = now
        loop.call_soon_threadsafe(_offer, queue, chosen)
    return deliver


def _offer(queue: asyncio.Queue, message: dict[str, Any]) -> None:
    """A client too slow to keep up loses live messages, never the service its memory."""
    if not queue.full():
        queue.put_nowait(message)


async def _until_closed(socket: WebSocket) -> None:
    """Reads (and ignores) what the client sends until it leaves."""
    while (await socket.receive())["type"] != "websocket.disconnect":
        pass


async def _first_of(*jobs: Coroutine[Any, Any, None]) -> None:
    """Runs `jobs` until the first ends, then cancels the others and waits for them, so
    nothing outlives the stream. A client gone mid-send is the stream's end; any other
    error is raised."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        error = None if task.cancelled() else task.exception()
        if error is not None and not isinstance(error, (WebSocketDisconnect, RuntimeError, OSError)):
            raise error
