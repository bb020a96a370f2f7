"""The ops endpoints (role ops): consumer lag, and the overview the ops page draws."""

import logging

from aiokafka.errors import KafkaError
from fastapi import APIRouter
from fastapi.responses import Response

from api.deps import LagMonitorDep, OpsDep, OverviewMonitorDep
from api.ops import LagReport
from api.overview import Overview, PrometheusUnavailable
from runtime.http import ApiError, error_responses, json_response

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/ops", tags=["ops"])


@router.get(
    "/lag",
    summary="Consumer lag per group and partition, with a status over the last looks",
    response_model=LagReport,
    responses=error_responses(401, 403, 429, 503),
)
async def lag(_: OpsDep, monitor: LagMonitorDep) -> Response:
    try:
        report = await monitor.report()
    except (KafkaError, OSError, TimeoutError, LookupError) as exc:
        log.warning("lag look failed: %s", exc)
        raise ApiError(
            503, "Kafka did not answer the lag look", headers={"Retry-After": "2"}
        ) from exc
    return json_response(report)


@router.get(
    "/overview",
    summary="Throughput, freshness, error rates, cache, connections, replica and lag",
    response_model=Overview,
    responses=error_responses(401, 403, 429, 503),
)
async def pipeline_overview(_: OpsDep, overview: OverviewMonitorDep) -> Response:
    try:
        report = await overview.report()
    except PrometheusUnavailable as exc:
        log.warning("overview failed: %s", exc)
        raise ApiError(
            503, "Prometheus did not answer the overview", headers={"Retry-After": "2"}
        ) from exc
    return json_response(report)
