"""The ceiling for a read: the same server (uvicorn, uvloop, httptools, FastAPI) answering
`GET /v1/jobs/{id}` with a constant body the size of a job's view, and nothing else: no
token, no cache, no database."""

from fastapi import FastAPI
from fastapi.responses import Response

from bench.baselines import serve

BODY = (
    b'{"job_id":"01900000-0000-7000-8000-000000000000","status":"assigned",'
    b'"customer_id":"bench-customer","driver_id":"bench-driver",'
    b'"pickup":{"lat":12.9716,"lon":77.5946},"dropoff":{"lat":12.9352,"lon":77.6245},'
    b'"reference":null,"seq":2,"created_at":"2026-11-28T10:00:00Z",'
    b'"updated_at":"2026-11-28T10:00:01Z","driver_position":null,"eta_seconds":null,'
    b'"eta_basis":null}'
)


def create_app() -> FastAPI:
    app = FastAPI()

    @app.get("/v1/jobs/{job_id}")
    async def job(job_id: str) -> Response:
        return Response(BODY, media_type="application/json")

    return app


if __name__ == "__main__":
    serve(create_app())
