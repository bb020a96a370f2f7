"""HTTP plumbing shared by the FastAPI services: the error body and its handlers, the body
limit and deadline, the concurrency cap, probes."""

import asyncio
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtime.auth import AuthError, ForbiddenError

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "rate_limited",
    503: "unavailable",
}


class ApiError(Exception):
    """An error with its HTTP status, code and optional details and headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _STATUS_CODES.get(status, "error")
        self.message = message
        self.details = details
        self.headers = headers or {}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


def error_response(error: ApiError) -> Response:
    body = {"error": {"code": error.code, "message": error.message, "details": error.details}}
    return json_response(body, error.status, error.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as `{"error": {"code", "message", "details"}}`."""

    async def on_api_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def on_auth_error(_: Request, exc: Exception) -> Response:
        return error_response(
            ApiError(401, str(exc), headers={"WWW-Authenticate": 'Bearer realm="telemetry"'})
        )

    async def on_forbidden(_: Request, exc: Exception) -> Response:
        return error_response(ApiError(403, str(exc)))

    async def on_validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        return error_response(ApiError(422, "request is invalid", details=details))

    async def on_http(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        # Starlette's own headers stay: a 405 says which methods are allowed (`Allow`).
        headers = dict(exc.headers or {})
        return error_response(ApiError(exc.status_code, str(exc.detail), headers=headers))

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(AuthError, on_auth_error)
    app.add_exception_handler(ForbiddenError, on_forbidden)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)


def metrics_response(registry: CollectorRegistry) -> Response:
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def app_options(docs_enabled: bool) -> dict[str, Any]:
    """FastAPI's keyword arguments for publishing (or not) /docs, /redoc and /openapi.json."""
    if docs_enabled:
        return {}
    return {"docs_url": None, "redoc_url": None, "openapi_url": None}


async def read_body_limited(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` bytes, before any parsing,
    and with 408 when it has not arrived within `timeout_s` (a slow sender)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"body larger than {limit} bytes")
                chunks.append(chunk)
    except TimeoutError as exc:
        raise ApiError(408, f"body not received within {timeout_s:g} s") from exc
    return b"".join(chunks)


class ConcurrencyCap:
    """ASGI middleware: at most `limit` HTTP requests in progress; beyond it, 503 with
    Retry-After at once (a queue would be the unbounded buffer the design forbids)."""

    def __init__(self, app: Any, limit: int) -> None:
        self._app = app
        self._limit = limit
        self._active = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        if self._active >= self._limit:
            refusal = ApiError(503, "server busy, retry later", headers={"Retry-After": "1"})
            await error_response(refusal)(scope, receive, send)
            return
        self._active += 1
        try:
            await self._app(scope, receive, send)
        finally:
            self._active -= 1
