"""Serving a FastAPI app the same way in every HTTP service: uvicorn, uvloop, httptools."""

import contextlib
import sys
from typing import Any

import uvicorn
import uvloop
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, start_http_server

from runtime.clock import SystemClock
from runtime.cors import Cors
from runtime.heartbeat import beating
from runtime.http import ConcurrencyCap
from runtime.one_write import OneWriteHttpToolsProtocol
from runtime.request_metrics import instrument
from runtime.settings import ServedSettings

# Never refused by the concurrency cap: a process at its cap is busy, not dead, and the
# supervisor must not take it for stuck (infra/services.py `live`).
LIVENESS_PATH = "/healthz"


def wrapped(app: FastAPI, settings: ServedSettings, registry: CollectorRegistry) -> Any:
    """The app as served: request metrics outermost (the requests the cap refuses are
    counted too), then the concurrency cap, then CORS for the listed origins."""
    served: Any = app
    if settings.allowed_origins:
        served = Cors(app, settings.allowed_origins)
    capped = ConcurrencyCap(served, settings.max_concurrent_requests, exempt=(LIVENESS_PATH,))
    return instrument(capped, registry)


def serve(app: FastAPI, settings: ServedSettings, registry: CollectorRegistry) -> None:
    if settings.metrics_port is not None:
        # Scrapes on a port of their own (not exposed with the API), from a thread.
        start_http_server(settings.metrics_port, addr=settings.host, registry=registry)
    config = uvicorn.Config(
        wrapped(app, settings, registry),
        host=settings.host,
        port=settings.port,
        # httptools, with each answer written whole (runtime/one_write.py).
        http=OneWriteHttpToolsProtocol,
        log_level=settings.log_level.lower(),
        access_log=False,
        log_config=None,  # our logging (runtime/logging.py), configured already
        # Within the 10 s the contract gives a shutdown, whatever is in flight.
        timeout_graceful_shutdown=8,
        timeout_keep_alive=int(settings.keep_alive_s),
    )
    server = uvicorn.Server(config)

    async def run() -> None:
        async with beating(settings.heartbeat_path, SystemClock()):
            await server.serve()

    # On uvloop, as uvicorn.run(loop="uvloop") would, with its exit code when start-up
    # failed. uvicorn raises the signal it stopped on again once it has shut down.
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(run())
    if not server.started:
        sys.exit(3)
