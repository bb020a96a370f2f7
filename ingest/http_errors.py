"""The one place where ingest's errors become HTTP answers (the envelope of
docs/api.md). A fresh ApiError per answer: no exception instance is shared."""

from fastapi import FastAPI

from ingest.errors import (
    Backpressure,
    BrokerUnavailable,
    DevicesUnavailable,
    IngestError,
    InvalidBatch,
    NoValidPing,
    RateLimited,
    UnknownDevice,
)
from runtime.auth import AuthError, ForbiddenError
from runtime.http import ApiError, auth_api_error, map_errors, retry_after

RETRY_1S = {"Retry-After": "1"}


def to_api_error(exc: Exception) -> ApiError:
    match exc:
        case InvalidBatch():
            return ApiError(422, str(exc))
        case NoValidPing(rejected=rejected):
            return ApiError(422, str(exc), details={"rejected": rejected})
        case RateLimited(retry_after_s=seconds):
            return ApiError(429, str(exc), headers={"Retry-After": str(seconds)})
        case Backpressure():
            return ApiError(503, "too many requests in flight, retry later", headers=retry_after())
        case BrokerUnavailable():
            return ApiError(503, "event log unavailable, retry later", headers=retry_after())
        case UnknownDevice():
            return ApiError(403, str(exc))
        case DevicesUnavailable():
            return ApiError(503, "device registry not read yet, retry later", headers=retry_after())
    raise TypeError(f"no HTTP mapping for {exc!r}")


# What the hot route answers for (it runs before FastAPI's exception handlers).
ANSWERED = (ApiError, AuthError, ForbiddenError, IngestError)


def answer_for(exc: ApiError | AuthError | ForbiddenError | IngestError) -> ApiError:
    """The answer to any error of ANSWERED, as the app's exception handlers give it."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, AuthError | ForbiddenError):
        return auth_api_error(exc)
    return to_api_error(exc)


def install(app: FastAPI) -> None:
    kinds = (
        InvalidBatch, NoValidPing, RateLimited, Backpressure, BrokerUnavailable, UnknownDevice,
        DevicesUnavailable,
    )  # fmt: skip
    map_errors(app, kinds, to_api_error)
