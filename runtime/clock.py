"""Time, read one way: wall time, monotonic time and sleeping, behind a `Clock`.

Services take a Clock (a `SystemClock` unless told otherwise) wherever time decides what
they do: a pacing interval, an expiry, a timestamp they write. Tests pass a `ManualClock`
and move it on by hand, so a test about "after the interval" needs no real wait."""

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """What a service may ask of time. Implementations are safe to share between tasks of
    one event loop."""

    def wall(self) -> float:
        """Seconds since the epoch (may jump: NTP, an operator)."""
        ...

    def now(self) -> datetime:
        """The wall time as an aware UTC datetime."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never goes back: for intervals."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Returns once `seconds` of this clock's monotonic time have passed."""
        ...


class SystemClock:
    """The machine's clocks."""

    def wall(self) -> float:
        return time.time()

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualClock:
    """A clock that moves only when told (`advance`), for tests. Wall and monotonic time
    move together. `sleep` returns once the clock has been advanced past its end; sleepers
    are woken in the order their ends come."""

    def __init__(self, wall: float = 1_800_000_000.0) -> None:
        self._wall = wall
        self._monotonic = 0.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def wall(self) -> float:
        return self._wall

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._wall, UTC)

    def monotonic(self) -> float:
        return self._monotonic

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._monotonic + seconds, woken))
        await woken

    def advance(self, seconds: float) -> None:
        """Moves both times on by `seconds` and wakes the sleepers whose end has come."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self._wall += seconds
        self._monotonic += seconds
        due = sorted((s for s in self._sleepers if s[0] <= self._monotonic), key=lambda s: s[0])
        self._sleepers = [s for s in self._sleepers if s[0] > self._monotonic]
        for _, woken in due:
            if not woken.done():
                woken.set_result(None)
