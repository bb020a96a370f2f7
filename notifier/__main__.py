"""`python -m notifier`: serve WebSocket push until SIGTERM or SIGINT."""

import asyncio
import logging
import signal

import uvloop
from prometheus_client import CollectorRegistry

from notifier.app import Notifier
from notifier.config import NotifierSettings
from runtime.clock import SystemClock
from runtime.heartbeat import beating
from runtime.logging import configure_logging


async def serve(settings: NotifierSettings) -> None:
    notifier = Notifier(settings, CollectorRegistry())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with beating(settings.heartbeat_path, SystemClock()), notifier.running():
        await stop.wait()


def main() -> None:
    settings = NotifierSettings()
    configure_logging(settings.log_level, "notifier")
    # One line per handshake and per probe otherwise.
    logging.getLogger("websockets.server").setLevel(logging.WARNING)
    uvloop.run(serve(settings))


if __name__ == "__main__":
    main()
