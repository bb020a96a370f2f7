"""The one place where the api's errors become HTTP answers (docs/api.md). A fresh
ApiError per answer: no exception instance is shared between requests."""

from fastapi import FastAPI

from api.errors import (
    ApiServiceError,
    DatabaseBusy,
    DatabaseUnavailable,
    InvalidInput,
    TooManyRequests,
)
from jobs.errors import (
    Conflict,
    Forbidden,
    IdempotencyKeyReused,
    InvalidPhoto,
    JobsError,
    NotFound,
    PhotoTooLarge,
)
from runtime.http import ApiError, map_errors, retry_after

# Every error with an HTTP answer here: the api's own and the jobs domain's.
MAPPED = (ApiServiceError, JobsError)


def to_api_error(exc: Exception) -> ApiError:
    match exc:
        case NotFound():
            return ApiError(404, str(exc))
        case Forbidden():
            return ApiError(403, str(exc))
        case Conflict():
            return ApiError(409, str(exc))
        case InvalidInput():
            return ApiError(422, str(exc))
        case InvalidPhoto():
            return ApiError(422, str(exc), code="invalid_photo")
        case PhotoTooLarge():
            return ApiError(413, str(exc))
        case IdempotencyKeyReused():
            return ApiError(422, str(exc), code="idempotency_key_reused")
        case TooManyRequests():
            headers = {"Retry-After": str(exc.retry_after_s)}
            return ApiError(429, str(exc), headers=headers)
        case DatabaseUnavailable():
            return ApiError(503, "database unavailable, retry later", headers=retry_after())
        case DatabaseBusy():
            return ApiError(
                503, "too busy, retry shortly", code="overloaded", headers=retry_after()
            )
    raise TypeError(f"no HTTP mapping for {exc!r}")


def install(app: FastAPI) -> None:
    map_errors(
        app,
        (
            NotFound,
            Forbidden,
            Conflict,
            InvalidInput,
            InvalidPhoto,
            PhotoTooLarge,
            IdempotencyKeyReused,
            DatabaseUnavailable,
            DatabaseBusy,
            TooManyRequests,
        ),
        to_api_error,
    )
