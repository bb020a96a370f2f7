"""`GET /v1/jobs/{id}/proof`: the job's proof photo as the photo worker cleaned it (never
the raw upload, which keeps the phone's EXIF and location), or its thumbnail."""

import asyncio
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Header, Query
from fastapi.responses import Response

from api.deps import CallerDep, StateDep
from api.reads.views import etag_matches
from jobs.errors import NotFound
from runtime.http import error_responses
from schemas.auth import Principal, Role

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

# The job's owners and its latest processed proof (a refused proof has no result; the
# driver's next one does).
SELECT_PROOF = """
SELECT j.customer_id, j.driver_id, t.task_id, t.result
FROM jobs j
LEFT JOIN LATERAL (
    SELECT task_id, result FROM tasks
    WHERE job_id = j.job_id AND kind = 'proof_photo' AND status = 'done'
    ORDER BY updated_at DESC LIMIT 1
) t ON true
WHERE j.job_id = %s
"""
# The photo never changes once processed; a browser keeps it, a shared cache never does.
CACHE_CONTROL = "private, max-age=3600"
MEDIA_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png"}
IMAGES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The cleaned photo (JPEG or PNG, as uploaded) or its JPEG thumbnail",
        "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                    "image/png": {"schema": {"type": "string", "format": "binary"}}},
        "headers": {"ETag": {"schema": {"type": "string"}}},
    },
    304: {"description": "The client's copy (If-None-Match) is current"},
}  # fmt: skip


def may_see_proof(who: Principal, customer_id: str, driver_id: str | None) -> bool:
    """The job's customer, a dispatcher and the assigned driver: a photo of someone's door
    is more personal than a job's status, so ops (who sees every job) does not see it."""
    match who.role:
        case Role.DISPATCHER:
            return True
        case Role.CUSTOMER:
            return customer_id == who.sub
        case Role.DRIVER:
            return driver_id is not None and driver_id == who.sub
    return False


@router.get(
    "/{job_id}/proof",
    summary="The job's proof photo, cleaned of its metadata, or its thumbnail",
    responses=IMAGES | error_responses(401, 404, 422, 429, 503),
    response_class=Response,
)
async def proof(
    job_id: UUID,
    who: CallerDep,
    shared: StateDep,
    size: Annotated[Literal["full", "thumb"], Query(examples=["thumb"])] = "full",
    if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
) -> Response:
    # The primary: the photo is asked for right after `job.completed` said it was there.
    got = await shared.read_path.router.read("proof", SELECT_PROOF, [job_id], critical=True)
    row = got.rows[0] if got.rows else None
    if row is None or not may_see_proof(who, row["customer_id"], row["driver_id"]):
        raise NotFound(f"no job {job_id}")  # someone else's job is as unknown as none
    result = row["result"]
    if result is None:
        raise NotFound(f"job {job_id} has no processed proof photo")
    key, media_type = (
        (result["thumbnail"], "image/jpeg")
        if size == "thumb"
        else (result["photo"], MEDIA_TYPES[result["format"]])
    )
    # Written once by the task that made it, never again: the task and the size name it.
    etag = f'"{row["task_id"]}-{size}"'
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL, "X-Content-Type-Options": "nosniff"}
    if etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    try:
        data = await asyncio.to_thread(shared.blobs.get, key)
    except FileNotFoundError as exc:
        raise NotFound(f"job {job_id}'s proof photo is missing from the store") from exc
    return Response(data, media_type=media_type, headers=headers)
