"""Unit tests use no network: a test that connects or binds a socket fails, unless it is
marked `loopback` (it tests socket-level code against listeners of its own on 127.0.0.1,
never a service). The services' own tests are in tests/integration."""

import socket
from collections.abc import Iterator
from typing import Any

import pytest


class SocketBlocked(RuntimeError):
    """A unit test tried to use the network."""


@pytest.fixture(autouse=True)
def _no_sockets(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if request.node.get_closest_marker("loopback") is None:

        def refuse(sock: socket.socket, *args: Any) -> Any:
            raise SocketBlocked(
                f"{request.node.nodeid} opened a socket to {args}: a unit test uses no network"
                " (mark it `loopback` if it tests socket code against its own listener)"
            )

        for method in ("connect", "connect_ex", "bind"):
            monkeypatch.setattr(socket.socket, method, refuse)
    yield
