"""The cached views' hot path (api/reads/views.py), beneath FastAPI's routing.

A cache hit costs little next to FastAPI's routing, dependency solving and middleware
stack (measured: docs/benchmarks.md, "Issue 11"), so the three cached GETs are answered
here when everything about the request is plainly valid: the path's id, a verified token
of a role that may read the view. Such a request gets the very answer its FastAPI route
would give (the same functions in api/reads/views.py make both, errors through the same
mapping, the principal's rate taken as the route's dependency takes it; byte for byte,
as tests/unit/test_fast_reads.py checks). Anything else
(no token, a bad one, a malformed id, another method) goes on to the routes, which
remain the contract and give its errors and OpenAPI."""

import re
from typing import Any
from uuid import UUID

from fastapi.responses import Response

from api.http_errors import MAPPED, to_api_error
from api.principal_limit import PrincipalLimit
from api.reads.views import ReadPath, job_answer, position_answer, share_answer
from runtime.auth import AuthError, TokenVerifier, bearer_token
from runtime.http import error_response
from schemas.auth import Principal, Role
from schemas.ids import ID_PATTERN
from schemas.jobs import SHARE_TOKEN_PATTERN

JOB = re.compile(
    r"/v1/jobs/([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"
)
SHARE = re.compile(r"/v1/share/(" + SHARE_TOKEN_PATTERN.strip("^$") + ")")
POSITION = re.compile(r"/v1/drivers/(" + ID_PATTERN.strip("^$") + ")/position")
POSITION_ROLES = (Role.DISPATCHER, Role.OPS)


class FastReads:
    """ASGI middleware: answers plainly valid cached GETs, passes the rest on."""

    def __init__(
        self, app: Any, read_path: ReadPath, verifier: TokenVerifier, limit: PrincipalLimit
    ) -> None:
        self._app = app
        self._read_path = read_path
        self._verifier = verifier
        self._limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        response = None
        if scope["type"] == "http" and scope["method"] == "GET":
            response = await self._answer(scope)
        if response is None:
            await self._app(scope, receive, send)
        else:
            await response(scope, receive, send)

    async def _answer(self, scope: Any) -> Response | None:
        path: str = scope["path"]
        authorization = if_none_match = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"if-none-match":
                if_none_match = value.decode("latin-1")
        try:
            if (found := SHARE.fullmatch(path)) is not None:
                return await share_answer(self._read_path, found[1], if_none_match)
            if (found := JOB.fullmatch(path)) is not None:
                who = self._caller(authorization)
                if who is None:
                    return None
                self._limit.admit(who)  # as the route's `principal` does
                return await job_answer(self._read_path, who, UUID(found[1]), if_none_match)
            if (found := POSITION.fullmatch(path)) is not None:
                who = self._caller(authorization)
                if who is None or who.role not in POSITION_ROLES:
                    return None
                self._limit.admit(who)
                return await position_answer(self._read_path, found[1], if_none_match)
        except MAPPED as exc:
            return error_response(to_api_error(exc))
        return None

    def _caller(self, authorization: str | None) -> Principal | None:
        try:
            return self._verifier.verify(bearer_token(authorization))
        except AuthError:
            return None  # the route says why, in its 401
