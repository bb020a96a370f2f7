"""`python -m api`: serve the api app with uvicorn."""

import uvicorn

from api.app import create_app
from api.config import ApiSettings
from runtime.logging import configure_logging


def main() -> None:
    settings = ApiSettings()
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
