"""The HTTP server the brain service runs on (uvicorn), stopping in bounded time.

On Ctrl-C or SIGTERM the server stops taking connections, closes the open WebSockets
(close code 1012, "service restart"), gives what is still running a few seconds, and
then runs the app's own shutdown (the city's); a second Ctrl-C cuts that short,
quietly: whoever presses it wants out now, not a page of tracebacks.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Generator
from types import FrameType

import uvicorn
from fastapi import FastAPI

GRACEFUL_SHUTDOWN_S = 3.0  # open requests and streams get this long; with the city's own shutdown, under 5 s
WS_MAX_MESSAGE_BYTES = 64 * 1024  # the streams read nothing from their clients: no need to buffer 16 MiB of it
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """uvicorn's own re-raises the signals it caught once it has shut down, which turns
        a clean stop into a KeyboardInterrupt, or (SIGTERM) a death by signal; this server
        has stopped as it was asked to, so it only restores the previous handlers."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self.force_exit:  # what the second Ctrl-C cuts short is cut on purpose: no tracebacks for it
            logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)


def run_server(app: FastAPI, host: str, port: int, on_interrupt: Callable[[], None]) -> None:
    """Serve `app` until Ctrl-C or SIGTERM; `on_interrupt` runs when a second Ctrl-C cuts
    the shutdown short (the app's own shutdown may then not have run)."""
    server = _Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                    timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, ws_max_size=WS_MAX_MESSAGE_BYTES))
    try:
        server.run()
    except KeyboardInterrupt:  # a Ctrl-C outside the server's own handling (while it starts or ends)
        on_interrupt()
        return
    if server.force_exit:
        on_interrupt()
