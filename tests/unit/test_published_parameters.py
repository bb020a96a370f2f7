"""A route obeys only the parameters its contract publishes: every parameter of every
operation in the services' OpenAPI documents is named here, with where it goes. A route
that gains one (a default argument FastAPI turns into a query parameter, as `action` once
did on pickup and cancel) fails until the contract names it on purpose."""

from cli.docs import openapi_documents

KEY = ("header", "Idempotency-Key")
JOB = ("path", "job_id")
# Traccar's OsmAnd protocol carries a device's fix in the query string, on GET and POST
# alike (ingest/osmand.py): the protocol's parameters, nothing else.
OSMAND = {
    ("query", name)
    for name in ("id", "deviceid", "lat", "lon", "location", "timestamp", "speed", "bearing",
                 "heading", "altitude", "accuracy", "batt")
}  # fmt: skip
PUBLISHED: dict[tuple[str, str, str], set[tuple[str, str]]] = {
    ("api", "GET", "/healthz"): set(),
    ("api", "GET", "/.well-known/jwks.json"): set(),
    ("api", "GET", "/readyz"): set(),
    ("api", "GET", "/metrics"): set(),
    ("api", "GET", "/v1/drivers/{driver_id}/position"): {("path", "driver_id")},
    ("api", "GET", "/v1/jobs"): {("query", "cursor"), ("query", "limit")},
    ("api", "POST", "/v1/jobs"): {KEY},
    ("api", "GET", "/v1/jobs/{job_id}"): {JOB},
    ("api", "POST", "/v1/jobs/{job_id}/assign"): {JOB, KEY},
    ("api", "POST", "/v1/jobs/{job_id}/pickup"): {JOB, KEY},
    ("api", "POST", "/v1/jobs/{job_id}/cancel"): {JOB, KEY},
    ("api", "POST", "/v1/jobs/{job_id}/complete"): {JOB, KEY},
    ("api", "POST", "/v1/jobs/{job_id}/share"): {JOB, KEY},
    ("api", "DELETE", "/v1/jobs/{job_id}/share"): {JOB},
    ("api", "GET", "/v1/jobs/{job_id}/track"): {JOB, ("query", "from"), ("query", "to")},
    ("api", "GET", "/v1/jobs/{job_id}/proof"): {
        JOB,
        ("query", "size"),
        ("header", "If-None-Match"),
    },
    ("api", "GET", "/v1/ops/lag"): set(),
    ("api", "GET", "/v1/ops/overview"): set(),
    ("api", "GET", "/v1/share/{token}"): {("path", "token")},
    ("api", "GET", "/s/{token}"): {("path", "token")},
    ("api", "GET", "/v1/tasks/{task_id}"): {("path", "task_id")},
    ("ingest", "GET", "/healthz"): set(),
    ("ingest", "GET", "/readyz"): set(),
    ("ingest", "GET", "/metrics"): set(),
    ("ingest", "POST", "/v1/pings"): set(),
    ("ingest", "GET", "/osmand"): OSMAND,
    ("ingest", "POST", "/osmand"): OSMAND,
}


def published() -> dict[tuple[str, str, str], set[tuple[str, str]]]:
    return {
        (service, method.upper(), path): {(p["in"], p["name"]) for p in op.get("parameters", [])}
        for service, document in openapi_documents().items()
        for path, operations in document["paths"].items()
        for method, op in operations.items()
    }


def test_every_operation_publishes_only_the_parameters_the_contract_names() -> None:
    found = published()
    assert set(found) == set(PUBLISHED), "an operation was added or removed"
    wrong = {op: params for op, params in found.items() if params != PUBLISHED[op]}
    assert not wrong, f"parameters the contract does not name (or lacks): {wrong}"


def test_no_state_change_takes_a_query_parameter() -> None:
    # A POST's orders come in its path, its body and its Idempotency-Key: never the query.
    # The one exception is a device protocol's data, not an order: OsmAnd's fix.
    queried = {
        op
        for op, params in published().items()
        if op[1] == "POST" and any(p[0] == "query" for p in params)
    }
    queried.discard(("ingest", "POST", "/osmand"))
    assert not queried
