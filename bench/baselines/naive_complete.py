"""The naive `complete`, as a floor: the proof photo is decoded, cleaned and thumbnailed
inside the request, and the job completed in the same transaction, before the driver gets
an answer (the design every first version has). The same code as the api and its worker,
only in the request's path."""

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated
from uuid import UUID

from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import Response

from api.uploads import read_photo
from bench.baselines import serve
from jobs import store as job_store
from jobs.blobs import DirectoryBlobStore
from jobs.errors import InvalidPhoto
from jobs.photos import process_photo
from jobs.rules import Action
from runtime.auth import TokenVerifier, bearer_token, require_role
from runtime.http import ApiError, install_error_handlers, json_response
from runtime.postgres import open_pool
from schemas.auth import JWT_AUDIENCE, JWT_ISSUER, Principal, Role


def create_app(dsn: str, public_key: Path, blob_dir: Path, pool_size: int = 10) -> FastAPI:
    verifier = TokenVerifier.from_file(public_key, audience=JWT_AUDIENCE, issuer=JWT_ISSUER)
    blobs = DirectoryBlobStore(blob_dir)
    state = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state["pool"] = await open_pool(dsn, min_size=2, max_size=pool_size, name="naive")
        yield
        await state["pool"].close()

    app = FastAPI(lifespan=lifespan)
    install_error_handlers(app)

    async def driver(authorization: Annotated[str | None, Header()] = None) -> Principal:
        return require_role(verifier.verify(bearer_token(authorization)), [Role.DRIVER])

    @app.post("/v1/jobs/{job_id}/complete")
    async def complete(
        job_id: UUID, request: Request, who: Annotated[Principal, Depends(driver)]
    ) -> Response:
        data = await read_photo(request, 30.0)
        try:
            photo = await asyncio.to_thread(process_photo, data)
        except InvalidPhoto as exc:
            raise ApiError(422, str(exc)) from exc
        key = await asyncio.to_thread(blobs.put, photo.clean)
        await asyncio.to_thread(blobs.put_as, f"{key}-thumbnail", photo.thumbnail)
        async with state["pool"].connection() as conn, conn.transaction():
            await job_store.transition(conn, who, job_id, Action.COMPLETE)
            job = await job_store.transition(conn, None, job_id, Action.FINISH)
        return json_response({"job_id": str(job_id), "status": job.status, "sha256": photo.sha256})

    return app


def main() -> None:
    app = create_app(
        os.environ["NAIVE_DSN"],
        Path(os.environ["NAIVE_JWT_PUBLIC_KEY_PATH"]),
        Path(os.environ["NAIVE_BLOB_DIR"]),
    )
    serve(app)


if __name__ == "__main__":
    main()
