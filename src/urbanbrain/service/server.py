"""The HTTP server the brain service runs on (uvicorn)."""

from __future__ import annotations

from collections.abc import Callable

import uvicorn
from fastapi import FastAPI


def run_server(app: FastAPI, host: str, port: int, on_interrupt: Callable[[], None]) -> None:
    """Serve `app` until Ctrl-C or SIGTERM; `on_interrupt` runs when a second Ctrl-C cuts the shutdown short."""
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    except KeyboardInterrupt:  # a second Ctrl-C (a terminal signals `make` and the service alike) cuts the shutdown short
        on_interrupt()
