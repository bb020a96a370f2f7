"""HTTP plumbing shared by the FastAPI services: the error body and its handlers, the body
limit and deadline, the concurrency cap, probes."""

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtime.auth import AuthError, ForbiddenError
from schemas.errors import ErrorBody

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


def auth_api_error(exc: AuthError | ForbiddenError) -> ApiError:
    if isinstance(exc, AuthError):
        return ApiError(401, str(exc), headers={"WWW-Authenticate": 'Bearer realm="telemetry"'})
    return ApiError(403, str(exc))


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as `{"error": {"code", "message", "details"}}`."""

    async def on_api_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def on_auth_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, AuthError | ForbiddenError)
        return error_response(auth_api_error(exc))

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
    app.add_exception_handler(ForbiddenError, on_auth_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)


def map_errors(
    app: FastAPI, kinds: tuple[type[Exception], ...], to_api_error: Callable[[Exception], ApiError]
) -> None:
    """Answers a service's own errors through its one mapping function: HTTP
    errors are mapped in one module, and the domain code knows nothing of HTTP."""

    async def handler(_: Request, exc: Exception) -> Response:
        return error_response(to_api_error(exc))

    for kind in kinds:
        app.add_exception_handler(kind, handler)


def metrics_response(registry: CollectorRegistry) -> Response:
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def app_options(docs_enabled: bool) -> dict[str, Any]:
    """FastAPI's keyword arguments for publishing (or not) /docs, /redoc and /openapi.json."""
    if docs_enabled:
        return {}
    return {"docs_url": None, "redoc_url": None, "openapi_url": None}


async def stream_body_limited(
    request: Request, limit: int, timeout_s: float
) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive, refused with 413 as soon as it passes `limit`
    bytes, and with 408 when it has not arrived within `timeout_s` (a slow sender)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"body larger than {limit} bytes")
    # One deadline for the whole body, applied per chunk: a timeout scope must not span
    # the consumer's code between two chunks.
    deadline = asyncio.get_running_loop().time() + timeout_s
    chunks = aiter(request.stream())
    size = 0
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            chunk = await asyncio.wait_for(anext(chunks), max(remaining, 0.0))
        except StopAsyncIteration:
            return
        except TimeoutError as exc:
            raise ApiError(408, f"body not received within {timeout_s:g} s") from exc
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body larger than {limit} bytes")
        yield chunk


async def read_body_limited(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, within `stream_body_limited`'s bounds, before any parsing."""
    return b"".join([chunk async for chunk in stream_body_limited(request, limit, timeout_s)])


async def receive_body_limited(
    scope: Any, receive: Callable[[], Awaitable[Any]], limit: int, timeout_s: float
) -> bytes | None:
    """`read_body_limited` for a plain ASGI handler: the whole body, or None when the client
    hung up before sending it. Cheaper than going through a Request: one deadline for the
    whole read, with no task per chunk."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise ApiError(413, f"body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"body larger than {limit} bytes")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError as exc:
        raise ApiError(408, f"body not received within {timeout_s:g} s") from exc


# A dependency that failed everyone at once must not see them all come back at once: the
# clients' waits are spread over a few seconds.
RETRY_AFTER_S = (1, 3)


def retry_after() -> dict[str, str]:
    """A Retry-After header for a 503: seconds drawn from RETRY_AFTER_S."""
    return {"Retry-After": str(random.randint(*RETRY_AFTER_S))}


class ConcurrencyCap:
    """ASGI middleware: at most `limit` HTTP requests in progress; beyond it, 503 with
    Retry-After at once (a queue would be the unbounded buffer the design forbids). The
    `exempt` paths are never refused nor counted (the liveness probe)."""

    def __init__(self, app: Any, limit: int, exempt: tuple[str, ...] = ()) -> None:
        self._app = app
        self._limit = limit
        self._exempt = exempt
        self._active = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self._exempt:
            await self._app(scope, receive, send)
            return
        if self._active >= self._limit:
            refusal = ApiError(503, "server busy, retry later", headers=retry_after())
            await error_response(refusal)(scope, receive, send)
            return
        self._active += 1
        try:
            await self._app(scope, receive, send)
        finally:
            self._active -= 1


class BodyLimit:
    """ASGI middleware: a request body past `limit` bytes is refused with 413 in the JSON
    envelope, from its Content-Length at once, or as soon as the bytes received pass it
    (a chunked body). Paths for which `exempt` is true bound their own bodies (uploads)."""

    def __init__(self, app: Any, limit: int, exempt: Callable[[str], bool]) -> None:
        self._app = app
        self._limit = limit
        self._exempt = exempt

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self._exempt(scope["path"]):
            await self._app(scope, receive, send)
            return
        message = f"body larger than {self._limit} bytes"
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self._limit:
            await error_response(ApiError(413, message))(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Any:
            nonlocal received
            chunk = await receive()
            received += len(chunk.get("body", b""))
            if received > self._limit:
                # An HTTPException: FastAPI passes it on from its body reading (anything
                # else becomes a 400), and the app's handler answers in the envelope.
                raise StarletteHTTPException(413, message)
            return chunk

        await self._app(scope, counting_receive, send)


# The bearer scheme, declared once: routes that depend on it carry it in their OpenAPI.
# auto_error=False: a missing or malformed header is our AuthError (401, our envelope).
bearer_scheme = HTTPBearer(auto_error=False, description="An EdDSA-signed JWT (see README)")


def bearer_credentials(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or not credentials.credentials.strip():
        raise AuthError("Authorization must be 'Bearer <token>'")
    return credentials.credentials.strip()


_MEANINGS = {
    401: "No token, or an invalid one",
    403: "The token's role (or identity) may not do this",
    404: "Not found",
    409: "The current state does not allow this",
    408: "The body did not arrive in time",
    413: "Body too large",
    422: "Invalid request",
    429: "Over the rate limit; retry after `Retry-After` seconds",
    503: "A dependency is unavailable or the server is busy; retry after `Retry-After`",
}
_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error statuses a route can answer, each the envelope."""
    return {
        status: {
            "model": ErrorBody,
            "description": _MEANINGS[status],
            **({"headers": _RETRY_AFTER} if status in (429, 503) else {}),
        }
        for status in statuses
    }


PROBE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}},
    503: {
        "description": "A dependency is unavailable",
        "content": {"application/json": {"schema": {"type": "object"}}},
        "headers": _RETRY_AFTER,
    },
}
METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Prometheus text format", "content": {"text/plain": {}}}
}


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` declaring a JSON body for a route that reads the raw body itself."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def publish_models(app: FastAPI, *models: type[BaseModel]) -> None:
    """Adds models that no route signature names (raw-body routes) to the OpenAPI
    components, so `request_body`'s references resolve."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, routes=app.routes, openapi_version="3.1.0"
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                found = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(found.pop("$defs", {}))
                components[model.__name__] = found
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
