"""Serving a FastAPI app the same way in every HTTP service: uvicorn, uvloop, httptools."""

from typing import Any

import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, start_http_server

from runtime.http import ConcurrencyCap
from runtime.one_write import OneWriteHttpToolsProtocol
from runtime.request_metrics import instrument
from runtime.settings import ServedSettings


def wrapped(app: FastAPI, settings: ServedSettings, registry: CollectorRegistry) -> Any:
    """The app as served: request metrics outermost (the requests the cap refuses are
    counted too), then the concurrency cap."""
    return instrument(ConcurrencyCap(app, settings.max_concurrent_requests), registry)


def serve(app: FastAPI, settings: ServedSettings, registry: CollectorRegistry) -> None:
    if settings.metrics_port is not None:
        # Scrapes on a port of their own (not exposed with the API), from a thread.
        start_http_server(settings.metrics_port, addr=settings.host, registry=registry)
    uvicorn.run(
        wrapped(app, settings, registry),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        # httptools, with each answer written whole (runtime/one_write.py).
        http=OneWriteHttpToolsProtocol,
        log_level=settings.log_level.lower(),
        access_log=False,
        log_config=None,  # our logging (runtime/logging.py), configured already
        # Within the 10 s the contract gives a shutdown, whatever is in flight.
        timeout_graceful_shutdown=8,
        timeout_keep_alive=int(settings.keep_alive_s),
    )
