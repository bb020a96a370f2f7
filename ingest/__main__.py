"""`python -m ingest`: serve the ingest app with uvicorn (uvloop, httptools)."""

import uvicorn

from ingest.app import create_app
from ingest.config import IngestSettings
from runtime.logging import configure_logging


def main() -> None:
    settings = IngestSettings()
    configure_logging(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
