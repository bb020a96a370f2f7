"""Baselines measured beside our pipeline in the same run: the bare pipe and the naive
designs. The naive ones are HTTP endpoints, started here on a free port."""

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import uvicorn

from infra import pgbouncer
from infra.config import REPO_ROOT
from infra.procs import ProcessRef, free_port, port_open, spawn, stop, wait_until
from infra.stack import Stack
from runtime.one_write import OneWriteHttpToolsProtocol


def serve(app: Any) -> None:
    """How every baseline endpoint serves: as our services do, on NAIVE_PORT."""
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(os.environ["NAIVE_PORT"]),
        loop="uvloop",
        http=OneWriteHttpToolsProtocol,
        log_level="warning",
        access_log=False,
    )


@contextlib.contextmanager
def naive_endpoint(
    stack: Stack, module: str, env: dict[str, str] | None = None
) -> Iterator[tuple[str, ProcessRef]]:
    """`python -m bench.baselines.<module>` on a free port, with the stack's write DSN and
    public key; yields its base URL and process."""
    port = free_port()
    ref = spawn(
        [sys.executable, "-m", f"bench.baselines.{module}"],
        log_path=stack.config.logs_dir / f"bench-{module}.log",
        env={
            "NAIVE_PORT": str(port),
            "NAIVE_DSN": pgbouncer.dsn(stack.config, read_only=False),
            "NAIVE_JWT_PUBLIC_KEY_PATH": str(stack.config.jwt_public_key),
            **(env or {}),
        },
        cwd=REPO_ROOT,
    )
    try:
        if not wait_until(lambda: port_open(port), 30):
            raise RuntimeError(f"the baseline endpoint {module} did not start")
        yield f"http://127.0.0.1:{port}", ref
    finally:
        stop(ref)
