"""`python -m ingest`: serve the ingest app."""

from ingest.app import create_app
from ingest.config import IngestSettings
from runtime.logging import configure_logging
from runtime.serve import serve


def main() -> None:
    settings = IngestSettings()
    configure_logging(settings.log_level)
    serve(
        create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level
    )


if __name__ == "__main__":
    main()
