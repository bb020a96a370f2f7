"""The unit suite's guard against the network (tests/unit/conftest.py) is on."""

import asyncio
import socket

import pytest

from tests.unit.conftest import SocketBlocked


def test_a_unit_test_cannot_connect() -> None:
    with socket.socket() as client, pytest.raises(SocketBlocked, match="uses no network"):
        client.connect(("127.0.0.1", 9))


def test_a_unit_test_cannot_listen() -> None:
    with socket.socket() as listener, pytest.raises(SocketBlocked):
        listener.bind(("127.0.0.1", 0))


async def test_asyncio_connections_are_refused_too() -> None:
    with pytest.raises(SocketBlocked):
        await asyncio.open_connection("127.0.0.1", 9)


@pytest.mark.loopback
def test_a_loopback_test_may_listen_on_its_own() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        assert listener.getsockname()[1] > 0
