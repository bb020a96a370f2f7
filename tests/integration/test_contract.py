"""The contract as published: schemathesis generates requests from each running service's
OpenAPI; none may get a 500, a status code the document does not declare, a response that
violates its declared schema or content type, or a 405 without its Allow header."""

import uuid
from collections.abc import Callable

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from infra.stack import Stack
from schemas.auth import Role

pytestmark = pytest.mark.integration
CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    allow_header_conformance,
]
# Few examples per operation: this guards the contract; the unit tests cover the logic.
SMALL = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


def check_every_operation(openapi_url: str, authorization: Callable[[], str]) -> int:
    schema = schemathesis.openapi.from_url(openapi_url)
    checked = 0
    for result in schema.get_all_operations():
        if not isinstance(result, Ok):
            pytest.fail(f"the published OpenAPI has an invalid operation: {result.err()!r}")
        operation = result.ok()

        @given(case=operation.as_strategy())
        @SMALL
        def holds(case: schemathesis.Case) -> None:  # type: ignore[type-arg]
            case.call_and_validate(headers={"Authorization": authorization()}, checks=CHECKS)

        holds()
        checked += 1
    return checked


def test_ingest_keeps_its_published_contract(stack: Stack, token: Callable[..., str]) -> None:
    def driver() -> str:
        # A driver of its own per case: the rate limit is per driver, not what this tests.
        return "Bearer " + token(Role.DRIVER, f"contract-{uuid.uuid4().hex[:8]}")

    assert check_every_operation(stack.urls("ingest")[0] + "/openapi.json", driver) == 6


def test_api_keeps_its_published_contract(stack: Stack, token: Callable[..., str]) -> None:
    # A dispatcher may call every route (creates, assigns and cancels jobs, reads positions)
    # but the ops ones, which answer it with their documented 403.
    dispatcher = "Bearer " + token(Role.DISPATCHER, "contract-dispatcher")
    assert check_every_operation(stack.urls("api")[0] + "/openapi.json", lambda: dispatcher) == 21
