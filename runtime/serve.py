"""Serving a FastAPI app the same way in every HTTP service: uvicorn, uvloop, httptools."""

import uvicorn
from fastapi import FastAPI


def serve(app: FastAPI, *, host: str, port: int, log_level: str) -> None:
    uvicorn.run(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        log_level=log_level.lower(),
        access_log=False,
        # Within the 10 s the contract gives a shutdown, whatever is in flight.
        timeout_graceful_shutdown=8,
    )
