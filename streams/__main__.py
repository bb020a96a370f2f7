"""`python -m streams`: run one Faust worker."""

import signal
from typing import Any

import faust
import mode.loop

from runtime.logging import configure_logging, logging_config
from streams.app import create_app
from streams.config import StreamsSettings
from streams.pipeline import PingBatchProcessor


class StreamWorker(faust.Worker):
    """Tells the batch processor first when a stop signal arrives: Faust's own stop waits
    for the batch in flight to be acked, which, while the database is down, is never."""

    def __init__(self, app: faust.App, processor: PingBatchProcessor, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._processor = processor

    def _schedule_shutdown(self, signum: signal.Signals) -> None:
        self._processor.request_stop()
        super()._schedule_shutdown(signum)


def main() -> None:
    # uvloop, as our other services run under uvicorn: with asyncio's own loop, the loop
    # and its sockets took a quarter of a draining worker's CPU. Set before anything makes
    # a loop.
    mode.loop.use("uvloop")
    settings = StreamsSettings()
    configure_logging(settings.log_level, "streams")
    streams = create_app(settings)
    worker = StreamWorker(
        streams.app,
        streams.processor,
        loglevel=settings.log_level.lower(),
        # Faust sets logging up again at start: with our format, and without its banner.
        logging_config=logging_config(settings.log_level, "streams"),
        quiet=True,
    )
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
