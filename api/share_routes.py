"""Share links' public side: `GET /v1/share/{token}`, the same for everyone who has it,
cached (api/reads/views.py) and marked public so an edge cache may keep it too."""

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Request
from fastapi import Path as PathParameter
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from api.deps import StateDep
from api.reads.views import share_answer
from runtime.http import error_responses
from schemas.jobs import SHARE_TOKEN_PATTERN, SharedJob

ShareToken = Annotated[
    str, PathParameter(pattern=SHARE_TOKEN_PATTERN, examples=["q3vN8d0XkZ1cR7tYwB5eLm2H"])
]


router = APIRouter(prefix="/v1/share", tags=["share"])
page_router = APIRouter(tags=["share"])

PAGE_DIR = Path(__file__).parent / "share_page"
# The same page for every link (it reads its token from its address): a cache may keep it.
# Everything it loads is ours; no referrer, so its address (the token) goes nowhere.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; frame-ancestors 'none'"
    ),
    "Cache-Control": "public, max-age=300",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
HTML: dict[int | str, dict[str, Any]] = {
    200: {"description": "The page", "content": {"text/html": {"schema": {"type": "string"}}}}
}


@router.get(
    "/{token}",
    response_model=SharedJob,
    summary="A shared job, public: status, the driver's position and the ETA",
    responses=error_responses(404, 422, 503),
)
async def shared(token: ShareToken, request: Request, api: StateDep) -> Response:
    return await share_answer(api.read_path, token, request.headers.get("if-none-match"))


@page_router.get(
    "/s/{token}",
    summary="A shared job's page, for a phone: its state, its ETA and the driver, live",
    responses=HTML | error_responses(422),
    response_class=HTMLResponse,
)
async def page(token: ShareToken) -> Response:
    # The page asks the share view and the notifier itself: an ended or revoked link shows
    # "no longer available" there, as the view answers 404.
    return FileResponse(PAGE_DIR / "index.html", headers=PAGE_HEADERS, media_type="text/html")


def mount_share_page(app: FastAPI) -> None:
    app.include_router(page_router)
    app.mount("/share-static", StaticFiles(directory=PAGE_DIR), name="share-static")
