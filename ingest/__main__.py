"""`python -m ingest`: serve the ingest app."""

from ingest.app import build_adapters, create_app
from ingest.config import IngestSettings
from runtime.logging import configure_logging
from runtime.serve import serve


def main() -> None:
    settings = IngestSettings()
    configure_logging(settings.log_level, "ingest")
    adapters = build_adapters(settings)
    serve(create_app(settings, adapters), settings, adapters.metrics.registry)


if __name__ == "__main__":
    main()
