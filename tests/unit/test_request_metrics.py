"""Request metrics: counted by route template (never the raw path), method and status, the
refused and the failed requests included; process metrics on the same registry."""

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from runtime.http import ApiError, ConcurrencyCap, install_error_handlers
from runtime.request_metrics import UNMATCHED, instrument


def make_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/v1/things/{thing_id}")
    async def thing(thing_id: str) -> dict[str, str]:
        if thing_id == "missing":
            raise ApiError(404, "no such thing")
        return {"id": thing_id}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    return app


def count(registry: CollectorRegistry, route: str, method: str, status: str) -> float:
    labels = {"route": route, "method": method, "status": status}
    return registry.get_sample_value("http_requests_total", labels) or 0.0


async def test_requests_are_counted_by_template_method_and_status() -> None:
    registry = CollectorRegistry()
    transport = httpx.ASGITransport(instrument(make_app(), registry), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for thing in ("a", "b", "c"):
            assert (await client.get(f"/v1/things/{thing}")).status_code == 200
        assert (await client.get("/v1/things/missing")).status_code == 404
        assert (await client.get("/no/such/path/1")).status_code == 404
        assert (await client.get("/no/such/path/2")).status_code == 404
        assert (await client.post("/v1/things/a")).status_code == 405
        assert (await client.get("/boom")).status_code == 500

    template = "/v1/things/{thing_id}"
    assert count(registry, template, "GET", "200") == 3
    assert count(registry, template, "GET", "404") == 1
    # A scanner's paths share one series.
    assert count(registry, UNMATCHED, "GET", "404") == 2
    assert count(registry, "/boom", "GET", "500") == 1
    latency = registry.get_sample_value(
        "http_request_duration_seconds_count", {"route": template, "method": "GET"}
    )
    assert latency == 4
    # The raw path never becomes a label.
    names = {
        sample.labels.get("route")
        for family in registry.collect()
        for sample in family.samples
        if "route" in sample.labels
    }
    assert not any("/a" in str(name) or "path/1" in str(name) for name in names), names


async def test_a_request_the_cap_refuses_is_counted() -> None:
    registry = CollectorRegistry()
    capped = ConcurrencyCap(make_app(), limit=0)  # refuses everything
    transport = httpx.ASGITransport(instrument(capped, registry))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/v1/things/a")).status_code == 503
    assert count(registry, UNMATCHED, "GET", "503") == 1


@pytest.mark.parametrize(
    "name", ["process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"]
)
def test_process_metrics_are_on_the_same_registry(name: str) -> None:
    registry = CollectorRegistry()
    instrument(make_app(), registry)
    value = registry.get_sample_value(name)
    assert value is not None and value > 0
