"""The one place where ingest's errors become HTTP answers (the envelope of design
section 6). A fresh ApiError per answer: no exception instance is shared."""

from fastapi import FastAPI

from ingest.errors import Backpressure, BrokerUnavailable, InvalidBatch, NoValidPing, RateLimited
from runtime.http import ApiError, map_errors

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
            return ApiError(503, "too many requests in flight, retry later", headers=RETRY_1S)
        case BrokerUnavailable():
            return ApiError(503, "event log unavailable, retry later", headers=RETRY_1S)
    raise TypeError(f"no HTTP mapping for {exc!r}")


def install(app: FastAPI) -> None:
    kinds = (InvalidBatch, NoValidPing, RateLimited, Backpressure, BrokerUnavailable)
    map_errors(app, kinds, to_api_error)
