"""A connection's output, bounded: job events in order, positions coalesced per job (a slow
client gets the newest, never a backlog), and a limit on everything unsent (queued here
plus the socket's write buffer) past which the connection is closed as a slow consumer."""

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Protocol
from uuid import UUID


class Writer(Protocol):
    """What the send_queue needs of a WebSocket connection."""

    async def send(self, message: bytes, *, text: bool) -> None: ...

    def write_now(self, message: bytes) -> None:
        """Into the socket's buffer at once, with no flow control (websockets' broadcast)."""

    def buffered_bytes(self) -> int: ...


# Below this much in the socket's buffer, a frame with nothing queued before it is written
# at once: no task, no await (a fan-out to a thousand subscribers costs a write each).
WRITE_NOW_BELOW_BYTES = 64 * 1024


# (kind, when its content happened: an event's commit, a position's fix; epoch seconds),
# called once the frame is written.
Sent = Callable[[str, float | None], None]


class Budget:
    """The bytes queued by all of a process's send queues: past `limit`, the connection whose
    frame would cross it is the slow one, and is closed. One client's limit times 20,000
    clients is more memory than the process has."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def fits(self, more: int) -> bool:
        return self.used + more <= self.limit


class SendQueue:
    """A frame is written at once while the client keeps up; otherwise it queues, and one
    task writes the queue as the socket drains, ending when it is empty (an idle
    connection holds no task)."""

    def __init__(
        self,
        writer: Writer,
        *,
        max_unsent_bytes: int,
        on_slow: Callable[[], Coroutine[Any, Any, None]],
        on_sent: Sent,
        budget: Budget | None = None,
    ) -> None:
        self._writer = writer
        self._limit = max_unsent_bytes
        self._budget = budget or Budget(max_unsent_bytes)  # the process's, shared
        self._on_slow = on_slow
        self._on_sent = on_sent
        self._frames: deque[tuple[bytes, str, float | None]] = deque()
        self._positions: dict[UUID, tuple[bytes, float]] = {}
        self._queued_bytes = 0
        self._task: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None  # referenced: the loop keeps weak ones
        self.closed = False

    def unsent_bytes(self) -> int:
        return self._queued_bytes + self._writer.buffered_bytes()

    def push(self, frame: bytes, kind: str, origin: float | None = None) -> None:
        """A frame that must arrive (a job event, a snapshot, a ping), in order."""
        if self.closed:
            return
        if self.unsent_bytes() + len(frame) > self._limit:
            self._slow()
            return
        if self._idle():
            self._writer.write_now(frame)
            self._on_sent(kind, origin)
            return
        if not self._budget.fits(len(frame)):
            self._slow()
            return
        self._frames.append((frame, kind, origin))
        self._queue(len(frame))
        self._kick()

    def push_position(self, job_id: UUID, frame: bytes, fix_ts: float) -> None:
        """Latest-value: replaces a position of the same job not yet written."""
        if self.closed:
            return
        previous = self._positions.get(job_id)
        added = len(frame) - (len(previous[0]) if previous is not None else 0)
        if self.unsent_bytes() + added > self._limit:
            self._slow()
            return
        if previous is None and self._idle():
            self._writer.write_now(frame)
            self._on_sent("position", fix_ts)
            return
        if not self._budget.fits(added):
            self._slow()
            return
        self._positions[job_id] = (frame, fix_ts)
        self._queue(added)
        self._kick()

    def drop_positions(self, job_id: UUID) -> None:
        previous = self._positions.pop(job_id, None)
        if previous is not None:
            self._queue(-len(previous[0]))

    def close(self) -> None:
        self.closed = True
        self._frames.clear()
        self._positions.clear()
        self._queue(-self._queued_bytes)

    def _queue(self, change: int) -> None:
        self._queued_bytes += change
        self._budget.used += change

    def _slow(self) -> None:
        self.close()
        # The close runs as its own task: the caller is the fan-out of other connections.
        self._closing = asyncio.get_running_loop().create_task(self._on_slow())

    def _idle(self) -> bool:
        return (
            self._task is None
            and not self._frames
            and not self._positions
            and self._writer.buffered_bytes() < WRITE_NOW_BELOW_BYTES
        )

    def _kick(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._write())

    def _next(self) -> tuple[bytes, str, float | None] | None:
        if self._frames:
            return self._frames.popleft()
        if self._positions:
            frame, fix_ts = self._positions.pop(next(iter(self._positions)))
            return frame, "position", fix_ts
        return None

    async def _write(self) -> None:
        try:
            while not self.closed and (item := self._next()) is not None:
                frame, kind, origin = item
                self._queue(-len(frame))
                # Waits only while the socket's buffer is above its high-water mark; what
                # arrives meanwhile queues here, counted against the limit.
                await self._writer.send(frame, text=True)
                self._on_sent(kind, origin)
        except Exception:
            # The connection is gone (its handler sees it too and cleans up).
            self.close()
        finally:
            self._task = None
