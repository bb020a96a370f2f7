"""Ingest as an ASGI factory, for a server other than uvicorn (granian) in `telemetry bench
ingest_front`: the same app and wrapping as `python -m ingest` (runtime/serve.py)."""

from typing import Any

from ingest.app import build_adapters, create_app
from ingest.config import IngestSettings
from runtime.serve import wrapped


def app() -> Any:
    settings = IngestSettings()
    adapters = build_adapters(settings)
    return wrapped(create_app(settings, adapters), settings, adapters.metrics.registry)
