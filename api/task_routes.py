"""`GET /v1/tasks/{id}`: a background task's status, the polling fallback to the push."""

from collections.abc import Awaitable, Callable
from typing import Annotated
from uuid import UUID

import psycopg
from fastapi import APIRouter, Depends
from fastapi.responses import Response
from psycopg_pool import PoolTimeout

from api import job_store
from api.errors import DatabaseUnavailable
from api.job_rules import check_visible
from runtime.http import error_responses, json_response
from runtime.postgres import Pool
from schemas.auth import Principal
from schemas.tasks import Task


def task_router(
    pools: dict[str, Pool],
    principal: Callable[..., Awaitable[Principal]],
    db_errors: Callable[[], None],
) -> APIRouter:
    router = APIRouter(prefix="/v1/tasks", tags=["tasks"])

    @router.get(
        "/{task_id}",
        response_model=Task,
        summary="A background task (the polling fallback to the push)",
        responses=error_responses(401, 404, 422, 503),
    )
    async def get_task(task_id: UUID, who: Annotated[Principal, Depends(principal)]) -> Response:
        try:
            # The primary: a task's status is read right after the write that made it.
            async with pools["write"].connection() as conn:
                task = await job_store.read_task(conn, task_id)
                job = await job_store.read(conn, task.job_id) if task and task.job_id else None
        except (psycopg.OperationalError, PoolTimeout) as exc:
            db_errors()
            raise DatabaseUnavailable(str(exc)) from exc
        # A task is visible to whoever sees its job.
        check_visible(who, job_store.owners(job), task_id)
        assert task is not None
        return json_response(task.model_dump(mode="json"))

    return router
