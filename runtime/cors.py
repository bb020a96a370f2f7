"""CORS for browser apps (docs/services.md, "Browsers"): the listed origins only, never a
wildcard. A request from a listed origin gets Starlette's CORS handling; any other passes
untouched, with no CORS header at all."""

from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.middleware.cors import CORSMiddleware

# What a browser app may send (beyond what CORS always allows) and read back.
METHODS = ("GET", "POST", "DELETE")
REQUEST_HEADERS = (
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "If-None-Match",
    "X-Request-ID",
)
EXPOSED_HEADERS = ("ETag", "Retry-After", "X-Request-ID")
# How long a browser may reuse a preflight's answer.
MAX_AGE_S = 600


def origin_of(scope: dict[str, Any]) -> str | None:
    for name, value in scope["headers"]:
        if name == b"origin":
            return str(value.decode("latin-1"))
    return None


class Cors:
    """ASGI middleware. From a listed origin: a preflight is answered with the allowed
    methods, headers and `Access-Control-Max-Age`, and an answer carries
    `Access-Control-Allow-Origin` with that origin. From an unlisted origin (or none): the
    app answers as if CORS did not exist, so a browser refuses the page its answer. Every
    answer says `Vary: Origin`, so a cache in front never serves one origin's answer to
    another."""

    def __init__(self, app: Any, origins: tuple[str, ...]) -> None:
        if "*" in origins or "null" in origins:
            raise ValueError("list the allowed origins one by one: no '*' nor 'null'")
        self._app = app
        self._origins = frozenset(origins)
        self._cors = CORSMiddleware(
            app,
            allow_origins=list(origins),
            allow_methods=METHODS,
            allow_headers=REQUEST_HEADERS,
            expose_headers=EXPOSED_HEADERS,
            max_age=MAX_AGE_S,
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
        elif origin_of(scope) in self._origins:
            await self._cors(scope, receive, send)
        else:

            async def varied(message: Any) -> None:
                if message["type"] == "http.response.start":
                    MutableHeaders(scope=message).add_vary_header("Origin")
                await send(message)

            await self._app(scope, receive, varied)
