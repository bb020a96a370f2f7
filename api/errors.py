"""Api's error hierarchy (mapped to HTTP answers in api/http_errors.py)."""


class ApiServiceError(Exception):
    """Base of every error the api raises on purpose."""


class NotFound(ApiServiceError):
    """Nothing to show for this id (also for someone else's object)."""


class DatabaseUnavailable(ApiServiceError):
    """The database did not answer in time; the client should retry later."""
