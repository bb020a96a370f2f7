"""`python -m api`: serve the api app."""

from api.app import create_app
from api.config import ApiSettings
from runtime.logging import configure_logging
from runtime.serve import serve


def main() -> None:
    settings = ApiSettings()
    configure_logging(settings.log_level)
    serve(
        create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level
    )


if __name__ == "__main__":
    main()
