"""`python -m api`: serve the api app."""

from prometheus_client import CollectorRegistry

from api.app import create_app
from api.config import ApiSettings
from runtime.logging import configure_logging
from runtime.serve import serve


def main() -> None:
    settings = ApiSettings()
    configure_logging(settings.log_level, "api")
    registry = CollectorRegistry()
    app = create_app(settings, registry)
    serve(app, settings, registry)


if __name__ == "__main__":
    main()
