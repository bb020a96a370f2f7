"""`python -m streams`: run one Faust worker."""

import faust

from runtime.logging import configure_logging
from streams.app import create_app
from streams.config import StreamsSettings


def main() -> None:
    settings = StreamsSettings()
    configure_logging(settings.log_level)
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=settings.log_level.lower())
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
