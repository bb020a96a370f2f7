"""`GET /v1/tasks/{id}`: a background task's status, the polling fallback to the push."""

from typing import Any
from uuid import UUID

from fastapi import APIRouter
from fastapi.responses import Response
from psycopg import AsyncConnection

from api.deps import CallerDep, StateDep
from jobs import store as job_store
from jobs.rules import check_visible
from runtime.http import error_responses, json_response
from schemas.jobs import Job
from schemas.tasks import Task

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])


@router.get(
    "/{task_id}",
    response_model=Task,
    summary="A background task (the polling fallback to the push)",
    responses=error_responses(401, 404, 422, 429, 503),
)
async def get_task(task_id: UUID, who: CallerDep, shared: StateDep) -> Response:
    # A critical read (the primary): a task's status is read right after the write
    # that made it. The caller has now seen the primary at this position: their later
    # reads (the job the task changed) must not show less.
    async def its_job(conn: AsyncConnection[Any], rows: list[dict[str, Any]]) -> Job | None:
        job_id = rows[0]["job_id"] if rows else None
        return await job_store.read(conn, job_id) if job_id else None

    got, job = await shared.read_path.router.read_then(
        "task", job_store.SELECT_TASK, [task_id], its_job, critical=True
    )
    task = Task.model_validate(got.rows[0]) if got.rows else None
    # A task is visible to whoever sees its job.
    check_visible(who, job_store.owners(job), task_id)
    assert task is not None
    await shared.read_path.cache.remember_position(who.key, got.lsn)
    return json_response(task.model_dump(mode="json"))
