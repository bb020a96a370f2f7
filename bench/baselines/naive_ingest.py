"""The naive design, as a floor: validate, then one autocommitted INSERT per ping inside the
request (the classic API server that dies the day a new city is onboarded)."""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import Response

from bench.baselines import serve
from ingest.validation import parse_batch, validate_batch
from runtime.auth import TokenVerifier, bearer_token, require_role
from runtime.http import ApiError, install_error_handlers, json_response
from runtime.postgres import open_pool
from schemas.auth import JWT_AUDIENCE, JWT_ISSUER, Principal, Role

INSERT = (
    "INSERT INTO pings (driver_id, ts, ping_id, lat, lon, accuracy_m, speed_mps, heading_deg,"
    " battery_pct, job_id, received_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT DO NOTHING"
)


def create_app(dsn: str, public_key: Path, pool_size: int = 10) -> FastAPI:
    verifier = TokenVerifier.from_file(public_key, audience=JWT_AUDIENCE, issuer=JWT_ISSUER)
    state = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state["pool"] = await open_pool(dsn, min_size=pool_size, max_size=pool_size, name="naive")
        yield
        await state["pool"].close()

    app = FastAPI(lifespan=lifespan)
    install_error_handlers(app)

    async def driver(authorization: Annotated[str | None, Header()] = None) -> Principal:
        return require_role(verifier.verify(bearer_token(authorization)), [Role.DRIVER])

    @app.post("/v1/pings", status_code=202)
    async def post_pings(
        request: Request, principal: Annotated[Principal, Depends(driver)]
    ) -> Response:
        now = datetime.now(UTC)
        verdict = validate_batch(parse_batch(await request.body()), now)
        if not verdict.accepted:
            raise ApiError(422, "no valid ping")
        async with state["pool"].connection() as conn:
            for p in verdict.accepted:
                await conn.execute(
                    INSERT,
                    (principal.sub, p.ts, p.ping_id, p.lat, p.lon, p.accuracy_m, p.speed_mps,
                     p.heading_deg, p.battery_pct, p.job_id, now),
                )  # fmt: skip
        return json_response({"accepted": len(verdict.accepted), "rejected": []}, 202)

    return app


def main() -> None:
    app = create_app(os.environ["NAIVE_DSN"], Path(os.environ["NAIVE_JWT_PUBLIC_KEY_PATH"]))
    serve(app)


if __name__ == "__main__":
    main()
