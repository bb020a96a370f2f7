"""Api's own errors, beside the jobs domain's (jobs/errors.py); both are mapped to HTTP
answers in api/http_errors.py."""


class ApiServiceError(Exception):
    """Base of every error the api raises on purpose."""


class DatabaseUnavailable(ApiServiceError):
    """The database did not answer in time; the client should retry later."""


class DatabaseBusy(ApiServiceError):
    """Every database slot of the process is taken; the client should retry shortly."""


class InvalidInput(ApiServiceError):
    """A parameter that passed its schema but is not valid (a cursor this api never made)."""


class TooManyRequests(ApiServiceError):
    """The caller is past their request rate; `retry_after_s` until the next is let in."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many requests, retry in {retry_after_s} s")
        self.retry_after_s = max(1, retry_after_s)
