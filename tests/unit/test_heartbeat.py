"""The heartbeat (runtime/heartbeat.py), and how the supervisor's liveness probe reads it
(infra/services.py `live`): a busy process is not a stuck one."""

import asyncio
import contextlib
import http.server
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.services import ServiceSpec, live
from runtime.clock import SystemClock
from runtime.heartbeat import beating, fresh


def test_fresh_reads_the_age_of_the_last_touch(tmp_path: Path) -> None:
    path = tmp_path / "ingest-1"
    assert not fresh(path, within_s=5, now=1_000.0)  # never touched
    path.touch()
    os.utime(path, (1_000.0, 1_000.0))
    assert fresh(path, within_s=5, now=1_004.0)
    assert fresh(path, within_s=5, now=1_005.0)
    assert not fresh(path, within_s=5, now=1_005.5)


async def test_beating_touches_the_file_while_its_block_runs(tmp_path: Path) -> None:
    path = tmp_path / "heartbeats" / "api-1"
    async with beating(path, SystemClock()):
        for _ in range(100):
            if path.exists():
                break
            await asyncio.sleep(0)
        assert fresh(path, now=time.time())
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "heartbeat"]


async def test_no_path_no_heartbeat(tmp_path: Path) -> None:
    async with beating(None, SystemClock()):
        await asyncio.sleep(0)
        assert not [t for t in asyncio.all_tasks() if t.get_name() == "heartbeat"]


def spec(port: int, heartbeat: Path | None) -> ServiceSpec:
    return ServiceSpec("ingest-1", "ingest", port, {}, "X", (), (), heartbeat)


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A port whose connections the kernel accepts and no one ever answers: a probe to it
    times out, as one to an overloaded or a blocked process does."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield server.getsockname()[1]


@contextlib.contextmanager
def answering(status: int) -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.loopback
def test_a_probe_that_times_out_is_forgiven_while_the_heartbeat_is_fresh(tmp_path: Path) -> None:
    beat = tmp_path / "ingest-1"
    beat.touch()
    with silent_listener() as port:
        assert live(spec(port, beat), timeout_s=0.3)  # busy: its loop turns


@pytest.mark.loopback
def test_a_probe_that_times_out_with_a_stale_or_no_heartbeat_is_stuck(tmp_path: Path) -> None:
    beat = tmp_path / "ingest-1"
    beat.touch()
    os.utime(beat, (time.time() - 60, time.time() - 60))  # its loop stopped a minute ago
    with silent_listener() as port:
        assert not live(spec(port, beat), timeout_s=0.3)
        assert not live(spec(port, tmp_path / "never-written"), timeout_s=0.3)
        assert not live(spec(port, None), timeout_s=0.3)


@pytest.mark.loopback
def test_a_probe_answered_503_or_refused_is_a_failure_whatever_the_heartbeat(
    tmp_path: Path,
) -> None:
    beat = tmp_path / "ingest-1"
    beat.touch()
    with answering(503) as port:
        assert not live(spec(port, beat), timeout_s=2)  # it says it does not work
    with answering(200) as port:
        assert live(spec(port, beat), timeout_s=2)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: refused
        assert not live(spec(port, beat), timeout_s=2)
