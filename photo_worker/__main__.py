"""`python -m photo_worker`: run the photo worker, served like every other service."""

from prometheus_client import CollectorRegistry

from photo_worker.app import create_app
from photo_worker.config import PhotoWorkerSettings
from runtime.logging import configure_logging
from runtime.serve import serve


def main() -> None:
    settings = PhotoWorkerSettings()
    configure_logging(settings.log_level, "photo-worker")
    registry = CollectorRegistry()
    serve(create_app(settings, registry), settings, registry)


if __name__ == "__main__":
    main()
