"""Share links' public side: `GET /v1/share/{token}`, the same for everyone who has it,
cached (api/reads/views.py) and marked public so an edge cache may keep it too."""

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from api.deps import StateDep
from api.reads.views import share_answer
from runtime.http import error_responses
from schemas.jobs import SHARE_TOKEN_PATTERN, SharedJob

ShareToken = Annotated[str, Path(pattern=SHARE_TOKEN_PATTERN)]


router = APIRouter(prefix="/v1/share", tags=["share"])


@router.get(
    "/{token}",
    response_model=SharedJob,
    summary="A shared job, public: status, the driver's position and the ETA",
    responses=error_responses(404, 422, 503),
)
async def shared(token: ShareToken, request: Request, api: StateDep) -> Response:
    return await share_answer(api.read_path, token, request.headers.get("if-none-match"))
