"""A process's proof that its event loop turns: a file it touches every second.

The supervisor asks each service's /healthz whether it works. An overloaded process may
answer that late (the probe waits behind thousands of requests), and a process whose loop
is blocked never answers: both time out. The heartbeat tells them apart, off the request
path: a busy loop still runs its timers and touches the file, a blocked one does not
(infra/services.py `live`)."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from runtime.clock import Clock

# How often the file is touched, and how old it may be while the loop still counts as
# turning (a busy loop runs its timers late, never seconds late).
BEAT_EVERY_S = 1.0
STALE_AFTER_S = 5 * BEAT_EVERY_S


async def beat(path: Path, clock: Clock, every_s: float = BEAT_EVERY_S) -> None:
    """Touches `path` every `every_s` for as long as the loop turns (one syscall a beat)."""
    # On the loop on purpose (it is the loop's proof), and cheap: one utime of a local file.
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        path.touch()  # noqa: ASYNC240
        await clock.sleep(every_s)


@contextlib.asynccontextmanager
async def beating(path: Path | None, clock: Clock) -> AsyncIterator[None]:
    """Beats into `path` while the block runs (nothing when `path` is None: not asked for)."""
    if path is None:
        yield
        return
    task = asyncio.create_task(beat(path, clock), name="heartbeat")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def fresh(path: Path, now: float, within_s: float = STALE_AFTER_S) -> bool:
    """The file was touched within `within_s` of `now` (wall seconds, as its mtime is)."""
    try:
        return now - path.stat().st_mtime <= within_s
    except FileNotFoundError:
        return False
