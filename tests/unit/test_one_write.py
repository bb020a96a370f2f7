"""An answer leaves the process in one write (runtime/one_write.py): a process killed
between an answer's head and its body sends neither, so the proxy in front retries."""

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.one_write import OneWriteTransport

# Socket-level code, against listeners of the test's own on 127.0.0.1.
pytestmark = pytest.mark.loopback

ROOT = Path(__file__).resolve().parents[2]

# A server whose app is killed (SIGKILL, from itself) after sending the head of its answer
# and before the body: the moment a `kill -9` can land in under load.
DIES_MID_ANSWER = """
import os, signal, sys
import uvicorn
from runtime.one_write import OneWriteHttpToolsProtocol

async def app(scope, receive, send):
    head = [(b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": head})
    os.kill(os.getpid(), signal.SIGKILL)
    await send({"type": "http.response.body", "body": b"ok"})

http = OneWriteHttpToolsProtocol if sys.argv[2] == "one-write" else "httptools"
uvicorn.run(app, fd=int(sys.argv[1]), http=http, loop="uvloop", lifespan="off",
            log_level="warning")
"""


def received_before_death(protocol: str) -> bytes:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        fd = listener.fileno()
        server = subprocess.Popen(
            [sys.executable, "-c", DIES_MID_ANSWER, str(fd), protocol],
            cwd=ROOT,
            pass_fds=[fd],
        )
        try:
            with socket.create_connection(listener.getsockname(), timeout=30) as client:
                client.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
                received = b""
                while chunk := client.recv(4096):
                    received += chunk
            assert server.wait(timeout=30) == -9, "the server was not killed mid-answer"
            return received
        finally:
            server.kill()
            server.wait()


def test_uvicorns_own_protocol_sends_a_head_without_its_body_when_killed() -> None:
    # The failure the one-write transport exists for: without it, the head is out.
    assert received_before_death("httptools").startswith(b"HTTP/1.1 200 OK\r\n")


def test_a_process_killed_between_head_and_body_sends_nothing() -> None:
    assert received_before_death("one-write") == b""


class Recording:
    """The real transport's side: what reached it, and whether it is closing."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "a write after close"
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> str:
        return f"info {name}"


def transport_on(loop: asyncio.AbstractEventLoop) -> tuple[OneWriteTransport, Recording]:
    real = Recording()
    return OneWriteTransport(real, loop), real  # type: ignore[arg-type]


async def scheduled_callbacks_run() -> None:
    """Returns once the callbacks scheduled before it (a flush) have run: FIFO order."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.call_soon(done.set_result, None)
    await done


def test_the_writes_of_one_step_reach_the_socket_as_one() -> None:
    async def main() -> list[bytes]:
        transport, real = transport_on(asyncio.get_running_loop())
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        transport.writelines([b"o", bytearray(b"k")])
        assert real.writes == [] and transport.get_write_buffer_size() == 21
        await scheduled_callbacks_run()
        transport.write(b"next")
        await scheduled_callbacks_run()
        return real.writes

    assert asyncio.run(main()) == [b"HTTP/1.1 200 OK\r\n\r\nok", b"next"]


def test_close_sends_what_was_written_first_and_later_writes_are_dropped() -> None:
    async def main() -> Recording:
        transport, real = transport_on(asyncio.get_running_loop())
        transport.write(b"last answer")
        transport.close()
        assert real.writes == [b"last answer"] and real.closed
        transport.write(b"after close")
        await scheduled_callbacks_run()
        return real

    assert asyncio.run(main()).writes == [b"last answer"]


def test_everything_else_is_the_real_transports() -> None:
    async def main() -> None:
        transport, _ = transport_on(asyncio.get_running_loop())
        assert transport.get_extra_info("peername") == "info peername"
        assert not transport.is_closing()

    asyncio.run(main())


@pytest.mark.parametrize("empty", [b"", bytearray(), memoryview(b"")])
def test_an_empty_write_schedules_nothing(empty: bytes) -> None:
    async def main() -> list[bytes]:
        transport, real = transport_on(asyncio.get_running_loop())
        transport.write(empty)
        await scheduled_callbacks_run()
        return real.writes

    assert asyncio.run(main()) == []
