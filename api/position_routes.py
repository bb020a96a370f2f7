"""`GET /v1/drivers/{id}/position`: a driver's latest position (dispatchers and ops), a
cached view (api/reads/views.py)."""

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from api.deps import DispatcherOrOpsDep, StateDep
from api.reads.positions import DriverPosition
from api.reads.views import position_answer
from runtime.http import error_responses
from schemas.ids import ID_PATTERN, MAX_ID_LENGTH

# A path id is checked before any query: a NUL byte or a megabyte id is a 422, not a 500.
PathId = Annotated[str, Path(pattern=ID_PATTERN, max_length=MAX_ID_LENGTH)]

router = APIRouter()


@router.get(
    "/v1/drivers/{driver_id}/position",
    summary="A driver's latest position",
    response_model=DriverPosition,
    responses=error_responses(401, 403, 404, 422, 429, 503),
)
async def driver_position(
    driver_id: PathId, request: Request, _: DispatcherOrOpsDep, shared: StateDep
) -> Response:
    if_none_match = request.headers.get("if-none-match")
    return await position_answer(shared.read_path, driver_id, if_none_match)
