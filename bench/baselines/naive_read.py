"""The naive read, as a floor: every `GET /v1/jobs/{id}` verifies its token and reads the
job and the driver's live position from the primary (the design every first version has:
no cache, no replica), with the same code as the api."""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated
from uuid import UUID

from fastapi import Depends, FastAPI, Header
from fastapi.responses import Response

from api import http_errors
from api.reads.extras import with_live_position
from bench.baselines import serve
from jobs import store as job_store
from jobs.rules import check_visible
from runtime.auth import TokenVerifier, bearer_token
from runtime.http import install_error_handlers, json_response
from runtime.postgres import open_pool
from schemas.auth import JWT_AUDIENCE, JWT_ISSUER, Principal


def create_app(dsn: str, public_key: Path, pool_size: int = 10) -> FastAPI:
    verifier = TokenVerifier.from_file(public_key, audience=JWT_AUDIENCE, issuer=JWT_ISSUER)
    state = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state["pool"] = await open_pool(dsn, min_size=2, max_size=pool_size, name="naive")
        yield
        await state["pool"].close()

    app = FastAPI(lifespan=lifespan)
    install_error_handlers(app)
    http_errors.install(app)

    async def caller(authorization: Annotated[str | None, Header()] = None) -> Principal:
        return verifier.verify(bearer_token(authorization))

    @app.get("/v1/jobs/{job_id}")
    async def job(job_id: UUID, who: Annotated[Principal, Depends(caller)]) -> Response:
        async with state["pool"].connection() as conn:
            found = await job_store.read(conn, job_id)
            check_visible(who, job_store.owners(found), job_id)
            assert found is not None
            await with_live_position(conn, found, datetime.now(UTC))
        return json_response(found.model_dump(mode="json"))

    return app


if __name__ == "__main__":
    serve(create_app(os.environ["NAIVE_DSN"], Path(os.environ["NAIVE_JWT_PUBLIC_KEY_PATH"])))
