"""An answer leaves the process in one write, so a process killed while answering sends
either all of a small answer or none of it.

uvicorn writes a response's head and its body with two `transport.write` calls, and the
process can be killed between them (`kill -9`, the OOM killer): the client side then has
a 200 head and no body. HAProxy cannot retry that (it has forwarded the head already), so
the caller gets a truncated answer. With nothing received, HAProxy retries an idempotent
request on another process (`retry-on empty-response`), which is what docs/edge.md
promises for a process that dies under GETs. Measured: the edge's kill -9 test lost a GET
to this in about one run in three.

The writes of one step of the event loop are joined and written once the step is over:
the head and the body of an answer are sent from one step (nothing awaits between them).
A body larger than the socket's buffer still goes out in several pieces; nothing else
could make those atomic."""

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class OneWriteTransport:
    """A transport whose writes from one loop step reach the socket as one write; every
    other call goes to the real transport."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        # What was written before close() is sent first, as a transport's close() does.
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a `OneWriteTransport` (pass it as `http=`)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(OneWriteTransport(transport, self.loop))  # type: ignore[arg-type]
