"""WebSocket handshakes that may be refused, for the tests of connection limits."""

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus


async def open_many(url: str, count: int) -> tuple[list[int], list[ClientConnection]]:
    """Opens `count` connections one after the other and holds them: each handshake's
    status (101 when it opened) and the open connections (the caller closes them)."""
    statuses: list[int] = []
    held: list[ClientConnection] = []
    for _ in range(count):
        try:
            held.append(await connect(url, compression=None))
            statuses.append(101)
        except InvalidStatus as exc:
            statuses.append(exc.response.status_code)
    return statuses, held


async def close_all(held: list[ClientConnection]) -> None:
    for ws in held:
        await ws.close()
