"""Api's error hierarchy (mapped to HTTP answers in api/http_errors.py)."""


class ApiServiceError(Exception):
    """Base of every error the api raises on purpose."""


class NotFound(ApiServiceError):
    """Nothing to show for this id (also for someone else's object)."""


class DatabaseUnavailable(ApiServiceError):
    """The database did not answer in time; the client should retry later."""


class DatabaseBusy(ApiServiceError):
    """Every database slot of the process is taken; the client should retry shortly."""


class Forbidden(ApiServiceError):
    """The caller's role may not do this, or the job is not theirs to act on."""


class Conflict(ApiServiceError):
    """The job's status does not allow this transition."""


class IdempotencyKeyReused(ApiServiceError):
    """An Idempotency-Key already used by this caller for a different request."""


class InvalidInput(ApiServiceError):
    """A parameter that passed its schema but is not valid (a cursor this api never made)."""


class PhotoTooLarge(ApiServiceError):
    """An upload past its size limit (refused before it is read whole)."""


class InvalidPhoto(ApiServiceError):
    """Not a JPEG or PNG image, broken, or a decompression bomb."""


class TooManyRequests(ApiServiceError):
    """The caller is past their request rate; `retry_after_s` until the next is let in."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many requests, retry in {retry_after_s} s")
        self.retry_after_s = max(1, retry_after_s)
